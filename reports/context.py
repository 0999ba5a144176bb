"""The ReportContext: plain data the HTML templates render, built from a result dict.

Templates see only these frozen dataclasses and strings (never live models, never the
raw result), so every number is formatted and every colour chosen here, in Python,
where it is tested. All text is left as text: the templates escape it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from markupsafe import Markup

from gauntlet.reports import charts as charts_mod
from gauntlet.reports.checklist import (
    ChecklistFinding,
    DefenseChecklist,
    NaiveTable,
    checklist_findings,
    checklist_views,
    naive_tables,
)
from gauntlet.reports.classic import Classic, classic
from gauntlet.reports.findings import FindingRow, finding_rows, findings_note
from gauntlet.reports.gallery import Gallery, galleries
from gauntlet.reports.intake import IntakeView, intake_view
from gauntlet.reports.privacy import (
    PrivacyRow,
    TheftRow,
    column_titles,
    membership_cells,
    privacy_rows,
    privacy_summary,
    ranking_metric,
    theft_rows,
)
from gauntlet.reports.stability import StabilityView, format_sd, stability
from gauntlet.reports.tables import (
    FAMILY_ORDER,
    FAMILY_TITLES,
    MetricMeta,
    badness,
    cell_index,
    colour,
    defense_keys,
    format_interval,
    format_value,
    label,
    matrix_layout,
    metric_family,
    metric_meta,
    metric_names,
    metric_value,
)
from gauntlet.reports.targeted import TargetedRow, targeted_rows
from gauntlet.reports.verdict import VerdictLine, verdict


@dataclasses.dataclass(frozen=True)
class MatrixCell:
    text: str
    tooltip: str
    colour: str
    badness: str  # "" when there is none; a data attribute for readers and tests
    status: str  # ok | not_applicable | error | missing
    attack: str
    attack_point: str
    spread: str = ""  # --resamples: the value's 2.5-97.5 percentile range over resamples


@dataclasses.dataclass(frozen=True)
class MatrixRow:
    label: str
    defense: str
    defense_point: str
    cells: list[MatrixCell]


@dataclasses.dataclass(frozen=True)
class HeaderGroup:
    label: str
    span: int
    note: str = ""  # e.g. "first 100 rows": an attack limited to fewer rows than the audit


@dataclasses.dataclass(frozen=True)
class MatrixTable:
    id: str
    metric: str
    title: str
    description: str
    direction: str
    attack_headers: list[HeaderGroup]
    point_headers: list[str]
    rows: list[MatrixRow]


@dataclasses.dataclass(frozen=True)
class MetricGroup:
    family: str
    title: str
    tables: list[MatrixTable]


@dataclasses.dataclass(frozen=True)
class ProblemCell:
    defense: str
    attack: str
    family: str
    reason: str
    traceback: str


@dataclasses.dataclass(frozen=True)
class DefenseNote:
    name: str
    stage: str
    description: str
    evaluation: str
    not_adaptive: bool
    clean_accuracy: str
    row_limit: str = ""  # "Evaluated on the first N test rows ...", where it declares one


@dataclasses.dataclass(frozen=True)
class ChartGroup:
    id: str
    title: str
    intro: str
    charts: list[charts_mod.Chart]
    small: bool


@dataclasses.dataclass(frozen=True)
class Timing:
    attack: str
    cells: int
    seconds: str


@dataclasses.dataclass(frozen=True)
class PluginRow:
    """A plugin that contributed attacks, defenses or metrics to this audit."""

    plugin: str
    distribution: str
    version: str
    contributed: list[tuple[str, str]]  # ("attacks", "fgsm, pgd"), ...


@dataclasses.dataclass(frozen=True)
class Provenance:
    run: list[tuple[str, str]]
    model: list[tuple[str, str]]
    data: list[tuple[str, str]]
    libraries: list[tuple[str, str]]
    timings: list[Timing]
    config_json: str
    plugins: list[PluginRow] = dataclasses.field(default_factory=list)


#: The ``place`` a plugin section names to be shown inside the Summary; a section with
#: any other place (or none) is shown with the plugin sections at the end.
SUMMARY = "summary"


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    text: str
    place: str = ""


@dataclasses.dataclass(frozen=True)
class ReportContext:
    title: str
    model_name: str
    data_name: str
    facts: list[tuple[str, str]]
    counts: dict[str, int]
    findings: list[FindingRow]
    defenses: list[DefenseNote]
    groups: list[MetricGroup]
    chart_groups: list[ChartGroup]
    not_applicable: list[ProblemCell]
    errors: list[ProblemCell]
    provenance: Provenance
    intake: IntakeView
    sections: list[Section]  # shown at the end of the report
    summary_sections: list[Section]  # place="summary": shown inside the Summary
    version: str
    legend: list[str]
    galleries: list[Gallery] = dataclasses.field(default_factory=list)  # image data only
    classic: Classic | None = None  # the classic FGSM table, when FGSM ran
    # the evaluation checklist per defense point, its failed/warned checks, naive vs adaptive
    checklist: list[DefenseChecklist] = dataclasses.field(default_factory=list)
    checklist_findings: list[ChecklistFinding] = dataclasses.field(default_factory=list)
    naive: list[NaiveTable] = dataclasses.field(default_factory=list)
    # poisoning cells aimed at chosen test rows (subpopulations), worst first
    targeted: list[TargetedRow] = dataclasses.field(default_factory=list)
    privacy: PrivacyView | None = None  # membership and theft, when either ran
    # one sentence per threat family, and what the findings leave out
    verdict: list[VerdictLine] = dataclasses.field(default_factory=list)
    findings_note: str = ""
    # --resamples: the clean row's metrics with their spread, per defense
    stability: StabilityView | None = None
    # the gate's verdicts (results.json "gate"), failed first
    gate: list[GateRow] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class GateRow:
    check: str
    passed: bool
    message: str


def _gate(result: Mapping[str, Any]) -> list[GateRow]:
    rows = [GateRow(_text(v.get("expression")), bool(v.get("passed")), _text(v.get("message")))
            for v in result.get("gate") or () if isinstance(v, Mapping)]
    return sorted(rows, key=lambda r: r.passed)


@dataclasses.dataclass(frozen=True)
class PrivacyView:
    """The privacy section: every membership cell's low-FPR numbers, and its charts."""

    summary: str
    columns: list[str]
    rows: list[PrivacyRow]
    charts: list[ChartGroup]
    theft: list[TheftRow]
    ranked_by: str  # the metric the strongest attacks are picked by


