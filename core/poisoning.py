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
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.defense import Defense, Stage
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
    :param poisoned_rows: which rows of ``x`` the attacker changed or added (indices,
        ``n_poisoned`` of them): a poison-finding defense is scored against them
        (``detection_precision``, ``detection_recall``). Give them whenever known.
    :param bases: for attacks that change inputs, the clean input each poisoned row
        started from (same order as ``poisoned_rows``): the base measures how far the
        poisons moved (``poison_linf``, ``poison_l2``).
    :param aimed: for attacks on chosen test rows, per test row the class the attacker
        wants it read as, -1 for rows not aimed at: a clean-label attack's target
        instances, a subpopulation attack's subpopulation (``target_success``,
        ``target_accuracy`` against ``collateral_accuracy`` on the others).
    :param notes: small JSON-able facts for the report (e.g. the subpopulation's
        description and size); plugin text, shown escaped.
    """

    x: np.ndarray
    y: np.ndarray
    n_poisoned: int
    x_triggered: np.ndarray | None = None
    target: int | None = None
    poisoned_rows: np.ndarray | None = None
    bases: np.ndarray | None = None
    aimed: np.ndarray | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Refitted:
    """A deployment rebuilt on a poisoned training set by :data:`Refit`: the model, and
    for a poison filter the training rows it flagged (indices into that set)."""

    model: Model
    flagged: np.ndarray | None = None


#: Builds the defended model on a training set: ``refit(x, y, seed)`` (see
#: :attr:`gauntlet.Defense.fits_training_data`).
Refit = Callable[[np.ndarray, np.ndarray, int], Refitted]


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
    built = (Refitted(model.retrain(poisoned.x, poisoned.y, seed)) if refit is None
             else refit(poisoned.x, poisoned.y, seed))
    poisoned_model = built.model
    reference = model.retrain(dataset.x_train, dataset.y_train, seed)
    triggered = (None if poisoned.x_triggered is None
                 else measure(poisoned_model, poisoned.x_triggered))
    rejected = rejected_triggered = None
    if poisoned_model.detects:  # a run-time detector (STRIP): what it turns away
        rejected = poisoned_model.rejects(dataset.x_test)
        if poisoned.x_triggered is not None:
            rejected_triggered = poisoned_model.rejects(poisoned.x_triggered)
    linf = l2 = None
    if poisoned.bases is not None and poisoned.poisoned_rows is not None:
        moved = (np.asarray(poisoned.x)[poisoned.poisoned_rows].astype(np.float64)
                 - np.asarray(poisoned.bases, dtype=np.float64)).reshape(len(poisoned.bases), -1)
        linf, l2 = np.abs(moved).max(axis=1, initial=0.0), np.linalg.norm(moved, axis=1)
    return PoisoningOutcome(
        y_true=dataset.y_test,
        proba=measure(poisoned_model, dataset.x_test),
        proba_reference=measure(reference, dataset.x_test),
        n_poisoned=int(poisoned.n_poisoned),
        n_train=len(poisoned.x),
        proba_triggered=triggered,
        target=poisoned.target,
        rows=np.arange(len(dataset.y_test), dtype=np.int64),
        aimed=poisoned.aimed,
        poisoned_rows=poisoned.poisoned_rows,
        flagged=built.flagged,
        rejected=rejected,
        rejected_triggered=rejected_triggered,
        poison_linf=linf,
        poison_l2=l2,
        notes=dict(poisoned.notes),
        labels_only=poisoned_model.access < Access.SCORES,
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

    def craft(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        """The poisoned training set, for an attacker who reads the model under audit: a
        white-box poisoner (feature collision) overrides this instead of :meth:`poison`
        and may ask ``model`` for what ``needs`` allows. The default is :meth:`poison`."""
        return self.poison(dataset, rng)

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator, *,
            refit: Refit | None = None) -> PoisoningOutcome:
        """Poison, re-train and measure. ``refit`` is the core's (see
        :func:`evaluate_poisoning`); a plugin never passes it."""
        self.check(model)
        poisoned = self._checked(self.craft(model, dataset, rng), dataset)
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
        rows = poisoned.poisoned_rows
        if rows is not None:
            rows = np.asarray(rows)
            if (rows.ndim != 1 or rows.dtype.kind not in "iu" or len(rows) != poisoned.n_poisoned
                    or (len(rows) and (rows.min() < 0 or rows.max() >= len(x)))
                    or len(np.unique(rows)) != len(rows)):
                raise PoisonedSetError(f"{owner}: poison() returned poisoned_rows that are not "
                                       f"{poisoned.n_poisoned} distinct row indices of its "
                                       f"{len(x)} training rows")
        if poisoned.bases is not None and (
                rows is None or np.shape(poisoned.bases) != (len(rows), *x.shape[1:])):
            raise PoisonedSetError(f"{owner}: poison() returned bases shaped "
                                   f"{np.shape(poisoned.bases)}; give one clean input per "
                                   "poisoned row, with poisoned_rows")
        aimed = poisoned.aimed
        if aimed is not None:
            aimed = np.asarray(aimed)
            if (aimed.shape != dataset.y_test.shape or aimed.dtype.kind not in "iu"
                    or (len(aimed) and (aimed.min() < -1 or aimed.max() >= dataset.n_classes))):
                raise PoisonedSetError(f"{owner}: poison() returned aimed shaped "
                                       f"{aimed.shape}; expected one class (or -1) per test "
                                       f"row, shaped {dataset.y_test.shape}")
        return dataclasses.replace(poisoned, poisoned_rows=rows, aimed=aimed)


class PoisonFilter(Defense):
    """Base of poison-finding defenses: subclasses implement :meth:`find_poison` only.

    The defender inspects the training set before training on it, removes the rows that
    look poisoned and trains on the rest. Built on clean data the filter only costs clean
    rows; in a poisoning cell the core builds it on the attacker's set (the model first
    trained on all of it, as the filter needs), and the cell scores the removed rows
    against the ones the attacker poisoned (``detection_precision``,
    ``detection_recall``) beside the re-trained model's clean accuracy and attack
    success. Needs a model with a training recipe.
    """

    stage = Stage.TRAINING
    fits_training_data = True
    adaptive = True
    evaluation = ("attacks run against the model re-trained on the rows the filter kept; "
                  "it changes the training data, not the deployed model, so gradients pass")

    train_seed: int = param(0, "seed of the re-training on the rows kept", ge=0)

    def find_poison(self, model: Model, dataset: Dataset, rng: np.random.Generator
                    ) -> np.ndarray:
        """Return the indices of the training rows to remove.

        :param model: the model trained on ``dataset``'s training split as it is (poisoned
            rows included): read its activations, never re-train it.
        :param dataset: the training split to inspect (``x_train``, ``y_train``).
        :param rng: the defense's generator; draw all randomness from it.
        """
        raise NotImplementedError

    def filtered(self, model: Model, dataset: Dataset, rng: np.random.Generator,
                 seed: int) -> Refitted:
        """``model``'s architecture re-trained on the rows :meth:`find_poison` keeps, with
        the rows it removed."""
        model.require_recipe()
        n = len(dataset.x_train)
        flagged = self._checked(self.find_poison(model, dataset, rng), n)
        keep = np.ones(n, dtype=bool)
        keep[flagged] = False
        if not keep.any():
            raise PoisonedSetError(f"{self.owner()}: find_poison() removed every one of the "
                                   f"{n} training rows; nothing is left to train on")
        return Refitted(model.retrain(dataset.x_train[keep], dataset.y_train[keep], seed),
                        flagged)

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        return self.filtered(model, dataset, rng, self.train_seed).model

    def _checked(self, flagged: object, n: int) -> np.ndarray:
        rows = np.asarray(flagged)
        if rows.dtype == bool and rows.shape == (n,):  # a mask is fine too
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu") or (
                rows.size and (rows.min() < 0 or rows.max() >= n)):
            raise PoisonedSetError(f"{self.owner()}: find_poison() returned "
                                   f"{type(flagged).__name__} shaped {rows.shape}; expected "
                                   f"indices of the {n} training rows (or a boolean mask)")
        return np.unique(rows.astype(np.int64))
