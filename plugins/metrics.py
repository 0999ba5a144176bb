"""Built-in metrics: accuracy and the classic evasion table, poisoning damage, membership
leakage, and what a model answers on garbage.

Every metric states its direction for the defender and how the report prints it: a
proportion declares ``bounds = (0.0, 1.0)`` and ``format = "percent"``; a difference of
proportions lies in [-1, 1] and prints as a percentage too; anything else (bits of
entropy) is a plain number. Proportions carry a Wilson interval
(:func:`gauntlet.proportion`); other sampled numbers carry the interval named in their
docstring; precision, recall and F1 carry none (no simple interval for a macro average).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from gauntlet import (
    CleanOutcome,
    EvasionOutcome,
    MembershipOutcome,
    Metric,
    MetricValue,
    Outcome,
    PoisoningOutcome,
    Predictions,
    ProbeOutcome,
    TrainingOrderOutcome,
    TriggerScanOutcome,
    hookimpl,
    proportion,
)

Z95 = 1.96


def _accuracy(outcome: Predictions) -> MetricValue:
    return proportion(int(outcome.correct.sum()), outcome.n)


def _mean_with_interval(values: np.ndarray, bounds: tuple[float, float]) -> MetricValue:
    """A mean with a normal-approximation 95% interval, clipped to ``bounds``."""
    n = len(values)
    if n == 0:
        return MetricValue(math.nan, 0)
    mean = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return MetricValue(mean, n, max(bounds[0], mean - half), min(bounds[1], mean + half))


# -- accuracy and the classic evasion table --------------------------------------------


class CleanAccuracy(Metric):
    """Accuracy on the clean test inputs, with a Wilson interval.

    The baseline every defended model reports beside its robustness.
    """

    name = "clean_accuracy"
    title = "Clean accuracy"
    applies_to = (CleanOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: CleanOutcome) -> MetricValue:  # type: ignore[override]
        return _accuracy(outcome)


class RobustAccuracy(Metric):
    """Accuracy on the adversarial inputs, with a Wilson interval.

    Every row counts, including those the model already got wrong on clean inputs.
    """

    name = "robust_accuracy"
    title = "Robust accuracy"
    applies_to = (EvasionOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: EvasionOutcome) -> MetricValue:  # type: ignore[override]
        return _accuracy(outcome)


class NaiveRobustAccuracy(Metric):
    """Accuracy of the defended model on adversarial inputs made against the undefended
    model: what an evaluation that ignores the defense would report.

    Measured for defenses that transform or screen inputs, beside the adaptive robust
    accuracy; the gap is how much a naive evaluation overstates the defense (Athalye,
    Carlini and Wagner, 2018, "Obfuscated Gradients Give a False Sense of Security").
    """

    name = "naive_robust_accuracy"
    title = "Naive robust accuracy"
    applies_to = (EvasionOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def applies(self, outcome: Outcome) -> bool:
        return isinstance(outcome, EvasionOutcome) and outcome.proba_naive is not None

    def compute(self, outcome: EvasionOutcome) -> MetricValue:  # type: ignore[override]
        correct = outcome.correct_naive
        assert correct is not None
        return proportion(int(correct.sum()), len(correct))


class DetectionRate(Metric):
    """Share of adversarial inputs a detector of the deployment rejected.

    Rejected rows are still classified, and the accuracies count them as classified:
    read this beside the robust accuracy and the false rejection rate, never alone.
    """

    name = "detection_rate"
    title = "Detection rate (adversarial)"
    applies_to = (EvasionOutcome, PoisoningOutcome)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def applies(self, outcome: Outcome) -> bool:
        if isinstance(outcome, PoisoningOutcome):  # a run-time trigger detector (STRIP)
            return outcome.rejected_triggered is not None
        return isinstance(outcome, EvasionOutcome) and outcome.rejected is not None

    def compute(self, outcome: Outcome) -> MetricValue:  # type: ignore[override]
        if isinstance(outcome, PoisoningOutcome):
            # Triggered rows the trigger could move: those of classes other than the
            # target (every row for an untargeted trigger).
            assert outcome.rejected_triggered is not None
            rows = (np.ones(outcome.n, dtype=bool) if outcome.target is None
                    else np.asarray(outcome.y_true) != outcome.target)
            return proportion(int(outcome.rejected_triggered[rows].sum()), int(rows.sum()))
        assert isinstance(outcome, EvasionOutcome) and outcome.rejected is not None
        return proportion(int(outcome.rejected.sum()), len(outcome.rejected))


class FalseRejectionRate(Metric):
    """Share of clean inputs a detector of the deployment rejected (its cost to users)."""

    name = "false_rejection_rate"
    title = "False rejection rate (clean)"
    applies_to = (EvasionOutcome, PoisoningOutcome, CleanOutcome)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def applies(self, outcome: Outcome) -> bool:
        if isinstance(outcome, (PoisoningOutcome, CleanOutcome)):
            return outcome.rejected is not None
        return isinstance(outcome, EvasionOutcome) and outcome.rejected_clean is not None

    def compute(self, outcome: Outcome) -> MetricValue:  # type: ignore[override]
        rejected = (outcome.rejected if isinstance(outcome, (PoisoningOutcome, CleanOutcome))
                    else getattr(outcome, "rejected_clean", None))
        assert rejected is not None
        return proportion(int(rejected.sum()), len(rejected))


class AttackSuccessRate(Metric):
    """Share of initially correct rows that the attack turned into a misclassification.

    Rows the model got wrong on clean inputs are left out, so n is the number of rows
    classified correctly before the attack (Wilson interval); NaN when there are none.
    """

    name = "attack_success_rate"
    title = "Attack success rate"
    applies_to = (EvasionOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: EvasionOutcome) -> MetricValue:  # type: ignore[override]
        before, after = outcome.correct_before, outcome.correct_after
        return proportion(int((before & ~after).sum()), int(before.sum()))


def macro_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Macro-averaged precision, recall and F1 over the classes present in the labels or
    the predictions, as scikit-learn's ``precision_recall_fscore_support(average="macro",
    zero_division=0)`` computes them (tested equal), in a few numpy passes: sklearn's
    input validation took 10 ms a call, seconds over the demo's cells.

    Classes that occur in neither are left out (sklearn's default): with zero_division=0
    they would score 0 and drag the average down although the model made no mistake
    about them (small subsamples miss classes). F1 is the mean of the per-class F1
    scores, ``2 tp / (predicted + true)``, not the F1 of the means."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if not len(y_true):
        return 0.0, 0.0, 0.0
    labels, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    k, n = len(labels), len(y_true)
    t, p = codes[:n], codes[n:]
    tp = np.bincount(t[t == p], minlength=k).astype(np.float64)
    true = np.bincount(t, minlength=k).astype(np.float64)
    pred = np.bincount(p, minlength=k).astype(np.float64)

    def ratio(num: np.ndarray, den: np.ndarray) -> float:
        return float(np.divide(num, den, out=np.zeros(k), where=den > 0).mean())

    return ratio(tp, pred), ratio(tp, true), ratio(2 * tp, pred + true)


def _macro(outcome: Predictions, index: int) -> MetricValue:
    return MetricValue(macro_scores(outcome.y_true, outcome.y_pred)[index], outcome.n)


class Precision(Metric):
    """Macro-averaged precision of the predicted classes (no interval).

    As scikit-learn's ``precision_recall_fscore_support``, zero_division=0.
    """

    name = "precision"
    title = "Precision"
    applies_to = (Predictions,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: Predictions) -> MetricValue:  # type: ignore[override]
        return _macro(outcome, 0)


class Recall(Metric):
    """Macro-averaged recall of the true classes (no interval).

    As scikit-learn's ``precision_recall_fscore_support``, zero_division=0.
    """

    name = "recall"
    title = "Recall"
    applies_to = (Predictions,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: Predictions) -> MetricValue:  # type: ignore[override]
        return _macro(outcome, 1)


class F1(Metric):
    """Macro-averaged F1 score (no interval).

    As scikit-learn's ``precision_recall_fscore_support``, zero_division=0: the mean of the
    per-class F1 scores, not the F1 of the mean precision and recall.
    """

    name = "f1"
    title = "F1"
    applies_to = (Predictions,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: Predictions) -> MetricValue:  # type: ignore[override]
        return _macro(outcome, 2)


class Confidence(Metric):
    """Mean top-one probability on the evaluated inputs, with a normal 95% interval.

    Lower is better for the defender. On adversarial inputs most answers are wrong, and a
    high value means confidently wrong ones; on clean inputs a high value means the sharp
    scores membership inference feeds on, which output defenses deliberately blunt.
    Correctness is credited by accuracy, not here, so read this column beside it.
    """

    name = "confidence"
    title = "Confidence"
    applies_to = (Predictions,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def applies(self, outcome: Outcome) -> bool:
        # A labels-only deployment serves no confidence: its one-hot rows would read 100%.
        return super().applies(outcome) and not getattr(outcome, "labels_only", False)

    def compute(self, outcome: Predictions) -> MetricValue:  # type: ignore[override]
        return _mean_with_interval(outcome.proba.max(axis=1).astype(np.float64), (0.0, 1.0))


# -- poisoning -------------------------------------------------------------------------


class PoisonedAccuracy(Metric):
    """Accuracy of the poisoned model on the clean test inputs, with a Wilson interval.

    Compare with the reference model trained by the same recipe on unpoisoned data.
    """

    name = "poisoned_accuracy"
    title = "Poisoned accuracy"
    applies_to = (PoisoningOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        return _accuracy(outcome)


class AccuracyDrop(Metric):
    """Reference accuracy minus poisoned accuracy on the same clean test rows.

    The interval is the normal approximation of a paired difference: both models are
    scored on the same rows, so the per-row differences (-1, 0 or 1) are averaged.
    """

    name = "accuracy_drop"
    title = "Accuracy drop"
    applies_to = (PoisoningOutcome,)
    higher_is_better = False
    bounds = (-1.0, 1.0)
    format = "percent"

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        y = outcome.y_true
        ref = (outcome.proba_reference.argmax(axis=1) == y).astype(np.float64)
        poisoned = (outcome.proba.argmax(axis=1) == y).astype(np.float64)
        return _mean_with_interval(ref - poisoned, (-1.0, 1.0))


class BackdoorSuccess(Metric):
    """Share of triggered test rows of classes other than the target that the poisoned
    model reads as the target, with a Wilson interval.

    Only for backdoors (an outcome with triggered rows and a target): the number clean
    accuracy never shows, because clean inputs carry no trigger. Rows whose true class
    is the target are left out (the trigger cannot move them there), so n counts the
    others.
    """

    name = "backdoor_success"
    title = "Backdoor success"
    applies_to = (PoisoningOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def applies(self, outcome: Outcome) -> bool:
        return isinstance(outcome, PoisoningOutcome) and outcome.hit is not None

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        hit = outcome.hit
        assert hit is not None
        others = np.asarray(outcome.y_true) != outcome.target
        return proportion(int(hit[others].sum()), int(others.sum()))


class TriggeredAccuracy(Metric):
    """Accuracy of the poisoned model on the test rows with the trigger applied, with a
    Wilson interval (for an attack that triggers its test rows: backdoors)."""

    name = "triggered_accuracy"
    title = "Triggered accuracy"
    applies_to = (PoisoningOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def applies(self, outcome: Outcome) -> bool:
        return isinstance(outcome, PoisoningOutcome) and outcome.proba_triggered is not None

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        assert outcome.proba_triggered is not None
        right = outcome.proba_triggered.argmax(axis=1) == np.asarray(outcome.y_true)
        return proportion(int(right.sum()), len(right))


class _Aimed(Metric):
    """Shared by the metrics of attacks aimed at chosen test rows (``aimed``)."""

    applies_to = (PoisoningOutcome,)
    bounds = (0.0, 1.0)
    format = "percent"
    #: True: the aimed rows; False: the others (collateral).
    on_aimed: ClassVar[bool] = True

    def applies(self, outcome: Outcome) -> bool:
        return isinstance(outcome, PoisoningOutcome) and outcome.aimed is not None

    def rows(self, outcome: PoisoningOutcome) -> np.ndarray:
        assert outcome.aimed is not None
        aimed = np.asarray(outcome.aimed) >= 0
        return aimed if self.on_aimed else ~aimed


class TargetSuccess(_Aimed):
    """Share of the test rows an attack aimed at that the poisoned model reads as the
    class the attacker wanted for each, with a Wilson interval: a clean-label attack's
    target instances, a subpopulation attack's rows (flipped to its label)."""

    name = "target_success"
    title = "Target success"
    higher_is_better = False

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        rows = self.rows(outcome)
        assert outcome.aimed is not None
        won = outcome.proba.argmax(axis=1)[rows] == np.asarray(outcome.aimed)[rows]
        return proportion(int(won.sum()), int(rows.sum()))