def _privacy(result: Mapping[str, Any]) -> PrivacyView | None:
    groups = [ChartGroup(key, title, text, charts, wide)
              for key, title, text, build, wide in _PRIVACY_CHARTS
              if (charts := _drawn(build, result))]
    rows, theft = privacy_rows(result), theft_rows(result)
    if not rows and not groups and not theft:
        return None
    ranked = metric_meta(result, ranking_metric(membership_cells(result))).title
    return PrivacyView(privacy_summary(result) or "", column_titles(result), rows, groups,
                       theft, ranked)


def _text(value: Any) -> str:
    """Any plugin-supplied value as display text (the templates escape it)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return " × ".join(str(v) for v in value) if value else "—"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _direction(meta: MetricMeta) -> str:
    if meta.higher_is_better is None:
        return "no direction declared"
    return "higher is better for the defender" if meta.higher_is_better else \
        "lower is better for the defender"


def _slug(text: str, used: set[str]) -> str:
    base = "m-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "metric")
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _matrix_cell(cell: Mapping[str, Any] | None, metric: str, meta: MetricMeta,
                 observed: tuple[float, float] | None, where: str) -> MatrixCell:
    attack = cell["attack"] if cell else ""
    point = (cell.get("attack_point") or "") if cell else ""
    if cell is None:
        return MatrixCell("—", f"{where}\nnot run", colour(None), "", "missing", attack, point)
    status = cell.get("status", "ok")
    if status == "not_applicable":
        return MatrixCell("n/a", f"{where}\nnot applicable: {_text(cell.get('reason'))}",
                          colour(None), "", status, attack, point)
    if status == "error":
        return MatrixCell("error", f"{where}\nerror: {_text(cell.get('reason'))}",
                          colour(None), "", status, attack, point)
    value = metric_value(cell, metric)
    if value is None:
        why = "not measured" if metric not in (cell.get("metrics") or {}) else "undefined"
        return MatrixCell("—", f"{where}\n{why}", colour(None), "", "missing", attack, point)
    rec = cell["metrics"][metric]
    bad = badness(value, meta, observed)
    tip = [where, f"{meta.title}: {format_value(value, meta)}",
           f"n = {rec.get('n', cell.get('n'))}"]
    interval = format_interval(rec.get("low"), rec.get("high"), meta)
    if interval:
        tip.append(f"95% interval: {interval}")
    spread = ""
    if isinstance(rec.get("spread"), Mapping):
        s = rec["spread"]
        spread = format_interval(s.get("low"), s.get("high"), meta)
        tip.append(f"over {s.get('k')} bootstrap resamples: {spread} (sd "
                   f"{format_sd(float(s.get('sd') or 0.0), meta)})")
    return MatrixCell(format_value(value, meta), "\n".join(tip), colour(bad),
                      "" if bad is None else f"{bad:.4f}", status, attack, point, spread)


def _attack_rows_note(cells: Iterable[Mapping[str, Any]], attack: str) -> str:
    """"first N rows" when every cell of ``attack`` attacked only its first N rows (its
    ``rows`` parameter, a per-attack limit on slow attacks), else ""."""
    mine = [c for c in cells if c.get("attack") == attack and c.get("status") == "ok"
            and not c.get("derived")]
    limits = {(c.get("attack_params") or {}).get("rows") for c in mine}
    if len(limits) != 1:
        return ""
    rows = _rows(limits.pop())
    # Only where the limit bit: an audit of fewer rows attacks all of them.
    return f"first {rows} rows" if rows and all(c.get("n") == rows for c in mine) else ""


def _matrix_table(result: Mapping[str, Any], metric: str, used: set[str]) -> MatrixTable:
    meta = metric_meta(result, metric)
    rows, columns = matrix_layout(result, metric)
    index = cell_index(result)
    values = [v for c in index.values() if (v := metric_value(c, metric)) is not None]
    observed = (min(values), max(values)) if values else None
    headers: list[HeaderGroup] = []
    for attack, _ in columns:
        if headers and headers[-1].label == attack:
            headers[-1] = dataclasses.replace(headers[-1], span=headers[-1].span + 1)
        else:
            headers.append(HeaderGroup(attack, 1, _attack_rows_note(index.values(), attack)))
    table_rows = []
    for d in rows:
        cells = []
        for a in columns:
            cell = index.get((*d, *a))
            where = f"{label(*a)} against {label(*d)}"
            built = _matrix_cell(cell, metric, meta, observed, where)
            cells.append(dataclasses.replace(built, attack=a[0], attack_point=a[1]))
        table_rows.append(MatrixRow(label(*d), d[0], d[1], cells))
    description = meta.description
    if meta.bounds is None and meta.higher_is_better is not None:
        description += (" " if description else "") + "(Unbounded: colours are relative to " \
            "the range seen in this table.)"
    return MatrixTable(_slug(metric, used), metric, meta.title, description, _direction(meta),
                       headers, [a[1] for a in columns], table_rows)


def _groups(result: Mapping[str, Any]) -> list[MetricGroup]:
    by_family: dict[str, list[str]] = {}
    for metric in metric_names(result):
        by_family.setdefault(metric_family(result, metric), []).append(metric)
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    used: set[str] = set()
    return [MetricGroup(f, FAMILY_TITLES.get(f, f.title() or "Other"),
                        [_matrix_table(result, m, used) for m in by_family[f]])
            for f in sorted(by_family, key=lambda f: (order.get(f, len(order)), f))]


def _problems(result: Mapping[str, Any], status: str) -> list[ProblemCell]:
    return [ProblemCell(label(c["defense"], c.get("defense_point") or ""),
                        label(c["attack"], c.get("attack_point") or ""),
                        _text(c.get("family")), _text(c.get("reason")) or "(no reason given)",
                        _text(c.get("traceback")))
            for c in result.get("cells", []) if c.get("status") == status]


def _rows(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


def _row_limit(result: Mapping[str, Any], name: str) -> str:
    """What the defense's ``rows`` parameter (its row limit, as each of its cells records
    it) did to the evaluated rows; "" when it declares none."""
    limits: dict[str, int] = {}
    for c in result.get("cells", []):
        if c.get("defense") == name and \
                (rows := _rows((c.get("defense_params") or {}).get("rows"))) is not None:
            limits.setdefault(c.get("defense_point") or "", rows)
    if not limits:
        return ""
    n_eval = _rows(((result.get("provenance") or {}).get("data") or {}).get("n_eval"))
    sentences = []
    for rows in sorted(set(limits.values())):
        points = [dp for dp, r in limits.items() if r == rows and dp]
        at = f" at {', '.join(points)}" if len(set(limits.values())) > 1 and points else ""
        if n_eval is not None and rows >= n_eval:
            sentences.append(f"Its row limit ({rows:,}){at} is not reached: all {n_eval:,} "
                             "test rows are evaluated.")
        else:
            of = f" of the {n_eval:,}" if n_eval is not None else ""
            sentences.append(f"Evaluated on the first {rows:,}{of} test rows{at} (the "
                             "defense's row limit).")
    return " ".join(sentences)


def _defenses(result: Mapping[str, Any]) -> list[DefenseNote]:
    """The defenses this audit ran (a cell under them, whatever its status), in the
    matrix's row order; installed defenses the audit did not run are not listed."""
    declared = result.get("defenses", {})
    names = list(dict.fromkeys(d for d, _ in defense_keys(result)))
    index = cell_index(result)
    notes = []
    for name in names:
        meta = declared.get(name) or {}
        accs = []
        for (d, dp, _a, _ap), cell in index.items():
            if d == name and cell.get("family") == "baseline" and \
                    (v := metric_value(cell, "clean_accuracy")) is not None:
                accs.append((dp, format_value(v, metric_meta(result, "clean_accuracy"))))
        clean = ", ".join(f"{v} ({dp})" if dp else v for dp, v in accs) or "—"
        evaluation = _text(meta.get("evaluation"))
        notes.append(DefenseNote(name, _text(meta.get("stage")), _text(meta.get("description")),
                                 evaluation, meta.get("adaptive") is False, clean,
                                 _row_limit(result, name)))
    return notes


