"""Built-in metrics, cross-checked against scikit-learn, scipy and hand computation on
small hand-made outcomes and on the real digits CNN's predictions."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import entropy
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from gauntlet import (
    CleanOutcome,
    EvasionOutcome,
    MembershipOutcome,
    PoisoningOutcome,
    ProbeOutcome,
    wilson,
)
from gauntlet.plugins import extraction
from gauntlet.plugins import metrics as m
from gauntlet.provenance import catalogue
from gauntlet.registry import make_registry
from gauntlet.reports.tables import format_interval, format_value, metric_meta

#: Every built-in metric that is a proportion, printed as a percentage.
PROPORTIONS = {"clean_accuracy", "robust_accuracy", "attack_success_rate", "precision",
               "recall", "f1", "confidence", "poisoned_accuracy", "membership_accuracy",
               "top_class_share", "probe_confidence", "fidelity", "substitute_accuracy",
               "naive_robust_accuracy", "detection_rate", "false_rejection_rate",
               "backdoor_success", "triggered_accuracy", "target_success",
               "target_accuracy", "collateral_accuracy", "detection_precision",
               "detection_recall", "last_class_share", "last_class_share_shuffled",
               "ordered_accuracy", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "trigger_size"}


def onehot(labels, n_classes: int = 3, top: float = 0.9) -> np.ndarray:
    """Probabilities with ``top`` on the given class, the rest spread evenly."""
    labels = np.asarray(labels)
    p = np.full((len(labels), n_classes), (1 - top) / (n_classes - 1))
    p[np.arange(len(labels)), labels] = top
    return p


def value(metric: type, outcome) -> float:
    return metric().evaluate(outcome).value


def assert_interval_holds(v) -> None:
    assert v.low is not None and v.high is not None
    assert v.low <= v.value <= v.high


# -- registry --------------------------------------------------------------------------


def test_registered_with_metadata():
    registry = make_registry(entrypoints=False, plugins={"metrics": m})
    assert not registry.broken
    assert set(registry.metrics) == {cls.name for cls in m.METRICS}
    assert len(m.METRICS) == 36
    for cls in m.METRICS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", cls.name), cls.name
        assert cls.title and cls.title[0].isupper() and "_" not in cls.title
        assert cls.bounds is None or cls.bounds[0] < cls.bounds[1]
    directions = {cls.name: cls.higher_is_better for cls in m.METRICS}
    formats = {cls.name: (cls.format, cls.bounds)
               for cls in (*m.METRICS, extraction.Fidelity, extraction.SubstituteAccuracy)}
    assert {n for n, (f, b) in formats.items() if b == (0.0, 1.0) and f == "percent"} \
        == PROPORTIONS
    # Differences of two proportions: percentages that may be negative.
    assert formats["accuracy_drop"] == formats["membership_advantage"] == ("percent",
                                                                          (-1.0, 1.0))
    assert formats["target_drop"] == formats["collateral_drop"] == ("percent", (-1.0, 1.0))
    assert formats["poison_l2"] == formats["poison_linf"] == ("number", None)
    # Bits, and an AUC (read as 0.87 beside its ROC curve): plain numbers.
    assert formats["prediction_entropy"] == ("number", None)
    assert formats["membership_auc"] == ("number", (0.0, 1.0))
    assert directions["robust_accuracy"] and not directions["attack_success_rate"]
    assert not directions["membership_auc"] and not directions["accuracy_drop"]
    assert directions["detection_rate"] and not directions["false_rejection_rate"]
    assert not directions["backdoor_success"] and directions["triggered_accuracy"]


def test_prediction_metrics_apply_to_every_prediction_outcome():
    y = np.array([0, 1])
    outcomes = [CleanOutcome(y, onehot(y)), EvasionOutcome(y, onehot(y), onehot(y)),
                PoisoningOutcome(y, onehot(y), onehot(y))]
    for metric in (m.Precision(), m.Recall(), m.F1(), m.Confidence()):
        assert all(metric.applies(o) for o in outcomes)
        assert not metric.applies(ProbeOutcome(onehot(y)))
    assert not m.CleanAccuracy().applies(outcomes[1])
    assert m.RobustAccuracy().applies(outcomes[1]) and not m.RobustAccuracy().applies(outcomes[0])


# -- accuracy and evasion --------------------------------------------------------------


def test_accuracy_by_hand_with_wilson_interval():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    pred = np.array([0, 1, 2, 1, 1, 0, 0, 1])  # 6 of 8 right
    v = m.CleanAccuracy().evaluate(CleanOutcome(y, onehot(pred)))
    assert (v.value, v.n) == (0.75, 8)
    assert (v.low, v.high) == pytest.approx(wilson(6, 8))
    assert (v.low, v.high) == pytest.approx((0.4093, 0.9285), abs=1e-4)  # published tables
    assert_interval_holds(v)


def test_attack_success_rate_counts_only_initially_correct_rows():
    y = np.array([0, 0, 1, 1, 2, 2])
    clean = np.array([0, 0, 1, 1, 0, 1])  # rows 4, 5 wrong before the attack
    adv = np.array([1, 0, 2, 1, 2, 2])  # flips rows 0 and 2; "fixes" rows 4 and 5
    outcome = EvasionOutcome(y, onehot(adv), proba_clean=onehot(clean), rows=np.arange(6),
                             linf=np.full(6, 0.1, np.float32))
    asr = m.AttackSuccessRate().evaluate(outcome)
    robust = m.RobustAccuracy().evaluate(outcome)
    assert (asr.value, asr.n) == (0.5, 4)  # 2 of the 4 initially correct rows flipped
    assert (robust.value, robust.n) == (pytest.approx(4 / 6), 6)  # rows 1, 3, 4, 5
    assert 1 - robust.value == pytest.approx(1 / 3)  # not the success rate
    assert (asr.low, asr.high) == pytest.approx(wilson(2, 4))
    assert_interval_holds(asr)
    assert_interval_holds(robust)


def test_naive_robust_accuracy_reads_the_naive_probabilities_not_the_adaptive_ones():
    y = np.array([0, 1, 2, 0, 1])
    adaptive = np.array([1, 1, 0, 2, 0])  # 1 of 5 right
    naive = np.array([0, 1, 2, 2, 1])  # 4 of 5 right
    outcome = EvasionOutcome(y, onehot(adaptive), proba_clean=onehot(y),
                             proba_naive=onehot(naive))
    v = m.NaiveRobustAccuracy().evaluate(outcome)
    assert (v.value, v.n) == (0.8, 5)
    assert (v.low, v.high) == pytest.approx(wilson(4, 5))
    assert m.RobustAccuracy().evaluate(outcome).value == pytest.approx(0.2)
    # Without naive probabilities (an undefended cell) the metric does not apply.
    assert not m.NaiveRobustAccuracy().applies(EvasionOutcome(y, onehot(adaptive)))


def test_detection_and_false_rejection_rates_count_rejected_rows():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    rejected = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)  # 6 of 8 adversarial rows
    rejected_clean = np.array([0, 0, 1, 0, 0, 0, 0, 0], bool)  # 1 of 8 clean rows
    outcome = EvasionOutcome(y, onehot(y), proba_clean=onehot(y), rejected=rejected,
                             rejected_clean=rejected_clean)
    detected = m.DetectionRate().evaluate(outcome)
    false = m.FalseRejectionRate().evaluate(outcome)
    assert (detected.value, detected.n) == (0.75, 8)
    assert (false.value, false.n) == (0.125, 8)
    assert (detected.low, detected.high) == pytest.approx(wilson(6, 8))
    assert (false.low, false.high) == pytest.approx(wilson(1, 8))
    plain = EvasionOutcome(y, onehot(y))
    assert not m.DetectionRate().applies(plain) and not m.FalseRejectionRate().applies(plain)


def test_attack_success_rate_without_correct_rows_is_nan():
    y = np.array([0, 1])
    outcome = EvasionOutcome(y, onehot([1, 0]), proba_clean=onehot([1, 0]))
    v = m.AttackSuccessRate().evaluate(outcome)
    assert math.isnan(v.value) and v.n == 0


def test_macro_scores_by_hand_and_sklearn():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    outcome = CleanOutcome(y, onehot(pred))
    # Per class: precision 1, 1/2, 1/2; recall 2/3, 1/2, 1.
    precision, recall = (1 + 0.5 + 0.5) / 3, (2 / 3 + 0.5 + 1) / 3
    f1 = (0.8 + 0.5 + 2 / 3) / 3
    assert value(m.Precision, outcome) == pytest.approx(precision)
    assert value(m.Recall, outcome) == pytest.approx(recall)
    assert value(m.F1, outcome) == pytest.approx(f1)
    assert m.F1().evaluate(outcome).n == 6


def test_macro_scores_skip_classes_absent_from_labels_and_predictions():
    # Five-class model, classes 3 and 4 never seen nor predicted: they do not count as 0.
    y = np.array([0, 1, 2, 2])
    outcome = CleanOutcome(y, onehot(y, n_classes=5))
    assert value(m.Precision, outcome) == 1.0
    assert value(m.Recall, outcome) == 1.0
    # A class predicted but absent from the labels does count (precision 0 there).
    wrong = CleanOutcome(y, onehot([0, 1, 2, 4], n_classes=5))
    assert value(m.Precision, wrong) == pytest.approx((1 + 1 + 1 + 0) / 4)


def test_confidence_is_mean_top_one_probability():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    v = m.Confidence().evaluate(CleanOutcome(np.array([0, 0, 0]), proba))
    assert v.value == pytest.approx((0.9 + 0.6 + 0.7) / 3) and v.n == 3
    half = 1.96 * np.std([0.9, 0.6, 0.7], ddof=1) / math.sqrt(3)
    assert (v.low, v.high) == pytest.approx((v.value - half, v.value + half))


# -- the real digits CNN ---------------------------------------------------------------


def fgsm(model, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """One signed-gradient step, by hand (the sign of a mean's gradient is the sign of
    each row's own)."""
    return np.clip(x + eps * np.sign(model.loss_gradient(x, y)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def digits_outcomes(digits, digits_model):
    x, y = digits.x_test, digits.y_test
    clean = digits_model.predict(x)
    x_adv = fgsm(digits_model, x, y, 0.1)
    adv = digits_model.predict(x_adv)
    linf = np.abs(x_adv - x).reshape(len(x), -1).max(axis=1)
    return CleanOutcome(y, clean), EvasionOutcome(y, adv, proba_clean=clean,
                                                  rows=np.arange(len(y)), linf=linf)


def test_digits_metrics_match_sklearn(digits_outcomes):
    for outcome in digits_outcomes:
        y, pred = outcome.y_true, outcome.proba.argmax(axis=1)
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=range(10),
                                                     average="macro", zero_division=0)
        assert value(m.Precision, outcome) == pytest.approx(p)
        assert value(m.Recall, outcome) == pytest.approx(r)
        assert value(m.F1, outcome) == pytest.approx(f)
        assert value(m.Confidence, outcome) == pytest.approx(outcome.proba.max(axis=1).mean())
    clean, evasion = digits_outcomes
    acc = m.CleanAccuracy().evaluate(clean)
    assert acc.value == pytest.approx(accuracy_score(clean.y_true, clean.y_pred))
    assert acc.n == len(clean.y_true) and acc.value > 0.9
    assert_interval_holds(acc)
    robust = m.RobustAccuracy().evaluate(evasion)
    assert robust.value == pytest.approx(accuracy_score(evasion.y_true, evasion.y_pred))
    assert robust.value < acc.value


def test_digits_attack_success_rate_by_hand(digits_outcomes):
    _, evasion = digits_outcomes
    y = evasion.y_true
    right_before = evasion.proba_clean.argmax(axis=1) == y
    wrong_after = evasion.proba.argmax(axis=1) != y
    flipped = sum(1 for a, b in zip(right_before, wrong_after) if a and b)
    v = m.AttackSuccessRate().evaluate(evasion)
    assert v.n == int(right_before.sum()) < len(y)
    assert v.value == pytest.approx(flipped / v.n) and 0 < v.value < 1
    assert_interval_holds(v)


# -- poisoning -------------------------------------------------------------------------


def test_poisoned_accuracy_and_drop():
    y = np.array([0, 1, 2, 0, 1])
    reference = onehot([0, 1, 2, 0, 0])  # 4 of 5
    poisoned = onehot([0, 2, 2, 1, 1])  # 3 of 5
    outcome = PoisoningOutcome(y, poisoned, proba_reference=reference, n_poisoned=10,
                               n_train=100)
    acc = m.PoisonedAccuracy().evaluate(outcome)
    assert acc.value == pytest.approx(0.6) and acc.n == 5
    assert_interval_holds(acc)
    drop = m.AccuracyDrop().evaluate(outcome)
    assert drop.value == pytest.approx(0.2) and drop.n == 5
    diffs = np.array([0, 1, 0, 1, -1])  # per row: reference right minus poisoned right
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(5)
    assert (drop.low, drop.high) == pytest.approx((0.2 - half, 0.2 + half))
    assert m.AccuracyDrop.bounds == (-1.0, 1.0)


def test_aimed_metrics_split_target_from_collateral_by_hand():
    # Rows 0-2 are aimed at (the attacker wants class 2 for each), rows 3-5 are not.
    y = np.array([0, 1, 2, 0, 1, 2])
    reference = onehot([0, 1, 2, 0, 1, 0])  # target 3/3, collateral 2/3
    poisoned = onehot([2, 2, 2, 0, 0, 2])  # target 1/3 (2 read as 2), collateral 2/3
    aimed = np.array([2, 2, 2, -1, -1, -1])
    outcome = PoisoningOutcome(y, poisoned, proba_reference=reference, aimed=aimed)
    assert value(m.TargetSuccess, outcome) == pytest.approx(1.0)  # all three read as 2
    target = m.TargetAccuracy().evaluate(outcome)
    assert (target.value, target.n) == (pytest.approx(1 / 3), 3)
    assert (target.low, target.high) == pytest.approx(wilson(1, 3))
    collateral = m.CollateralAccuracy().evaluate(outcome)
    assert (collateral.value, collateral.n) == (pytest.approx(2 / 3), 3)
    assert value(m.TargetDrop, outcome) == pytest.approx(2 / 3)
    # Collateral: row 4 lost (1 -> 0), row 5 gained (0 -> 2): no drop on average.
    assert value(m.CollateralDrop, outcome) == pytest.approx(0.0)
    plain = PoisoningOutcome(y, poisoned, proba_reference=reference)
    assert not any(cls().applies(plain) for cls in (
        m.TargetSuccess, m.TargetAccuracy, m.CollateralAccuracy, m.TargetDrop,
        m.CollateralDrop))


def test_poison_filter_precision_and_recall_by_hand():
    y = np.array([0, 1])
    outcome = PoisoningOutcome(y, onehot(y), proba_reference=onehot(y),
                               poisoned_rows=np.array([1, 4, 7, 9]),
                               flagged=np.array([0, 4, 7, 8, 11]))
    precision = m.DetectionPrecision().evaluate(outcome)  # 2 of 5 removed were poison
    assert (precision.value, precision.n) == (pytest.approx(0.4), 5)
    assert (precision.low, precision.high) == pytest.approx(wilson(2, 5))
    recall = m.DetectionRecall().evaluate(outcome)  # 2 of 4 poisoned rows removed
    assert (recall.value, recall.n) == (pytest.approx(0.5), 4)
    unfiltered = PoisoningOutcome(y, onehot(y), proba_reference=onehot(y),
                                  poisoned_rows=np.array([1]))
    assert not m.DetectionPrecision().applies(unfiltered)


def test_run_time_trigger_detection_counts_rows_the_trigger_can_move():
    y = np.array([0, 1, 2, 1, 0])
    outcome = PoisoningOutcome(y, onehot(y), proba_reference=onehot(y),
                               proba_triggered=onehot([0, 0, 0, 1, 0]), target=0,
                               rejected=np.array([0, 0, 1, 0, 0], bool),
                               rejected_triggered=np.array([1, 1, 0, 1, 1], bool))
    caught = m.DetectionRate().evaluate(outcome)  # rows of class 1, 2, 1: 2 of 3
    assert (caught.value, caught.n) == (pytest.approx(2 / 3), 3)
    assert value(m.FalseRejectionRate, outcome) == pytest.approx(0.2)


def test_poison_distances_are_means():
    y = np.array([0])
    outcome = PoisoningOutcome(y, onehot(y), proba_reference=onehot(y),
                               poison_linf=np.array([0.1, 0.3]),
                               poison_l2=np.array([1.0, 2.0, 6.0]))
    assert m.PoisonLinf().evaluate(outcome).value == pytest.approx(0.2)
    assert m.PoisonL2().evaluate(outcome).n == 3 and value(m.PoisonL2, outcome) == 3.0


# -- membership ------------------------------------------------------------------------


@pytest.fixture
def membership() -> MembershipOutcome:
    members = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.95, 0.85, 0.75, 0.3, 0.65])
    nonmembers = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.4, 0.5, 0.15, 0.25, 0.35])
    return MembershipOutcome(members, nonmembers, threshold=0.6)