class TargetAccuracy(_Aimed):
    """Accuracy of the poisoned model on the test rows the attack aimed at (the
    subpopulation, the target instances), with a Wilson interval."""

    name = "target_accuracy"
    title = "Target accuracy"
    higher_is_better = True

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        rows = self.rows(outcome)
        return proportion(int(outcome.correct[rows].sum()), int(rows.sum()))


class CollateralAccuracy(TargetAccuracy):
    """Accuracy of the poisoned model on the test rows the attack did not aim at, with a
    Wilson interval: a stealthy attack leaves it where the reference model has it."""

    name = "collateral_accuracy"
    title = "Collateral accuracy"
    on_aimed = False


class TargetDrop(_Aimed):
    """Reference minus poisoned accuracy on the aimed rows, paired per row (normal
    interval), as ``accuracy_drop`` on every row."""

    name = "target_drop"
    title = "Target accuracy drop"
    higher_is_better = False
    bounds = (-1.0, 1.0)

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        rows = self.rows(outcome)
        diff = (outcome.correct_reference[rows].astype(np.float64)
                - outcome.correct[rows].astype(np.float64))
        return _mean_with_interval(diff, (-1.0, 1.0))


class CollateralDrop(TargetDrop):
    """Reference minus poisoned accuracy on the rows the attack did not aim at (paired,
    normal interval): the damage a stealthy attack avoids."""

    name = "collateral_drop"
    title = "Collateral accuracy drop"
    on_aimed = False


