"""Audit results as plain data: the schema of results.json and the tidy table.

Results are data first. ``results.json`` is one object::

    {
      "schema": 1,
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
      "metrics":  {NAME: {"title", "higher_is_better", "bounds", "description",
                          "plugin", "distribution", "version"}},
      "attacks":  {NAME: {"family", "needs", "description", "plugin", "distribution",
                          "version"}},
      "defenses": {NAME: {"stage", "description", "evaluation", "adaptive", "plugin",
                          "distribution", "version"}},
      "cells": [CELL, ...]
    }

and a CELL is::

    {"id", "defense", "defense_params": {...}, "defense_point": "r=0.1" | "",
     "attack", "family", "attack_params": {...}, "attack_point": "eps=0.1" | "",
     "status": "ok" | "error" | "not_applicable", "reason": str | null,
     "traceback": str | null, "duration_s": float, "n": int | null,
     "metrics": {NAME: {"value", "n", "low", "high"}},
     "metric_errors": {NAME: "ValueError: why"}, "artifacts": {...}}

A metric that raises loses only its own number: its name and the reason go to
``metric_errors`` and the cell stays ``ok`` with the other metrics. Tracebacks name files
relative to the installed package or site-packages (``gauntlet/plugins/evasion.py``,
``torch/nn/modules/module.py``) and other files under the home folder as ``~/...``, so a
shared report does not carry the auditor's paths.

Artifacts the built-in report draws: ``{"roc": {"fpr": [...], "tpr": [...]}}``
(membership) and ``{"histogram": {"counts": [...]}}`` (probes).

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
from pathlib import Path
from typing import Any

SCHEMA = 1
TABLE_COLUMNS = (
    "model", "defense", "defense_point", "attack", "family", "attack_point", "metric",
    "value", "low", "high", "n", "higher_is_better", "status", "reason", "duration_s",
    "defense_params", "attack_params", "cell_id",
)


@dataclasses.dataclass
class CellResult:
    """The record of one cell (one row of ``cells`` in results.json)."""

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _clean(value: Any) -> Any:
    """NaN and inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metric_record(value: float, n: int, low: float | None, high: float | None) -> dict[str, Any]:
    return {"value": _clean(float(value)), "n": int(n),
            "low": _clean(low if low is None else float(low)),
            "high": _clean(high if high is None else float(high))}


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
