"""The Summary's findings: the attacks that change the defender's outcome most.

One row per attack and kind of effect (:data:`~gauntlet.reports.effects.READINGS`'s
groups), at its worst point, read against the value without the attack (the same
defense's clean accuracy, chance, no trigger), with the best defense at that same point:
never the clean row, never a statistic of the clean model.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gauntlet.reports.effects import (
    READINGS,
    Defended,
    Effect,
    best_defense,
    cell_effects,
    change,
    clean_cells,
    doubts,
    is_attack,
    reference_defense,
)
from gauntlet.reports.tables import (
    Key,
    attack_keys,
    colour,
    format_interval,
    format_value,
    label,
    metric_meta,
)
from gauntlet.rows import attack_meta

TOP_FINDINGS = 10


@dataclasses.dataclass(frozen=True)
class AttackFinding:
    """One attack's worst point for one kind of effect, and the best defense there."""

    worst: Effect
    defended: Defended
    swept: bool  # the attack ran at more than one point

    @property
    def remaining(self) -> float:
        """What the best trusted defense still lets the attack do (its share)."""
        return self.defended.best.share if self.defended.best else self.worst.share


@dataclasses.dataclass(frozen=True)
class FindingRow:
    """One :class:`AttackFinding` as the Summary's table shows it."""

    attack: str
    point: str  # "worst at eps=0.3" for a sweep, the point itself otherwise
    title: str
    metric: str
    direction: str
    defense: str
    reference: str  # the value without the attack, and what it is ("93.8% (clean)")
    value: str
    interval: str
    n: str
    change: str  # value minus reference ("−93.8 points")
    colour: str
    best: str  # the best trusted defense at that point, or "—"
    best_note: str  # a better defense the checklist doubts, and why


def minimal_attacks(result: Mapping[str, Any]) -> list[str]:
    """Attacks without a budget (they find the smallest change that flips each row):
    their robust accuracy is near 0% on any model by design, so it is no finding."""
    return sorted({c["attack"] for c in result.get("cells", [])
                   if attack_meta(result, c["attack"]).get("minimal")})


def attack_findings(result: Mapping[str, Any], k: int = 10) -> list[AttackFinding]:
    """The ``k`` attacks that change the defender's outcome most, worst first.

    One row per attack and kind of effect (:data:`~gauntlet.reports.effects.READINGS`'s
    groups) at its worst point on the undefended model (an attack never run there: its
    worst defended row), so a sweep takes one row. Ranked by the share of what could be
    lost that the attack takes (41.8 of 98.7 accuracy points; an AUC 0.8 is 60% of the
    way from chance to 1), then by what the best trusted defense still lets it take, so
    of two attacks that break the model, the one no defense stops comes first.
    """
    reference = reference_defense(result)
    clean, doubt = clean_cells(result), doubts(result)
    order = {key: i for i, key in enumerate(attack_keys(result))}
    minimal = set(minimal_attacks(result))
    by: dict[tuple[str, str], dict[Key, list[Effect]]] = {}
    for c in result.get("cells", []):
        if c.get("status") != "ok" or not is_attack(c) or c["attack"] in minimal:
            continue
        for group, e in cell_effects(result, c, clean).items():
            by.setdefault((c["attack"], group), {}).setdefault(e.defense, []).append(e)
    found = []
    for per in by.values():
        main = reference if reference in per else \
            max(per, key=lambda d: max(e.share for e in per[d]))
        worst = max(per[main], key=lambda e: (e.share, -order.get((e.attack, e.point), 0)))
        if worst.share <= 0:
            continue
        same = [e for d, es in per.items() if d != main for e in es if e.point == worst.point]
        family = str(worst.cell.get("family") or "")
        found.append(AttackFinding(worst, best_defense(same, family, doubt, clean),
                                   len({e.point for e in per[main]}) > 1))
    found.sort(key=lambda f: (-f.worst.share, -f.remaining,
                              order.get((f.worst.attack, f.worst.point), 0), f.worst.metric))
    return found[:k]


def _defended(result: Mapping[str, Any], f: AttackFinding) -> tuple[str, str]:
    """(best trusted defense at the finding's point, a note on a better doubted one)."""
    def show(e: Effect) -> str:
        return (f"{label(*e.defense)} {format_value(e.value, metric_meta(result, e.metric))} "
                f"({change(result, e.metric, e.value - e.reference)})")

    best, other = f.defended.best, f.defended.untrusted
    text = show(best) if best is not None else "—"
    if best is not None and best.outcome <= f.worst.outcome:
        text = f"no defense does better (best: {text})"
    note = f"{show(other)}: {f.defended.why}" if other is not None else ""
    return text, note


def finding_rows(result: Mapping[str, Any], k: int = TOP_FINDINGS) -> list[FindingRow]:
    """:func:`attack_findings` formatted for the Summary."""
    rows = []
    for f in attack_findings(result, k):
        e = f.worst
        meta = metric_meta(result, e.metric)
        rec = (e.cell.get("metrics") or {}).get(e.metric) or {}
        best, note = _defended(result, f)
        rows.append(FindingRow(
            attack=e.attack, point=f"worst at {e.point}" if f.swept else e.point,
            title=meta.title, metric=e.metric, direction="↑" if meta.higher_is_better else "↓",
            defense=label(*e.defense),
            reference=f"{format_value(e.reference, meta)} "
                      f"({READINGS[e.metric].reference_name})",
            value=format_value(e.value, meta),
            interval=format_interval(rec.get("low"), rec.get("high"), meta),
            n="—" if e.n is None else str(e.n),
            change=change(result, e.metric, e.value - e.reference),
            colour=colour(min(1.0, max(0.0, e.share))), best=best, best_note=note))
    return rows


def findings_note(result: Mapping[str, Any]) -> str:
    """What the findings leave out, and why ("" when nothing)."""
    names = minimal_attacks(result)
    if not names:
        return ""
    return (f"Left out: {', '.join(names)}, which search for the smallest change that flips "
            "each row (no budget), so they reach 0% on any model by design; their "
            "distances are under Charts and in the matrices.")