class _Filter(Metric):
    """Shared by the scores of a poison filter against the rows the attacker poisoned."""

    applies_to = (PoisoningOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def applies(self, outcome: Outcome) -> bool:
        return (isinstance(outcome, PoisoningOutcome) and outcome.flagged is not None
                and outcome.poisoned_rows is not None)

    @staticmethod
    def counts(outcome: PoisoningOutcome) -> tuple[int, int, int]:
        """(flagged rows that were poisoned, flagged rows, poisoned rows)."""
        assert outcome.flagged is not None and outcome.poisoned_rows is not None
        caught = np.intersect1d(outcome.flagged, outcome.poisoned_rows)
        return len(caught), len(outcome.flagged), len(outcome.poisoned_rows)


class DetectionPrecision(_Filter):
    """Share of the training rows a poison filter removed that the attacker had poisoned,
    with a Wilson interval (the rest were clean rows lost)."""

    name = "detection_precision"
    title = "Poison detection precision"

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        caught, flagged, _ = self.counts(outcome)
        return proportion(caught, flagged)


class DetectionRecall(_Filter):
    """Share of the attacker's poisoned training rows a poison filter removed, with a
    Wilson interval."""

    name = "detection_recall"
    title = "Poison detection recall"

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        caught, _, poisoned = self.counts(outcome)
        return proportion(caught, poisoned)


class PoisonLinf(Metric):
    """Mean L-infinity distance of the poisoned inputs from the clean inputs they were
    made from (attacks that change inputs and say from what: how visible the poison is)."""

    name = "poison_linf"
    title = "Poison distance (L-inf, mean)"
    applies_to = (PoisoningOutcome,)
    higher_is_better = True
    format = "number"
    field: ClassVar[str] = "poison_linf"

    def applies(self, outcome: Outcome) -> bool:
        return isinstance(outcome, PoisoningOutcome) and getattr(outcome, self.field) is not None

    def compute(self, outcome: PoisoningOutcome) -> MetricValue:  # type: ignore[override]
        values = np.asarray(getattr(outcome, self.field), dtype=np.float64)
        return MetricValue(float(values.mean()) if len(values) else math.nan, len(values))


class PoisonL2(PoisonLinf):
    """Mean L2 distance of the poisoned inputs from the clean inputs they were made from."""

    name = "poison_l2"
    title = "Poison distance (L2, mean)"
    field = "poison_l2"


# -- membership inference --------------------------------------------------------------


def _rates(outcome: MembershipOutcome) -> tuple[int, int, int, int]:
    """(true positives, members, false positives, non-members) at the threshold."""
    tp = int((np.asarray(outcome.scores_members) >= outcome.threshold).sum())
    fp = int((np.asarray(outcome.scores_nonmembers) >= outcome.threshold).sum())
    return tp, len(outcome.scores_members), fp, len(outcome.scores_nonmembers)


class MembershipAccuracy(Metric):
    """Accuracy of the member / non-member decisions (score >= threshold means member).

    Wilson interval. 0.5 is chance when members and non-members are equally many (the
    built-in attacks balance them); lower is better for the defender.
    """

    name = "membership_accuracy"
    title = "Membership accuracy"
    applies_to = (MembershipOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: MembershipOutcome) -> MetricValue:  # type: ignore[override]
        tp, n1, fp, n0 = _rates(outcome)
        return proportion(tp + (n0 - fp), n1 + n0)


class MembershipAdvantage(Metric):
    """Membership advantage: true-positive rate minus false-positive rate at the threshold.

    Yeom et al., 2018, "Privacy Risk in Machine Learning". Interval: Agresti and Caffo
    (2000), the normal approximation of a difference of two independent proportions with
    one success and one failure added to each, which keeps its width at 0 or 1.
    """

    name = "membership_advantage"
    title = "Membership advantage"
    applies_to = (MembershipOutcome,)
    higher_is_better = False
    bounds = (-1.0, 1.0)
    format = "percent"

    def compute(self, outcome: MembershipOutcome) -> MetricValue:  # type: ignore[override]
        tp, n1, fp, n0 = _rates(outcome)
        if n1 == 0 or n0 == 0:
            return MetricValue(math.nan, n1 + n0)
        value = tp / n1 - fp / n0
        p1, p0 = (tp + 1) / (n1 + 2), (fp + 1) / (n0 + 2)
        half = Z95 * math.sqrt(p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2))
        centre = p1 - p0
        return MetricValue(value, n1 + n0, max(-1.0, centre - half), min(1.0, centre + half))


