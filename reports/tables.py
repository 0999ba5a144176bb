"""Tables over a results.json object: labels, ordering, matrices and the worst findings.

Everything here reads the plain result dict (the schema is in :mod:`gauntlet.results`),
so a report can be re-rendered from results.json without re-running the audit. The HTML
report is built from these helpers; they are also handy on their own::

    from gauntlet.reports.tables import matrix, worst_findings
    matrix(result, "robust_accuracy")      # DataFrame: rows defense, columns attack
"""
from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FAMILY_ORDER = ("baseline", "evasion", "poisoning", "inference", "extraction", "probe")
FAMILY_TITLES = {
    "baseline": "Baseline (no attack)",
    "evasion": "Evasion",
    "poisoning": "Poisoning",
    "inference": "Inference",
    "extraction": "Extraction",
    "probe": "Probes",
}

Key = tuple[str, str]  # (name, point) of a defense or an attack


@dataclasses.dataclass(frozen=True)
class MetricMeta:
    """What the report needs to know about a metric (from ``result["metrics"]``)."""

    name: str
    title: str
    description: str
    higher_is_better: bool | None
    bounds: tuple[float, float] | None
    format: str = "number"  # "percent" or "number" (gauntlet.Metric.format)

    @property
    def percent(self) -> bool:
        """Whether values print as percentages: only where the metric says so."""
        return self.format == "percent"


@dataclasses.dataclass(frozen=True)
class Finding:
    """The worst ok cell of one metric, from the defender's point of view."""

    metric: str
    title: str
    defense: str
    defense_point: str
    attack: str
    attack_point: str
    value: float
    low: float | None
    high: float | None
    n: int | None
    badness: float | None  # 0 best .. 1 worst within the metric's bounds; None if unbounded
    higher_is_better: bool
    cell_id: str

    @property
    def defense_label(self) -> str:
        return label(self.defense, self.defense_point)

    @property
    def attack_label(self) -> str:
        return label(self.attack, self.attack_point)


def label(name: str, point: str) -> str:
    """``fgsm (eps=0.1)``; a component without a swept parameter is just its name."""
    return f"{name} ({point})" if point else name


def metric_meta(result: Mapping[str, Any], name: str) -> MetricMeta:
    """The metric's metadata from ``result["metrics"]``.

    A result written before metrics declared a ``format`` has none: there a proportion
    is recognised by its bounds [0, 1], as the report did then, so old results.json files
    render as they did.
    """
    meta = result.get("metrics", {}).get(name) or {}
    raw = meta.get("bounds")
    bounds = (float(raw[0]), float(raw[1])) if raw and len(raw) == 2 else None
    hib = meta.get("higher_is_better")
    fmt = meta.get("format")
    if fmt not in ("percent", "number"):
        fmt = "percent" if fmt is None and bounds == (0.0, 1.0) else "number"
    return MetricMeta(
        name=name,
        title=str(meta.get("title") or name),
        description=str(meta.get("description") or ""),
        higher_is_better=None if hib is None else bool(hib),
        bounds=bounds,
        format=fmt,
    )


def _sortable(value: Any) -> tuple[int, float, str]:
    # Numbers sort numerically, everything else by its text: always comparable.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _params_key(params: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple((k, _sortable(v)) for k, v in sorted(params.items()))


def _ordered_keys(cells: list[Mapping[str, Any]], kind: str,
                  name_rank: Mapping[str, Any]) -> list[Key]:
    """Distinct (name, point) keys: names by ``name_rank``, points by parameter value."""
    first: dict[Key, tuple[Any, ...]] = {}
    for cell in cells:
        key = (cell[kind], cell.get(f"{kind}_point") or "")
        if key not in first:
            first[key] = _params_key(cell.get(f"{kind}_params") or {})
    return sorted(first, key=lambda k: (name_rank[k[0]], first[k], k[1]))


