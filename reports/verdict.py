"""The Summary's verdict: one sentence per threat family a reviewer can act on.

Each names the family's strongest attack on the undefended model with the number behind
it (read against the value without the attack, :mod:`gauntlet.reports.effects`), and the
best defense against that same attack point with what it costs on clean data. It never
rests on the clean row or a statistic of the clean model, and a defense the evaluation
checklist doubts (not adaptive, a failed check) is never presented as the best one
without saying so. The ranked findings are :mod:`gauntlet.reports.findings`.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from gauntlet.reports.effects import (
    UNDEFENDED,
    Doubt,
    Effect,
    best_defense,
    cell_effects,
    clean_cells,
    clean_cost,
    doubts,
    is_attack,
    lower_median,
    reference_defense,
)
from gauntlet.reports.tables import (
    FAMILY_ORDER,
    Key,
    attack_keys,
    badness,
    format_interval,
    format_value,
    label,
    metric_meta,
    metric_names,
    metric_value,
)
from gauntlet.rows import budget_of

TITLES = {"evasion": "Evasion", "poisoning": "Poisoning",
          "inference": "Privacy (membership inference)", "extraction": "Model theft",
          "probe": "Probes"}


@dataclasses.dataclass(frozen=True)
class VerdictLine:
    family: str
    title: str
    text: str  # one sentence, after "<title>: "
    detail: str  # the numbers behind it, with their intervals and n


def family_title(family: str) -> str:
    return TITLES.get(family) or (family.replace("-", " ").replace("_", " ").capitalize()
                                  or "Other")


def _families(result: Mapping[str, Any]) -> list[str]:
    found = {c.get("family") or "" for c in result.get("cells", []) if is_attack(c)}
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(found, key=lambda f: (order.get(f, len(order)), f))


def _fmt(result: Mapping[str, Any], metric: str, value: float) -> str:
    return format_value(value, metric_meta(result, metric))


def _amount(result: Mapping[str, Any], e: Effect,
            clean: Mapping[Key, Mapping[str, Any]] | None = None) -> str:
    """The effect's value as the sentence states it (a drop in points, else the value),
    with its rows where they are fewer than the clean row's (a row-limited attack) when
    ``clean`` is given."""
    text = f"{e.value * 100:.1f} points" if e.metric == "accuracy_drop" \
        else _fmt(result, e.metric, e.value)
    if clean is None:
        return text
    # Only a limit on the attacked rows (its ``rows`` parameter) is worth a word: other
    # metrics count their own units (members and non-members, rows of other classes).
    limit = (e.cell.get("attack_params") or {}).get("rows")
    base = clean.get(e.defense, {}).get("n")
    n = e.cell.get("n")
    if isinstance(limit, int) and isinstance(n, int) and isinstance(base, int) and n < base:
        text += f" (on {n} rows)"
    return text


def _who(e: Effect, reference: Key) -> str:
    where = "" if reference == UNDEFENDED else f" against {label(*reference)}"
    return (f"{e.attack} at {e.point}" if e.point else e.attack) + where


def _extra(result: Mapping[str, Any], e: Effect, name: str) -> str:
    v = metric_value(e.cell, name)
    return "" if v is None else _fmt(result, name, v)


def _clause(result: Mapping[str, Any], e: Effect, reference: Key,
            clean: Mapping[Key, Mapping[str, Any]]) -> str:
    """What the attack does to the reference model, in words, with its number."""
    who, value = _who(e, reference), _amount(result, e, clean)
    ref = _fmt(result, e.metric, e.reference)
    m = e.metric
    if m == "robust_accuracy":
        return f"{who} cuts accuracy from {ref} to {value}"
    if m == "accuracy_drop":
        return f"{who} cuts accuracy by {value}"
    if m == "attack_success_rate":
        return f"{who} turns {value} of correctly classified inputs into errors"
    if m == "backdoor_success":
        return f"{who} sends {value} of triggered inputs to its target class"
    if m == "target_success":
        return f"{who} moves {value} of the rows it aims at to the class it wants"
    if m in ("membership_auc", "membership_advantage"):
        what = "AUC" if m == "membership_auc" else "advantage"
        rec = (e.cell.get("metrics") or {}).get(m) or {}
        low, high = rec.get("low"), rec.get("high")
        if low is not None and high is not None and low <= e.reference <= high:
            # An attack within sampling noise of chance found nothing: say so.
            return (f"{who} does no better than chance at telling training members from "
                    f"non-members ({what} {value}, chance {ref}, within sampling noise)")
        tpr = _extra(result, e, "tpr_at_1pct_fpr")
        tail = f", catching {tpr} of members at 1% false positives" if tpr else ""
        return (f"{who} tells training members from non-members with {what} {value} "
                f"(chance {ref}){tail}")
    if m in ("fidelity", "substitute_accuracy"):
        queries = _extra(result, e, "queries")
        tail = f" from {queries} queries" if queries else ""
        what = "agrees with the model on" if m == "fidelity" else "is right on"
        return f"{who} steals a copy that {what} {value} of test rows{tail}"
    if m == "top_class_share":
        return f"{who} gets {value} of out-of-distribution probes filed under one class " \
               f"({ref} is an even spread)"
    if m == "last_class_share":
        return f"{who} makes the model give the class trained last {value} of probes " \
               f"({ref} when shuffled)"
    if m == "tamper_success":
        return f"{who} lets a malicious server replace {value} of answers"
    if m == "trigger_anomaly":
        flagged = (e.cell.get("artifacts") or {}).get("trigger_scan", {}).get("flagged")
        found = (f"flags class {', '.join(map(str, flagged))} as a backdoor's likely target"
                 if flagged else "flags no class")
        return (f"{who} {found}: the anomaly index of the smallest class trigger is "
                f"{value} (above 2 flags a class)")
    if m == "server_recovery":
        return f"{who} lets the server recover {value} of served labels ({ref} by chance)"
    title = metric_meta(result, m).title
    return f"{who}: {title} {value}"


def _cost(clean: Mapping[Key, Mapping[str, Any]], e: Effect, reference: Key) -> str:
    cost = clean_cost(clean, e.defense, reference)
    if cost is None:
        return ""
    if abs(cost) < 0.0005:
        return " (no clean cost)"
    return f" (clean cost {cost * 100:.1f} points)" if cost > 0 else \
        f" (clean accuracy {-cost * 100:+.1f} points)"


def _detail(result: Mapping[str, Any], e: Effect) -> str:
    rec = (e.cell.get("metrics") or {}).get(e.metric) or {}
    meta = metric_meta(result, e.metric)
    interval = format_interval(rec.get("low"), rec.get("high"), meta)
    return (f"{label(*e.defense)}, {label(e.attack, e.point)}: {meta.title} "
            f"{format_value(e.value, meta)}" + (f" [95%: {interval}]" if interval else "")
            + (f", n = {e.n}" if e.n is not None else ""))


def _raw(result: Mapping[str, Any], cell: Mapping[str, Any], metric: str) -> Effect | None:
    """A metric no reading knows, as an effect without a reference: ranked by its raw
    badness, so a plugin's own family still gets a line."""
    meta = metric_meta(result, metric)
    value = metric_value(cell, metric)
    if value is None or meta.higher_is_better is None:
        return None
    harm = -value if meta.higher_is_better else value
    bad = badness(value, meta)
    return Effect(cell, metric, value, math.nan, harm, harm if bad is None else bad,
                  meta.higher_is_better)


