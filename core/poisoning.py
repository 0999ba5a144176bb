"""The poisoning family's base: the plugin writes ``poison``, the base does the rest.

A poisoning attack corrupts the training data. :class:`PoisoningAttack` asks the plugin
for the poisoned training set only (:meth:`PoisoningAttack.poison`), checks it, then
re-trains the model's architecture on it and on the clean set with one recipe and one
seed (:func:`evaluate_poisoning`), so the difference between the two models is the
attack's doing and not training noise. A backdoor fills ``PoisonedSet.x_triggered`` and
``target`` and shares the rest.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.errors import GauntletError
from gauntlet.model import Access, measure
from gauntlet.outcome import PoisoningOutcome
from gauntlet.params import param

if TYPE_CHECKING:
    from gauntlet.dataset import Dataset
    from gauntlet.model import Model


class PoisonedSetError(GauntletError):
    """``poison`` returned something that is not a usable training set."""


@dataclasses.dataclass(frozen=True)
class PoisonedSet:
    """A training set as the attacker left it.

    :param x: training inputs (clean, modified or with rows added), ``(N, *input_shape)``.
    :param y: training labels, ``(N,)``, in ``[0, n_classes)``.
    :param n_poisoned: rows the attacker changed or added.
    :param x_triggered: for backdoors, every test input with the trigger applied (one per
        test row, same order); the base measures the poisoned model on them.
    :param target: for targeted backdoors, the class the trigger should force.
    """

    x: np.ndarray
    y: np.ndarray
    n_poisoned: int
    x_triggered: np.ndarray | None = None
    target: int | None = None


#: Builds the defended model on a training set: ``refit(x, y, seed)`` (see
#: :attr:`gauntlet.Defense.fits_training_data`).
Refit = Callable[[np.ndarray, np.ndarray, int], "Model"]


def evaluate_poisoning(model: Model, dataset: Dataset, poisoned: PoisonedSet,
                       seed: int, refit: Refit | None = None) -> PoisoningOutcome:
    """Re-train ``model``'s architecture on the poisoned and on the clean training set
    (same recipe, same seed, every defense kept on top) and measure both on the clean
    test rows (and the poisoned one on the triggered rows, for a backdoor).

    The clean re-train is usually free: the recipe caches per training set and seed, and
    the model under audit was trained on exactly that set. The core measures (uncounted
    queries), so an attack that needs only labels still gets probabilities to score.

    ``refit`` (from the core, for a defense that fits on the training split) builds the
    poisoned deployment instead: the base re-trained on the poisoned set and the defense
    fitted on it too (MagNet's autoencoder, a distilled twin, a poison filter).
    """
    # Order kept from the first version (poisoned, reference; triggered, poisoned,
    # reference): a randomised defense draws from torch's generator in that order.
    poisoned_model = (model.retrain(poisoned.x, poisoned.y, seed) if refit is None
                      else refit(poisoned.x, poisoned.y, seed))
    reference = model.retrain(dataset.x_train, dataset.y_train, seed)
    triggered = (None if poisoned.x_triggered is None
                 else measure(poisoned_model, poisoned.x_triggered))
    return PoisoningOutcome(
        y_true=dataset.y_test,
        proba=measure(poisoned_model, dataset.x_test),
        proba_reference=measure(reference, dataset.x_test),
        n_poisoned=int(poisoned.n_poisoned),
        n_train=len(poisoned.x),
        proba_triggered=triggered,
        target=poisoned.target,
        rows=np.arange(len(dataset.y_test), dtype=np.int64),
    )


class PoisoningAttack(Attack):
    """Base of poisoning attacks: subclasses implement :meth:`poison` only.

    Set ``name``, the docstring and the parameters; ``train_seed`` is declared here. The
    attack needs a model with a training recipe (else the cell is not applicable) and,
    by default, no more than label access: it never queries the model.
    """

    family = Family.POISONING
    needs = Access.LABELS
    needs_recipe = True
    outcome = PoisoningOutcome

    train_seed: int = param(0, "seed of both trainings, the poisoned and the reference", ge=0)

    def poison(self, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        """Return the poisoned training set.

        :param dataset: the clean data (read it, do not change it): poison a copy of
            ``x_train`` / ``y_train``; a backdoor also triggers a copy of ``x_test``.
        :param rng: the cell's generator; draw all randomness from it.
        """
        raise NotImplementedError

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator, *,
            refit: Refit | None = None) -> PoisoningOutcome:
        """Poison, re-train and measure. ``refit`` is the core's (see
        :func:`evaluate_poisoning`); a plugin never passes it."""
        self.check(model)
        poisoned = self._checked(self.poison(dataset, rng), dataset)
        return evaluate_poisoning(model, dataset, poisoned, self.train_seed, refit)

    def _checked(self, poisoned: object, dataset: Dataset) -> PoisonedSet:
        """``poisoned`` if it is a usable PoisonedSet, else PoisonedSetError naming the
        attack and the fault (before any training is paid for)."""
        owner = self.owner()
        if not isinstance(poisoned, PoisonedSet):
            raise PoisonedSetError(f"{owner}: poison() returned {type(poisoned).__name__}, "
                                   "not a gauntlet.PoisonedSet")
        x, y = np.asarray(poisoned.x), np.asarray(poisoned.y)
        if x.shape[1:] != dataset.x_train.shape[1:] or y.ndim != 1 or len(x) != len(y):
            raise PoisonedSetError(f"{owner}: poison() returned x shaped {x.shape} and y "
                                   f"shaped {y.shape}; expected (N, "
                                   f"{', '.join(map(str, dataset.input_shape))}) and (N,)")
        if y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= dataset.n_classes)):
            raise PoisonedSetError(f"{owner}: poison() returned labels that are not integers "
                                   f"in [0, {dataset.n_classes})")
        if not np.isfinite(x).all():
            raise PoisonedSetError(f"{owner}: poison() returned non-finite inputs (NaN or inf)")
        if not 0 <= poisoned.n_poisoned <= len(x):
            raise PoisonedSetError(f"{owner}: poison() reports {poisoned.n_poisoned} poisoned "
                                   f"rows out of {len(x)}")
        triggered = poisoned.x_triggered
        if triggered is not None and np.shape(triggered) != dataset.x_test.shape:
            raise PoisonedSetError(f"{owner}: poison() returned x_triggered shaped "
                                   f"{np.shape(triggered)}; a backdoor triggers every test "
                                   f"row, shaped {dataset.x_test.shape}")
        if poisoned.target is not None and not 0 <= poisoned.target < dataset.n_classes:
            raise PoisonedSetError(f"{owner}: poison() returned target {poisoned.target}, "
                                   f"not a class in [0, {dataset.n_classes})")
        return poisoned