def defense_keys(result: Mapping[str, Any]) -> list[Key]:
    """Defenses in config order (``none`` first), then their points by parameter value."""
    cells = result.get("cells", [])
    declared = list(result.get("defenses", {}))
    seen = declared + [c["defense"] for c in cells if c["defense"] not in declared]
    rank = {name: (name != "none", i) for i, name in enumerate(dict.fromkeys(seen))}
    return _ordered_keys(cells, "defense", rank)


def attack_keys(result: Mapping[str, Any]) -> list[Key]:
    """Attacks by family (baseline first), then config order, then points by value."""
    cells = result.get("cells", [])
    declared = list(result.get("attacks", {}))
    seen = list(dict.fromkeys(declared + [c["attack"] for c in cells]))
    family = {c["attack"]: c.get("family", "") for c in cells}
    rank = {}
    for i, name in enumerate(seen):
        fam = family.get(name) or result.get("attacks", {}).get(name, {}).get("family", "")
        fam_rank = FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER)
        rank[name] = (fam_rank, i)
    return _ordered_keys(cells, "attack", rank)


def cell_index(result: Mapping[str, Any]) -> dict[tuple[str, str, str, str], Mapping[str, Any]]:
    """Cells by (defense, defense_point, attack, attack_point)."""
    return {(c["defense"], c.get("defense_point") or "", c["attack"],
             c.get("attack_point") or ""): c for c in result.get("cells", [])}


def metric_value(cell: Mapping[str, Any], metric: str) -> float | None:
    """The finite value of ``metric`` in an ok cell, else None."""
    if cell.get("status") != "ok":
        return None
    value = (cell.get("metrics") or {}).get(metric, {}).get("value")
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def metric_names(result: Mapping[str, Any]) -> list[str]:
    """Metrics with at least one value, in the order the result declares them."""
    present = {name for c in result.get("cells", []) for name in (c.get("metrics") or {})
               if metric_value(c, name) is not None}
    declared = list(result.get("metrics", {}))
    extra = sorted(present - set(declared))
    return [m for m in declared if m in present] + extra


def metric_family(result: Mapping[str, Any], metric: str) -> str:
    """The family a metric is shown under: the commonest non-baseline family reporting it.

    Shared metrics (precision, f1...) come from both the clean column and the attacks;
    they belong with the attacks, and keep the clean column beside them for reference.
    """
    counts = collections.Counter(c.get("family", "") for c in result.get("cells", [])
                                 if metric_value(c, metric) is not None)
    attacked = {f: n for f, n in counts.items() if f != "baseline"}
    if not attacked:
        return "baseline" if counts else ""
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return min(attacked, key=lambda f: (-attacked[f], order.get(f, len(order)), f))


def matrix_layout(result: Mapping[str, Any], metric: str) -> tuple[list[Key], list[Key]]:
    """Rows (defense keys) and columns (attack keys) of the matrix of one metric.

    Columns are every point of every attack that reports the metric somewhere, so an
    error or not-applicable point sits in its place; an attack with no value at all is
    shown under the metrics of its family.
    """
    cells = result.get("cells", [])
    reporting = {c["attack"] for c in cells if metric_value(c, metric) is not None}
    family = metric_family(result, metric)
    with_values = {c["attack"] for c in cells
                   if any(metric_value(c, m) is not None for m in (c.get("metrics") or {}))}
    silent = {c["attack"] for c in cells
              if c.get("family") == family and c["attack"] not in with_values}
    columns = [k for k in attack_keys(result) if k[0] in reporting | silent]
    return defense_keys(result), columns


def matrix(result: Mapping[str, Any], metric: str) -> pd.DataFrame:
    """The values of ``metric``: one row per defense label, one column per attack label.

    Missing, not-applicable and error cells are NaN.
    """
    import pandas as pd

    rows, columns = matrix_layout(result, metric)
    index = cell_index(result)
    data = []
    for d in rows:
        row = []
        for a in columns:
            cell = index.get((*d, *a))
            value = metric_value(cell, metric) if cell is not None else None
            row.append(math.nan if value is None else value)
        data.append(row)
    frame = pd.DataFrame(data, index=[label(*d) for d in rows],
                         columns=[label(*a) for a in columns], dtype=float)
    frame.index.name = "defense"
    frame.columns.name = "attack"
    return frame


