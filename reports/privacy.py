"""The report's privacy section: what membership attacks learn, at what utility cost.

Carlini et al. (2022) argue that average-case numbers (accuracy, AUC) hide the leak that
matters, a few training rows an attacker can name with near certainty, and report the
true-positive rate at a very low false-positive rate instead. The section lists every
membership cell with both, beside the clean accuracy of the defense row it ran under
(the utility the defense costs), and the summary names the strongest attack on the
undefended model by its TPR at 0.1% FPR.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from gauntlet.reports.tables import format_value, label, metric_meta

MEMBERSHIP_FAMILY = "inference"
LOW_FPR = "tpr_at_0_1pct_fpr"
COLUMNS = ("membership_auc", "membership_advantage", "tpr_at_1pct_fpr", LOW_FPR)


@dataclasses.dataclass(frozen=True)
class PrivacyRow:
    defense: str
    attack: str
    clean_accuracy: str  # of the defense row: the utility the defense leaves
    values: tuple[str, ...]  # COLUMNS, formatted
    strongest: bool  # the defense row's highest TPR at 0.1% FPR


def _value(cell: Mapping[str, Any] | None, name: str) -> float | None:
    v = ((cell or {}).get("metrics") or {}).get(name, {}).get("value")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _membership_cells(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in result.get("cells", []) if c.get("status") == "ok"
            and c.get("family") == MEMBERSHIP_FAMILY and _value(c, "membership_auc") is not None]


def _clean(result: Mapping[str, Any]) -> dict[tuple[str, str], float | None]:
    return {(c["defense"], c.get("defense_point") or ""): _value(c, "clean_accuracy")
            for c in result.get("cells", []) if c.get("attack") == "clean"}


def privacy_rows(result: Mapping[str, Any]) -> list[PrivacyRow]:
    """One row per completed membership cell, in matrix order; within a defense row the
    attack with the highest TPR at 0.1% FPR is marked."""
    cells = _membership_cells(result)
    clean = _clean(result)
    best: dict[tuple[str, str], float] = {}
    for c in cells:
        key = (c["defense"], c.get("defense_point") or "")
        best[key] = max(best.get(key, -1.0), _value(c, LOW_FPR) or 0.0)
    acc_meta = metric_meta(result, "clean_accuracy")
    rows = []
    for c in cells:
        key = (c["defense"], c.get("defense_point") or "")
        low = _value(c, LOW_FPR) or 0.0
        rows.append(PrivacyRow(
            defense=label(*key), attack=label(c["attack"], c.get("attack_point") or ""),
            clean_accuracy=format_value(clean.get(key), acc_meta),
            values=tuple(format_value(_value(c, m), metric_meta(result, m)) for m in COLUMNS),
            strongest=best[key] > 0 and low == best[key]))
    return rows


def column_titles(result: Mapping[str, Any]) -> list[str]:
    return [metric_meta(result, m).title for m in COLUMNS]


def privacy_summary(result: Mapping[str, Any]) -> str | None:
    """One sentence: the strongest membership attack on the undefended model by TPR at
    0.1% FPR (ties: the higher TPR at 1%), or None when none ran there."""
    cells = [c for c in _membership_cells(result) if c["defense"] == "none"
             and not c.get("defense_point")]
    if not cells:
        return None
    top = max(cells, key=lambda c: (_value(c, LOW_FPR) or 0.0,
                                    _value(c, "tpr_at_1pct_fpr") or 0.0,
                                    _value(c, "membership_auc") or 0.0))
    fmt = {m: format_value(_value(top, m), metric_meta(result, m)) for m in COLUMNS}
    # Members and non-members are drawn alike, so the TPR's sample size counts both.
    n = ((top.get("metrics") or {}).get(LOW_FPR) or {}).get("n")
    of = f" of {n:,}" if isinstance(n, int) and n > 0 else ""
    flagging = ("flagging at most 0.1% of non-members" if not isinstance(n, int) or n >= 1000
                else f"flagging no non-member (0.1% of its {n:,} is less than one)")
    return (f"{label(top['attack'], top.get('attack_point') or '')} is the strongest: on the "
            f"undefended model it names {fmt[LOW_FPR]}{of} training members while {flagging} "
            f"({fmt['tpr_at_1pct_fpr']} at 1% FPR; AUC {fmt['membership_auc']}).")


@dataclasses.dataclass(frozen=True)
class TheftRow:
    defense: str
    attack: str
    answers: str  # what the theft trained on: "labels" or "scores" (the plugin's note)
    queries: str
    fidelity: str
    substitute_accuracy: str


def theft_rows(result: Mapping[str, Any]) -> list[TheftRow]:
    """One row per completed extraction cell, in matrix order: which answers the theft
    read (the plugin's own note), the queries the Model counted, and what they bought."""
    rows = []
    for c in result.get("cells", []):
        if c.get("status") != "ok" or c.get("family") != "extraction":
            continue
        notes = (c.get("artifacts") or {}).get("notes") or {}
        rows.append(TheftRow(
            defense=label(c["defense"], c.get("defense_point") or ""),
            attack=label(c["attack"], c.get("attack_point") or ""),
            answers=str(notes.get("answers") or "—"),
            queries=format_value(_value(c, "queries"), metric_meta(result, "queries")),
            fidelity=format_value(_value(c, "fidelity"), metric_meta(result, "fidelity")),
            substitute_accuracy=format_value(_value(c, "substitute_accuracy"),
                                             metric_meta(result, "substitute_accuracy"))))
    return rows
