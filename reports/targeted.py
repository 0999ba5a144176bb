"""Targeted poisoning: the groups and instances an attack aimed at, worst first.

A subpopulation attack (Jagielski et al., 2021) is meant to be stealthy: it damages one
group and leaves everyone else's accuracy where it was, so the report lists every group
tried with its size, the accuracy lost on it (target) and on everyone else (collateral),
sorted by the target damage. Clean-label attacks aimed at chosen test instances are listed
the same way. Read from each cell's metrics and its ``notes`` artifacts (plugin text,
escaped by the template).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from gauntlet.reports.tables import format_value, label, metric_meta


@dataclasses.dataclass(frozen=True)
class TargetedRow:
    defense: str
    attack: str
    target: str  # "loan_grade=G" or "5 target instances"
    size: str  # "42 train / 14 test rows"
    target_accuracy: str  # "41.0% (−59.0%)"
    collateral_accuracy: str
    success: str
    drop: float  # for sorting


def _value(cell: Mapping[str, Any], name: str) -> float | None:
    v = (cell.get("metrics") or {}).get(name, {}).get("value")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _with_drop(result: Mapping[str, Any], cell: Mapping[str, Any], acc: str, drop: str) -> str:
    text = format_value(_value(cell, acc), metric_meta(result, acc))
    d = _value(cell, drop)
    if d is None:
        return text
    change = format_value(-d, metric_meta(result, drop))
    if not change.strip("-0.%"):  # "-0.0%": no change to the precision shown
        return f"{text} ({change.lstrip('-')})"
    return f"{text} ({'+' if -d > 0 else ''}{change})"


def targeted_rows(result: Mapping[str, Any]) -> list[TargetedRow]:
    """One row per completed cell that aimed at chosen test rows, largest target accuracy
    drop first."""
    rows = []
    for cell in result.get("cells", []):
        if cell.get("status") != "ok" or _value(cell, "target_accuracy") is None:
            continue
        notes = (cell.get("artifacts") or {}).get("notes") or {}
        n_test = (cell.get("metrics") or {}).get("target_accuracy", {}).get("n")
        target = notes.get("subpopulation") or notes.get("description") or (
            f"{n_test} target rows" if n_test is not None else "—")
        sizes = []
        if isinstance(notes.get("train_rows"), int):
            sizes.append(f"{notes['train_rows']} train")
        if isinstance(n_test, int):
            sizes.append(f"{n_test} test rows")
        rows.append(TargetedRow(
            defense=label(cell["defense"], cell.get("defense_point") or ""),
            attack=label(cell["attack"], cell.get("attack_point") or ""),
            target=str(target), size=" / ".join(sizes) or "—",
            target_accuracy=_with_drop(result, cell, "target_accuracy", "target_drop"),
            collateral_accuracy=_with_drop(result, cell, "collateral_accuracy",
                                           "collateral_drop"),
            success=format_value(_value(cell, "target_success"),
                                 metric_meta(result, "target_success")),
            drop=_value(cell, "target_drop") or 0.0))
    rows.sort(key=lambda r: -r.drop)
    return rows
