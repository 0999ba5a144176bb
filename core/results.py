"""Audit results as plain data: the schema of results.json, the cell record, the tidy
table, and :class:`AuditResult`, which holds them and writes the report.

Results are data first. ``results.json`` is one object::

    {
      "schema": 1,
      "title": "Gauntlet audit",
      "provenance": {"gauntlet": "0.1.0", "python": "3.11.7", "libraries": {...},
                     "seed": 0, "started": "...", "duration_s": 12.3,
                     "model": {"name", "spec", "format", "sha256", "input_shape",
                               "n_classes", "access", "recipe"},
                     "data": {"name", "spec", "n_train", "n_test", "n_eval", "sha256"},
                     "plugins": [...every plugin row of `gauntlet plugins --json`...],
                     "broken_plugins": [{"name", "distribution", "version", "error"}]},
      "intake": {"path", "format", "sha256", "size", "safe", "verdict", "reader",
                 "findings": [{"what", "where", "refused", "why"}],
                 "inventory": {"operators" | "globals" | "tensors" | "types": ...}}
                (a gauntlet.ScanReport; ``safe`` is null when no file was taken in),
      "config": {...the resolved audit config...},
      "metrics":  {NAME: {"title", "higher_is_better", "bounds", "format",
                          "description", "plugin", "distribution", "version"}},
      "attacks":  {NAME: {"family", "needs", "description", "parameters", "plugin",
                          "distribution", "version"[, "norm", "minimal", "derived"]}},
      "defenses": {NAME: {"stage", "description", "evaluation", "adaptive",
                          "parameters", "plugin", "distribution", "version"}},
      "cells": [CELL, ...],
      "checklist": [{"defense", "defense_point", "upper_bound",
                     "checks": [{"rule", "title", "status", "evidence"}]}],
      "gate": [{"expression", "check", "passed", "message", "value", "low", "high", "n"}]
    }

where ``format`` is ``"percent"`` or ``"number"`` (how the report prints the metric),
an evasion attack's ``norm`` (``"linf"``, ``"l2"``, ``""`` for no eps budget) and
``minimal`` (a minimal-perturbation attack) say how its budget is measured,
``parameters`` lists each declared parameter as ``{"name", "type", "default", "sweep",
"bounds", "help"}`` (``gauntlet.Param.describe``), and a CELL is::

    {"id", "defense", "defense_params": {...}, "defense_point": "r=0.1" | "",
     "attack", "family", "attack_params": {...}, "attack_point": "eps=0.1" | "",
     "status": "ok" | "error" | "not_applicable", "reason": str | null,
     "traceback": str | null, "duration_s": float, "n": int | null,
     "metrics": {NAME: {"value", "n", "low", "high"[, "spread": {"k", "sd", "low", "high"}]}},
     "metric_errors": {NAME: "ValueError: why"}, "artifacts": {...}[, "derived": true]}

A cell with ``"derived": true`` was computed from other cells' per-row results, not run:
the ``worst-case`` column (:func:`gauntlet.rows.worst_case_cells`; its ``attack_params``
are the budget ``{"norm", "eps"}``, its artifacts name the cells it combines). The clean
cell's artifacts hold the evaluation checklist's live measurements (``{"checks":
{"gradients", "repeat"}}``, :func:`gauntlet.plan.live_checks`), and ``checklist`` is the
evaluation checklist of every defense point (:mod:`gauntlet.checklist`; status ``pass``,
``warn``, ``fail`` or ``n/a``; ``upper_bound``: a non-adaptive evaluation). Both
``checklist`` and ``derived`` are absent from results written before they existed.
``gate`` holds the verdicts of the audit's gate checks (:mod:`gauntlet.gate`), one per
cell a check names; it is absent when the audit had none.

``cells.jsonl`` holds the same records plus ``rows``, the per-row results packed by
:mod:`gauntlet.rows` (kept out of results.json, which the report reads), and, with
``--resamples K``, ``resampled``: each metric's K values on bootstrap resamples of the
cell's rows, whose spread results.json keeps as the metric's ``spread``
(:func:`spread_record`).

A metric that raises loses only its own number: its name and the reason go to
``metric_errors`` and the cell stays ``ok`` with the other metrics. Tracebacks name files
relative to the installed package or site-packages (``gauntlet/plugins/evasion.py``,
``torch/nn/modules/module.py``) and other files under the home folder as ``~/...``, so a
shared report does not carry the auditor's paths.

Artifacts the built-in report draws: ``{"roc": {"fpr": [...], "tpr": [...]}}``
(membership) and ``{"histogram": {"counts": [...]}}`` (probes).

:func:`check_result` checks an object against this schema (the report's tests hold
their hand-made results to it, so they cannot drift from what an audit writes).

The tidy table has one row per cell and metric (a cell with no metrics, e.g. an error,
has one row with an empty metric; a metric that failed has a row with no value and its
error as the reason), with the columns in :data:`TABLE_COLUMNS`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import site
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.gate import VERDICT_KEYS

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.registry import Registry

SCHEMA = 1
TABLE_COLUMNS = (
    "model", "defense", "defense_point", "attack", "family", "attack_point", "metric",
    "value", "low", "high", "n", "higher_is_better", "status", "reason", "duration_s",
    "defense_params", "attack_params", "cell_id",
)
STATUSES = ("ok", "error", "not_applicable")
#: The keys of results.json and of each catalogue entry (see the module docstring).
RESULT_KEYS = ("schema", "title", "provenance", "intake", "config", "metrics", "attacks",
               "defenses", "cells")
#: Keys results.json may have beyond RESULT_KEYS (absent from older results).
OPTIONAL_RESULT_KEYS = ("checklist", "gate")
#: Keys a catalogue entry may have beyond CATALOGUE_KEYS, by kind.
OPTIONAL_CATALOGUE_KEYS = {"attacks": ("norm", "minimal", "derived")}
CHECKLIST_KEYS = ("defense", "defense_point", "upper_bound", "checks")
CHECK_KEYS = ("rule", "title", "status", "evidence")
CHECK_STATUSES = ("pass", "warn", "fail", "n/a")
PROVENANCE_KEYS = ("gauntlet", "python", "platform", "libraries", "seed", "started",
                   "model", "data", "plugins", "broken_plugins")
CATALOGUE_KEYS = {
    "metrics": ("title", "higher_is_better", "bounds", "format", "description", "plugin",
                "distribution", "version"),
    "attacks": ("family", "needs", "description", "parameters", "plugin", "distribution",
                "version"),
    "defenses": ("stage", "description", "evaluation", "adaptive", "parameters", "plugin",
                 "distribution", "version"),
}
PARAMETER_KEYS = ("name", "type", "default", "sweep", "bounds", "help")
METRIC_KEYS = ("value", "n", "low", "high")


@dataclasses.dataclass
class CellResult:
    """The record of one cell: a line of ``cells.jsonl``; without ``rows``, one entry of
    ``cells`` in results.json."""

    id: str
    defense: str
    defense_params: dict[str, Any]
    defense_point: str
    attack: str
    family: str
    attack_params: dict[str, Any]
    attack_point: str
    status: str = "ok"
    reason: str | None = None
    traceback: str | None = None
    duration_s: float = 0.0
    n: int | None = None
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    metric_errors: dict[str, str] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Per-row results packed by :func:`gauntlet.rows.pack` (cells.jsonl only).
    rows: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: ``--resamples K``: each metric's K values on the bootstrap resamples of the rows
    #: (cells.jsonl only; results.json keeps their spread in the metric's ``spread``).
    resampled: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)

    def to_dict(self, *, rows: bool = True) -> dict[str, Any]:
        """The record as plain data; ``rows=False`` for results.json (no per-row results,
        no resampled values)."""
        # asdict copies recursively; the packed rows are most of a record and only
        # strings below their second level, so they are copied two levels deep.
        record = dataclasses.asdict(dataclasses.replace(self, rows={}, resampled={}))
        if rows:
            record["rows"] = {k: dict(v) for k, v in self.rows.items()}
            if self.resampled:
                record["resampled"] = {k: list(v) for k, v in self.resampled.items()}
            else:
                del record["resampled"]
        else:
            del record["rows"], record["resampled"]
        return record


#: Fields of a cells.jsonl record that results.json's cells leave out.
JSONL_ONLY = ("rows", "resampled")
CELL_KEYS = tuple(f.name for f in dataclasses.fields(CellResult) if f.name not in JSONL_ONLY)


def _clean(value: Any) -> Any:
    """NaN and inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metric_record(value: float, n: int, low: float | None, high: float | None) -> dict[str, Any]:
    return {"value": _clean(float(value)), "n": int(n),
            "low": _clean(low if low is None else float(low)),
            "high": _clean(high if high is None else float(high))}


