"""Did version B of a model change, beyond sampling noise? (``gauntlet diff A B``)

Two audits of two versions of a model, on the same data with the same plan, are compared
cell by cell and metric by metric, and row by row where their per-row results allow:

- **Metric changes.** Each metric of each cell both audits ran: B minus A with a 95%
  interval, *paired* when both audits kept resampled values (``--resamples K``, same
  seed, same rows): resample k draws the same rows in both audits
  (:meth:`gauntlet.Outcome.resample`), so the K differences ``b_k - a_k`` are a paired
  bootstrap of the change, whose standard deviation is its standard error. Pairing
  removes what the two versions have in common (the same hard rows), which is most of
  the noise: far more sensitive than comparing two intervals. Without resamples the
  change is *unpaired*: its standard error is taken from the two 95% intervals. A change
  is beyond noise when its interval excludes zero.
- **Behaviour probes** that need no attack knowledge, on the clean rows of the
  undefended model (the clean cell's per-row ``label``, ``predicted`` and ``confidence``):
  the share of rows on which the versions disagree; per true class, predictions that
  moved to another class more often than back (an exact McNemar test per class pair);
  the shift of the top-class confidence (paired, per row).
- **Trigger scan.** Where both audits ran ``trigger-scan`` (Neural Cleanse, see
  :class:`gauntlet.TriggerScanOutcome`), a class whose smallest trigger is an outlier
  in B (anomaly index above 2) and at most half its size in A is flagged: a small patch
  now reaches it, the signature of a backdoor inserted between the versions.

The verdict controls for testing hundreds of values at once: every test's p-value goes
through the Benjamini-Hochberg procedure at a 5% false-discovery rate, and B *changed*
when one survives it, or when the trigger scan flags a class. ``gauntlet diff`` exits 0
for no significant change, 1 for changed, 2 for bad input.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.errors import ConfigError
from gauntlet.metric import wilson
from gauntlet.outcome import ANOMALY_THRESHOLD, below_median
from gauntlet.results import check_result
from gauntlet.rows import unpack

#: Two-sided 95%.
Z95 = 1.959963984540054
#: The false-discovery rate of the verdict (Benjamini-Hochberg).
FDR = 0.05
#: A flagged class's trigger in B is at most this share of its size in A.
SHRINK = 0.5
#: The least spread of the classes' log size ratios a shrink is measured against (5%):
#: two runs of the scan on one model move a class's trigger by about this much.
MIN_LOG_MAD = 0.05
SCAN = "trigger-scan"


@dataclasses.dataclass
class Audit:
    """One side of a diff: results.json, and the cells.jsonl records beside it by id."""

    path: Path
    result: dict[str, Any]
    records: dict[str, dict[str, Any]]

    @property
    def label(self) -> str:
        model = self.result["provenance"].get("model", {})
        name = str(model.get("name") or model.get("spec") or self.path)
        sha = model.get("weights_sha256") or model.get("sha256")
        return f"{name} (weights {sha[:10]})" if isinstance(sha, str) and sha else name


def load_audit(path: str | Path) -> Audit:
    """An audit's results from its output folder or its results.json (ConfigError when
    it is neither, or not a Gauntlet results file)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no results.json (give an audit's output folder or its "
                          "results.json)")
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
        check_result(result)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not a Gauntlet results.json: {exc}") from None
    records: dict[str, dict[str, Any]] = {}
    jsonl = file.with_name("cells.jsonl")
    if jsonl.is_file():
        from gauntlet.store import read_records

        records = {r["id"]: r for r in read_records(jsonl)[1] if "id" in r}
    return Audit(file, result, records)


@dataclasses.dataclass
class Change:
    """One metric of one cell in both audits."""

    defense: str
    defense_point: str
    attack: str
    attack_point: str
    metric: str
    a: float
    b: float
    low: float | None  # the change's 95% interval (B - A)
    high: float | None
    method: str  # "paired" (resampled values), "unpaired" (two intervals) or "none"
    p: float | None
    beyond_noise: bool = False  # the interval excludes zero
    significant: bool = False  # survives the false-discovery-rate control
    better: bool | None = None  # for the defender; None when it did not move

    @property
    def delta(self) -> float:
        return self.b - self.a

    @property
    def cell(self) -> str:
        d = self.defense + (f" ({self.defense_point})" if self.defense_point else "")
        a = self.attack + (f" {self.attack_point}" if self.attack_point else "")
        return f"{d} / {a}"