def test_membership_accuracy_and_advantage_by_hand(membership):
    # Members >= 0.6: 8 of 10 (TPR 0.8); non-members >= 0.6: 2 of 10 (FPR 0.2).
    acc = m.MembershipAccuracy().evaluate(membership)
    assert acc.value == pytest.approx((8 + 8) / 20) and acc.n == 20
    assert (acc.low, acc.high) == pytest.approx(wilson(16, 20))
    adv = m.MembershipAdvantage().evaluate(membership)
    assert adv.value == pytest.approx(0.6) and adv.n == 20
    # Agresti-Caffo by hand: p1 = 9/12, p0 = 3/12.
    half = 1.96 * math.sqrt(0.75 * 0.25 / 12 + 0.25 * 0.75 / 12)
    assert (adv.low, adv.high) == pytest.approx((0.5 - half, 0.5 + half))
    assert_interval_holds(adv)


@pytest.mark.parametrize("tp,n1,fp,n0", [(0, 5, 5, 5), (5, 5, 0, 5), (3, 3, 0, 7),
                                         (50, 100, 50, 100), (99, 100, 1, 100)])
def test_membership_advantage_interval_holds_at_extremes(tp, n1, fp, n0):
    outcome = MembershipOutcome(np.r_[np.ones(tp), np.zeros(n1 - tp)],
                                np.r_[np.ones(fp), np.zeros(n0 - fp)], threshold=0.5)
    v = m.MembershipAdvantage().evaluate(outcome)
    assert v.value == pytest.approx(tp / n1 - fp / n0)
    assert -1 <= v.low <= v.value <= v.high <= 1 and v.low < v.high


