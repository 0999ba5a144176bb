"""Charts of a results.json object, rendered by matplotlib to inline SVG strings.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, so no
global figure state) inside an ``rc_context``: text stays text (``svg.fonttype: none``,
smaller and searchable) and ids come from a fixed per-chart salt, so the same result
always gives the same bytes. Label text is escaped by matplotlib's SVG writer; the
finished SVG is our own output and is marked safe here, never in a template.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from gauntlet.reports.tables import (
    Key,
    attack_keys,
    cell_index,
    defense_keys,
    label,
    metric_meta,
    metric_value,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROBUST_METRIC = "robust_accuracy"
CLEAN_METRIC = "clean_accuracy"
AUC_METRIC = "membership_auc"
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
MAX_CURVE_POINTS = 400  # an ROC with thousands of thresholds draws the same at 400
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#7a818a",
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "path.simplify": True,
    "axes.axisbelow": True,
}


@dataclasses.dataclass(frozen=True)
class Chart:
    """One inline SVG chart with a caption."""

    id: str
    title: str
    caption: str
    svg: Markup


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "chart"


def _text(text: str) -> str:
    """Plugin text as a literal matplotlib label: no mathtext, no hidden legend entries."""
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


@contextmanager
def _figure(chart_id: str, size: tuple[float, float]) -> Iterator[Figure]:
    import matplotlib
    from matplotlib.figure import Figure

    # A salt per chart keeps clip-path and marker ids unique across the inline SVGs
    # of one page, and fixed, so output is deterministic.
    rc: Any = {**_RC, "svg.hashsalt": f"gauntlet-{chart_id}"}
    with matplotlib.rc_context(rc):
        yield Figure(figsize=size, layout="constrained")


def _svg(fig: Figure) -> Markup:
    import io

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE
    # Inline SVG in HTML needs no namespace declarations; dropping them keeps every URL
    # out of the report (xlink:href still works: the HTML parser knows that prefix).
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = svg.replace("<svg ", '<svg role="img" ', 1)
    return Markup(svg)  # our own output; matplotlib escaped the label text


def _percent_axis(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import PercentFormatter

    getattr(ax, f"{axis}axis").set_major_formatter(PercentFormatter(1.0, decimals=0))


def _eps(cell: Mapping[str, Any]) -> float | None:
    eps = (cell.get("attack_params") or {}).get("eps")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps):
        return float(eps)
    return None


def _other_point(point: str) -> str:
    """The attack point without its eps part: other swept parameters split the lines."""
    return ", ".join(p for p in point.split(", ") if p and not p.startswith("eps="))


def robustness_charts(result: Mapping[str, Any]) -> list[Chart]:
    """Robust accuracy against eps, one chart per evasion attack, one line per defense.

    Each line starts at eps = 0 with the clean accuracy of the same defended model.
    """
    index = cell_index(result)
    clean: dict[Key, float] = {}
    for (d, dp, _a, _ap), cell in index.items():
        if cell.get("family") == "baseline" and (v := metric_value(cell, CLEAN_METRIC)) is not None:
            clean.setdefault((d, dp), v)
    attacks = list(dict.fromkeys(a for a, _ in attack_keys(result)))
    charts: list[Chart] = []
    for attack in attacks:
        lines: dict[tuple[Key, str], list[tuple[float, float, Any, Any]]] = {}
        for d in defense_keys(result):
            for (cd, cdp, ca, cap), cell in index.items():
                if (cd, cdp) != d or ca != attack or cell.get("family") != "evasion":
                    continue
                eps, value = _eps(cell), metric_value(cell, ROBUST_METRIC)
                if eps is None or value is None:
                    continue
                rec = cell["metrics"][ROBUST_METRIC]
                lines.setdefault((d, _other_point(cap)), []).append(
                    (eps, value, rec.get("low"), rec.get("high")))
        if not lines:
            continue
        missing = [label(d, dp) for (d, dp, a, _), c in index.items()
                   if a == attack and c.get("status") != "ok"]
        absent = [m for m in dict.fromkeys(missing) if not any(label(*k[0]) == m for k in lines)]
        chart_id = f"robustness-{_safe_id(attack)}-{len(charts)}"
        with _figure(chart_id, (5.0, 3.2)) as fig:
            ax = fig.add_subplot()
            for i, ((d, other), points) in enumerate(lines.items()):
                points.sort(key=lambda p: p[0])
                if d in clean:
                    points.insert(0, (0.0, clean[d], None, None))
                xs = [p[0] for p in points]
                colour = PALETTE[i % len(PALETTE)]
                name = label(*d) + (f" [{other}]" if other else "")
                ax.plot(xs, [p[1] for p in points], marker="o", markersize=3.5,
                        linewidth=1.6, color=colour, label=_text(name))
                banded = [p for p in points if p[2] is not None and p[3] is not None]
                if len(banded) > 1:
                    ax.fill_between([p[0] for p in banded], [p[2] for p in banded],
                                    [p[3] for p in banded], color=colour, alpha=0.12,
                                    linewidth=0)
            ax.set_xlim(left=0)
            ax.set_ylim(0, 1.02)
            if metric_meta(result, ROBUST_METRIC).percent:
                _percent_axis(ax)
            ax.set_xlabel("perturbation budget eps (0 = clean)")
            ax.set_ylabel("robust accuracy")
            ax.set_title(_text(f"{attack}: robust accuracy vs eps"), loc="left")
            ax.legend(loc="best")
            svg = _svg(fig)
        caption = ("Shaded bands: 95% intervals. The point at eps = 0 is the defended "
                   "model's clean accuracy.")
        if absent:
            caption += f" No values (not applicable or error) for: {', '.join(absent)}."
        charts.append(Chart(chart_id, f"{attack}: robust accuracy vs eps", caption, svg))
    return charts


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(xs) <= MAX_CURVE_POINTS:
        return list(xs), list(ys)
    step = (len(xs) - 1) / (MAX_CURVE_POINTS - 1)
    picks = sorted({round(i * step) for i in range(MAX_CURVE_POINTS)})
    return [xs[i] for i in picks], [ys[i] for i in picks]


def roc_charts(result: Mapping[str, Any]) -> list[Chart]:
    """Membership ROC curves, one chart per attack point, one line per defense."""
    index = cell_index(result)
    charts: list[Chart] = []
    for attack, apoint in attack_keys(result):
        curves = []
        for d in defense_keys(result):
            cell = index.get((*d, attack, apoint))
            roc = (cell or {}).get("artifacts", {}).get("roc") if cell else None
            if cell is None or cell.get("status") != "ok" or not roc:
                continue
            fpr, tpr = roc.get("fpr") or [], roc.get("tpr") or []
            if len(fpr) != len(tpr) or len(fpr) < 2:
                continue
            curves.append((d, fpr, tpr, metric_value(cell, AUC_METRIC)))
        if not curves:
            continue
        title = f"{label(attack, apoint)}: membership ROC"
        chart_id = f"roc-{_safe_id(label(attack, apoint))}-{len(charts)}"
        with _figure(chart_id, (5.0, 3.2)) as fig:
            ax = fig.add_subplot()
            ax.plot([0, 1], [0, 1], linestyle="--", linewidth=1, color="#9aa1a9",
                    label="chance")
            for i, (d, fpr, tpr, auc) in enumerate(curves):
                xs, ys = _thin([float(x) for x in fpr], [float(y) for y in tpr])
                name = label(*d) + (f" (AUC {auc:.3f})" if auc is not None else "")
                ax.plot(xs, ys, linewidth=1.6, color=PALETTE[i % len(PALETTE)],
                        label=_text(name), drawstyle="default")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_xlabel("false positive rate (non-members flagged)")
            ax.set_ylabel("true positive rate")
            ax.set_title(_text(title), loc="left")
            # Beside the square axes, where the curves never are.
            ax.legend(loc="center left", bbox_to_anchor=(1.03, 0.5))
            svg = _svg(fig)
        charts.append(Chart(chart_id, title, "The closer a curve hugs the diagonal, the less "
                            "the attacker learns about membership.", svg))
    return charts


def histogram_charts(result: Mapping[str, Any]) -> list[tuple[str, list[Chart]]]:
    """Probe prediction histograms: per attack point, one small chart per defense.

    The charts of one group share their y scale so heights compare across defenses.
    """
    index = cell_index(result)
    groups: list[tuple[str, list[Chart]]] = []
    for attack, apoint in attack_keys(result):
        hists = []
        for d in defense_keys(result):
            cell = index.get((*d, attack, apoint))
            if cell is None or cell.get("status") != "ok":
                continue
            counts = ((cell.get("artifacts") or {}).get("histogram") or {}).get("counts")
            if counts and sum(counts) > 0:
                hists.append((d, [float(c) for c in counts]))
        if not hists:
            continue
        top = max(max(c) for _, c in hists)
        charts: list[Chart] = []
        for d, counts in hists:
            chart_id = f"hist-{_safe_id(label(attack, apoint))}-{len(groups)}-{len(charts)}"
            peak = max(range(len(counts)), key=counts.__getitem__)
            share = counts[peak] / sum(counts)
            with _figure(chart_id, (2.9, 2.0)) as fig:
                ax = fig.add_subplot()
                colours = ["#D55E00" if i == peak else "#8da9c4" for i in range(len(counts))]
                ax.bar(range(len(counts)), counts, color=colours, width=0.8)
                ax.set_ylim(0, top * 1.08)
                ax.set_xticks(range(len(counts)))
                ax.tick_params(labelsize=7)
                ax.grid(axis="x", visible=False)
                ax.set_xlabel("predicted class", fontsize=7.5)
                ax.set_title(_text(label(*d)), loc="left", fontsize=8.5)
                svg = _svg(fig)
            charts.append(Chart(chart_id, label(*d),
                                f"top class {peak}: {share * 100:.1f}% of probe inputs", svg))
        groups.append((label(attack, apoint), charts))
    return groups


def l2_charts(result: Mapping[str, Any]) -> list[Chart]:
    """For each minimal-perturbation attack (CW-L2, DeepFool, HopSkipJump): a histogram of
    the per-row L2 distance that flipped each row, and accuracy against an L2 budget
    (:func:`gauntlet.reports.gallery.l2_accuracy`), one line per defense.

    Needs each cell's per-row results (``rows``, or ``artifacts["rows"]`` in results.json);
    cells without them are left out and named in the caption.
    """
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from gauntlet.reports.gallery import flipped_l2, is_minimal, l2_accuracy, per_row

    index = cell_index(result)
    charts: list[Chart] = []
    for attack, apoint in attack_keys(result):
        if not is_minimal(result, attack):
            continue
        series, without = [], []
        for d in defense_keys(result):
            cell = index.get((*d, attack, apoint))
            if cell is None or cell.get("status") != "ok" or cell.get("family") != "evasion":
                continue
            rows = per_row(cell)
            if rows is None or not len(rows["l2"]):
                without.append(label(*d))
                continue
            series.append((d, rows, flipped_l2(rows)))
        if not series:
            continue
        name = label(attack, apoint)
        flips = np.concatenate([f for _, _, f in series])
        top = float(flips.max()) if flips.size else 1.0
        top = top if top > 0 else 1.0
        unheld = ", ".join(f"{label(*d)}: {int((r['correct_before'] & r['correct_after']).sum())}"
                           for d, r, _ in series)
        chart_id = f"l2-hist-{_safe_id(name)}-{len(charts)}"
        with _figure(chart_id, (5.0, 3.2)) as fig:
            ax = fig.add_subplot()
            edges = np.linspace(0.0, top * 1.0001, 21)
            for i, (d, _, f) in enumerate(series):
                ax.hist(f, bins=edges, histtype="step", linewidth=1.6,
                        color=PALETTE[i % len(PALETTE)], label=_text(label(*d)))
            ax.set_xlim(0, edges[-1])
            ax.set_xlabel("L2 distance that flipped the row")
            ax.set_ylabel("rows")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(_text(f"{name}: distance to flip"), loc="left")
            ax.legend(loc="best")
            svg = _svg(fig)
        caption = ("Rows right on the clean input that the attack flipped, by the L2 size of "
                   "its change (in input units). Rows it did not flip: " + unheld + ".")
        if without:
            caption += f" No per-row distances kept for: {', '.join(without)}."
        charts.append(Chart(chart_id, f"{name}: distance to flip", caption, svg))

        budgets = np.unique(np.concatenate([[0.0], flips, [top * 1.05]]))
        chart_id = f"l2-acc-{_safe_id(name)}-{len(charts)}"
        with _figure(chart_id, (5.0, 3.2)) as fig:
            ax = fig.add_subplot()
            for i, (d, r, _) in enumerate(series):
                acc = l2_accuracy(r["correct_before"], r["correct_after"], r["l2"], budgets)
                ax.plot(budgets, acc, drawstyle="steps-post", linewidth=1.6,
                        color=PALETTE[i % len(PALETTE)], label=_text(label(*d)))
            ax.set_xlim(0, budgets[-1])
            ax.set_ylim(0, 1.02)
            _percent_axis(ax)
            ax.set_xlabel("L2 budget")
            ax.set_ylabel("accuracy")
            ax.set_title(_text(f"{name}: accuracy vs L2 budget"), loc="left")
            ax.legend(loc="best")
            svg = _svg(fig)
        charts.append(Chart(chart_id, f"{name}: accuracy vs L2 budget",
                            "Share of rows right on the clean input that an attacker held to "
                            "the budget does not flip: the attack flips a row once the budget "
                            "reaches the distance it needed.", svg))
    return charts