def hanley_mcneil(auc: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """95% interval of a ROC AUC from Hanley and McNeil's (1982) standard error."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc)
           + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = Z95 * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


class MembershipAUC(Metric):
    """Area under the ROC curve of the membership scores (0.5 is chance).

    Threshold-free. Hanley and McNeil, 1982, "The meaning and use of the area under a
    receiver operating characteristic (ROC) curve" (the interval). Lower is better.
    """

    name = "membership_auc"
    title = "Membership AUC"
    applies_to = (MembershipOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "number"  # an AUC is read as 0.87, as in the ROC chart's legend

    def compute(self, outcome: MembershipOutcome) -> MetricValue:  # type: ignore[override]
        from sklearn.metrics import roc_auc_score

        n1, n0 = len(outcome.scores_members), len(outcome.scores_nonmembers)
        if n1 == 0 or n0 == 0:
            return MetricValue(math.nan, n1 + n0)
        y, s = outcome.labels_and_scores()
        auc = float(roc_auc_score(y, s))
        low, high = hanley_mcneil(auc, n1, n0)
        return MetricValue(auc, n1 + n0, low, high)


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> tuple[int, int]:
    """(members caught, members) at the threshold that catches the most members while
    flagging at most ``floor(fpr * len(nonmembers))`` non-members (score >= threshold
    means "member"): the ROC's true positives at false-positive rate ``fpr``."""
    members, nonmembers = np.asarray(members), np.asarray(nonmembers)
    allowed = math.floor(fpr * len(nonmembers) + 1e-9)
    ranked = np.sort(nonmembers)[::-1]
    # The threshold must sit above the (allowed + 1)-th highest non-member score.
    above = ranked[allowed] if allowed < len(ranked) else -np.inf
    return int((members > above).sum()), len(members)


class TprAtOnePercentFpr(Metric):
    """Share of members a membership attack catches while at most 1% of non-members are
    flagged, with a Wilson interval: the low false-positive regime where an average
    accuracy hides real leaks (Carlini et al., 2022, "Membership Inference Attacks From
    First Principles"). Read off the evaluation half's own ROC, as that paper reports it;
    with fewer than 100 non-members no false positive is allowed."""

    name = "tpr_at_1pct_fpr"
    title = "TPR at 1% FPR"
    applies_to = (MembershipOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"
    fpr: ClassVar[float] = 0.01

    def compute(self, outcome: MembershipOutcome) -> MetricValue:  # type: ignore[override]
        caught, n = tpr_at_fpr(outcome.scores_members, outcome.scores_nonmembers, self.fpr)
        return proportion(caught, n)


class TprAtTenthPercentFpr(TprAtOnePercentFpr):
    """Share of members a membership attack catches while at most 0.1% of non-members
    are flagged, with a Wilson interval (with fewer than 1,000 non-members, none)."""

    name = "tpr_at_0_1pct_fpr"
    title = "TPR at 0.1% FPR"
    fpr = 0.001


# -- probes ----------------------------------------------------------------------------


class TopClassShare(Metric):
    """Share of probe inputs given the most frequent class, with a Wilson interval.

    The "trash bucket" finding: a model that files garbage under one class hands an
    attacker a default answer and hides out-of-distribution input. Lower is better; 1/C
    is an even spread.
    """

    name = "top_class_share"
    title = "Top class share"
    applies_to = (ProbeOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: ProbeOutcome) -> MetricValue:  # type: ignore[override]
        return proportion(int(outcome.class_counts().max(initial=0)), outcome.n)


class LastClassShare(Metric):
    """Share of probe inputs the models trained with one class last give that class:
    the mean over seeds, with a normal interval across seeds (the training-order probe)."""

    name = "last_class_share"
    title = "Last class share (ordered)"
    applies_to = (TrainingOrderOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"
    reference: ClassVar[bool] = False

    def compute(self, outcome: TrainingOrderOutcome) -> MetricValue:  # type: ignore[override]
        return _mean_with_interval(outcome.shares(self.reference), (0.0, 1.0))


class LastClassShareShuffled(LastClassShare):
    """The same class's share of probe inputs under models trained on shuffled rows by
    the same loop and seeds: what the order is compared against."""

    name = "last_class_share_shuffled"
    title = "Last class share (shuffled)"
    reference = True


class OrderedAccuracy(Metric):
    """Clean test accuracy of the models trained with one class last, mean over seeds
    with a normal interval across them: what steering the order cost the model."""

    name = "ordered_accuracy"
    title = "Ordered model accuracy"
    applies_to = (TrainingOrderOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: TrainingOrderOutcome) -> MetricValue:  # type: ignore[override]
        return _mean_with_interval(np.asarray(outcome.accuracy, dtype=np.float64), (0.0, 1.0))


class PredictionEntropy(Metric):
    """Shannon entropy, in bits, of the histogram of classes predicted on probe inputs.

    0 when every probe lands in one class (a trash bucket), log2(C) when they spread
    evenly. Higher is better. ``bounds`` is None because the top depends on C.
    """

    name = "prediction_entropy"
    title = "Prediction entropy (bits)"
    applies_to = (ProbeOutcome,)
    higher_is_better = True
    bounds = None
    format = "number"

    def compute(self, outcome: ProbeOutcome) -> MetricValue:  # type: ignore[override]
        counts = outcome.class_counts()
        if outcome.n == 0:
            return MetricValue(math.nan, 0)
        p = counts[counts > 0] / outcome.n
        return MetricValue(float(-(p * np.log2(p)).sum()) + 0.0, outcome.n)


class ProbeConfidence(Metric):
    """Mean top-one probability on probe inputs, with a normal 95% interval.

    A model should be unsure on inputs that belong to no class: lower is better.
    """

    name = "probe_confidence"
    title = "Probe confidence"
    applies_to = (ProbeOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: ProbeOutcome) -> MetricValue:  # type: ignore[override]
        return _mean_with_interval(outcome.proba.max(axis=1).astype(np.float64), (0.0, 1.0))


# -- trigger scan ------------------------------------------------------------------------


class TriggerAnomaly(Metric):
    """Neural Cleanse's anomaly index of the smallest class trigger: how many (consistent)
    median absolute deviations it lies below the median class's (the trigger-scan probe).

    Above 2, Wang et al. (2019) flag the class as a backdoor's target; the report and
    ``gauntlet diff`` name it. On small inputs (8x8 digits) a clean model can reach 2 or
    3 by chance: read it beside ``trigger_size`` and across versions. Lower is better.
    """

    name = "trigger_anomaly"
    title = "Trigger anomaly index"
    applies_to = (TriggerScanOutcome,)
    higher_is_better = False
    bounds = None
    format = "number"

    def compute(self, outcome: TriggerScanOutcome) -> MetricValue:  # type: ignore[override]
        return MetricValue(float(outcome.anomaly().max(initial=0.0)), outcome.n)


class TriggerSize(Metric):
    """The smallest trigger any class has, as a share of the input's pixels: how little
    of an input must change to force a class (the trigger-scan probe). Higher is better;
    a backdoor's planted patch makes it small."""

    name = "trigger_size"
    title = "Smallest trigger (share of pixels)"
    applies_to = (TriggerScanOutcome,)
    higher_is_better = True
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: TriggerScanOutcome) -> MetricValue:  # type: ignore[override]
        return MetricValue(float(np.min(outcome.size)) / outcome.pixels, outcome.n)


METRICS: tuple[type[Metric], ...] = (
    CleanAccuracy, RobustAccuracy, NaiveRobustAccuracy, DetectionRate, FalseRejectionRate,
    AttackSuccessRate, Precision, Recall, F1, Confidence,
    PoisonedAccuracy, AccuracyDrop, BackdoorSuccess, TriggeredAccuracy,
    TargetSuccess, TargetAccuracy, CollateralAccuracy, TargetDrop, CollateralDrop,
    DetectionPrecision, DetectionRecall, PoisonLinf, PoisonL2,
    MembershipAccuracy, MembershipAdvantage, MembershipAUC, TprAtOnePercentFpr,
    TprAtTenthPercentFpr,
    TopClassShare, PredictionEntropy, ProbeConfidence,
    LastClassShare, LastClassShareShuffled, OrderedAccuracy,
    TriggerAnomaly, TriggerSize,
)


@hookimpl
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    for cls in METRICS:
        register(cls)