def _candidates(result: Mapping[str, Any], family: str, reference: Key,
                clean: Mapping[Key, Mapping[str, Any]]) -> list[Effect]:
    """The reference model's effects the family's verdict chooses its strongest from.

    Evasion with eps budgets: every attack at one representative budget, the lower median
    of the budgets the reference model was attacked at (for the commonest norm). The
    sweep's range is the auditor's choice; its middle is a budget they meant to ask
    about, picked before any result is seen (never the budget that flatters or damns the
    model), and the lower middle because at the top of a typical sweep every model is at
    0% and no defense can be told from another. Minimal-perturbation attacks have no
    budget and reach 0% by design: they speak in the Charts. Otherwise (other families,
    or no budgets), each attack at the lower median of its own sweep.
    """
    order = {k: i for i, k in enumerate(attack_keys(result))}
    mine = sorted((c for c in result.get("cells", [])
                   if c.get("family") == family and is_attack(c) and c.get("status") == "ok"
                   and (c["defense"], c.get("defense_point") or "") == reference),
                  key=lambda c: order.get((c["attack"], c.get("attack_point") or ""), 0))
    if family == "evasion" and (budgets := [b for c in mine if (b := budget_of(result, c))]):
        norms = collections.Counter(n for n, _ in budgets)
        norm = max(norms, key=lambda n: (norms[n], n == "linf"))
        eps = lower_median(sorted({e for n, e in budgets if n == norm}))
        chosen = [c for c in mine if budget_of(result, c) == (norm, eps)]
    else:
        points: dict[str, list[Mapping[str, Any]]] = {}
        for c in mine:
            points.setdefault(c["attack"], []).append(c)
        chosen = [lower_median(cs) for cs in points.values()]
    out = []
    for c in chosen:
        effects = cell_effects(result, c, clean)
        if not effects:
            raw = [e for m in metric_names(result) if (e := _raw(result, c, m))]
            effects = {"raw": raw[0]} if raw else {}
        if effects:
            out.append(max(effects.values(), key=lambda e: e.share))
    return out


