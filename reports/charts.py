"""Charts of a results.json object, rendered by matplotlib to inline SVG strings.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, so no
global figure state) inside an ``rc_context``: text stays text (``svg.fonttype: none``,
smaller and searchable) and ids come from a fixed per-chart salt, so the same result
always gives the same bytes. Label text is escaped by matplotlib's SVG writer; the
finished SVG is our own output and is marked safe here, never in a template.

A report has a few dozen charts, so each is drawn with as little repeated work as gives
the same picture: margins measured once instead of a layout engine, axis labels placed
once rather than at every draw, one figure reused for the charts of a kind (its axes and
ticks made once), and text measured once for all charts.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
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
# Margins in inches: below and above the axes of a 5 x 3.2 chart (room for the x
# label, and for the title), and the gap constrained layout leaves at a figure's edge.
_WIDE_BOTTOM_TOP = (0.43, 0.225)
_EDGE = 3 / 72
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
    # A fixed title height: matplotlib then skips measuring every tick label to find
    # room above the axes, where these charts have no ticks anyway.
    "axes.titley": 1.0,
}


@dataclasses.dataclass(frozen=True)
class Chart:
    """One inline SVG chart with a caption."""

    id: str
    title: str
    caption: str
    svg: Markup


def _line_style(i: int) -> dict[str, Any]:
    """Colour and dash of the ``i``-th line: the palette's eight colours, then again
    dashed, then dotted, so a chart of twelve defenses has no two lines alike."""
    return {"color": PALETTE[i % len(PALETTE)],
            "linestyle": ("-", "--", ":")[(i // len(PALETTE)) % 3]}


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "chart"


def _text(text: str) -> str:
    """Plugin text as a literal matplotlib label: no mathtext, no hidden legend entries."""
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


@contextmanager
def _figure(size: tuple[float, float]) -> Iterator[Figure]:
    """A figure in the report's style; the style stays on while it is drawn and saved.

    No layout engine: with constrained layout a save drew the figure twice and measured
    every text at each, about half of each chart's time; :func:`_svg` places the axes
    itself, measuring once. At 72 dpi, the SVG writer's own, a :func:`_measurer`
    measures text exactly as the saved figure draws it.
    """
    from matplotlib.figure import Figure

    with _style():
        yield Figure(figsize=size, dpi=72)


def _style() -> Any:
    """The report's matplotlib style, as an ``rc_context``."""
    import matplotlib

    rc: Any = _RC
    return matplotlib.rc_context(rc)


class _Sheet:
    """One figure that draws a run of charts of one kind, one after another.

    Making an axes and its ticks is a good part of a chart's time, and the charts of a
    run have the same ones: each chart gets the axes back emptied of the last chart's
    data, legend and limits. The figure is made for the first chart, so a result without
    charts never imports matplotlib.
    """

    def __init__(self, size: tuple[float, float]) -> None:
        self._size = size
        self._ax: Any = None

    @contextmanager
    def axes(self) -> Iterator[Any]:
        """The empty axes, in the report's style while the chart is built and drawn."""
        with _style():
            if self._ax is None:
                from matplotlib.figure import Figure

                # See _figure for the dpi.
                self._ax = Figure(figsize=self._size, dpi=72).add_subplot()
            else:
                ax = self._ax
                for container in list(ax.containers):
                    container.remove()
                for artist in [*ax.lines, *ax.collections, *ax.patches, *ax.texts]:
                    artist.remove()
                if ax.get_legend() is not None:
                    ax.get_legend().remove()
                ax.relim()  # data limits of no data: the next chart's alone
                ax.set_autoscale_on(True)
            yield self._ax


@functools.cache
def _writer_class() -> Any:
    """matplotlib's SVG renderer, with text measurements shared by every chart.

    The stock renderer caches them per renderer, that is per chart; most strings (tick
    labels, axis labels, legend names) recur from chart to chart, and measuring one
    loads every glyph outline afresh. A measurement depends only on the text, its font
    properties and whether it is mathtext, never on the chart, so sharing it changes
    no output.
    """
    from matplotlib.backends.backend_svg import RendererSVG
    from matplotlib.textpath import TextToPath

    measure = TextToPath()  # what RendererSVG measures text with

    @functools.lru_cache(maxsize=4096)
    def metrics(text: str, prop: Any, ismath: Any) -> tuple[float, float, float]:
        return measure.get_text_width_height_descent(text, prop, ismath)

    class SharedMetricsSVG(RendererSVG):  # type: ignore[misc]
        def get_text_width_height_descent(self, s: str, prop: Any,
                                          ismath: Any) -> tuple[float, float, float]:
            # A copy for the key: FontProperties is mutable, and so is its hash.
            return metrics(s, prop.copy(), ismath)

    return SharedMetricsSVG


