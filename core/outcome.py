"""What an attack returns: one typed outcome per threat family.

Metrics declare which outcome types they apply to; the runner computes every metric
whose ``applies_to`` matches. ``artifacts()`` returns small JSON-able data the report
draws (ROC curves, histograms). ``per_row()`` returns the per-row results (correct
before and after, distances, scores) that ``cells.jsonl`` keeps in a compact form, so
a worst case over attacks, a row-by-row comparison of two audits or a resampled
interval needs no re-run. Probabilities themselves are never stored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np


@dataclasses.dataclass
class Outcome:
    """Base of every outcome."""

    def artifacts(self) -> dict[str, Any]:
        """Small JSON-able data for the report (curves, histograms)."""
        return {}

    def per_row(self) -> dict[str, np.ndarray]:
        """One array per field, one entry per evaluated row (see :mod:`gauntlet.rows`)."""
        return {}

    @property
    def n(self) -> int:
        """The number of samples the outcome's numbers rest on."""
        raise NotImplementedError

    #: The fields holding one entry per evaluated row, in the same order: what
    #: :meth:`resample` draws together. Empty: the outcome cannot be resampled.
    row_fields: ClassVar[tuple[str, ...]] = ()

    def resample(self, rng: np.random.Generator) -> Outcome | None:
        """The same outcome on a bootstrap resample of its rows (as many rows, drawn with
        replacement), or None when it has no rows to draw (:attr:`row_fields` is empty).
        Metrics computed on it give the spread of ``--resamples``; nothing is re-run.

        The draw depends only on ``rng`` and the number of rows, so two audits of two
        model versions on the same rows with the same seed draw the same rows: their
        resampled values pair up, which is what ``gauntlet diff`` compares."""
        arrays = {name: getattr(self, name) for name in self.row_fields}
        sized = [a for a in arrays.values() if a is not None]
        if not sized:
            return None
        pick = rng.integers(0, len(sized[0]), len(sized[0]))
        return dataclasses.replace(self, **{  # type: ignore[type-var]
            name: None if a is None else np.asarray(a)[pick] for name, a in arrays.items()})


@dataclasses.dataclass
class Predictions(Outcome):
    """A model's class probabilities on labelled inputs.

    :param y_true: true labels, shape ``(N,)``.
    :param proba: probabilities on the evaluated inputs, shape ``(N, C)``.
    :param labels_only: the deployment serves labels only, so ``proba`` holds one-hot
        rows the core made of them: scores no one saw (keyword only).
    """

    y_true: np.ndarray
    proba: np.ndarray
    labels_only: bool = dataclasses.field(default=False, kw_only=True)

    @property
    def n(self) -> int:
        return int(len(self.y_true))

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        """Per row: is the prediction right?"""
        return np.asarray(self.proba.argmax(axis=1) == self.y_true)

    row_fields: ClassVar[tuple[str, ...]] = ("y_true", "proba")

    def per_row(self) -> dict[str, np.ndarray]:
        return {"row": np.arange(self.n, dtype=np.int64), "correct": self.correct}


@dataclasses.dataclass
class CleanOutcome(Predictions):
    """The defended model on unmodified test inputs: the baseline of every row.

    :param facts: what a serving wrapper measured of itself on these rows (agreement,
        latency, bytes), as MetricValues by metric name; see :class:`gauntlet.Fact`.
    :param checks: the evaluation checklist's live measurements of the deployment on a
        few clean rows (``{"gradients": {...} | None, "repeat": {...}}``, see
        :class:`gauntlet.plan.Clean`); kept in the cell's artifacts for
        :func:`gauntlet.checklist.checklist`.
    :param rejected: per row, did a detector of the deployment reject the clean input
        (its cost to users, ``false_rejection_rate``)? None when nothing detects.
    """

    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    rejected: np.ndarray | None = None

    row_fields: ClassVar[tuple[str, ...]] = ("y_true", "proba", "rejected")

    def artifacts(self) -> dict[str, Any]:
        return {"checks": self.checks} if self.checks else {}

    def per_row(self) -> dict[str, np.ndarray]:
        """Beside ``correct``: the true ``label``, the ``predicted`` class and its
        ``confidence`` (top probability), which ``gauntlet diff`` compares row by row
        between two versions of a model (disagreement, confusion, confidence shifts)."""
        return {**super().per_row(), "label": np.asarray(self.y_true, dtype=np.int64),
                "predicted": self.y_pred.astype(np.int64),
                "confidence": self.proba.max(axis=1, initial=0.0).astype(np.float32)}


