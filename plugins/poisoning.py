"""Poisoning: the attacker corrupts the training data; the model is re-trained on it.

Every poisoning attack here is a :class:`PoisoningAttack`: it only builds the poisoned
training set (:meth:`PoisoningAttack.poison`); :func:`evaluate_poisoning` re-trains the
model's architecture on it and on the clean set with one recipe and one seed, so the
difference between the two models is the attack's doing and not training noise. A
backdoor attack fills ``PoisonedSet.x_triggered`` and ``target`` and shares the rest.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from gauntlet import (
    Access,
    Attack,
    ConfigError,
    Dataset,
    Family,
    Model,
    NotApplicable,
    PoisoningOutcome,
    hookimpl,
)


@dataclasses.dataclass(frozen=True)
class PoisonedSet:
    """A training set as the attacker left it.

    :param x: training inputs (clean, modified or with rows added).
    :param y: training labels.
    :param n_poisoned: rows the attacker changed or added.
    :param x_triggered: for backdoors, test inputs carrying the trigger.
    :param target: for targeted backdoors, the class the trigger should force.
    """

    x: np.ndarray
    y: np.ndarray
    n_poisoned: int
    x_triggered: np.ndarray | None = None
    target: int | None = None


def evaluate_poisoning(model: Model, dataset: Dataset, poisoned: PoisonedSet,
                       seed: int) -> PoisoningOutcome:
    """Re-train ``model``'s architecture on the poisoned and on the clean training set
    (same recipe, same seed, any defense kept on top) and compare both on clean test data.

    The clean re-train is usually free: the recipe caches per training set and seed, and
    the model under audit was trained on exactly that set.
    """
    poisoned_model = model.retrain(poisoned.x, poisoned.y, seed)
    reference = model.retrain(dataset.x_train, dataset.y_train, seed)
    triggered = (None if poisoned.x_triggered is None
                 else poisoned_model.predict(poisoned.x_triggered))
    return PoisoningOutcome(
        y_true=dataset.y_test,
        proba=poisoned_model.predict(dataset.x_test),
        proba_reference=reference.predict(dataset.x_test),
        n_poisoned=int(poisoned.n_poisoned),
        n_train=len(poisoned.x),
        proba_triggered=triggered,
        target=poisoned.target,
    )


class PoisoningAttack(Attack):
    """Base of poisoning attacks: subclasses implement :meth:`poison` only.

    Not registered itself; subclasses set ``name``, ``params`` (including
    ``train_seed``) and the docstring.
    """

    family = Family.POISONING
    needs = Access.LABELS
    needs_recipe = True
    outcome = PoisoningOutcome

    def poison(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        """Return the poisoned training set; draw all randomness from ``rng``."""
        raise NotImplementedError

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> PoisoningOutcome:
        self.check(model)
        return evaluate_poisoning(model, dataset, self.poison(model, dataset, rng),
                                  int(self.train_seed))


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
    params = {"fraction": (0.1, 0.3, 0.5), "train_seed": 0}

    def __init__(self, **values: object) -> None:
        super().__init__(**values)
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"{self.owner()}: fraction must be in [0, 1], got {self.fraction}")

    def poison(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        y, flipped = flip_labels(dataset.y_train, self.fraction, dataset.n_classes, rng)
        return PoisonedSet(dataset.x_train, y, n_poisoned=len(flipped))


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(LabelFlip)
