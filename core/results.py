"""Audit results as plain data: the schema of results.json and the tidy table.

Results are data first. ``results.json`` is one object::

    {
      "schema": 1,
      "provenance": {"gauntlet": "0.1.0", "python": "3.11.7", "libraries": {...},
                     "seed": 0, "started": "...", "duration_s": 12.3,
                     "model": {"name", "spec", "format", "sha256", "input_shape",
                               "n_classes", "access", "recipe"},
                     "data": {"name", "spec", "n_train", "n_test", "n_eval", "sha256"}},
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
     "metrics": {NAME: {"value", "n", "low", "high"}}, "artifacts": {...}}

Artifacts the built-in report draws: ``{"roc": {"fpr": [...], "tpr": [...]}}``
(membership) and ``{"histogram": {"counts": [...]}}`` (probes).

The tidy table has one row per cell and metric (a cell with no metrics, e.g. an error,
has one row with an empty metric), with the columns in :data:`TABLE_COLUMNS`.
"""
from __future__ import annotations

import dataclasses
import math
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
        if not cell["metrics"]:
            rows.append({**base, "metric": None, "value": None, "low": None, "high": None,
                         "n": cell.get("n"), "higher_is_better": None})
        for name, m in cell["metrics"].items():
            hib = metrics_meta.get(name, {}).get("higher_is_better")
            rows.append({**base, "metric": name, "value": m["value"], "low": m["low"],
                         "high": m["high"], "n": m["n"], "higher_is_better": hib})
    return [{c: r.get(c) for c in TABLE_COLUMNS} for r in rows]