@dataclasses.dataclass
class EvasionOutcome(Predictions):
    """Predictions on adversarial inputs (``proba``) beside those on the clean ones, with
    per-row distances. Built by :class:`gauntlet.EvasionAttack`; every array has one
    entry per attacked row.

    :param proba_clean: probabilities on the clean inputs, same model, same rows.
    :param rows: the attacked rows' indices in the evaluated test set.
    :param l0: per row, how many input values the attack changed.
    :param l2: per row, the Euclidean distance to the clean input.
    :param linf: per row, the largest change of any input value (L-infinity).
    :param queries: rows the attack sent to the model, counted by the Model.
    :param proba_naive: for a defense that transforms inputs, probabilities of the
        defended model on adversarial inputs made against the undefended model (the
        attack ignores the defense: a naive evaluation), or None.
    :param rejected: per row, did a detector of the deployment reject the adversarial
        input? None when the deployment has no detector.
    :param rejected_clean: the same for the clean inputs.
    :param examples: a few rows to look at (``x``, ``x_adv``: nested lists of the first
        rows' inputs, ``rows``: their indices), or None.
    """

    proba_clean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    l0: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    l2: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    linf: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    queries: int | None = None
    proba_naive: np.ndarray | None = None
    rejected: np.ndarray | None = None
    rejected_clean: np.ndarray | None = None
    examples: dict[str, Any] | None = None

    row_fields: ClassVar[tuple[str, ...]] = (
        "y_true", "proba", "proba_clean", "rows", "l0", "l2", "linf", "proba_naive",
        "rejected", "rejected_clean")

    @property
    def correct_naive(self) -> np.ndarray | None:
        """Per row: right on the adversarial input made against the undefended model?"""
        if self.proba_naive is None:
            return None
        return np.asarray(self.proba_naive.argmax(axis=1) == self.y_true)

    @property
    def correct_before(self) -> np.ndarray:
        """Per row: right on the clean input?"""
        return np.asarray(self.proba_clean.argmax(axis=1) == self.y_true)

    @property
    def correct_after(self) -> np.ndarray:
        """Per row: still right on the adversarial input?"""
        return self.correct

    def per_row(self) -> dict[str, np.ndarray]:
        out = {"row": self.rows, "correct_before": self.correct_before,
               "correct_after": self.correct_after, "l0": self.l0, "l2": self.l2,
               "linf": self.linf}
        naive = self.correct_naive
        if naive is not None:
            out["correct_naive"] = naive
        if self.rejected is not None and self.rejected_clean is not None:
            out["rejected"] = self.rejected
            out["rejected_clean"] = self.rejected_clean
        return out

    def artifacts(self) -> dict[str, Any]:
        if not self.examples:
            return {}
        return {"examples": self.examples}


