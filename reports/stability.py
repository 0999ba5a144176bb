"""The clean row's stability over ``--resamples K`` bootstrap resamples (the founding
study measured precision, recall, F1 and confidence on 10 random subsamples): per
defense, each clean metric's value beside its spread."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gauntlet.reports.tables import format_interval, format_value, metric_meta


@dataclasses.dataclass(frozen=True)
class StabilityRow:
    defense: str
    values: list[str]  # "value ± sd" per column, "—" where the metric is missing
    ranges: list[str]  # the 2.5-97.5 percentile range per column


@dataclasses.dataclass(frozen=True)
class StabilityView:
    k: int
    columns: list[str]  # metric titles
    metrics: list[str]  # metric names, same order
    rows: list[StabilityRow]


def format_sd(sd: float, meta: Any) -> str:
    """A standard deviation in the metric's units: points for a percent metric."""
    return f"{100 * sd:.1f} pts" if meta.format == "percent" else f"{sd:.3g}"


def stability(result: Mapping[str, Any]) -> StabilityView | None:
    """None unless the audit resampled (``config.resamples``) and a clean cell has a
    spread."""
    k = int((result.get("config") or {}).get("resamples") or 0)
    clean = [c for c in result.get("cells", []) if c.get("attack") == "clean" and
             c.get("status") == "ok" and any("spread" in m for m in c["metrics"].values())]
    if not k or not clean:
        return None
    names = sorted({n for c in clean for n, m in c["metrics"].items() if "spread" in m},
                   key=lambda n: (n != "clean_accuracy", n))
    rows = []
    for cell in clean:
        values, ranges = [], []
        for name in names:
            rec = cell["metrics"].get(name)
            spread = (rec or {}).get("spread")
            if rec is None or spread is None or rec.get("value") is None:
                values.append("—")
                ranges.append("")
                continue
            meta = metric_meta(result, name)
            values.append(f"{format_value(rec['value'], meta)} ± {format_sd(spread['sd'], meta)}")
            ranges.append(format_interval(spread["low"], spread["high"], meta))
        label = cell["defense"] + (f" ({cell['defense_point']})"
                                   if cell.get("defense_point") else "")
        rows.append(StabilityRow(label, values, ranges))
    return StabilityView(k, [metric_meta(result, n).title for n in names], names, rows)