def test_membership_auc_matches_sklearn_and_pair_count(membership):
    v = m.MembershipAUC().evaluate(membership)
    y, s = membership.labels_and_scores()
    assert v.value == pytest.approx(roc_auc_score(y, s))
    # Mann-Whitney: the share of (member, non-member) pairs ranked right, ties half.
    pairs = [(a > b) + 0.5 * (a == b) for a in membership.scores_members
             for b in membership.scores_nonmembers]
    assert v.value == pytest.approx(np.mean(pairs))
    assert_interval_holds(v)


def test_hanley_mcneil_by_hand():
    # A = 0.75, 10 + 10: Q1 = 0.6, Q2 = 0.642857, SE = 0.111723.
    assert m.hanley_mcneil(0.75, 10, 10) == pytest.approx((0.531022, 0.968978), abs=1e-5)
    assert m.hanley_mcneil(1.0, 10, 10) == (1.0, 1.0)


def test_membership_without_one_side_is_nan():
    outcome = MembershipOutcome(np.array([0.5, 0.7]), np.array([]), threshold=0.6)
    assert math.isnan(value(m.MembershipAUC, outcome))
    assert math.isnan(value(m.MembershipAdvantage, outcome))


# -- probes ----------------------------------------------------------------------------


def test_probe_metrics_by_hand_and_scipy():
    pred = np.array([3, 3, 3, 3, 3, 3, 1, 1, 0, 2])
    proba = onehot(pred, n_classes=4, top=0.7)
    proba[0] = [0.05, 0.05, 0.05, 0.85]
    outcome = ProbeOutcome(proba)
    share = m.TopClassShare().evaluate(outcome)
    assert share.value == pytest.approx(0.6) and share.n == 10
    assert (share.low, share.high) == pytest.approx(wilson(6, 10))
    counts = np.bincount(pred, minlength=4)
    assert value(m.PredictionEntropy, outcome) == pytest.approx(entropy(counts, base=2))
    assert value(m.ProbeConfidence, outcome) == pytest.approx((0.85 + 9 * 0.7) / 10)
    assert_interval_holds(m.ProbeConfidence().evaluate(outcome))


