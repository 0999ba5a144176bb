"""The threshold membership-inference attack on the real digits data and CNN."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from gauntlet import (
    Access,
    ConfigError,
    Dataset,
    Family,
    MembershipOutcome,
    Model,
    NotApplicable,
)
from gauntlet.plugins import membership
from gauntlet.plugins.membership import ThresholdMembership, best_threshold, draw_split
from gauntlet.plugins.torch_models import load_model
from gauntlet.registry import make_registry


@pytest.fixture(scope="module")
def overfit(digits: Dataset) -> tuple[Model, Dataset]:
    """The built-in MLP fitted for 500 epochs on only 100 training rows: it memorises."""
    small = dataclasses.replace(digits, x_train=digits.x_train[:100],
                                y_train=digits.y_train[:100])
    return load_model("builtin:mlp", {"dataset": small, "epochs": 500, "seed": 0}), small


def advantage(outcome: MembershipOutcome, threshold: float) -> float:
    """TPR - FPR of "member iff score >= threshold", computed directly."""
    return float(np.mean(outcome.scores_members >= threshold)
                 - np.mean(outcome.scores_nonmembers >= threshold))


def test_registers_with_its_metadata() -> None:
    registry = make_registry(entrypoints=False, plugins={"membership": membership})
    assert registry.broken == []
    cls = registry.attacks["mia-threshold"]
    assert cls is ThresholdMembership
    assert cls.family is Family.INFERENCE
    assert cls.needs is Access.SCORES
    assert cls.outcome is MembershipOutcome
    assert cls.params == {"samples": 0}


def test_split_halves_are_equal_in_size_and_disjoint() -> None:
    split = draw_split(1347, 450, 0, np.random.default_rng(0))
    # 0 means as many as the smaller split allows: all 450 test rows, 450 training rows.
    assert len(split.members_calibration) == len(split.nonmembers_calibration) == 225
    assert len(split.members_evaluation) == len(split.nonmembers_evaluation) == 225
    members = np.r_[split.members_calibration, split.members_evaluation]
    nonmembers = np.r_[split.nonmembers_calibration, split.nonmembers_evaluation]
    assert len(np.unique(members)) == 450 and members.min() >= 0 and members.max() < 1347
    assert np.array_equal(np.sort(nonmembers), np.arange(450))
    assert not set(split.members_calibration) & set(split.members_evaluation)
    assert not set(split.nonmembers_calibration) & set(split.nonmembers_evaluation)


@pytest.mark.parametrize(("samples", "calibration", "evaluation"),
                         [(101, 50, 51), (2, 1, 1), (10_000, 225, 225)])
def test_samples_sets_the_sizes_capped_by_the_data(samples: int, calibration: int,
                                                   evaluation: int) -> None:
    split = draw_split(1347, 450, samples, np.random.default_rng(1))
    assert len(split.members_calibration) == len(split.nonmembers_calibration) == calibration
    assert len(split.members_evaluation) == len(split.nonmembers_evaluation) == evaluation


def test_outcome_holds_the_evaluation_half_scores(digits_model: Model, digits: Dataset) -> None:
    outcome = ThresholdMembership(samples=300).run(digits_model, digits, np.random.default_rng(5))
    split = draw_split(len(digits.x_train), len(digits.x_test), 300, np.random.default_rng(5))
    expected_members = digits_model.predict(digits.x_train[split.members_evaluation]).max(1)
    expected_nonmembers = digits_model.predict(digits.x_test[split.nonmembers_evaluation]).max(1)
    assert len(outcome.scores_members) == len(outcome.scores_nonmembers) == 150
    np.testing.assert_allclose(outcome.scores_members, expected_members, rtol=1e-6)
    np.testing.assert_allclose(outcome.scores_nonmembers, expected_nonmembers, rtol=1e-6)
    assert outcome.n == 300


def test_threshold_maximises_advantage_on_the_calibration_half(digits_model: Model,
                                                               digits: Dataset) -> None:
    outcome = ThresholdMembership().run(digits_model, digits, np.random.default_rng(2))
    split = draw_split(len(digits.x_train), len(digits.x_test), 0, np.random.default_rng(2))
    members = digits_model.predict(digits.x_train[split.members_calibration]).max(1)
    nonmembers = digits_model.predict(digits.x_test[split.nonmembers_calibration]).max(1)

    # Brute force over every threshold at which the rule can change.
    candidates = np.unique(np.r_[members, nonmembers]).astype(np.float64)
    gains = np.array([np.mean(members >= t) - np.mean(nonmembers >= t) for t in candidates])
    best = gains.max()
    assert np.isclose(np.mean(members >= outcome.threshold)
                      - np.mean(nonmembers >= outcome.threshold), best)
    # Ties go to the highest threshold (the fewest rows flagged).
    assert outcome.threshold == pytest.approx(candidates[np.flatnonzero(gains == best).max()])
    # sklearn's ROC agrees on the best achievable TPR - FPR.
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    fpr, tpr, _ = roc_curve(y, np.r_[members, nonmembers])
    assert best == pytest.approx((tpr - fpr).max())


def test_best_threshold_on_known_scores() -> None:
    # t=0.7 and t=0.8 both give TPR - FPR = 2/3; the higher one is kept.
    assert best_threshold(np.array([0.9, 0.8, 0.7]), np.array([0.6, 0.75, 0.5])) == 0.8
    assert best_threshold(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 3.0
    # Nothing separates identical scores: the advantage is 0 whatever the threshold.
    assert best_threshold(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5


def test_overfit_model_leaks_membership(overfit: tuple[Model, Dataset], rng) -> None:
    model, small = overfit
    outcome = ThresholdMembership().run(model, small, rng)
    assert len(outcome.scores_members) == len(outcome.scores_nonmembers) == 50
    # The calibrated rule carries over to rows it never saw.
    assert advantage(outcome, outcome.threshold) > 0.15
    y, scores = outcome.labels_and_scores()
    assert roc_auc_score(y, scores) > 0.55
    # Members are answered at least as confidently as non-members, on average.
    assert outcome.scores_members.mean() > outcome.scores_nonmembers.mean()


def test_same_seed_same_numbers(digits_model: Model, digits: Dataset) -> None:
    first = ThresholdMembership(samples=200).run(digits_model, digits, np.random.default_rng(9))
    again = ThresholdMembership(samples=200).run(digits_model, digits, np.random.default_rng(9))
    other = ThresholdMembership(samples=200).run(digits_model, digits, np.random.default_rng(10))
    assert np.array_equal(first.scores_members, again.scores_members)
    assert np.array_equal(first.scores_nonmembers, again.scores_nonmembers)
    assert first.threshold == again.threshold
    assert not np.array_equal(first.scores_nonmembers, other.scores_nonmembers)


def test_labels_only_model_is_not_applicable(digits_model: Model, digits: Dataset) -> None:
    labels_only = Model(digits_model.module, input_shape=digits_model.input_shape,
                        n_classes=digits_model.n_classes, access=Access.LABELS)
    attack = ThresholdMembership()
    with pytest.raises(NotApplicable, match="scores"):
        attack.check(labels_only)
    with pytest.raises(NotApplicable):
        attack.run(labels_only, digits, np.random.default_rng(0))


def test_rejects_bad_samples_and_too_little_data(digits_model: Model, digits: Dataset) -> None:
    with pytest.raises(ConfigError, match="samples"):
        ThresholdMembership(samples=-1)
    tiny = dataclasses.replace(digits, x_test=digits.x_test[:1], y_test=digits.y_test[:1])
    with pytest.raises(NotApplicable, match="at least 2"):
        ThresholdMembership().run(digits_model, tiny, np.random.default_rng(0))


def test_default_cnn_uses_every_test_row(digits_model: Model, digits: Dataset, rng) -> None:
    outcome = ThresholdMembership().run(digits_model, digits, rng)
    assert len(outcome.scores_members) == len(outcome.scores_nonmembers) == 225
    assert 0.0 < outcome.threshold <= 1.0
    assert np.all((outcome.scores_members > 0) & (outcome.scores_members <= 1))