#: The report's chart groups in order: (id, title, caption, the charts' builder, wide).
_CHART_GROUPS = (
    ("charts-robustness", "Robustness against perturbation size",
     "Robust accuracy of each defended model as the attack's budget grows.",
     charts_mod.robustness_charts, False),
    ("charts-poisoning", "Poisoning against its parameters",
     "Each point is the model re-trained on a poisoned training set: what the poison "
     "costs on clean data, and what a trigger buys the attacker.",
     charts_mod.poisoning_charts, False),
)

#: The privacy section's charts, as :data:`_CHART_GROUPS`.
_PRIVACY_CHARTS = (
    ("charts-roc", "Membership inference ROC",
     "How well the attacker separates training members from non-members, per defense.",
     charts_mod.roc_charts, False),
    ("charts-privacy-utility", "Privacy against utility",
     "What each defense point leaves an attacker, against what it costs in accuracy.",
     charts_mod.privacy_utility_charts, False),
    ("charts-theft", "Model theft against query budget",
     "How faithful a stolen copy gets as the attacker spends more queries, per defense.",
     charts_mod.theft_charts, False),
)


#: Results fields that change from run to run without changing what any chart draws.
_VOLATILE = ("started", "duration_s", "run")


def _drawn(build: Callable[[Mapping[str, Any]], Any], result: Mapping[str, Any]) -> Any:
    """``build(result)`` (a chart builder), read from the audit's content cache when an
    earlier run drew the same results with the same code: an unchanged re-run does not
    draw its charts again (they were most of its time)."""
    from gauntlet.cache import active, digest, source_digest

    cache = active()
    if cache is None:
        return build(result)
    content = {k: v for k, v in result.items() if k not in ("provenance", "config", "gate")}
    content["provenance"] = {k: v for k, v in (result.get("provenance") or {}).items()
                             if k not in _VOLATILE}
    content["config"] = {k: v for k, v in (result.get("config") or {}).items()
                         if k not in ("out", "source")}
    key = digest({"chart": build.__name__, "charts": source_digest(charts_mod),
                  "context": source_digest(_drawn), "result": content})
    stored = cache.get_json("charts", key)
    if stored is not None:
        return _decode(stored)
    built = build(result)
    cache.put_json("charts", key, _encode(built))
    return built


