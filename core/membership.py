"""The membership-inference family's base: the plugin writes ``scores``, the base does the rest.

Does the model reveal which rows it was trained on? :class:`MembershipAttack` draws
equally many members (training rows) and non-members (test rows), asks the plugin for a
membership score of each (:meth:`MembershipAttack.scores`, higher means "member"), picks
a decision threshold on one half of each and reports the scores of the other half, so
the metrics measure how the rule generalises rather than how well it fits the rows it
was tuned on.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.contract import returned_array
from gauntlet.errors import ConfigError, GauntletError, NotApplicable
from gauntlet.model import Access
from gauntlet.outcome import MembershipOutcome
from gauntlet.params import param

if TYPE_CHECKING:
    from gauntlet.dataset import Dataset
    from gauntlet.model import Model

log = logging.getLogger(__name__)


class MembershipScoresError(GauntletError):
    """``scores`` returned something that is not one finite score per row."""


@dataclasses.dataclass(frozen=True)
class MembershipSplit:
    """Row indices of a membership experiment: members index the training split,
    non-members the test split; each is cut into a calibration and an evaluation half."""

    members_calibration: np.ndarray
    members_evaluation: np.ndarray
    nonmembers_calibration: np.ndarray
    nonmembers_evaluation: np.ndarray


def draw_split(n_train: int, n_test: int, members: int,
               rng: np.random.Generator) -> MembershipSplit:
    """Draw ``members`` members and as many non-members (0: as many as the smaller split
    has), without replacement, and halve each with the same sizes on both sides.

    Equal sizes keep the prior at 1/2, so balanced accuracy and advantage need no
    re-weighting and a coin flip scores exactly 0.5.
    """
    available = min(n_train, n_test)
    n = available if members == 0 else min(members, available)
    if n < 2:
        raise NotApplicable(
            f"needs at least 2 training and 2 test rows; the data has {n_train} and {n_test}"
        )
    drawn_members = rng.choice(n_train, n, replace=False)
    drawn_nonmembers = rng.choice(n_test, n, replace=False)
    half = n // 2
    return MembershipSplit(drawn_members[:half], drawn_members[half:],
                           drawn_nonmembers[:half], drawn_nonmembers[half:])


def best_threshold(scores_members: np.ndarray, scores_nonmembers: np.ndarray) -> float:
    """The threshold ``t`` maximising TPR - FPR of the rule "member iff score >= t".

    Candidates are the observed scores (the rule only changes there). Among ties the
    highest threshold wins: it flags the fewest rows, the conservative choice, and is the
    first one sklearn's ``roc_curve`` lists.
    """
    members = np.sort(np.asarray(scores_members, dtype=np.float64))
    nonmembers = np.sort(np.asarray(scores_nonmembers, dtype=np.float64))
    candidates = np.unique(np.r_[members, nonmembers])
    # Share of scores >= t, for every candidate t at once.
    tpr = 1.0 - np.searchsorted(members, candidates, side="left") / len(members)
    fpr = 1.0 - np.searchsorted(nonmembers, candidates, side="left") / len(nonmembers)
    advantage = tpr - fpr
    best = len(candidates) - 1 - int(np.argmax(advantage[::-1]))
    return float(candidates[best])


class MembershipAttack(Attack):
    """Base of membership-inference attacks: subclasses implement :meth:`scores` only.

    Set ``name``, the docstring and the parameters; ``members`` is declared here. The
    default ``needs`` is scores access (most attacks read probabilities); an attack that
    reads labels only may lower it, one that reads gradients must raise it.
    """

    family = Family.INFERENCE
    needs = Access.SCORES
    outcome = MembershipOutcome

    members: int = param(0, "members drawn, and as many non-members (0: as many as the "
                            "data allows)", ge=0)

    def scores(self, model: Model, x: np.ndarray, y: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """Return one membership score per row of ``x``, higher meaning "member".

        Called twice per cell: on the drawn training rows, then on the drawn test rows.

        :param model: the deployed model; ask it for what ``needs`` allows.
        :param x: the rows to score.
        :param y: their true labels (loss-based attacks use them).
        :param rng: the cell's generator; draw all randomness from it.
        """
        raise NotImplementedError

    def check_data(self, dataset: Dataset) -> None:
        """``members`` must be 0 (all) or at least 2, and is held to what the data has."""
        if self.members == 1:
            raise ConfigError(f"{self.owner()}: members = 1 cannot be halved into a "
                              "calibration and an evaluation member; use 0 (as many as "
                              "the data allows) or at least 2")
        available = min(len(dataset.x_train), len(dataset.x_test))
        if self.members > available:
            log.warning("%s: members = %d, but the data has %d training and %d test rows; "
                        "%d members and as many non-members are drawn", self.owner(),
                        self.members, len(dataset.x_train), len(dataset.x_test), available)

    def score_rows(self, model: Model, dataset: Dataset, member_rows: np.ndarray,
                   nonmember_rows: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the drawn members (rows of the training split) and non-members (rows
        of the test split). By default :meth:`scores` on each; an attack that needs the
        whole experiment at once (shadow models that know the population) overrides it."""
        return (self.scores(model, dataset.x_train[member_rows], dataset.y_train[member_rows],
                            rng),
                self.scores(model, dataset.x_test[nonmember_rows], dataset.y_test[nonmember_rows],
                            rng))

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> MembershipOutcome:
        self.check(model)
        split = draw_split(len(dataset.x_train), len(dataset.x_test), self.members, rng)
        member_rows = np.r_[split.members_calibration, split.members_evaluation]
        nonmember_rows = np.r_[split.nonmembers_calibration, split.nonmembers_evaluation]
        scored_members, scored_nonmembers = self.score_rows(model, dataset, member_rows,
                                                            nonmember_rows, rng)
        members = self._checked(scored_members, member_rows)
        nonmembers = self._checked(scored_nonmembers, nonmember_rows)
        half = len(split.members_calibration)
        return MembershipOutcome(
            scores_members=members[half:], scores_nonmembers=nonmembers[half:],
            threshold=best_threshold(members[:half], nonmembers[:half]),
            rows_members=split.members_evaluation, rows_nonmembers=split.nonmembers_evaluation)

    def _checked(self, scores: object, rows: np.ndarray) -> np.ndarray:
        """``scores`` as float64, or MembershipScoresError naming the attack and the fault."""
        out = returned_array(MembershipScoresError, self.owner(), "scores()", scores,
                             np.float64, "scores")
        if out.shape != (len(rows),):
            raise MembershipScoresError(f"{self.owner()}: scores() returned shape {out.shape} "
                                        f"for {len(rows)} rows; expected one score per row")
        return out