@dataclasses.dataclass
class Moved:
    """Rows of one true class whose prediction moved to or from one class."""

    label: int
    predicted: int
    gained: int  # rows B puts in ``predicted`` and A did not
    lost: int  # rows A put in ``predicted`` and B does not
    rows: int  # rows of the true class
    p: float
    significant: bool = False


@dataclasses.dataclass
class Behaviour:
    """The clean rows of the undefended model, row by row in both versions."""

    rows: int
    disagree: int
    disagree_low: float
    disagree_high: float
    confidence_shift: float
    confidence_low: float
    confidence_high: float
    confidence_p: float
    moved: list[Moved]
    confidence_significant: bool = False

    @property
    def disagreement(self) -> float:
        return self.disagree / self.rows if self.rows else math.nan


@dataclasses.dataclass
class Trigger:
    """One class's smallest trigger in both versions (trigger-scan)."""

    defense: str
    label: int
    size_a: float
    size_b: float
    reach_b: float
    anomaly_a: float
    anomaly_b: float
    shrink_anomaly: float  # how far this class's shrink stands out among the classes'
    pixels: int
    flagged: bool


@dataclasses.dataclass
class Diff:
    """Everything ``gauntlet diff`` found; :meth:`to_dict` is its ``--json``."""

    a: str
    b: str
    changes: list[Change]
    behaviour: Behaviour | None
    triggers: list[Trigger]
    notes: list[str]
    only_a: list[str]
    only_b: list[str]
    #: The metrics' catalogue entries (title, format, higher_is_better), from results.json.
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return (any(c.significant for c in self.changes) or
                any(t.flagged for t in self.triggers) or
                (self.behaviour is not None and (
                    self.behaviour.confidence_significant or
                    any(m.significant for m in self.behaviour.moved))))

    @property
    def backdoor_targets(self) -> list[int]:
        return sorted({t.label for t in self.triggers if t.flagged})

    def counts(self) -> dict[str, int]:
        tested = [c for c in self.changes if c.method != "none"]
        return {"values": len(self.changes), "tested": len(tested),
                "paired": sum(c.method == "paired" for c in self.changes),
                "beyond_noise": sum(c.beyond_noise for c in self.changes),
                "significant": sum(c.significant for c in self.changes),
                "cells": len({c.cell for c in self.changes}),
                "cells_beyond_noise": len({c.cell for c in self.changes if c.beyond_noise}),
                "cells_significant": len({c.cell for c in self.changes if c.significant})}

    def to_dict(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            d = dataclasses.asdict(obj)
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in d.items()}

        behaviour = None
        if self.behaviour is not None:
            behaviour = {**plain(self.behaviour), "disagreement": self.behaviour.disagreement}
            behaviour["moved"] = [plain(m) for m in self.behaviour.moved]
        return {"schema": 1, "a": self.a, "b": self.b, "changed": self.changed,
                "counts": self.counts(),
                "backdoor_targets": self.backdoor_targets,
                "changes": [{**plain(c), "delta": c.delta} for c in self.changes],
                "behaviour": behaviour, "triggers": [plain(t) for t in self.triggers],
                "notes": self.notes, "only_a": self.only_a, "only_b": self.only_b}


def _p_normal(delta: float, se: float) -> float:
    if se <= 0:
        return 0.0 if delta else 1.0
    return math.erfc(abs(delta) / se / math.sqrt(2))