def _encode(value: Any) -> Any:
    if isinstance(value, charts_mod.Chart):
        return {"__chart__": [value.id, value.title, value.caption, str(value.svg)]}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__chart__" in value:
        chart_id, title, caption, svg = value["__chart__"]
        # Markup again: the chart code made this SVG (escaping what plugins named) and the
        # cache folder is the auditor's own, as trusted as the installed code.
        return charts_mod.Chart(chart_id, title, caption, Markup(svg))
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _chart_groups(result: Mapping[str, Any]) -> list[ChartGroup]:
    groups = [ChartGroup(key, title, text, charts, wide)
              for key, title, text, build, wide in _CHART_GROUPS
              if (charts := _drawn(build, result))]
    for i, (title, charts) in enumerate(_drawn(charts_mod.histogram_charts, result)):
        groups.append(ChartGroup(f"charts-hist-{i}", f"Probe predictions: {title}",
                                 "Predicted classes on the probe inputs; a tall single bar "
                                 "is a trash bucket class.", charts, True))
    l2 = _drawn(charts_mod.l2_charts, result)
    if l2:
        groups.append(ChartGroup("charts-l2", "Minimal-perturbation attacks: distance to flip",
                                 "Attacks without a budget find the smallest L2 change that "
                                 "flips each row; accuracy against an L2 budget follows from "
                                 "those distances.", l2, False))
    return groups