def badness(value: float | None, meta: MetricMeta,
            observed: tuple[float, float] | None = None) -> float | None:
    """How bad ``value`` is for the defender, from 0 (best) to 1 (worst).

    Bounded metrics are normalised within their bounds; unbounded ones within the
    ``observed`` range when one is given (relative colouring), else None.
    """
    if value is None or meta.higher_is_better is None:
        return None
    span = meta.bounds or observed
    if span is None or not span[1] > span[0]:
        return None
    norm = min(1.0, max(0.0, (value - span[0]) / (span[1] - span[0])))
    return 1.0 - norm if meta.higher_is_better else norm


# ColorBrewer RdYlGn, green (good) to red (bad), mixed halfway to white so dark text
# stays readable on every step (the number is always printed; colour only supports it).
_STOPS = ((26, 152, 80), (145, 207, 96), (217, 239, 139), (254, 224, 139),
          (252, 141, 89), (215, 48, 39))
NEUTRAL = "#eef0f3"


def colour(bad: float | None) -> str:
    """Background colour (``#rrggbb``) for a badness in [0, 1]; neutral for None."""
    if bad is None:
        return NEUTRAL
    pos = min(1.0, max(0.0, bad)) * (len(_STOPS) - 1)
    i = min(int(pos), len(_STOPS) - 2)
    t = pos - i
    rgb = [a + (b - a) * t for a, b in zip(_STOPS[i], _STOPS[i + 1])]
    return "#" + "".join(f"{round(c + (255 - c) * 0.5):02x}" for c in rgb)


def format_value(value: float | None, meta: MetricMeta) -> str:
    """A value as the metric's ``format`` says: ``"percent"`` prints 0.88 as ``88.0%``;
    ``"number"`` prints three significant digits (``0.873``, ``2.5``), and whole digits
    from 1,000 up (``12,345``) rather than an exponent. "—" for a missing value."""
    if value is None or not math.isfinite(value):
        return "—"
    if meta.percent:
        return f"{value * 100:.1f}%"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_interval(low: float | None, high: float | None, meta: MetricMeta) -> str:
    if low is None or high is None:
        return ""
    return f"{format_value(low, meta)} – {format_value(high, meta)}"


def worst_findings(result: Mapping[str, Any], k: int = 8) -> list[Finding]:
    """For each metric, its worst attacked cell for the defender; the ``k`` worst metrics
    first. The clean row (no attack) is never one: it describes the model, not an attack.

    Bounded metrics rank by how far within their bounds the value sits towards the bad
    end; unbounded ones (no common scale) follow them. Metrics without a direction are
    left out: there is no "worst" to report. The report's Summary ranks attacks by what
    they change instead (:func:`gauntlet.reports.findings.attack_findings`).
    """
    index = {key: c for key, c in cell_index(result).items()
             if c.get("attack") != "clean" and c.get("family") != "baseline"}
    order = {key: i for i, key in enumerate(
        (*d, *a) for a in attack_keys(result) for d in defense_keys(result))}
    findings = []
    for name in metric_names(result):
        meta = metric_meta(result, name)
        if meta.higher_is_better is None:
            continue
        sign = 1.0 if meta.higher_is_better else -1.0
        candidates = [(sign * v, order.get(key, 0), key) for key, c in index.items()
                      if (v := metric_value(c, name)) is not None]
        if not candidates:
            continue
        _, _, key = min(candidates)
        cell = index[key]
        rec = cell["metrics"][name]
        findings.append(Finding(
            metric=name, title=meta.title, defense=key[0], defense_point=key[1],
            attack=key[2], attack_point=key[3], value=float(rec["value"]),
            low=rec.get("low"), high=rec.get("high"), n=rec.get("n", cell.get("n")),
            badness=badness(float(rec["value"]), meta), higher_is_better=meta.higher_is_better,
            cell_id=str(cell.get("id", "")),
        ))
    findings.sort(key=lambda f: (f.badness is None, -(f.badness or 0.0), f.metric))
    return findings[:k]
