"""Membership inference: does the model reveal which rows it was trained on?

The attack sees only the model's scores. It draws equally many members (training rows)
and non-members (test rows), calibrates a decision rule on one half of each and reports
scores on the other half, so the metrics measure how the rule generalises rather than how
well it fits the rows it was tuned on.
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
    MembershipOutcome,
    Model,
    NotApplicable,
    hookimpl,
)


@dataclasses.dataclass(frozen=True)
class MembershipSplit:
    """Row indices of a membership experiment: members index the training split,
    non-members the test split; each is cut into a calibration and an evaluation half."""

    members_calibration: np.ndarray
    members_evaluation: np.ndarray
    nonmembers_calibration: np.ndarray
    nonmembers_evaluation: np.ndarray


def draw_split(n_train: int, n_test: int, samples: int,
               rng: np.random.Generator) -> MembershipSplit:
    """Draw ``samples`` members and as many non-members (0: as many as the smaller split
    has), without replacement, and halve each with the same sizes on both sides.

    Equal sizes keep the prior at 1/2, so balanced accuracy and advantage need no
    re-weighting and a coin flip scores exactly 0.5.
    """
    available = min(n_train, n_test)
    n = available if samples == 0 else min(samples, available)
    if n < 2:
        raise NotApplicable(
            f"needs at least 2 training and 2 test rows; the data has {n_train} and {n_test}"
        )
    members = rng.choice(n_train, n, replace=False)
    nonmembers = rng.choice(n_test, n, replace=False)
    half = n // 2
    return MembershipSplit(members[:half], members[half:], nonmembers[:half], nonmembers[half:])


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


def top_one_confidence(model: Model, x: np.ndarray) -> np.ndarray:
    """The model's probability for its predicted class, per row (float64)."""
    return model.predict(x).max(axis=1).astype(np.float64)


class ThresholdMembership(Attack):
    """Global threshold on the top-one confidence: members are the confidently answered.

    Yeom et al., 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to
    Overfitting"; Shokri et al., 2017, "Membership Inference Attacks against Machine
    Learning Models".
    """

    name = "mia-threshold"
    family = Family.INFERENCE
    needs = Access.SCORES
    outcome = MembershipOutcome
    params = {"samples": 0}

    def __init__(self, **values: object) -> None:
        super().__init__(**values)
        if self.samples < 0:
            raise ConfigError(f"{self.owner()}: samples must be >= 0 (0: as many as the "
                              f"data allows), got {self.samples}")

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> MembershipOutcome:
        self.check(model)
        split = draw_split(len(dataset.x_train), len(dataset.x_test), self.samples, rng)
        members = top_one_confidence(
            model, dataset.x_train[np.r_[split.members_calibration, split.members_evaluation]])
        nonmembers = top_one_confidence(
            model, dataset.x_test[np.r_[split.nonmembers_calibration,
                                        split.nonmembers_evaluation]])
        half = len(split.members_calibration)
        threshold = best_threshold(members[:half], nonmembers[:half])
        return MembershipOutcome(scores_members=members[half:],
                                 scores_nonmembers=nonmembers[half:],
                                 threshold=threshold)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(ThresholdMembership)