def _provenance(result: Mapping[str, Any]) -> Provenance:
    prov = result.get("provenance") or {}
    run = [("Gauntlet", _text(prov.get("gauntlet"))), ("Python", _text(prov.get("python"))),
           ("Seed", _text(prov.get("seed"))), ("Started", _text(prov.get("started"))),
           ("Duration", _seconds(prov.get("duration_s"))),
           ("Schema", _text(result.get("schema")))]
    ran = prov.get("run")
    if isinstance(ran, Mapping):  # absent from results written before issue 11
        workers = ran.get("workers")
        run += [("Executor", _text(ran.get("executor")) + (f" ({_text(workers)} workers)"
                                                           if workers not in (None, 1)
                                                           else "")),
                ("Device", _text(ran.get("device"))),
                ("Cells", f"{_text(ran.get('cells_run'))} run, "
                          f"{_text(ran.get('cells_reused'))} reused from the cache"
                          + (f" ({_text(ran.get('cache'))})" if ran.get("cache")
                             else " (cache off)"))]
    model = [(k, _text(v)) for k, v in (prov.get("model") or {}).items()]
    data = [(k, _text(v)) for k, v in (prov.get("data") or {}).items()]
    libraries = sorted((_text(k), _text(v)) for k, v in (prov.get("libraries") or {}).items())
    totals: dict[str, list[float]] = {}
    for c in result.get("cells", []):
        d = c.get("duration_s")
        totals.setdefault(c["attack"], []).append(float(d) if isinstance(d, (int, float)) else 0.0)
    timings = [Timing(a, len(ds), _seconds(sum(ds)))
               for a, ds in sorted(totals.items(), key=lambda kv: (-sum(kv[1]), kv[0]))]
    config = json.dumps(result.get("config") or {}, indent=2, default=str, ensure_ascii=False)
    return Provenance(run, model, data, libraries, timings, config, _plugins(result))