def _measurer(fig: Figure) -> Any:
    """A renderer that only measures text and legends for ``fig``; it draws nothing."""
    import io

    width, height = fig.get_size_inches()
    return _writer_class()(width * 72, height * 72, io.StringIO())


def _svg(fig: Figure, chart_id: str, right: float | Callable[[float], float],
         bottom: float, top: float) -> Markup:
    """The figure as inline SVG, its axes ``right``, ``bottom`` and ``top`` inches from the
    figure's edges, and as far from the left one as their y tick labels and y label take
    (plus :data:`_EDGE`), as constrained layout would place them. ``right`` may depend on
    that left margin.

    Drawn as ``savefig(format="svg")`` draws it (a 72-dpi figure drawn by matplotlib's
    SVG renderer), by a renderer that shares text measurements across charts.
    """
    import io

    import matplotlib

    (ax,) = fig.axes
    width, height = fig.get_size_inches()
    left = _place_axis_labels(ax, _measurer(fig)) / 72 + _EDGE
    if callable(right):
        right = right(left)
    fig.subplots_adjust(left=left / width, right=1 - right / width,
                        bottom=bottom / height, top=1 - top / height)
    buffer = io.StringIO()
    # A salt per chart keeps clip-path and marker ids unique across the inline SVGs
    # of one page, and fixed, so output is deterministic.
    with matplotlib.rc_context({"svg.hashsalt": f"gauntlet-{chart_id}"}):
        renderer = _writer_class()(
            width * 72, height * 72, buffer,
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
        fig.draw(renderer)
        renderer.finalize()
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE
    # Inline SVG in HTML needs no namespace declarations; dropping them keeps every URL
    # out of the report (xlink:href still works: the HTML parser knows that prefix).
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = svg.replace("<svg ", '<svg role="img" ', 1)
    return Markup(svg)  # our own output; matplotlib escaped the label text


def _place_axis_labels(ax: Any, renderer: Any) -> float:
    """Fix each axis label where matplotlib would put it: ``labelpad`` beyond its tick
    labels. Measured once here; left to itself, matplotlib lays out every tick label
    again at each draw to find that place.

    Returns how far (in points) the y tick labels and the y label reach left of the axes.
    """
    from matplotlib.text import Text
    from matplotlib.transforms import offset_copy

    fig = ax.get_figure()
    reach = 0.0
    for axis, x, y in ((ax.xaxis, 0.5, 0.0), (ax.yaxis, 0.0, 0.5)):
        lo, hi = sorted(axis.get_view_interval())
        slack = (hi - lo) * 1e-10
        locs = axis.get_majorticklocs()
        labels = [text for loc, text in zip(locs, axis.get_major_formatter().format_ticks(locs))
                  if lo - slack <= loc <= hi + slack and text]
        tick = axis.majorTicks[0]  # carries the tick_params every tick gets
        ticks = tick.get_tick_padding()  # the tick marks
        if labels:  # and their labels
            # One text as high as the highest label, or as wide as the widest.
            probe = Text(text=("" if axis is ax.xaxis else "\n").join(labels),
                         fontproperties=tick.label1.get_fontproperties())
            probe.set_figure(fig)
            box = probe.get_window_extent(renderer)
            ticks += tick.get_pad() + (box.height if axis is ax.xaxis else box.width)
        gap = ticks + axis.labelpad
        shift = {"x": 0.0, "y": -gap} if axis is ax.xaxis else {"x": -gap, "y": 0.0}
        axis.set_label_coords(x, y, offset_copy(ax.transAxes, fig=fig, units="points",
                                                **shift))
        if axis is ax.yaxis:
            reach = ticks
            if axis.label.get_text():  # an empty label takes no room
                reach = gap + axis.label.get_window_extent(renderer).width
    return reach


def _band(xs: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> Any:
    """The polygon ``fill_between(xs, lows, highs)`` fills, vertex for vertex."""
    import numpy as np

    x = np.asarray(xs, dtype=float)
    return np.column_stack([np.concatenate([x[:1], x, x[-1:], x[::-1]]),
                            np.concatenate([highs[:1], lows, highs[-1:], highs[::-1]])])


def _square_beside(legend: Any, left: float) -> float:
    """The right margin that leaves square axes, as tall as a 5 x 3.2 chart's, with
    ``legend`` at their right inside the figure: a wide legend narrows the axes, down
    to half the figure's height."""
    fig = legend.get_figure()
    width, height = fig.get_size_inches()
    room = legend.get_window_extent(_measurer(fig)).width / fig.dpi
    side = min(height - sum(_WIDE_BOTTOM_TOP), (width - left - room) / 1.03)
    return width - left - max(side, height / 2)


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
    by_attack: dict[str, dict[Key, list[tuple[str, Mapping[str, Any]]]]] = {}
    for (cd, cdp, ca, cap), cell in index.items():
        if cell.get("family") == "evasion":
            by_attack.setdefault(ca, {}).setdefault((cd, cdp), []).append((cap, cell))
    defenses = defense_keys(result)
    sheet = _Sheet((5.0, 3.2))
    charts: list[Chart] = []
    for attack in attacks:
        lines: dict[tuple[Key, str], list[tuple[float, float, Any, Any]]] = {}
        for d in defenses:
            for cap, cell in by_attack.get(attack, {}).get(d, []):
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
        with sheet.axes() as ax:
            bands, band_colours = [], []
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
                    bands.append(_band([p[0] for p in banded], [p[2] for p in banded],
                                       [p[3] for p in banded]))
                    band_colours.append(colour)
            if bands:
                # One collection for every band: what one fill_between per band draws.
                from matplotlib.collections import PolyCollection

                ax.add_collection(PolyCollection(bands, facecolors=band_colours, alpha=0.12,
                                                 linewidth=0))
            ax.set_xlim(left=0)
            ax.set_ylim(0, 1.02)
            if metric_meta(result, ROBUST_METRIC).percent:
                _percent_axis(ax)
            ax.set_xlabel("perturbation budget eps (0 = clean)")
            ax.set_ylabel("robust accuracy")
            ax.set_title(_text(f"{attack}: robust accuracy vs eps"), loc="left")
            ax.legend(loc="best")
            svg = _svg(ax.get_figure(), chart_id, _EDGE, *_WIDE_BOTTOM_TOP)
        caption = ("Shaded bands: 95% intervals. The point at eps = 0 is the defended "
                   "model's clean accuracy.")
        if absent:
            caption += f" No values (not applicable or error) for: {', '.join(absent)}."
        charts.append(Chart(chart_id, f"{attack}: robust accuracy vs eps", caption, svg))
    return charts


#: What a poisoning chart draws, solid and dashed: the damage on clean inputs, and (for a
#: backdoor) what the trigger does.
POISON_METRICS = (("poisoned_accuracy", "-", "clean accuracy"),
                  ("backdoor_success", "--", "backdoor success"))


def _numeric_points(point: str) -> dict[str, float]:
    """The numeric ``name=value`` parts of an attack point label."""
    out = {}
    for part in point.split(", "):
        name, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number):
            out[name] = number
    return out


def poisoning_charts(result: Mapping[str, Any]) -> list[Chart]:
    """Poisoned models against each swept numeric parameter of a poisoning attack (the
    poisoned fraction, a backdoor's patch size): one chart per attack and parameter, one
    line per defense (and per value of the attack's other swept parameters), clean
    accuracy solid and backdoor success dashed."""
    index = cell_index(result)
    defenses = defense_keys(result)
    attacks = list(dict.fromkeys(a for a, _ in attack_keys(result)))
    sheet = _Sheet((5.0, 3.2))
    charts: list[Chart] = []
    for attack in attacks:
        cells = [(k, c) for k, c in index.items() if k[2] == attack
                 and c.get("family") == "poisoning" and c.get("status") == "ok"]
        swept: dict[str, set[float]] = {}
        for (_d, _dp, _a, ap), _c in cells:
            for name, value in _numeric_points(ap).items():
                swept.setdefault(name, set()).add(value)
        for axis in [n for n, values in swept.items() if len(values) > 1]:
            lines: dict[tuple[Key, str, str], list[tuple[float, float]]] = {}
            for d in defenses:
                for (cd, cdp, _a, ap), cell in cells:
                    if (cd, cdp) != d:
                        continue
                    x = _numeric_points(ap)[axis]
                    other = ", ".join(p for p in ap.split(", ") if not p.startswith(f"{axis}="))
                    for metric in (m for m, _, _ in POISON_METRICS):
                        if (v := metric_value(cell, metric)) is not None:
                            lines.setdefault((d, other, metric), []).append((x, v))
            # A point alone on its line is another sweep's (e.g. one backdoor kind swept
            # over patch size, another over fraction): it belongs to that sweep's chart.
            lines = {k: v for k, v in lines.items() if len(v) > 1}
            if not lines:
                continue
            chart_id = f"poisoning-{_safe_id(attack)}-{_safe_id(axis)}-{len(charts)}"
            colours: dict[tuple[Key, str], str] = {}
            styles = {m: (st, n) for m, st, n in POISON_METRICS}
            with sheet.axes() as ax:
                for (d, other, metric), points in lines.items():
                    points.sort()
                    colour = colours.setdefault(
                        (d, other), PALETTE[len(colours) % len(PALETTE)])
                    style, what_ = styles[metric]
                    name = label(*d) + (f" [{other}]" if other else "") + f": {what_}"
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                            markersize=3.5, linewidth=1.6, linestyle=style, color=colour,
                            label=_text(name))
                ax.set_ylim(0, 1.02)
                _percent_axis(ax)
                ax.set_xlabel(_text(axis))
                ax.set_ylabel("share of test rows")
                ax.set_title(_text(f"{attack}: poisoned model vs {axis}"), loc="left")
                ax.legend(loc="best")
                svg = _svg(ax.get_figure(), chart_id, _EDGE, *_WIDE_BOTTOM_TOP)
            caption = ("Solid: the poisoned model's accuracy on clean test rows. Dashed (for "
                       "a backdoor): triggered test rows of other classes read as the "
                       "target. Each point is a model re-trained on its poisoned set.")
            charts.append(Chart(chart_id, f"{attack}: poisoned model vs {axis}", caption, svg))
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
    defenses = defense_keys(result)
    sheet = _Sheet((5.0, 3.2))
    charts: list[Chart] = []
    for attack, apoint in attack_keys(result):
        curves = []
        for d in defenses:
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
        # Log axes (Carlini et al., 2022): the low-FPR end, where an attack that is
        # confident about a few rows shows, is most of the picture instead of a corner.
        floor = min([1e-3] + [float(x) for _, fpr, _, _ in curves for x in fpr if x > 0])
        with sheet.axes() as ax:
            ax.plot([floor, 1], [floor, 1], linestyle="--", linewidth=1, color="#9aa1a9",
                    label="chance")
            for i, (d, fpr, tpr, auc) in enumerate(curves):
                xs, ys = _thin([max(float(x), floor) for x in fpr],
                               [max(float(y), floor) for y in tpr])
                name = label(*d) + (f" (AUC {auc:.3f})" if auc is not None else "")
                ax.plot(xs, ys, linewidth=1.6, label=_text(name), drawstyle="default",
                        **_line_style(i))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(floor, 1)
            ax.set_ylim(floor, 1)
            ax.set_aspect("equal")
            ax.set_xlabel("false positive rate (non-members flagged), log scale")
            ax.set_ylabel("true positive rate, log scale")
            ax.set_title(_text(title), loc="left")
            # Beside the square axes, where the curves never are.
            legend = ax.legend(loc="center left", bbox_to_anchor=(1.03, 0.5))
            svg = _svg(ax.get_figure(), chart_id, functools.partial(_square_beside, legend),
                       *_WIDE_BOTTOM_TOP)
        charts.append(Chart(chart_id, title, "Both axes are logarithmic, so the left end "
                            "shows the members an attacker can name while wrongly accusing "
                            "almost no one. The closer a curve hugs the diagonal, the less the "
                            "attacker learns; zero rates are drawn at the axes' lower edge.",
                            svg))
    return charts


