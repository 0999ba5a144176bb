"""The report's view of the evaluation checklist and of naive against adaptive numbers.

Built from a results.json object: its stored ``checklist`` (computed from the result when
an older one has none, :func:`gauntlet.checklist.stored`) and the cells'
``naive_robust_accuracy`` beside their ``robust_accuracy``. Plain, formatted data; the
templates escape every string.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from gauntlet.checklist import FAIL, NA, PASS, WARN, stored
from gauntlet.reports.tables import (
    NEUTRAL,
    attack_keys,
    cell_index,
    colour,
    defense_keys,
    format_interval,
    label,
    metric_meta,
    metric_value,
)

ROBUST, NAIVE = "robust_accuracy", "naive_robust_accuracy"
#: Background of each status (the word is always printed; colour only supports it).
STATUS_COLOURS = {PASS: colour(0.0), WARN: colour(0.55), FAIL: colour(1.0), NA: NEUTRAL}


@dataclasses.dataclass(frozen=True)
class CheckRow:
    rule: str
    title: str
    status: str
    evidence: str
    colour: str


@dataclasses.dataclass(frozen=True)
class DefenseChecklist:
    id: str
    label: str
    defense: str
    defense_point: str
    upper_bound: bool
    tally: str  # "6 pass, 1 warn, 1 n/a"
    checks: list[CheckRow]


@dataclasses.dataclass(frozen=True)
class ChecklistFinding:
    defense: str
    title: str
    status: str
    evidence: str
    colour: str


@dataclasses.dataclass(frozen=True)
class NaiveRow:
    attack: str
    adaptive: str
    adaptive_interval: str
    naive: str
    naive_interval: str
    overstated: str  # naive minus adaptive, in percentage points ("+12.3 pp")
    colour: str


@dataclasses.dataclass(frozen=True)
class NaiveTable:
    id: str
    label: str
    defense: str
    defense_point: str
    rows: list[NaiveRow]


def _id(prefix: str, text: str, used: set[str]) -> str:
    base = f"{prefix}-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "defense")
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _order(result: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    return {k: i for i, k in enumerate(defense_keys(result))}


def checklist_views(result: Mapping[str, Any]) -> list[DefenseChecklist]:
    """One table per defense point, in the matrix's row order."""
    order = _order(result)
    checks = sorted(stored(result), key=lambda d: order.get((d.defense, d.defense_point),
                                                             len(order)))
    used: set[str] = set()
    views = []
    for d in checks:
        counts = {s: sum(c.status == s for c in d.checks) for s in (FAIL, WARN, PASS, NA)}
        tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        name = label(d.defense, d.defense_point)
        views.append(DefenseChecklist(
            _id("checklist", name, used), name, d.defense, d.defense_point, d.upper_bound,
            tally, [CheckRow(c.rule, c.title, c.status, c.evidence,
                             STATUS_COLOURS.get(c.status, NEUTRAL)) for c in d.checks]))
    return views


def checklist_findings(result: Mapping[str, Any]) -> list[ChecklistFinding]:
    """Every failed check, then every warned one, for the Summary."""
    found = [(c.status != FAIL, i, ChecklistFinding(v.label, c.title, c.status, c.evidence,
                                                    c.colour))
             for i, v in enumerate(checklist_views(result)) for c in v.checks
             if c.status in (FAIL, WARN)]
    return [f for _, _, f in sorted(found, key=lambda t: (t[0], t[1]))]


def naive_tables(result: Mapping[str, Any]) -> list[NaiveTable]:
    """For each defense point with a naive number: per attack point, the adaptive robust
    accuracy, the naive one (the attack made against the undefended model) and how many
    percentage points the naive evaluation overstates the defense by."""
    meta = metric_meta(result, ROBUST)
    index = cell_index(result)
    attacks = attack_keys(result)
    used: set[str] = set()
    tables = []
    for d in defense_keys(result):
        rows = []
        for a in attacks:
            cell = index.get((*d, *a))
            if cell is None:
                continue
            adaptive, naive = metric_value(cell, ROBUST), metric_value(cell, NAIVE)
            if adaptive is None or naive is None:
                continue
            ra, rn = cell["metrics"][ROBUST], cell["metrics"][NAIVE]
            gap = naive - adaptive
            rows.append(NaiveRow(
                label(*a), f"{adaptive * 100:.1f}%",
                format_interval(ra.get("low"), ra.get("high"), meta),
                f"{naive * 100:.1f}%", format_interval(rn.get("low"), rn.get("high"), meta),
                f"{gap * 100:+.1f} pp".replace("-", "−") if round(gap * 1000) else "0",
                colour(min(1.0, max(0.0, gap * 2))) if gap > 0 else NEUTRAL))
        if rows:
            name = label(*d)
            tables.append(NaiveTable(_id("naive", name, used), name, d[0], d[1], rows))
    return tables