# -- shadow models ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shadows:
    """Shadow models of an audit's population: the training split followed by the test
    split (``len(x_train) + len(x_test)`` rows, in that order).

    :param models: each shadow, deployed as the audited model is (the defense's input and
        output layers around the shadow's own weights, in the clear: see
        :meth:`gauntlet.Model.in_the_clear`), so the attacker sees its shadows through the
        same output processing it sees the target through.
    :param inside: ``(k, N)`` booleans: row ``j`` of the population was in shadow
        ``i``'s training set.
    :param n_test: rows of the test split (the population's last rows).
    """

    models: tuple[Model, ...]
    inside: np.ndarray
    n_test: int

    def population_rows(self, train_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
        """Indices into the population of rows of the training split and the test split."""
        n_train = self.inside.shape[1] - self.n_test
        return np.r_[np.asarray(train_rows, np.int64), n_train + np.asarray(test_rows, np.int64)]


def shadow_subsets(n_population: int, k: int, rows: int, seed: int) -> np.ndarray:
    """Which population rows each of ``k`` shadows trains on: ``(k, N)`` booleans.

    Shadows come in complementary pairs when ``rows`` is half the population (each row is
    then inside exactly half the shadows, as Carlini et al. train theirs); otherwise each
    shadow draws ``rows`` rows at random. Depends only on the arguments, never on a
    cell's generator, so every defense's cell asks for the same training sets and the
    recipe's cache trains each shadow once per audit.
    """
    inside = np.zeros((k, n_population), dtype=bool)
    for i in range(k):
        if 2 * rows == n_population and i % 2 == 1:
            inside[i] = ~inside[i - 1]
            continue
        pick = np.random.default_rng([seed, i]).choice(n_population, rows, replace=False)
        inside[i, pick] = True
    return inside


def train_shadows(model: Model, dataset: Dataset, k: int, rows: int, seed: int,
                  mapper: Callable[..., Iterable[Any]] = map) -> Shadows:
    """``k`` shadow models of ``model``'s architecture, each trained by its recipe on
    ``rows`` rows of the population (0: as many as the training split, the target's own
    training-set size, at most half the population).

    Trained through :meth:`gauntlet.Recipe.train`, so a shadow is trained once per audit
    whatever the defense (the cache is keyed by training set, seed and fit) and a
    training-time defense's recipe trains the shadows its way. The trainings are
    independent jobs handed to ``mapper`` (the builtin ``map`` here), so an executor with
    workers can run them side by side. NotApplicable without a recipe.
    """
    recipe = model.require_recipe()
    x = np.concatenate([dataset.x_train, dataset.x_test])
    y = np.concatenate([dataset.y_train, dataset.y_test])
    n = len(x)
    size = min(rows or len(dataset.x_train), n // 2)
    if size < 2 or k < 1:
        raise NotApplicable(f"needs at least 2 rows per shadow model; the population has {n}")
    inside = shadow_subsets(n, k, size, seed)

    def fit(i: int) -> Any:
        return recipe.train(x[inside[i]], y[inside[i]], seed + i)

    modules = list(mapper(fit, range(k)))
    return Shadows(tuple(model.in_the_clear(m) for m in modules), inside,
                   len(dataset.x_test))