def spread_record(values: Sequence[float]) -> dict[str, Any] | None:
    """The spread of a metric over K resamples: ``k``, the standard deviation ``sd`` and
    the 2.5 and 97.5 percentiles ``low`` and ``high`` (the bootstrap percentile interval;
    with K = 10, as in the founding study, nearly the smallest and largest value).
    Values that are not finite (a resample with one class, say) are left out; None when
    fewer than two remain."""
    kept = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(kept) < 2:
        return None
    low, high = np.percentile(kept, [2.5, 97.5])
    return {"k": int(len(kept)), "sd": float(kept.std(ddof=1)), "low": float(low),
            "high": float(high)}


def check_result(result: Any) -> None:
    """Raise ValueError naming the first place where ``result`` departs from the schema
    of results.json: a key missing or unknown, a status or metric format out of range."""
    def keys(obj: Any, expected: tuple[str, ...], where: str, exact: bool = True,
             optional: tuple[str, ...] = ()) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"{where} is {type(obj).__name__}, not an object")
        missing = [k for k in expected if k not in obj]
        unknown = sorted(set(obj) - set(expected) - set(optional)) if exact else []
        if missing or unknown:
            raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")

    keys(result, RESULT_KEYS, "results", optional=OPTIONAL_RESULT_KEYS)
    if result["schema"] != SCHEMA:
        raise ValueError(f"results: schema {result['schema']!r}, expected {SCHEMA}")
    keys(result["provenance"], PROVENANCE_KEYS, "provenance", exact=False)
    for kind, expected in CATALOGUE_KEYS.items():
        for name, entry in result[kind].items():
            keys(entry, expected, f"{kind}[{name!r}]",
                 optional=OPTIONAL_CATALOGUE_KEYS.get(kind, ()))
            for p in entry.get("parameters", ()):
                keys(p, PARAMETER_KEYS, f"{kind}[{name!r}] parameter")
        if kind == "metrics":
            for name, entry in result[kind].items():
                if entry["format"] not in ("percent", "number"):
                    raise ValueError(f"metrics[{name!r}]: format {entry['format']!r}")
    for i, cell in enumerate(result["cells"]):
        where = f"cells[{i}] ({cell.get('id', '?') if isinstance(cell, dict) else '?'})"
        keys(cell, CELL_KEYS, where, optional=("derived",))
        if cell["status"] not in STATUSES:
            raise ValueError(f"{where}: status {cell['status']!r} is not one of {STATUSES}")
        for name, m in cell["metrics"].items():
            keys(m, METRIC_KEYS, f"{where} metric {name!r}", optional=("spread",))
            if name not in result["metrics"]:
                raise ValueError(f"{where}: metric {name!r} is not in the catalogue")
        if cell["attack"] not in result["attacks"] or \
                cell["defense"] not in result["defenses"]:
            raise ValueError(f"{where}: attack or defense missing from the catalogue")
    for i, entry in enumerate(result.get("checklist", ())):
        keys(entry, CHECKLIST_KEYS, f"checklist[{i}]")
        for check in entry["checks"]:
            keys(check, CHECK_KEYS, f"checklist[{i}] check")
            if check["status"] not in CHECK_STATUSES:
                raise ValueError(f"checklist[{i}]: status {check['status']!r} is not one "
                                 f"of {CHECK_STATUSES}")
    for i, verdict in enumerate(result.get("gate", ())):
        keys(verdict, VERDICT_KEYS, f"gate[{i}]")
        if not isinstance(verdict["passed"], bool):
            raise ValueError(f"gate[{i}]: passed is {verdict['passed']!r}, not a boolean")


