"""The self-contained HTML page of ``gauntlet diff`` (the audit report's style and policy).

Everything shown comes from two results.json files, whose names, points and notes may be
a plugin's text: the template environment escapes all of it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import gauntlet
from gauntlet.diff import Diff, describe, headline, ranked, shown
from gauntlet.reports.html import _environment

TEMPLATE = "diff.html"
#: Changes beyond noise listed on the page; the rest are counted (all are in diff.json).
SHOWN = 200


@dataclasses.dataclass
class ChangeRow:
    cell: str
    metric: str
    line: str
    a: str
    b: str
    delta: str
    interval: str
    method: str
    significant: bool
    better: bool | None


@dataclasses.dataclass
class DiffView:
    title: str
    version: str
    headline: str
    changed: bool
    counts: dict[str, int]
    rows: list[ChangeRow]
    hidden: int
    diff: Diff


def build(d: Diff) -> DiffView:
    rows = []
    beyond = [c for c in ranked(d.changes) if c.beyond_noise]
    for c in beyond[:SHOWN]:
        meta = d.metrics.get(c.metric, {})
        interval = (f"[{shown(meta, c.low, True)}, {shown(meta, c.high, True)}]"
                    if c.low is not None and c.high is not None else "—")
        rows.append(ChangeRow(c.cell, str(meta.get("title") or c.metric), describe(c, meta),
                              shown(meta, c.a), shown(meta, c.b), shown(meta, c.delta, True),
                              interval, c.method, c.significant, c.better))
    return DiffView(f"{d.a} → {d.b}", gauntlet.__version__, headline(d), d.changed,
                    d.counts(), rows, max(0, len(beyond) - SHOWN), d)


def render_diff(d: Diff) -> str:
    """The diff as one HTML document."""
    return _environment().get_template(TEMPLATE).render(report=build(d))


def write_diff(d: Diff, path: Path) -> Path:
    """Write :func:`render_diff` to ``path`` (UTF-8), making its folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_diff(d), encoding="utf-8")
    return path