def _plugins(result: Mapping[str, Any]) -> list[PluginRow]:
    """Every plugin that contributed an attack, defense or metric to this audit's cells,
    with its distribution and version: from the result's ``attacks``, ``defenses`` and
    ``metrics`` entries, else from its row in ``provenance.plugins`` (older results)."""
    cells = result.get("cells", [])
    used = {"attack": list(dict.fromkeys(c["attack"] for c in cells)),
            "defense": list(dict.fromkeys(c["defense"] for c in cells)),
            "metric": list(dict.fromkeys(m for c in cells for m in (c.get("metrics") or {})))}
    listed = {(row.get("kind"), row.get("name")): row
              for row in (result.get("provenance") or {}).get("plugins") or ()
              if isinstance(row, Mapping)}
    gauntlet = _text((result.get("provenance") or {}).get("gauntlet"))
    rows: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for kind, names in used.items():
        entries = result.get(f"{kind}s") or {}
        for name in names:
            meta = entries.get(name) or listed.get((kind, name)) or {}
            plugin = _text(meta.get("plugin")) or "—"
            version = _text(meta.get("version"))
            if plugin == "core" and not version:
                version = gauntlet  # the core is part of the running Gauntlet
            key = (plugin, _text(meta.get("distribution")) or "—", version or "—")
            rows.setdefault(key, {}).setdefault(kind, []).append(_text(name))
    return [PluginRow(p, d, v, [(f"{k}s", ", ".join(ns)) for k, ns in kinds.items()])
            for (p, d, v), kinds in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def _run_time(prov: Mapping[str, Any]) -> str:
    """The audit's run time; for a replay, what computing it took, as the replay's own
    fraction of a second says nothing about the audit."""
    run = prov.get("run") or {}
    if run.get("executor") == "replayed" and run.get("computed_duration_s") is not None:
        return (f"{_seconds(run['computed_duration_s'])} (replayed from the cache in "
                f"{_seconds(prov.get('duration_s'))})")
    reused, ran = run.get("cells_reused") or 0, run.get("cells_run") or 0
    if reused:  # the time says little about the audit when the cache did its work
        share = "every cell" if not ran else f"{reused} of {reused + ran} cells"
        return f"{_seconds(prov.get('duration_s'))} ({share} from the cache)"
    return _seconds(prov.get("duration_s"))


def _title(result: Mapping[str, Any], model_name: str) -> str:
    """The config's title when it set one, else "Gauntlet audit: MODEL"."""
    title = _text(result.get("title"))
    return title if title and title != "Gauntlet audit" else f"Gauntlet audit: {model_name}"


def build_context(result: Mapping[str, Any],
                  sections: Sequence[Mapping[str, str]] = ()) -> ReportContext:
    """Everything the report shows, as plain formatted data.

    :param sections: plugin sections, each ``{"title", "text"}`` and optionally
        ``"place": "summary"`` to be shown inside the Summary rather than at the end.
    """
    prov = result.get("provenance") or {}
    model = prov.get("model") or {}
    data = prov.get("data") or {}
    model_name = _text(model.get("name")) or "model"
    data_name = _text(data.get("name") or data.get("spec")) or "—"
    cells = result.get("cells", [])
    counts = {s: sum(1 for c in cells if c.get("status") == s)
              for s in ("ok", "not_applicable", "error")}
    counts["total"] = len(cells)
    facts = [("Model", model_name), ("Model access", _text(model.get("access")) or "—"),
             ("Data", data_name),
             ("Evaluated on", f"{data['n_eval']} test samples" if data.get("n_eval") else "—"),
             ("Seed", _text(prov.get("seed")) or "—"),
             ("Run time", _run_time(prov))]
    if (membership := privacy_summary(result)) is not None:
        facts.append(("Membership inference", membership))
    legend = [colour(b / 4) for b in range(5)]
    built = [Section(_text(s.get("title")) or "Plugin section", _text(s.get("text")),
                     _text(s.get("place"))) for s in sections]
    return ReportContext(
        title=_title(result, model_name), model_name=model_name, data_name=data_name,
        facts=facts, counts=counts, findings=finding_rows(result), defenses=_defenses(result),
        groups=_groups(result), chart_groups=_chart_groups(result),
        not_applicable=_problems(result, "not_applicable"), errors=_problems(result, "error"),
        provenance=_provenance(result), intake=intake_view(result),
        sections=[s for s in built if s.place != SUMMARY],
        summary_sections=[s for s in built if s.place == SUMMARY],
        version=_text(prov.get("gauntlet")), legend=legend,
        galleries=galleries(result), classic=classic(result),
        checklist=checklist_views(result), checklist_findings=checklist_findings(result),
        naive=naive_tables(result), targeted=targeted_rows(result),
        privacy=_privacy(result), verdict=verdict(result),
        findings_note=findings_note(result), stability=stability(result),
        gate=_gate(result),
    )