def _same_point(result: Mapping[str, Any], e: Effect, reference: Key,
                clean: Mapping[Key, Mapping[str, Any]]) -> list[Effect]:
    """The effect of ``e``'s attack point, by the same metric, under every other defense."""
    out = []
    for c in result.get("cells", []):
        if c["attack"] != e.attack or (c.get("attack_point") or "") != e.point or \
                (c["defense"], c.get("defense_point") or "") == reference:
            continue
        other = cell_effects(result, c, clean)
        found = next((o for o in other.values() if o.metric == e.metric), None)
        if found is None and math.isnan(e.reference):
            found = _raw(result, c, e.metric)
        if found is not None:
            out.append(found)
    return out


def _family_line(result: Mapping[str, Any], family: str, reference: Key | None,
                 clean: Mapping[Key, Mapping[str, Any]], doubt: Mapping[Key, Doubt],
                 defended: int) -> VerdictLine:
    title = family_title(family)
    cells = [c for c in result.get("cells", []) if c.get("family") == family and is_attack(c)]
    strongest = None
    if reference is not None:
        strongest = max(_candidates(result, family, reference, clean),
                        key=lambda e: e.share, default=None)
    if strongest is None or reference is None:
        counts = collections.Counter(c.get("status") for c in cells)
        ok = counts.pop("ok", 0)
        parts = [f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()) if s]
        where = "the undefended model" if reference in (None, UNDEFENDED) \
            else label(*reference)
        text = (f"no attack produced a number ({', '.join(parts)})" if not ok else
                f"{ok} cells produced numbers, none on {where} that the Summary can "
                "read as an attack's effect; see the matrices")
        return VerdictLine(family, title, text + ".", "")
    parts = [_clause(result, strongest, reference, clean)]
    details = [_detail(result, strongest)]
    found = best_defense(_same_point(result, strongest, reference, clean), family, doubt,
                         clean)
    best, other = found.best, found.untrusted
    if best is not None and best.outcome <= strongest.outcome:
        parts.append(f"no defense does better (best: {label(*best.defense)} "
                     f"{_amount(result, best)})")
    elif best is not None:
        parts.append(f"with {label(*best.defense)} {_amount(result, best)}"
                     f"{_cost(clean, best, reference)}")
    if other is not None:
        shows = (f"{label(*other.defense)} shows {_amount(result, other)}"
                 f"{_cost(clean, other, reference)}")
        parts.append(f"{shows}, an upper bound (not adaptive)" if found.upper_bound
                     else f"{shows} but {found.why}")
    if best is None and other is None:
        parts.append("no defense in this audit ran it" if defended else
                     "this audit ran no defense")
    details += [_detail(result, e) for e in (best, other) if e is not None]
    return VerdictLine(family, title, "; ".join(parts) + ".", "\n".join(details))


def verdict(result: Mapping[str, Any]) -> list[VerdictLine]:
    """One line per threat family in the audit (clean row aside), in the report's order."""
    reference = reference_defense(result)
    clean, doubt = clean_cells(result), doubts(result)
    defended = len({(c["defense"], c.get("defense_point") or "")
                    for c in result.get("cells", [])} - {reference})
    return [_family_line(result, f, reference, clean, doubt, defended)
            for f in _families(result)]