def histogram_charts(result: Mapping[str, Any]) -> list[tuple[str, list[Chart]]]:
    """Probe prediction histograms: per attack point, one small chart per defense.

    The charts of one group share their y scale so heights compare across defenses.
    """
    index = cell_index(result)
    defenses = defense_keys(result)
    groups: list[tuple[str, list[Chart]]] = []
    for attack, apoint in attack_keys(result):
        hists = []
        for d in defenses:
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
        with _figure((2.9, 2.0)) as fig:
            # The charts of a group differ only in bar heights, colours and title: one
            # figure draws them all, its axes and ticks built once.
            ax: Any = None
            bars: Any = []
            for d, counts in hists:
                chart_id = f"hist-{_safe_id(label(attack, apoint))}-{len(groups)}-{len(charts)}"
                peak = max(range(len(counts)), key=counts.__getitem__)
                share = counts[peak] / sum(counts)
                if len(bars) != len(counts):
                    if ax is not None:
                        fig.delaxes(ax)
                    ax = fig.add_subplot()
                    bars = ax.bar(range(len(counts)), counts, width=0.8)
                    ax.set_ylim(0, top * 1.08)
                    ax.set_xticks(range(len(counts)))
                    ax.tick_params(labelsize=7)
                    ax.grid(axis="x", visible=False)
                    ax.set_xlabel("predicted class", fontsize=7.5)
                for i, (bar, count) in enumerate(zip(bars, counts)):
                    bar.set_height(count)
                    bar.set_facecolor("#D55E00" if i == peak else "#8da9c4")
                ax.set_title(_text(label(*d)), loc="left", fontsize=8.5)
                svg = _svg(fig, chart_id, _EDGE, 0.396, 0.215)
                charts.append(Chart(chart_id, label(*d),
                                    f"top class {peak}: {share * 100:.1f}% of probe inputs",
                                    svg))
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
    defenses = defense_keys(result)
    hist_sheet, acc_sheet = _Sheet((5.0, 3.2)), _Sheet((5.0, 3.2))
    charts: list[Chart] = []
    for attack, apoint in attack_keys(result):
        if not is_minimal(result, attack):
            continue
        series, without = [], []
        for d in defenses:
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
        with hist_sheet.axes() as ax:
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
            # More room at the right: a tick label can sit on the last edge.
            svg = _svg(ax.get_figure(), chart_id, 0.1, *_WIDE_BOTTOM_TOP)
        caption = ("Rows right on the clean input that the attack flipped, by the L2 size of "
                   "its change (in input units). Rows it did not flip: " + unheld + ".")
        if without:
            caption += f" No per-row distances kept for: {', '.join(without)}."
        charts.append(Chart(chart_id, f"{name}: distance to flip", caption, svg))

        budgets = np.unique(np.concatenate([[0.0], flips, [top * 1.05]]))
        chart_id = f"l2-acc-{_safe_id(name)}-{len(charts)}"
        with acc_sheet.axes() as ax:
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
            # More room at the right: a tick label can sit on the last budget.
            svg = _svg(ax.get_figure(), chart_id, 0.1, *_WIDE_BOTTOM_TOP)
        charts.append(Chart(chart_id, f"{name}: accuracy vs L2 budget",
                            "Share of rows right on the clean input that an attacker held to "
                            "the budget does not flip: the attack flips a row once the budget "
                            "reaches the distance it needed.", svg))
    return charts