@dataclasses.dataclass
class PoisoningOutcome(Predictions):
    """The poisoned model's probabilities on the clean test set (``proba``), beside a
    reference model's. Built by :class:`gauntlet.PoisoningAttack`; every per-row array
    has one entry per test row.

    :param proba_reference: the same architecture trained by the same recipe and seed on
        the unpoisoned training set, on the same test rows: the damage is the difference.
    :param n_poisoned: training rows the attacker changed or added.
    :param n_train: training rows in all.
    :param proba_triggered: for backdoors, the poisoned model's probabilities on the test
        rows with the trigger applied (one per test row, same order).
    :param target: for targeted backdoors, the attacker's target class.
    :param rows: the test rows' indices in the evaluated test set.
    :param aimed: per test row, the class the attacker wants it read as, -1 for rows not
        aimed at (clean-label targets, a subpopulation); None for untargeted attacks.
    :param poisoned_rows: the training rows the attacker changed or added (indices into
        the poisoned training set), when the attack says.
    :param flagged: the training rows a poison filter removed (same indexing), for a
        cell under such a defense.
    :param rejected: per test row, did a run-time detector reject the clean input?
    :param rejected_triggered: the same for the triggered inputs (backdoors).
    :param poison_linf: per poisoned row, its L-infinity distance from its clean base
        (attacks that change inputs and say from what).
    :param poison_l2: the same in L2.
    :param notes: the attack's small facts for the report (plugin text).
    """

    proba_reference: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    n_poisoned: int = 0
    n_train: int = 0
    proba_triggered: np.ndarray | None = None
    target: int | None = None
    rows: np.ndarray | None = None
    aimed: np.ndarray | None = None
    poisoned_rows: np.ndarray | None = None
    flagged: np.ndarray | None = None
    rejected: np.ndarray | None = None
    rejected_triggered: np.ndarray | None = None
    poison_linf: np.ndarray | None = None
    poison_l2: np.ndarray | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    # Test rows only: the training-side arrays (poisoned_rows, flagged, poison_*) stay.
    row_fields: ClassVar[tuple[str, ...]] = (
        "y_true", "proba", "proba_reference", "proba_triggered", "rows", "aimed", "rejected",
        "rejected_triggered")

    @property
    def correct_reference(self) -> np.ndarray:
        """Per row: is the reference (unpoisoned) model right?"""
        return np.asarray(self.proba_reference.argmax(axis=1) == self.y_true)

    @property
    def correct_poisoned(self) -> np.ndarray:
        """Per row: is the poisoned model right on the clean input?"""
        return self.correct

    @property
    def hit(self) -> np.ndarray | None:
        """Per row, for targeted backdoors: does the trigger force the target class?"""
        if self.proba_triggered is None or self.target is None:
            return None
        return np.asarray(self.proba_triggered.argmax(axis=1) == self.target)

    def per_row(self) -> dict[str, np.ndarray]:
        rows = self.rows if self.rows is not None else np.arange(self.n, dtype=np.int64)
        out = {"row": rows, "correct_reference": self.correct_reference,
               "correct_poisoned": self.correct_poisoned}
        hit = self.hit
        if hit is not None:
            out["hit"] = hit
        if self.aimed is not None:
            out["aimed"] = np.asarray(self.aimed, dtype=np.int64)
        for name in ("rejected", "rejected_triggered"):
            value = getattr(self, name)
            if value is not None:
                out[name] = np.asarray(value, dtype=bool)
        return out

    def artifacts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.notes:
            out["notes"] = self.notes
        if self.flagged is not None:
            out["flagged"] = int(len(self.flagged))
        return out