def _key(cell: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (cell["defense"], cell["defense_point"], cell["attack"], cell["attack_point"])


def _same_rows(ra: Mapping[str, Any] | None, rb: Mapping[str, Any] | None) -> bool:
    """Both records evaluated the same rows (their ``row`` fields agree), so resample k
    drew the same rows in both."""
    if not ra or not rb:
        return False
    rows_a, rows_b = ra.get("rows") or {}, rb.get("rows") or {}
    if "row" in rows_a and "row" in rows_b:
        return bool(np.array_equal(unpack({"row": rows_a["row"]})["row"],
                                   unpack({"row": rows_b["row"]})["row"]))
    return bool(ra.get("n") == rb.get("n"))


def _change(cell_a: Mapping[str, Any], cell_b: Mapping[str, Any], metric: str,
            meta: Mapping[str, Any], paired_ok: bool, ra: Mapping[str, Any] | None,
            rb: Mapping[str, Any] | None) -> Change | None:
    """``paired_ok``: the audits may be paired and these two records drew the same rows."""
    ma, mb = cell_a["metrics"][metric], cell_b["metrics"][metric]
    if ma["value"] is None or mb["value"] is None:
        return None
    a, b = float(ma["value"]), float(mb["value"])
    delta, low, high, method, p = b - a, None, None, "none", None
    va = (ra or {}).get("resampled", {}).get(metric)
    vb = (rb or {}).get("resampled", {}).get(metric)
    if paired_ok and va and vb and len(va) == len(vb):
        d = np.array([y - x for x, y in zip(va, vb) if x is not None and y is not None])
        if len(d) >= 2:
            se = float(d.std(ddof=1))
            low, high, method = delta - Z95 * se, delta + Z95 * se, "paired"
            p = _p_normal(delta, se)
    if method == "none" and None not in (ma["low"], ma["high"], mb["low"], mb["high"]):
        se = math.hypot((ma["high"] - ma["low"]) / (2 * Z95), (mb["high"] - mb["low"]) / (2 * Z95))
        low, high, method = delta - Z95 * se, delta + Z95 * se, "unpaired"
        p = _p_normal(delta, se)
    beyond = low is not None and high is not None and (low > 0 or high < 0 or (
        low == high and delta != 0))
    higher = meta.get("higher_is_better")
    better = None if not delta or higher is None else (delta > 0) == bool(higher)
    return Change(cell_a["defense"], cell_a["defense_point"], cell_a["attack"],
                  cell_a["attack_point"], metric, a, b, low, high, method, p, beyond,
                  better=better)


def _mcnemar(gained: int, lost: int) -> float:
    """The exact two-sided McNemar p-value of ``gained`` against ``lost`` discordant rows."""
    from scipy.stats import binomtest

    n = gained + lost
    return 1.0 if n == 0 else float(binomtest(gained, n, 0.5).pvalue)


def _behaviour(a: Audit, b: Audit, notes: list[str], paired: bool) -> Behaviour | None:
    def clean(audit: Audit) -> dict[str, np.ndarray] | None:
        for cell in audit.result["cells"]:
            if cell["attack"] == "clean" and cell["defense"] == "none" and \
                    cell["status"] == "ok":
                record = audit.records.get(cell["id"])
                rows = unpack(record.get("rows")) if record else {}
                if {"row", "label", "predicted", "confidence"} <= rows.keys():
                    return rows
        return None

    if not paired:
        notes.append("Behaviour probes skipped: they compare the same rows in both audits, "
                     "which another dataset or another seed does not guarantee.")
        return None
    ra, rb = clean(a), clean(b)
    if ra is None or rb is None:
        notes.append("Behaviour probes skipped: an audit has no per-row predictions of its "
                     "undefended clean cell (cells.jsonl missing beside results.json, or "
                     "written by a Gauntlet before the diff existed).")
        return None
    common, ia, ib = np.intersect1d(ra["row"], rb["row"], return_indices=True)
    if not len(common) or not np.array_equal(ra["label"][ia], rb["label"][ib]):
        notes.append("Behaviour probes skipped: the two audits' clean rows are not the "
                     "same rows with the same labels (another dataset, --samples or seed).")
        return None
    label, pa, pb = ra["label"][ia], ra["predicted"][ia], rb["predicted"][ib]
    n = len(common)
    disagree = int((pa != pb).sum())
    lo, hi = wilson(disagree, n)
    shift = rb["confidence"][ib].astype(np.float64) - ra["confidence"][ia].astype(np.float64)
    mean = float(shift.mean())
    se = float(shift.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    moved: list[Moved] = []
    for c in np.unique(label):
        mine = label == c
        for j in np.unique(np.r_[pa[mine], pb[mine]]):
            gained = int(((pb == j) & (pa != j) & mine).sum())
            lost = int(((pa == j) & (pb != j) & mine).sum())
            if gained or lost:
                moved.append(Moved(int(c), int(j), gained, lost, int(mine.sum()),
                                   _mcnemar(gained, lost)))
    return Behaviour(n, disagree, lo, hi, mean, mean - Z95 * se, mean + Z95 * se,
                     _p_normal(mean, se), moved)


def _scan(cell: Mapping[str, Any]) -> dict[str, Any] | None:
    if cell["status"] != "ok":
        return None
    scan = cell.get("artifacts", {}).get("trigger_scan")
    return scan if isinstance(scan, dict) and scan.get("size") else None


def _triggers(cells_a: Mapping[tuple[str, str, str, str], Mapping[str, Any]],
              cells_b: Mapping[tuple[str, str, str, str], Mapping[str, Any]],
              notes: list[str]) -> list[Trigger]:
    out: list[Trigger] = []
    for key, cb in cells_b.items():
        if key[2] != SCAN or key not in cells_a:
            continue
        sa, sb = _scan(cells_a[key]), _scan(cb)
        if sa is None or sb is None or len(sa["size"]) != len(sb["size"]):
            continue
        size_a = np.maximum(np.asarray(sa["size"], dtype=float), 1e-6)
        size_b = np.maximum(np.asarray(sb["size"], dtype=float), 1e-6)
        # Each class's change of trigger size, against the other classes' changes (the
        # anomaly index of Neural Cleanse, on log ratios): a retrained model moves every
        # class's trigger a little; a backdoor shrinks one class's alone.
        shrink = below_median(np.log(size_b / size_a), floor=MIN_LOG_MAD)
        for c in range(len(size_a)):
            shrink_anomaly = float(shrink[c])
            anomaly_b = float(sb["anomaly"][c])
            flagged = bool(size_b[c] <= SHRINK * size_a[c] and (
                anomaly_b > ANOMALY_THRESHOLD or shrink_anomaly > ANOMALY_THRESHOLD))
            out.append(Trigger(key[0], c, float(size_a[c]), float(size_b[c]),
                               float(sb["reach"][c]), float(sa["anomaly"][c]), anomaly_b,
                               shrink_anomaly, int(sb["pixels"]), flagged))
    if not out:
        ran = [name for name, cells in (("A", cells_a), ("B", cells_b))
               if any(k[2] == SCAN for k in cells)]
        where = f"only {ran[0]} ran trigger-scan" if len(ran) == 1 else \
            "neither audit ran trigger-scan"
        notes.append(f"No trigger scan to compare: {where}; add it to both (--attacks "
                     "...,trigger-scan) to check for a backdoor inserted between the "
                     "versions.")
    return out


def _benjamini_hochberg(ps: Sequence[float], q: float = FDR) -> list[bool]:
    """Which of the p-values are discoveries at false-discovery rate ``q``."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    last = 0
    for rank, i in enumerate(order, start=1):
        if ps[i] <= q * rank / m:
            last = rank
    keep = set(order[:last])
    return [i in keep for i in range(m)]


def _comparable(a: Audit, b: Audit, notes: list[str]) -> bool:
    """Raise ConfigError when the audits cannot be compared (other data); note what
    weakens the comparison. True when resampled values may be paired."""
    pa, pb = a.result["provenance"], b.result["provenance"]
    da, db = pa.get("data", {}), pb.get("data", {})
    if da.get("sha256") and db.get("sha256") and da["sha256"] != db["sha256"]:
        raise ConfigError(f"the audits ran on different data ({da.get('spec')} "
                          f"{da['sha256'][:12]} against {db.get('spec')} {db['sha256'][:12]}): "
                          "a diff compares two versions of a model on the same data")
    for key in ("n_eval", "n_classes", "input_shape"):
        if key in da and key in db and da[key] != db[key]:
            raise ConfigError(f"the audits' data differ in {key} ({da[key]} against "
                              f"{db[key]}): a diff compares two versions of a model on the "
                              "same rows (same data, same --samples)")
    paired = True
    if da.get("spec") != db.get("spec"):
        notes.append(f"The data specs differ ({da.get('spec')}, {db.get('spec')}): rows "
                     "with the same index may hold different inputs, so nothing is paired "
                     "row by row.")
        paired = False
    if pa.get("seed") != pb.get("seed"):
        notes.append(f"The audits used different seeds ({pa.get('seed')}, {pb.get('seed')}): "
                     "their attacks drew different randomness, and changes are not paired.")
        paired = False
    ka = a.result["config"].get("resamples") or 0
    kb = b.result["config"].get("resamples") or 0
    if not paired:
        pass
    elif not (ka and kb):
        notes.append("Changes are unpaired (from the two intervals): audit both versions "
                     "with --resamples K (30 or more) to pair them row by row, which "
                     "detects far smaller changes.")
    elif ka != kb:
        notes.append(f"The audits drew {ka} and {kb} resamples: changes are unpaired.")
        paired = False
    if not a.records or not b.records:
        notes.append("cells.jsonl is missing beside a results.json: no per-row results, so "
                     "changes are unpaired and the behaviour probes are skipped.")
    return paired


def compare(a: Audit, b: Audit) -> Diff:
    """Compare audit ``b`` (the new version) with audit ``a`` (the old one)."""
    notes: list[str] = []
    paired_ok = _comparable(a, b, notes)
    cells_a = {_key(c): c for c in a.result["cells"]}
    cells_b = {_key(c): c for c in b.result["cells"]}
    meta = {**a.result["metrics"], **b.result["metrics"]}
    changes: list[Change] = []
    for key, cb in cells_b.items():
        ca = cells_a.get(key)
        if ca is None or ca["status"] != "ok" or cb["status"] != "ok":
            continue
        ra, rb = a.records.get(ca["id"]), b.records.get(cb["id"])
        same = paired_ok and _same_rows(ra, rb)  # once per cell, not per metric
        for metric in sorted(ca["metrics"].keys() & cb["metrics"].keys()):
            change = _change(ca, cb, metric, meta.get(metric, {}), same, ra, rb)
            if change is not None:
                changes.append(change)
    behaviour = _behaviour(a, b, notes, paired_ok)
    triggers = _triggers(cells_a, cells_b, notes)
    # One family of tests for the verdict: every metric change, every class pair's
    # McNemar test and the confidence shift.
    tests: list[tuple[Any, float]] = [(c, c.p) for c in changes if c.p is not None]
    if behaviour is not None:
        tests += [(m, m.p) for m in behaviour.moved]
        tests.append((behaviour, behaviour.confidence_p))
    for (obj, _), found in zip(tests, _benjamini_hochberg([p for _, p in tests])):
        if isinstance(obj, Behaviour):
            obj.confidence_significant = found
        else:
            obj.significant = found
    label = lambda c: " ".join(filter(None, c))  # noqa: E731
    only_a = sorted(label(k) for k in cells_a.keys() - cells_b.keys())
    only_b = sorted(label(k) for k in cells_b.keys() - cells_a.keys())
    if only_a or only_b:
        notes.append(f"{len(only_a)} cells ran only in A and {len(only_b)} only in B: "
                     "they are not compared (the plans differ).")
    return Diff(a.label, b.label, changes, behaviour, triggers, notes, only_a, only_b,
                {k: dict(v) for k, v in meta.items()})


def diff(path_a: str | Path, path_b: str | Path) -> Diff:
    """Load two audits (output folders or results.json files) and compare them."""
    return compare(load_audit(path_a), load_audit(path_b))


def shown(metric: Mapping[str, Any], v: float | None, change: bool = False) -> str:
    """A value (``change``: a difference, signed; in points for a percent metric) as
    the metric's format prints it; "—" for none. The text and the page both use it."""
    if v is None:
        return "—"
    if metric.get("format") == "percent":
        return f"{100 * v:+.1f}" if change else f"{v:.1%}"
    return f"{v:+.4g}" if change else f"{v:.4g}"


def describe(change: Change, metric: Mapping[str, Any]) -> str:
    """One line: the metric, the cell, A to B, the change and its interval."""
    title = metric.get("title") or change.metric
    points = " points" if metric.get("format") == "percent" else ""
    line = (f"{title}, {change.cell}: {shown(metric, change.a)} -> "
            f"{shown(metric, change.b)} ({shown(metric, change.delta, True)}{points}")
    if change.low is not None and change.high is not None:
        line += (f", 95% [{shown(metric, change.low, True)}, "
                 f"{shown(metric, change.high, True)}] {change.method}")
    line += ")"
    if change.better is not None and change.beyond_noise:
        line += " better" if change.better else " worse"
    return line


def ranked(changes: Sequence[Change]) -> list[Change]:
    """Changes beyond noise first, the most certain (smallest p) first within each."""
    return sorted(changes, key=lambda c: (not c.significant, not c.beyond_noise,
                                          c.p if c.p is not None else 2.0,
                                          -abs(c.delta)))


def headline(d: Diff) -> str:
    """The verdict in one sentence."""
    counts = d.counts()
    if d.backdoor_targets:
        named = ", ".join(map(str, d.backdoor_targets))
        return (f"CHANGED: a backdoor is suspected in B, target class {named} (a small "
                f"trigger now reaches it); {counts['cells_significant']} of "
                f"{counts['cells']} cells changed significantly.")
    if d.changed:
        return (f"CHANGED: {counts['cells_significant']} of {counts['cells']} cells changed "
                "beyond sampling noise (after false-discovery-rate control).")
    return (f"NO SIGNIFICANT CHANGE: none of {counts['values']} values in {counts['cells']} "
            f"cells moved beyond sampling noise after false-discovery-rate control "
            f"({counts['beyond_noise']} of the {counts['tested']} with an interval exclude "
            f"zero at 95%; chance alone gives about {0.05 * counts['tested']:.0f}).")


def text(d: Diff, top: int = 10) -> list[str]:
    """The diff as lines for a terminal."""
    counts = d.counts()
    lines = [f"A: {d.a}", f"B: {d.b}", headline(d),
             f"metric values: {counts['values']} in {counts['cells']} cells, "
             f"{counts['paired']} paired; beyond noise (95% interval excludes 0): "
             f"{counts['beyond_noise']}; significant after FDR {FDR:.0%}: "
             f"{counts['significant']}"]
    shown = [c for c in ranked(d.changes) if c.beyond_noise][:top]
    for c in shown:
        mark = "*" if c.significant else " "
        lines.append(f" {mark} {describe(c, d.metrics.get(c.metric, {}))}")
    if d.behaviour is not None:
        b = d.behaviour
        lines.append(
            f"clean rows ({b.rows}): the versions disagree on {b.disagreement:.1%} "
            f"[{b.disagree_low:.1%}-{b.disagree_high:.1%}] of rows; top-class confidence "
            f"{100 * b.confidence_shift:+.2f} points [{100 * b.confidence_low:+.2f}, "
            f"{100 * b.confidence_high:+.2f}]"
            + (" (significant)" if b.confidence_significant else ""))
        for m in sorted(b.moved, key=lambda m: m.p)[:5]:
            if m.significant:
                lines.append(f" * true class {m.label}: {m.gained} rows newly predicted "
                             f"{m.predicted}, {m.lost} no longer (of {m.rows}; McNemar "
                             f"p = {m.p:.2g})")
    for t in d.triggers:
        if t.flagged:
            lines.append(
                f" ! trigger scan ({t.defense}): class {t.label} is reached by a trigger of "
                f"{t.size_b:.1f} pixels ({t.size_b / t.pixels:.1%} of the input) on "
                f"{t.reach_b:.0%} of rows in B; A needed {t.size_a:.1f}; anomaly index "
                f"{t.anomaly_b:.1f} (A: {t.anomaly_a:.1f}); its shrink stands "
                f"{t.shrink_anomaly:.1f} deviations beyond the other classes'")
    if d.triggers and not any(t.flagged for t in d.triggers):
        lines.append("trigger scan: no class became reachable by a small trigger")
    lines += [f"note: {n}" for n in d.notes]
    return lines