ADVANTAGE_METRIC = "membership_advantage"


def privacy_utility_charts(result: Mapping[str, Any]) -> list[Chart]:
    """One chart: each defense point's clean accuracy (x) against the membership
    advantage (y) each membership attack reaches under it, one marker series per attack.

    A defense worth its cost moves points down (less leaked) without moving them far
    left (less accurate); its label sits at the strongest attack's point."""
    index = cell_index(result)
    clean: dict[Key, float] = {}
    epsilon: dict[Key, float] = {}  # a differentially private training's budget
    for (d, dp, _a, _ap), cell in index.items():
        if cell.get("family") == "baseline" and (v := metric_value(cell, CLEAN_METRIC)) is not None:
            clean.setdefault((d, dp), v)
            if (eps := metric_value(cell, "dp_epsilon")) is not None:
                epsilon[(d, dp)] = eps
    series: dict[str, list[tuple[Key, float, float]]] = {}
    for (d, dp, a, ap), cell in index.items():
        if cell.get("family") != "inference" or cell.get("status") != "ok":
            continue
        adv = metric_value(cell, ADVANTAGE_METRIC)
        if adv is None or (d, dp) not in clean:
            continue
        series.setdefault(label(a, ap), []).append(((d, dp), clean[(d, dp)], adv))
    defenses = {k for points in series.values() for k, _, _ in points}
    if not series or len(defenses) < 2:
        return []
    strongest: dict[Key, tuple[float, float]] = {}
    for points in series.values():
        for key, acc, adv in points:
            if key not in strongest or adv > strongest[key][1]:
                strongest[key] = (acc, adv)
    title = "Privacy against utility"
    chart_id = "privacy-utility"
    with _figure((5.0, 3.6)) as fig:
        ax = fig.add_subplot()
        for i, (name, points) in enumerate(series.items()):
            ax.plot([p[1] for p in points], [p[2] for p in points], linestyle="none",
                    marker="os^Dv<>P"[i % 8], markersize=4.5, color=PALETTE[i % len(PALETTE)],
                    label=_text(name))
        for key, (acc, adv) in strongest.items():
            name = label(*key) + (f" (ε {epsilon[key]:.3g})" if key in epsilon else "")
            ax.annotate(_text(name), (acc, adv), xytext=(3, 3),
                        textcoords="offset points", fontsize=6.5, color="#4a525b")
        if metric_meta(result, CLEAN_METRIC).percent:
            # Accuracies of one model's defenses sit within a few points: whole percents
            # would label several ticks alike.
            from matplotlib.ticker import PercentFormatter

            ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        if metric_meta(result, ADVANTAGE_METRIC).percent:
            _percent_axis(ax)
        ax.set_xlabel("clean accuracy of the defended model (utility)")
        ax.set_ylabel("membership advantage (TPR - FPR)")
        ax.set_title(_text(title), loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
        svg = _svg(fig, chart_id, _legend_room(ax), *_WIDE_BOTTOM_TOP)
    return [Chart(chart_id, title, "Each marker is one membership attack against one defense "
                  "point; the defense's name labels its strongest attack. Down is less "
                  "leaked, left is less accurate.", svg)]


def theft_charts(result: Mapping[str, Any]) -> list[Chart]:
    """Fidelity of the stolen substitute against the queries it cost, one chart per
    extraction attack, one line per defense: which output defenses slow theft down."""
    index = cell_index(result)
    lines: dict[str, dict[tuple[Key, str], list[tuple[float, float]]]] = {}
    for (d, dp, a, ap), cell in index.items():
        if cell.get("family") != "extraction" or cell.get("status") != "ok":
            continue
        fidelity = metric_value(cell, "fidelity")
        queries = metric_value(cell, "queries")
        if queries is None:
            budget = (cell.get("attack_params") or {}).get("budget")
            queries = float(budget) if isinstance(budget, (int, float)) else None
        if fidelity is None or queries is None:
            continue
        # Other swept parameters (answers, sampling) split the lines, as eps does not.
        other = ", ".join(p for p in ap.split(", ") if p and not p.startswith("budget="))
        lines.setdefault(a, {}).setdefault(((d, dp), other), []).append((queries, fidelity))
    sheet = _Sheet((5.0, 3.2))
    charts: list[Chart] = []
    for attack, by_defense in lines.items():
        if max(len(points) for points in by_defense.values()) < 2:
            continue  # one budget: the matrix already shows it
        chart_id = f"theft-{_safe_id(attack)}-{len(charts)}"
        title = f"{attack}: fidelity against queries"
        with sheet.axes() as ax:
            budgets: set[float] = set()
            for i, ((d, other), points) in enumerate(by_defense.items()):
                points.sort()
                budgets.update(p[0] for p in points)
                name = label(*d) + (f" [{other}]" if other else "")
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                        markersize=3.5, linewidth=1.6, label=_text(name), **_line_style(i))
            ax.set_xscale("log")
            # The budgets themselves as ticks, in plain numbers (not 6x10^1).
            from matplotlib.ticker import FixedLocator, NullLocator

            ax.xaxis.set_major_locator(FixedLocator(sorted(budgets)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{b:,.0f}" for b in sorted(budgets)])
            low = min(p[1] for points in by_defense.values() for p in points)
            ax.set_ylim(max(0.0, low - 0.05), 1.01)
            _percent_axis(ax)
            ax.set_xlabel("queries sent to the victim (log scale)")
            ax.set_ylabel("fidelity (label agreement)")
            ax.set_title(_text(title), loc="left")
            # Beside the axes: inside, the legend of a dozen defenses hid the lines.
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
            svg = _svg(ax.get_figure(), chart_id, _legend_room(ax), *_WIDE_BOTTOM_TOP)
        charts.append(Chart(chart_id, title, "Share of test rows where the substitute agrees "
                            "with the victim, for each query budget. A defense that slows "
                            "theft keeps its line lower for the same budget.", svg))
    return charts


def _legend_room(ax: Any) -> Callable[[float], float]:
    """A right margin leaving room for ``ax``'s legend outside the axes."""
    def right(_left: float) -> float:
        fig = ax.get_figure()
        legend = ax.get_legend()
        return legend.get_window_extent(_measurer(fig)).width / fig.dpi + 0.15
    return right