@dataclasses.dataclass
class MembershipOutcome(Outcome):
    """Membership scores (higher means "member") on held-out evaluation rows. Built by
    :class:`gauntlet.MembershipAttack`.

    :param scores_members: scores of training rows (true members).
    :param scores_nonmembers: scores of rows the model never saw.
    :param threshold: the decision threshold the attack chose on its calibration half
        (score >= threshold means "member").
    :param rows_members: the members' indices in the training split, same order.
    :param rows_nonmembers: the non-members' indices in the test split, same order.
    """

    scores_members: np.ndarray
    scores_nonmembers: np.ndarray
    threshold: float
    rows_members: np.ndarray | None = None
    rows_nonmembers: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(len(self.scores_members) + len(self.scores_nonmembers))

    def resample(self, rng: np.random.Generator) -> MembershipOutcome:
        """Members and non-members resampled apart (a stratified bootstrap), so every
        resample keeps the audit's balance of the two."""
        m = rng.integers(0, len(self.scores_members), len(self.scores_members))
        k = rng.integers(0, len(self.scores_nonmembers), len(self.scores_nonmembers))
        return dataclasses.replace(
            self, scores_members=self.scores_members[m],
            scores_nonmembers=self.scores_nonmembers[k],
            rows_members=None if self.rows_members is None else self.rows_members[m],
            rows_nonmembers=None if self.rows_nonmembers is None else self.rows_nonmembers[k])

    def labels_and_scores(self) -> tuple[np.ndarray, np.ndarray]:
        y = np.r_[np.ones(len(self.scores_members)), np.zeros(len(self.scores_nonmembers))]
        s = np.r_[self.scores_members, self.scores_nonmembers].astype(np.float64)
        return y, s

    def per_row(self) -> dict[str, np.ndarray]:
        """Members first, then non-members: ``member``, ``score`` and, where known,
        ``row`` (an index in the training split for members, the test split otherwise)."""
        y, s = self.labels_and_scores()
        out = {"member": y.astype(bool), "score": s}
        if self.rows_members is not None and self.rows_nonmembers is not None:
            out = {"row": np.r_[self.rows_members, self.rows_nonmembers].astype(np.int64),
                   **out}
        return out

    def artifacts(self) -> dict[str, Any]:
        from sklearn.metrics import roc_curve

        y, s = self.labels_and_scores()
        fpr, tpr, _ = roc_curve(y, s)
        keep = thin_roc(fpr, ROC_POINTS)
        return {"roc": {"fpr": [round(float(v), 6) for v in fpr[keep]],
                        "tpr": [round(float(v), 6) for v in tpr[keep]]}}


#: Points of a stored ROC curve (a report draws the same shape from them).
ROC_POINTS = 200


def thin_roc(fpr: np.ndarray, points: int) -> np.ndarray:
    """Indices of at most about ``points`` points of an ROC curve (``fpr`` ascending),
    spaced evenly on a log scale of the false-positive rate, so the low-FPR end a
    log-axis chart and the TPR-at-low-FPR metrics are about keeps every step, while the
    upper end (where thousands of thresholds draw one line) is thinned. The first and last
    points are always kept."""
    n = len(fpr)
    if n <= points:
        return np.arange(n)
    positive = fpr[fpr > 0]
    low = positive.min() if len(positive) else 1.0
    targets = np.geomspace(low, 1.0, points - 2)
    # The last point at or below each target: every step of the curve's low end.
    picks = np.searchsorted(fpr, targets, side="right") - 1
    return np.unique(np.r_[0, np.clip(picks, 0, n - 1), n - 1])


@dataclasses.dataclass
class ProbeOutcome(Outcome):
    """What the model answers on inputs that belong to no class. Built by
    :class:`gauntlet.ProbeAttack`.

    :param proba: probabilities on the probe inputs, shape ``(N, C)``.
    """

    proba: np.ndarray

    row_fields: ClassVar[tuple[str, ...]] = ("proba",)

    @property
    def n(self) -> int:
        return int(len(self.proba))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.proba.argmax(axis=1), minlength=self.proba.shape[1])

    def per_row(self) -> dict[str, np.ndarray]:
        """Per probe input: the class the model gave it and that class's probability."""
        return {"predicted": self.proba.argmax(axis=1).astype(np.int64),
                "confidence": self.proba.max(axis=1, initial=0.0).astype(np.float32)}

    def artifacts(self) -> dict[str, Any]:
        return {"histogram": {"counts": [int(c) for c in self.class_counts()]}}