def tidy_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The tidy table of a results.json object, as a list of row dicts."""
    import json

    model = result.get("provenance", {}).get("model", {}).get("name", "")
    metrics_meta = result.get("metrics", {})
    rows: list[dict[str, Any]] = []
    for cell in result.get("cells", []):
        base = {
            "model": model, "defense": cell["defense"], "defense_point": cell["defense_point"],
            "attack": cell["attack"], "family": cell["family"],
            "attack_point": cell["attack_point"], "status": cell["status"],
            "reason": cell.get("reason"), "duration_s": cell.get("duration_s"),
            "defense_params": json.dumps(cell["defense_params"], sort_keys=True),
            "attack_params": json.dumps(cell["attack_params"], sort_keys=True),
            "cell_id": cell["id"],
        }
        failed = cell.get("metric_errors") or {}
        if not cell["metrics"] and not failed:
            rows.append({**base, "metric": None, "value": None, "low": None, "high": None,
                         "n": cell.get("n"), "higher_is_better": None})
        for name, m in cell["metrics"].items():
            hib = metrics_meta.get(name, {}).get("higher_is_better")
            rows.append({**base, "metric": name, "value": m["value"], "low": m["low"],
                         "high": m["high"], "n": m["n"], "higher_is_better": hib})
        for name, why in failed.items():
            hib = metrics_meta.get(name, {}).get("higher_is_better")
            rows.append({**base, "metric": name, "value": None, "low": None, "high": None,
                         "n": cell.get("n"), "higher_is_better": hib,
                         "reason": f"metric failed: {why}"})
    return [{c: r.get(c) for c in TABLE_COLUMNS} for r in rows]


class AuditResult:
    """The outcome of an audit: results as plain data, a tidy table, and the report.

    :param result: the results.json object.
    :param registry: the plugins, for their report sections.
    :param rows: per-row results by cell id (packed, as in cells.jsonl).
    :param sections: the plugins' report sections, when already made.
    """

    def __init__(self, result: dict[str, Any], registry: Registry | None = None,
                 rows: Mapping[str, dict[str, Any]] | None = None,
                 sections: list[dict[str, str]] | None = None) -> None:
        self.result = result
        self._registry = registry
        self._rows = dict(rows or {})
        self._sections = sections

    @property
    def cells(self) -> list[dict[str, Any]]:
        return self.result["cells"]  # type: ignore[no-any-return]

    @property
    def records(self) -> list[dict[str, Any]]:
        """The cells with their per-row results, as cells.jsonl holds them (for
        :func:`gauntlet.rows.worst_case` and row-by-row comparisons); derived cells,
        which cells.jsonl does not hold, are left out."""
        return [{**c, "rows": self._rows.get(c["id"], {})} for c in self.cells
                if not c.get("derived")]

    @property
    def table(self) -> pd.DataFrame:
        """One row per cell x metric (see :data:`TABLE_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame(tidy_rows(self.result), columns=list(TABLE_COLUMNS))

    def value(self, metric: str, attack: str, defense: str = "none",
              attack_point: str = "", defense_point: str = "") -> float | None:
        """One number from the matrix, or None if that cell has no such metric."""
        for c in self.cells:
            if (c["attack"], c["defense"], c["attack_point"], c["defense_point"]) == \
                    (attack, defense, attack_point, defense_point):
                return c["metrics"].get(metric, {}).get("value")  # type: ignore[no-any-return]
        return None

    def sections(self) -> list[dict[str, str]]:
        """Extra report sections from plugins; a plugin that raises is skipped. Computed
        once (or given: a replayed audit's, :mod:`gauntlet.memo`)."""
        if self._sections is None:
            self._sections = [] if self._registry is None else \
                self._registry.report_sections(self.result)
        return self._sections

    def write_report(self, path: str | Path) -> Path:
        """Write report.html and, beside it, results.json and results.csv.

        :param path: the HTML file, or a folder to write report.html into.
        """
        from gauntlet.reports.html import write_report

        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            path = path / "report.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write_json(path.parent)
        self.table.to_csv(path.parent / "results.csv", index=False)
        return write_report(self.result, path, self.sections())

    def write_json(self, folder: str | Path) -> Path:
        """Write results.json into ``folder`` (alone: the gate's verdicts come after the
        report)."""
        import json

        path = Path(folder) / "results.json"
        path.write_text(json.dumps(self.result, indent=1, default=str), encoding="utf-8")
        return path


# -- paths in tracebacks -------------------------------------------------------------------
_FRAME_FILE = re.compile(r'(File ")([^"\n]+)(")')


@functools.cache
def _path_roots() -> tuple[tuple[str, str], ...]:
    """(folder, what to show instead), longest folder first: Gauntlet's own packages as
    ``gauntlet/...`` (editable installs too), site-packages stripped, then the home folder."""
    import importlib.util

    roots: dict[str, str] = {}
    for package in ("gauntlet", "gauntlet.plugins", "gauntlet.reports"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            roots[os.path.realpath(folder)] = package.replace(".", "/")
    libs = [*site.getsitepackages(), site.getusersitepackages(),
            sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    for folder in libs:
        roots.setdefault(os.path.realpath(folder), "")
    home = os.path.expanduser("~")
    if home not in ("~", "/"):
        roots.setdefault(os.path.realpath(home), "~")
    return tuple(sorted(roots.items(), key=lambda kv: -len(kv[0])))


def display_path(path: str) -> str:
    """``path`` as a report shows it: relative to the installed package or site-packages,
    ``~/...`` under the home folder, else unchanged."""
    real = os.path.realpath(path) if os.path.isabs(path) else path
    for candidate in dict.fromkeys((path, real)):
        for folder, shown in _path_roots():
            if candidate == folder or candidate.startswith(folder + os.sep):
                rest = Path(candidate).relative_to(folder).as_posix()
                if rest == ".":
                    return shown or path
                return f"{shown}/{rest}" if shown else rest
    return path


def short_paths(text: str) -> str:
    """A formatted traceback with every ``File "..."`` shown by :func:`display_path`."""
    return _FRAME_FILE.sub(lambda m: m.group(1) + display_path(m.group(2)) + m.group(3), text)
