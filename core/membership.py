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
from typing import TYPE_CHECKING

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.contract import returned_array
from gauntlet.errors import GauntletError, NotApplicable
from gauntlet.model import Access
from gauntlet.outcome import MembershipOutcome
from gauntlet.params import param

if TYPE_CHECKING:
    from gauntlet.dataset import Dataset
    from gauntlet.model import Model


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

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> MembershipOutcome:
        self.check(model)
        split = draw_split(len(dataset.x_train), len(dataset.x_test), self.members, rng)
        member_rows = np.r_[split.members_calibration, split.members_evaluation]
        nonmember_rows = np.r_[split.nonmembers_calibration, split.nonmembers_evaluation]
        members = self._checked(self.scores(model, dataset.x_train[member_rows],
                                            dataset.y_train[member_rows], rng), member_rows)
        nonmembers = self._checked(self.scores(model, dataset.x_test[nonmember_rows],
                                               dataset.y_test[nonmember_rows], rng),
                                   nonmember_rows)
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