@dataclasses.dataclass
class TrainingOrderOutcome(ProbeOutcome):
    """The probe answers of models re-trained with one class last, beside models trained
    on shuffled rows by the same loop, seed for seed. Built by the ``training-order``
    probe.

    :param proba: the ordered models' probabilities on the probe inputs, seed after seed
        (``seeds * probes`` rows).
    :param proba_reference: the shuffled models' on the same inputs, same layout.
    :param last: the class trained last.
    :param seeds: how many seeds (models of each kind).
    :param accuracy: per seed, the ordered model's accuracy on the clean test rows.
    :param accuracy_reference: per seed, the shuffled model's.
    """

    proba_reference: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    last: int = 0
    seeds: int = 1
    accuracy: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    accuracy_reference: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    row_fields: ClassVar[tuple[str, ...]] = ()  # seeds x probes: its numbers are per seed

    def shares(self, reference: bool = False) -> np.ndarray:
        """Per seed, the share of probe inputs given class ``last``."""
        proba = self.proba_reference if reference else self.proba
        picked = proba.argmax(axis=1).reshape(self.seeds, -1)
        return np.asarray((picked == self.last).mean(axis=1), dtype=np.float64)

    def per_row(self) -> dict[str, np.ndarray]:
        return {}  # seeds x probes: no row of the test set to key them by

    def artifacts(self) -> dict[str, Any]:
        ref = np.bincount(self.proba_reference.argmax(axis=1),
                          minlength=self.proba_reference.shape[1])
        return {"histogram": {"counts": [int(c) for c in self.class_counts()]},
                "histogram_reference": {"counts": [int(c) for c in ref]},
                "last": int(self.last),
                "shares": [round(float(v), 4) for v in self.shares()],
                "shares_reference": [round(float(v), 4) for v in self.shares(True)],
                "accuracy": [round(float(v), 4) for v in self.accuracy],
                "accuracy_reference": [round(float(v), 4) for v in self.accuracy_reference]}


@dataclasses.dataclass
class ExtractionOutcome(Outcome):
    """A substitute model stolen through queries, compared with the victim on the test
    rows. Built by :class:`gauntlet.ExtractionAttack`.

    :param y_true: true labels of the test rows.
    :param proba_victim: the victim's probabilities on the test rows (as deployed).
    :param proba_substitute: the substitute's probabilities on the same rows.
    :param queries: rows the theft sent to the victim, counted by the Model.
    :param rows: the test rows' indices in the evaluated test set.
    :param notes: the attack's small facts for the report (which answers it read: labels
        or scores; rounds run), shown as plugin text.
    """

    y_true: np.ndarray
    proba_victim: np.ndarray
    proba_substitute: np.ndarray
    queries: int
    rows: np.ndarray | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    row_fields: ClassVar[tuple[str, ...]] = ("y_true", "proba_victim", "proba_substitute",
                                             "rows")

    def artifacts(self) -> dict[str, Any]:
        return {"notes": self.notes} if self.notes else {}

    @property
    def n(self) -> int:
        return int(len(self.y_true))

    @property
    def agree(self) -> np.ndarray:
        """Per row: does the substitute predict the victim's class?"""
        return np.asarray(self.proba_victim.argmax(axis=1) == self.proba_substitute.argmax(axis=1))

    @property
    def substitute_correct(self) -> np.ndarray:
        """Per row: is the substitute right on the true label?"""
        return np.asarray(self.proba_substitute.argmax(axis=1) == self.y_true)

    def per_row(self) -> dict[str, np.ndarray]:
        rows = self.rows if self.rows is not None else np.arange(self.n, dtype=np.int64)
        return {"row": rows, "agree": self.agree, "substitute_correct": self.substitute_correct}


@dataclasses.dataclass
class ServerViewOutcome(Outcome):
    """What a curious server learns about the inputs it serves.

    :param served: per row, the label the deployment served.
    :param guessed: per row, the server's guess of that label from what it saw.
    :param exposed: whether the server received the inputs in the clear.
    """

    served: np.ndarray
    guessed: np.ndarray
    exposed: bool

    row_fields: ClassVar[tuple[str, ...]] = ("served", "guessed")

    @property
    def n(self) -> int:
        return int(len(self.served))

    def per_row(self) -> dict[str, np.ndarray]:
        return {"row": np.arange(self.n, dtype=np.int64),
                "recovered": np.asarray(self.served == self.guessed)}


