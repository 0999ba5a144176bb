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


def membership_cells(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in result.get("cells", []) if c.get("status") == "ok"
            and c.get("family") == MEMBERSHIP_FAMILY and _value(c, "membership_auc") is not None]


def _clean(result: Mapping[str, Any]) -> dict[tuple[str, str], float | None]:
    return {(c["defense"], c.get("defense_point") or ""): _value(c, "clean_accuracy")
            for c in result.get("cells", []) if c.get("attack") == "clean"}


def _members(cell: Mapping[str, Any]) -> int:
    """Members scored (as many non-members were): the TPR metrics' sample size."""
    n = ((cell.get("metrics") or {}).get(LOW_FPR) or {}).get("n")
    return n if isinstance(n, int) else 0


def ranking_metric(cells: list[Mapping[str, Any]]) -> str:
    """The lowest false-positive rate these cells can resolve: TPR at 0.1% FPR with at
    least 1,000 non-members each, at 1% with at least 100, else the AUC. Below that many
    non-members the rate allows no false positive at all, and one member scored above
    every non-member (or one non-member above every member) decides the ranking."""
    fewest = min((_members(c) for c in cells), default=0)
    return LOW_FPR if fewest >= 1000 else "tpr_at_1pct_fpr" if fewest >= 100 \
        else "membership_auc"


def _strength(cell: Mapping[str, Any], metric: str) -> tuple[float, ...]:
    """Sort key of an attack's strength: the ranking metric, then the AUC."""
    return (_value(cell, metric) or 0.0, _value(cell, "membership_auc") or 0.0)


def privacy_rows(result: Mapping[str, Any]) -> list[PrivacyRow]:
    """One row per completed membership cell, in matrix order; within a defense row the
    strongest attack (by :func:`ranking_metric`) is marked."""
    cells = membership_cells(result)
    clean = _clean(result)
    metric = ranking_metric(cells)
    best: dict[tuple[str, str], tuple[float, ...]] = {}
    for c in cells:
        key = (c["defense"], c.get("defense_point") or "")
        best[key] = max(best.get(key, (-1.0,)), _strength(c, metric))
    acc_meta = metric_meta(result, "clean_accuracy")
    rows = []
    for c in cells:
        key = (c["defense"], c.get("defense_point") or "")
        rows.append(PrivacyRow(
            defense=label(*key), attack=label(c["attack"], c.get("attack_point") or ""),
            clean_accuracy=format_value(clean.get(key), acc_meta),
            values=tuple(format_value(_value(c, m), metric_meta(result, m)) for m in COLUMNS),
            strongest=best[key][0] > 0 and _strength(c, metric) == best[key]))
    return rows


def column_titles(result: Mapping[str, Any]) -> list[str]:
    return [metric_meta(result, m).title for m in COLUMNS]


def privacy_summary(result: Mapping[str, Any]) -> str | None:
    """One sentence: the strongest membership attack on the undefended model at the
    lowest false-positive rate the sample resolves (:func:`ranking_metric`; 0.1% with
    1,000 non-members or more), or None when none ran there."""
    cells = [c for c in membership_cells(result) if c["defense"] == "none"
             and not c.get("defense_point")]
    if not cells:
        return None
    metric = ranking_metric(cells)
    top = max(cells, key=lambda c: _strength(c, metric))
    fmt = {m: format_value(_value(top, m), metric_meta(result, m)) for m in COLUMNS}
    name = label(top["attack"], top.get("attack_point") or "")
    n = _members(top)
    of = f" of {n:,}" if n else ""
    if metric == LOW_FPR:
        return (f"{name} is the strongest: on the undefended model it names {fmt[LOW_FPR]}"
                f"{of} training members while flagging at most 0.1% of non-members "
                f"({fmt['tpr_at_1pct_fpr']} at 1% FPR; AUC {fmt['membership_auc']}).")
    if metric == "tpr_at_1pct_fpr":
        return (f"{name} is the strongest: on the undefended model it names "
                f"{fmt['tpr_at_1pct_fpr']}{of} training members while flagging at most 1% "
                f"of non-members (AUC {fmt['membership_auc']}). With {n:,} non-members "
                f"0.1% FPR means no false positive at all ({fmt[LOW_FPR]} there), too few "
                f"to rank attacks by; score 1,000 or more (the attacks' members) for it.")
    return (f"{name} separates members from non-members best on the undefended model "
            f"(AUC {fmt['membership_auc']}); with {n:,} non-members scored, low "
            f"false-positive rates cannot be measured.")


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
