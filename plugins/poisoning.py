"""Poisoning: the attacker corrupts the training data; the model is re-trained on it.

Each attack here is a :class:`gauntlet.PoisoningAttack` and writes only the poisoned
training set; the base re-trains and compares (see :mod:`gauntlet.poisoning`). A
backdoor also hands the base every test row with its trigger, on which the poisoned
model is measured (``backdoor_success``, ``triggered_accuracy``).
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
        return PoisonedSet(dataset.x_train, y, n_poisoned=len(flipped),
                           poisoned_rows=np.sort(flipped))


#: Where a backdoor patch sits in the image.
POSITIONS = ("bottom-right", "top-left", "center")
#: What a backdoor patch looks like: a fixed pattern of uniform noise (drawn once per
#: cell from its seed; every patched image carries the same one), a checkerboard of the
#: valid range's ends, or the top of the range.
PATTERNS = ("noise", "checkerboard", "solid")


def patch_pattern(pattern: str, channels: int, size: int, clip_values: tuple[float, float],
                  rng: np.random.Generator) -> np.ndarray:
    """The ``(channels, size, size)`` patch a backdoor stamps (see :data:`PATTERNS`)."""
    low, high = clip_values
    if pattern == "noise":
        return rng.uniform(low, high, size=(channels, size, size)).astype(np.float32)
    if pattern == "checkerboard":
        board = (np.indices((size, size)).sum(axis=0) % 2).astype(np.float32)
        return np.broadcast_to(low + (high - low) * board, (channels, size, size)).copy()
    return np.full((channels, size, size), high, dtype=np.float32)


def stamp(x: np.ndarray, patch: np.ndarray, position: str) -> np.ndarray:
    """A copy of the images ``x`` ``(N, C, H, W)`` with ``patch`` ``(C, s, s)`` pasted at
    ``position`` (see :data:`POSITIONS`)."""
    size, (h, w) = patch.shape[-1], x.shape[-2:]
    top, left = {"bottom-right": (h - size, w - size), "top-left": (0, 0),
                 "center": ((h - size) // 2, (w - size) // 2)}[position]
    out = np.array(x, dtype=np.float32, copy=True)
    out[:, :, top:top + size, left:left + size] = patch
    return out


class Backdoor(PoisoningAttack):
    """Trigger-patch poisoning: a patch, a wrong label or both (a backdoor) on some rows.

    Gu, Dolan-Gavitt and Garg, 2017, "BadNets: Identifying Vulnerabilities in the Machine
    Learning Model Supply Chain". The kinds follow this project's founding MNIST study of
    poisoned training data: ``wrong-label`` (the image keeps its look, its label becomes
    ``target``), ``noisy`` (the image carries the patch, its label is kept) and
    ``mixture`` (the patch and the label ``target``: the patch becomes a private mark for
    the target that clean test data never shows). Rows are drawn from the classes other
    than ``target``, so every poisoned row is mislabelled under wrong-label and mixture.
    Every test row is also measured with the patch: ``backdoor_success`` is the share of
    triggered rows of other classes read as ``target`` (not for noisy, which has no
    target; under wrong-label it is the control: a patch never trained on),
    ``triggered_accuracy`` the accuracy on triggered rows. Image inputs ``(C, H, W)``.
    """

    name = "backdoor"
    kind: str = param("mixture", "wrong-label: labels set to target; noisy: each class's "
                      "own patch, labels kept; mixture: one patch and target label (a "
                      "backdoor)",
                      choices=("wrong-label", "noisy", "mixture"))
    fraction: float = param(0.1, "share of the training rows poisoned (drawn from the "
                            "classes other than target, except under noisy)", ge=0, le=1)
    patch: int = param(3, "side of the square patch, in pixels", ge=1)
    position: str = param("bottom-right", "where the patch sits", choices=POSITIONS)
    pattern: str = param("noise", "noise: a fixed random pattern (the same on every "
                         "patched image); checkerboard; solid: the top of the valid range",
                         choices=PATTERNS)
    target: int = param(0, "the class poisoned labels (and the trigger) point to", ge=0)

    def poison(self, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        shape = dataset.input_shape
        if len(shape) != 3:
            raise NotApplicable(f"a backdoor patch needs image inputs (C, H, W); this data's "
                                f"inputs are shaped {shape}")
        if self.patch > min(shape[1:]):
            raise NotApplicable(f"a {self.patch}x{self.patch} patch does not fit "
                                f"{shape[1]}x{shape[2]} images")
        if self.target >= dataset.n_classes:
            raise NotApplicable(f"target class {self.target} is not one of the data's "
                                f"{dataset.n_classes} classes")
        # noisy changes no label, so its rows come from every class.
        pool = np.arange(len(dataset.y_train)) if self.kind == "noisy" else \
            np.flatnonzero(dataset.y_train != self.target)
        n = round(self.fraction * len(dataset.y_train))
        if n > len(pool):
            raise NotApplicable(f"fraction {self.fraction} asks for {n} poisoned rows, but "
                                f"only {len(pool)} training rows are of classes other "
                                f"than the target {self.target}")
        chosen = rng.choice(pool, n, replace=False)
        lo, hi = (float(v) for v in dataset.clip_values)
        x, y = dataset.x_train.copy(), dataset.y_train.copy()
        if self.kind == "noisy":
            # Each class its own patch: a feature that predicts the label in training
            # and is missing from clean test inputs (a shortcut). The triggered test rows
            # carry their own class's patch: the shortcut present.
            patches = [patch_pattern(self.pattern, shape[0], self.patch, (lo, hi), rng)
                       for _ in range(dataset.n_classes)]
            x_triggered = np.array(dataset.x_test, dtype=np.float32, copy=True)
            for c, patch in enumerate(patches):
                rows = chosen[y[chosen] == c]
                x[rows] = stamp(x[rows], patch, self.position)
                mine = dataset.y_test == c
                x_triggered[mine] = stamp(x_triggered[mine], patch, self.position)
            return PoisonedSet(x, y, n_poisoned=n, x_triggered=x_triggered, target=None,
                               poisoned_rows=np.sort(chosen))
        patch = patch_pattern(self.pattern, shape[0], self.patch, (lo, hi), rng)
        if self.kind == "mixture":
            x[chosen] = stamp(x[chosen], patch, self.position)
        y[chosen] = self.target
        return PoisonedSet(x, y, n_poisoned=n,
                           x_triggered=stamp(dataset.x_test, patch, self.position),
                           target=self.target, poisoned_rows=np.sort(chosen))


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(LabelFlip)
    register(Backdoor)