@dataclasses.dataclass
class TamperOutcome(Outcome):
    """What a malicious server makes the client receive.

    :param target: the class the server pushes every answer towards.
    :param served: per row, the label an honest server's answer gives.
    :param received: per row, the label the client gets from the tampered answer.
    """

    target: int
    served: np.ndarray
    received: np.ndarray

    row_fields: ClassVar[tuple[str, ...]] = ("served", "received")

    @property
    def moved(self) -> np.ndarray:
        """Rows whose honest answer is not already the target: those tampering must move."""
        return np.asarray(self.served != self.target)

    @property
    def n(self) -> int:
        return int(self.moved.sum())

    def per_row(self) -> dict[str, np.ndarray]:
        rows = np.flatnonzero(self.moved).astype(np.int64)
        return {"row": rows, "replaced": np.asarray(self.received[rows] == self.target)}


#: Neural Cleanse's rule: a class whose smallest trigger lies more than this many
#: (consistent) median absolute deviations below the classes' median is flagged.
ANOMALY_THRESHOLD = 2.0


def below_median(values: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """How many consistent median absolute deviations (1.4826 x MAD, at least ``floor``)
    each value lies below the values' median; 0 for those above it. Neural Cleanse's
    anomaly index, and ``gauntlet diff``'s test of one class's trigger shrinking."""
    v = np.asarray(values, dtype=np.float64)
    median = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - median)))
    # All values equal (MAD 0) and no floor: nothing stands out, unless one is smaller.
    scale = max(mad, floor) if max(mad, floor) > 0 else max(abs(median) * 1e-3, 1e-9)
    return np.clip((median - v) / scale, 0.0, None)


@dataclasses.dataclass
class TriggerScanOutcome(Outcome):
    """The smallest trigger found per class: a mask and pattern that, stamped on clean
    rows of the other classes, sends them to the class. Built by the ``trigger-scan``
    probe (Wang et al., 2019, "Neural Cleanse").

    A backdoored class needs a far smaller trigger than the others (the planted patch),
    so its size is an outlier. Sizes are in input pixels (the mask's L1 norm; a mask
    covers every channel of a pixel).

    :param size: per class, the L1 norm of the smallest mask that reached ``target_reach``
        of the rows; ``pixels`` (the whole input) where none did.
    :param reach: per class, the share of rows that mask sent to the class.
    :param pixels: pixels in one input (H x W).
    :param rows: rows the triggers were fitted on, per class.
    :param target_reach: the share of rows a trigger had to reach to count.
    """

    size: np.ndarray
    reach: np.ndarray
    pixels: int
    rows: int
    target_reach: float = 0.9

    @property
    def n(self) -> int:
        return int(self.rows)

    def anomaly(self) -> np.ndarray:
        """Per class, how many consistent median absolute deviations its trigger lies
        below the median size (Neural Cleanse's anomaly index; > 2 is flagged). Classes
        above the median score 0: only a small trigger is suspect."""
        return below_median(self.size)

    def flagged(self) -> list[int]:
        """The classes whose anomaly index exceeds :data:`ANOMALY_THRESHOLD`."""
        return [int(c) for c in np.flatnonzero(self.anomaly() > ANOMALY_THRESHOLD)]

    def artifacts(self) -> dict[str, Any]:
        return {"trigger_scan": {
            "size": [round(float(v), 4) for v in self.size],
            "reach": [round(float(v), 4) for v in self.reach],
            "anomaly": [round(float(v), 4) for v in self.anomaly()],
            "flagged": self.flagged(), "pixels": int(self.pixels), "rows": int(self.rows),
            "target_reach": float(self.target_reach)}}