def test_prediction_entropy_extremes():
    assert value(m.PredictionEntropy, ProbeOutcome(onehot([2] * 8, n_classes=4))) == 0.0
    spread = ProbeOutcome(onehot([0, 1, 2, 3] * 2, n_classes=4))
    assert value(m.PredictionEntropy, spread) == pytest.approx(2.0)
    assert value(m.TopClassShare, spread) == pytest.approx(0.25)


# -- how the report prints each metric -------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> dict:
    """The metrics as results.json records them (the catalogue the audit writes)."""
    registry = make_registry(entrypoints=False, plugins={"metrics": m, "extraction": extraction})
    return {"metrics": catalogue(registry)["metrics"]}


def test_report_prints_each_metric_in_its_format(recorded):
    def shown(name: str, value: float) -> str:
        return format_value(value, metric_meta(recorded, name))

    assert shown("clean_accuracy", 0.88) == "88.0%"
    assert shown("fidelity", 0.9) == "90.0%"
    assert shown("accuracy_drop", -0.05) == "-5.0%"
    assert shown("prediction_entropy", 2.0) == "2"
    assert shown("prediction_entropy", 3.3219) == "3.32"
    assert shown("membership_auc", 0.8734) == "0.873"
    for name in recorded["metrics"]:
        meta = metric_meta(recorded, name)
        text = format_value(0.5, meta)
        assert text.endswith("%") == (name in PROPORTIONS | {
            "accuracy_drop", "membership_advantage", "target_drop", "collateral_drop"}), name
    entropy_meta = metric_meta(recorded, "prediction_entropy")
    assert "%" not in format_interval(1.5, 2.5, entropy_meta)
    assert format_value(float("nan"), entropy_meta) == format_value(None, entropy_meta) == "—"


