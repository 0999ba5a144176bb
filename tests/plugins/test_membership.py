"""The membership base and the threshold attack on the real digits data and CNN."""
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
    MembershipAttack,
    MembershipOutcome,
    Model,
    NotApplicable,
)
from gauntlet.membership import MembershipScoresError, best_threshold, draw_split
from gauntlet.plugins import membership
from gauntlet.plugins.membership import ThresholdMembership
from gauntlet.plugins.metrics import MembershipAccuracy, MembershipAUC
from gauntlet.plugins.torch_models import load_model
from gauntlet.registry import make_registry


@pytest.fixture(scope="module")
def overfit(digits: Dataset) -> tuple[Model, Dataset]:
    """The built-in MLP fitted for 500 epochs on only 100 training rows: it memorises."""
    small = dataclasses.replace(digits, x_train=digits.x_train[:100],
                                y_train=digits.y_train[:100])
    return load_model("builtin:mlp", {"dataset": small, "epochs": 500, "seed": 0}), small


class RecordingLoss(MembershipAttack):
    """Test attack: the negative cross-entropy of the true label, recording every call.

    Yeom et al., 2018 (the loss attack); records its inputs so the test can check them.
    """

    name = "recording-loss"

    def __init__(self, **values: object) -> None:
        super().__init__(**values)
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def scores(self, model: Model, x: np.ndarray, y: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        self.calls.append((x.copy(), y.copy()))
        return np.log(model.predict(x)[np.arange(len(y)), y] + 1e-12)


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
    described = {name: p.describe() for name, p in cls.parameters().items()}
    assert list(described) == ["members"]
    assert described["members"]["default"] == 0 and described["members"]["bounds"] == ">= 0"


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


@pytest.mark.parametrize(("members", "calibration", "evaluation"),
                         [(101, 50, 51), (2, 1, 1), (10_000, 225, 225)])
def test_members_sets_the_sizes_capped_by_the_data(members: int, calibration: int,
                                                   evaluation: int) -> None:
    split = draw_split(1347, 450, members, np.random.default_rng(1))
    assert len(split.members_calibration) == len(split.nonmembers_calibration) == calibration
    assert len(split.members_evaluation) == len(split.nonmembers_evaluation) == evaluation


def test_base_scores_exactly_the_drawn_rows(digits_model: Model, digits: Dataset) -> None:
    attack = RecordingLoss(members=101)
    outcome = attack.run(digits_model, digits, np.random.default_rng(5))
    split = draw_split(len(digits.x_train), len(digits.x_test), 101, np.random.default_rng(5))

    # Members first (calibration half, then evaluation half), then non-members alike.
    (x_in, y_in), (x_out, y_out) = attack.calls
    in_rows = np.r_[split.members_calibration, split.members_evaluation]
    out_rows = np.r_[split.nonmembers_calibration, split.nonmembers_evaluation]
    assert np.array_equal(x_in, digits.x_train[in_rows])
    assert np.array_equal(y_in, digits.y_train[in_rows])
    assert np.array_equal(x_out, digits.x_test[out_rows])
    assert np.array_equal(y_out, digits.y_test[out_rows])

    # The outcome holds the evaluation halves, with their row indices ...
    assert len(outcome.scores_members) == len(outcome.scores_nonmembers) == 51
    assert np.array_equal(outcome.rows_members, split.members_evaluation)
    assert np.array_equal(outcome.rows_nonmembers, split.nonmembers_evaluation)
    expected = np.log(digits_model.predict(digits.x_train[split.members_evaluation])[
        np.arange(51), digits.y_train[split.members_evaluation]] + 1e-12)
    np.testing.assert_allclose(outcome.scores_members, expected, rtol=1e-6)
    # ... and the threshold was chosen on the calibration halves only.
    half = len(split.members_calibration)
    first = attack.scores(digits_model, x_in, y_in, np.random.default_rng(0))
    second = attack.scores(digits_model, x_out, y_out, np.random.default_rng(0))
    assert outcome.threshold == best_threshold(first[:half], second[:half])

    rows = outcome.per_row()
    assert np.array_equal(rows["row"], np.r_[split.members_evaluation,
                                             split.nonmembers_evaluation])
    assert np.array_equal(rows["member"], np.r_[np.ones(51, bool), np.zeros(51, bool)])
    assert np.array_equal(rows["score"], np.r_[outcome.scores_members,
                                               outcome.scores_nonmembers])
    decided = (rows["score"] >= outcome.threshold) == rows["member"]
    assert MembershipAccuracy().evaluate(outcome).value == pytest.approx(decided.mean())
    assert outcome.n == 102


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
    # (Ties go to the highest threshold: test_best_threshold_on_known_scores. Not checked
    # here: these scores and the attack's come from differently batched passes, whose last
    # bits may differ and break a tie the other way.)
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
    assert MembershipAUC().evaluate(outcome).value == pytest.approx(roc_auc_score(y, scores))
    # Members are answered at least as confidently as non-members, on average.
    assert outcome.scores_members.mean() > outcome.scores_nonmembers.mean()


def test_same_seed_same_numbers(digits_model: Model, digits: Dataset) -> None:
    first = ThresholdMembership(members=200).run(digits_model, digits, np.random.default_rng(9))
    again = ThresholdMembership(members=200).run(digits_model, digits, np.random.default_rng(9))
    other = ThresholdMembership(members=200).run(digits_model, digits, np.random.default_rng(10))
    assert np.array_equal(first.scores_members, again.scores_members)
    assert np.array_equal(first.scores_nonmembers, again.scores_nonmembers)
    assert first.threshold == again.threshold
    assert not np.array_equal(first.scores_nonmembers, other.scores_nonmembers)


def test_labels_only_model_is_not_applicable(digits_model: Model, digits: Dataset) -> None:
    labels_only = digits_model.deploy(access=Access.LABELS)
    attack = ThresholdMembership()
    with pytest.raises(NotApplicable, match="scores"):
        attack.check(labels_only)
    with pytest.raises(NotApplicable):
        attack.run(labels_only, digits, np.random.default_rng(0))


@pytest.mark.parametrize("returned", [np.zeros((3, 2)), np.array([np.nan] * 4), "high"])
def test_bad_scores_are_an_error_naming_the_attack(digits_model: Model, digits: Dataset,
                                                   returned: object) -> None:
    class Broken(MembershipAttack):
        """Test attack: returns the wrong thing.

        No paper: a bug on purpose.
        """

        name = "broken-scores"

        def scores(self, model, x, y, rng):  # type: ignore[no-untyped-def]
            return returned

    with pytest.raises(MembershipScoresError, match="attack 'broken-scores': scores()"):
        Broken(members=4).run(digits_model, digits, np.random.default_rng(0))


def test_rejects_bad_members_and_too_little_data(digits_model: Model, digits: Dataset) -> None:
    with pytest.raises(ConfigError, match="'members' must be >= 0"):
        ThresholdMembership(members=-1)
    tiny = dataclasses.replace(digits, x_test=digits.x_test[:1], y_test=digits.y_test[:1])
    with pytest.raises(NotApplicable, match="at least 2"):
        ThresholdMembership().run(digits_model, tiny, np.random.default_rng(0))


def test_default_cnn_uses_every_test_row(digits_model: Model, digits: Dataset, rng) -> None:
    outcome = ThresholdMembership().run(digits_model, digits, rng)
    assert len(outcome.scores_members) == len(outcome.scores_nonmembers) == 225
    assert 0.0 < outcome.threshold <= 1.0
    assert np.all((outcome.scores_members > 0) & (outcome.scores_members <= 1))


# -- the loss attack and the low false-positive regime ----------------------------------


def test_loss_attack_scores_the_true_label_s_log_probability(overfit, rng) -> None:
    from gauntlet.plugins.membership import LossMembership

    model, small = overfit
    x, y = small.x_test[:40], small.y_test[:40]
    scores = LossMembership().scores(model, x, y, rng)
    proba = model.predict(x)
    expected = np.log(np.maximum(proba[np.arange(40), y], 1e-12))  # minus the loss
    assert np.allclose(scores, expected)
    # It reads the label: scored with a wrong label, rows score far lower on average.
    wrong = LossMembership().scores(model, x, (y + 1) % 10, rng)
    assert wrong.mean() < scores.mean() - 1.0
    outcome = LossMembership().run(model, small, rng)
    auc = MembershipAUC().evaluate(outcome).value
    assert auc > 0.55 and advantage(outcome, outcome.threshold) > 0.15
    assert make_registry(entrypoints=False, plugins={"m": membership}).attacks["mia-loss"] \
        is LossMembership


@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.1])
def test_tpr_at_low_fpr_matches_sklearn_s_roc(fpr: float) -> None:
    from gauntlet.plugins.metrics import TprAtOnePercentFpr, tpr_at_fpr

    gen = np.random.default_rng(4)
    members = np.round(gen.normal(0.6, 1.0, 1500), 1)  # rounded: many ties
    nonmembers = np.round(gen.normal(0.0, 1.0, 2000), 1)
    caught, n = tpr_at_fpr(members, nonmembers, fpr)
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    fprs, tprs, _ = roc_curve(y, np.r_[members, nonmembers], drop_intermediate=False)
    assert n == 1500 and caught / n == pytest.approx(tprs[fprs <= fpr + 1e-12].max())
    outcome = MembershipOutcome(members, nonmembers, threshold=0.0)
    if fpr == 0.01:
        v = TprAtOnePercentFpr().evaluate(outcome)
        assert v.value == pytest.approx(caught / n) and v.low <= v.value <= v.high
    # Perfect separation: every member caught at 0.1% FPR; none when they are the same.
    assert tpr_at_fpr(np.array([5.0, 6.0]), np.zeros(10), fpr) == (2, 2)
    assert tpr_at_fpr(np.zeros(4), np.zeros(10), fpr) == (0, 4)
