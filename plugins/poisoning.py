"""Poisoning: the attacker corrupts the training data; the model is re-trained on it.

Each attack here is a :class:`gauntlet.PoisoningAttack` and writes only the poisoned
training set; the base re-trains and compares (see :mod:`gauntlet.poisoning`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import Attack, Dataset, NotApplicable, PoisonedSet, PoisoningAttack, hookimpl, param


def flip_labels(y: np.ndarray, fraction: float, n_classes: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(fraction * len(y))`` labels, drawn without replacement, each to a
    class drawn uniformly from the *other* classes. Returns the new labels and the
    indices of the flipped rows."""
    if n_classes < 2:
        raise NotApplicable(f"label flipping needs at least 2 classes, the data has {n_classes}")
    y = np.asarray(y)
    n_flip = round(fraction * len(y))
    flipped = rng.choice(len(y), n_flip, replace=False)
    # A non-zero shift modulo n_classes is uniform over the other classes.
    shift = rng.integers(1, n_classes, size=n_flip)
    y_poisoned = y.copy()
    y_poisoned[flipped] = (y[flipped] + shift) % n_classes
    return y_poisoned, flipped


class LabelFlip(PoisoningAttack):
    """Random label flipping: a fraction of training labels changed to another class.

    Biggio et al., 2012, "Poisoning Attacks against Support Vector Machines"; Xiao et al.,
    2012, "Adversarial Label Flips Attack on Support Vector Machines".
    """

    name = "label-flip"
    fraction: float = param((0.1, 0.3, 0.5), "share of training labels flipped", ge=0, le=1)

    def poison(self, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        y, flipped = flip_labels(dataset.y_train, self.fraction, dataset.n_classes, rng)
        return PoisonedSet(dataset.x_train, y, n_poisoned=len(flipped))


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(LabelFlip)