def test_report_reads_results_written_before_metrics_declared_a_format():
    """Old results.json files have no "format": a proportion is known by bounds [0, 1]."""
    old = {"metrics": {"acc": {"title": "Accuracy", "bounds": [0, 1]},
                       "bits": {"title": "Entropy", "bounds": None},
                       "drop": {"title": "Drop", "bounds": [-1, 1]}}}
    assert format_value(0.88, metric_meta(old, "acc")) == "88.0%"
    assert format_value(2.0, metric_meta(old, "bits")) == "2"
    assert format_value(-0.05, metric_meta(old, "drop")) == "-0.05"
    # A declared format wins over the bounds; an unknown one prints as a number.
    declared = {"metrics": {"auc": {"bounds": [0, 1], "format": "number"},
                            "odd": {"bounds": [0, 1], "format": "per-mille"},
                            "big": {"bounds": None, "format": "number"}}}
    assert format_value(0.873, metric_meta(declared, "auc")) == "0.873"
    assert format_value(0.5, metric_meta(declared, "odd")) == "0.5"
    assert format_value(12345.6, metric_meta(declared, "big")) == "12,346"


@pytest.mark.parametrize("seed", range(6))
def test_macro_scores_equal_sklearn(seed: int) -> None:
    # Random labels and predictions, some classes missing from one side or both, and
    # non-contiguous class ids: the numpy computation must match sklearn's exactly.
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 60)), int(rng.integers(2, 12))
    classes = rng.choice(40, size=k, replace=False)
    y = rng.choice(classes[: max(1, k - 2)], size=n)
    pred = np.where(rng.random(n) < 0.6, y, rng.choice(classes, size=n))
    expected = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)[:3]
    assert m.macro_scores(y, pred) == pytest.approx(expected, abs=1e-12)


def test_confidence_does_not_apply_where_only_labels_are_served(digits, digits_model):
    """A labels-only deployment's one-hot rows would read as 100% confidence."""
    import dataclasses

    import gauntlet

    data = dataclasses.replace(digits, x_test=digits.x_test[:60], y_test=digits.y_test[:60])
    result = gauntlet.audit(model=digits_model, data=data,
                            attacks={"noise": {"eps": 0.1}}, defenses=["none", "label-only"])
    assert result.value("confidence", "clean", "none") < 1.0
    assert result.value("confidence", "noise", "none", "") is not None
    assert result.value("confidence", "clean", "label-only") is None
    assert result.value("confidence", "noise", "label-only", "") is None
    # the other prediction metrics still apply to the labels it serves
    assert result.value("clean_accuracy", "clean", "label-only") == \
        result.value("clean_accuracy", "clean", "none")


def test_confidence_does_not_apply_to_a_poisoned_labels_only_deployment():
    import gauntlet

    result = gauntlet.audit(model="builtin:mlp", data="sklearn:iris",
                            attacks={"label-flip": {"fraction": 0.1}},
                            defenses=["none", "label-only"])
    assert result.value("confidence", "label-flip", "none") is not None
    assert result.value("confidence", "label-flip", "label-only") is None
    assert result.value("poisoned_accuracy", "label-flip", "label-only") is not None
