"""The evaluation checklist, run on every audit: can these robustness numbers be trusted?

Carlini et al., 2019, "On Evaluating Adversarial Robustness" list the signs of a broken
evaluation (gradient masking, a too-weak attack, a randomised defense attacked without
EOT); AutoAttack (Croce and Hein, 2020) flags some of them automatically. Gauntlet checks
each defense point of every audit against these rules, from what the results say (attack
names, families, access, budgets) and from the live measurements the ``clean`` cell takes
(:func:`gauntlet.plan.live_checks`):

``iterative``
    iterative gradient attacks do at least as well as single-step ones at each budget;
``monotone``
    robust accuracy does not increase with the budget (same attack, other parameters
    equal);
``unbounded``
    an unbounded budget (a minimal-perturbation attack, else the largest eps run) drives
    robust accuracy near zero;
``beats-noise``
    gradient attacks beat the noise baseline (the ``noise`` attack) of the same budget;
``black-box``
    score- and decision-based attacks do not beat white-box attacks at the same budget
    on the same rows (if they do, the gradients are masked);
``gradients``
    input gradients are finite and non-zero on a sample of rows;
``repeatable``
    repeated predictions on the same inputs agree (if not, the defense is randomised and
    passes only if it is attacked with EOT: its parameters show ``eot`` > 1);
``naive``
    for a defense that transforms or screens inputs, each attack run against the
    deployment does at least as well as the same attack made against the undefended model
    (the naive evaluation, measured beside it); if not, the adaptive attack is weaker
    than ignoring the defense (a randomised defense attacked without EOT, a search
    confused by noisy answers), and its number overstates the defense;
``adaptive``
    the defense's evaluation is adaptive (a non-adaptive one is flagged: its numbers are
    upper bounds).

Each check is ``pass``, ``warn``, ``fail`` or ``n/a`` with one sentence of evidence that
names the numbers compared. A comparison of two robust accuracies fires only when their
95% Wilson intervals do not overlap, on the rows both attacks evaluated (from the per-row
results when they are at hand, else from the stored intervals): sampling noise never
fires a rule. The result is stored in results.json under ``"checklist"``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gauntlet.metric import MetricValue, proportion
from gauntlet.rows import attack_meta, budget_label, budget_of, unpack

PASS, WARN, FAIL, NA = "pass", "warn", "fail", "n/a"
STATUSES = (PASS, WARN, FAIL, NA)
ROBUST = "robust_accuracy"
NAIVE = "naive_robust_accuracy"
#: The noise baseline: random perturbations of the same budget.
NOISE = "noise"
#: Robust accuracy at an unbounded budget counts as near zero up to this (its interval's
#: lower end must reach it).
NEAR_ZERO = 0.05
#: Parameters that count an attack's iterations; without one (or with 1), a gradient
#: attack with a budget is single-step.
ITERATION_PARAMS = ("max_iter", "steps", "iterations", "nb_iter", "max_iterations")

#: (rule id, title), in the order the report lists them.
RULES = (
    ("iterative", "Iterative attacks do at least as well as single-step ones"),
    ("monotone", "Robust accuracy does not increase with the budget"),
    ("unbounded", "An unbounded budget drives robust accuracy near zero"),
    ("beats-noise", "Gradient attacks beat the noise baseline"),
    ("black-box", "Score- and decision-based attacks do not beat white-box attacks"),
    ("gradients", "Gradients are finite and non-zero"),
    ("repeatable", "Repeated predictions agree"),
    ("naive", "Adaptive attacks do at least as well as naive ones"),
    ("adaptive", "The evaluation is adaptive"),
)
TITLES = dict(RULES)


@dataclasses.dataclass(frozen=True)
class Check:
    """One rule's verdict on one defense point."""

    rule: str
    title: str
    status: str  # pass | warn | fail | n/a
    evidence: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DefenseChecks:
    """The checklist of one defense point; ``upper_bound``: its robust accuracies are
    upper bounds (a non-adaptive evaluation)."""

    defense: str
    defense_point: str
    upper_bound: bool
    checks: list[Check]

    def to_dict(self) -> dict[str, Any]:
        return {"defense": self.defense, "defense_point": self.defense_point,
                "upper_bound": self.upper_bound,
                "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DefenseChecks:
        return cls(str(data["defense"]), str(data.get("defense_point") or ""),
                   bool(data.get("upper_bound")),
                   [Check(str(c["rule"]), str(c["title"]), str(c["status"]),
                          str(c["evidence"])) for c in data.get("checks", ())])


@dataclasses.dataclass(frozen=True)
class _Point:
    """One ok evasion cell's robust accuracy, with what the rules need to know of it."""

    cell: Mapping[str, Any]
    attack: str
    label: str
    needs: str  # gradients | scores | labels
    budget: tuple[str, float] | None
    minimal: bool
    steps: int | None
    value: MetricValue
    rows: dict[int, bool] | None

    @property
    def white_box(self) -> bool:
        return self.needs == "gradients"

    @property
    def noise(self) -> bool:
        return self.attack == NOISE


def checklist(result: Mapping[str, Any],
              records: Iterable[Mapping[str, Any]] | None = None) -> list[DefenseChecks]:
    """The evaluation checklist of every defense point of ``result`` (a results.json
    object), in the report's order.

    :param records: the cells with their per-row results (``AuditResult.records``, or the
        lines of ``cells.jsonl``): comparisons then use the rows both attacks evaluated.
        Without them, the stored intervals are compared.
    """
    per_row: dict[str, dict[int, bool]] = {}
    for r in records or ():
        rows = unpack(r.get("rows")) if r.get("rows") else {}
        if "correct_after" in rows:
            after = rows["correct_after"]
            index = rows.get("row")
            index = index if index is not None and len(index) else range(len(after))
            per_row[r["id"]] = dict(zip((int(i) for i in index), after.tolist()))
    cells = result.get("cells", [])
    keys = list(dict.fromkeys((c["defense"], c.get("defense_point") or "") for c in cells))
    out = []
    for defense, point in keys:
        mine = [c for c in cells if c["defense"] == defense
                and (c.get("defense_point") or "") == point]
        points = [p for c in mine if (p := _point(result, c, per_row)) is not None]
        clean = next((c for c in mine if c.get("family") == "baseline"), None)
        checks = (clean.get("artifacts") or {}).get("checks") if clean else None
        params = next((c.get("defense_params") or {} for c in mine), {})
        adaptive = ((result.get("defenses") or {}).get(defense) or {}).get("adaptive")
        out.append(DefenseChecks(defense, point, adaptive is False, [
            _iterative(points), _monotone(points), _unbounded(points), _beats_noise(points),
            _black_box(points), _gradients(checks), _repeatable(checks, params),
            _naive(points), _adaptive(adaptive)]))
    return out


def as_json(checks: Sequence[DefenseChecks]) -> list[dict[str, Any]]:
    """The checklist as results.json stores it."""
    return [d.to_dict() for d in checks]


def stored(result: Mapping[str, Any]) -> list[DefenseChecks]:
    """The checklist stored in ``result``, or computed from it (a results.json written
    before audits stored one; without per-row results)."""
    data = result.get("checklist")
    if isinstance(data, list):
        return [DefenseChecks.from_dict(d) for d in data]
    return checklist(result)


# -- the cells the rules compare ---------------------------------------------------------


def _steps(params: Mapping[str, Any]) -> int | None:
    for key in ITERATION_PARAMS:
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _point(result: Mapping[str, Any], cell: Mapping[str, Any],
           per_row: Mapping[str, dict[int, bool]]) -> _Point | None:
    if cell.get("family") != "evasion" or cell.get("status") != "ok" or cell.get("derived"):
        return None
    rec = (cell.get("metrics") or {}).get(ROBUST)
    if not rec or rec.get("value") is None or not math.isfinite(float(rec["value"])):
        return None
    meta = attack_meta(result, cell["attack"])
    if meta.get("derived"):
        return None
    point = cell.get("attack_point") or ""
    value = MetricValue(float(rec["value"]), int(rec.get("n") or cell.get("n") or 0),
                        rec.get("low"), rec.get("high"))
    return _Point(cell, cell["attack"], f"{cell['attack']} ({point})" if point else
                  cell["attack"], str(meta.get("needs", "")), budget_of(result, cell),
                  bool(meta.get("minimal")), _steps(cell.get("attack_params") or {}), value,
                  per_row.get(cell.get("id", "")))


def _pair(a: _Point, b: _Point) -> tuple[MetricValue, MetricValue, str]:
    """Robust accuracies of ``a`` and ``b`` on the rows both evaluated (from the per-row
    results when both have them), and a phrase saying which rows."""
    if a.rows is not None and b.rows is not None:
        common = a.rows.keys() & b.rows.keys()
        if common:
            va = proportion(sum(a.rows[i] for i in common), len(common))
            vb = proportion(sum(b.rows[i] for i in common), len(common))
            return va, vb, f"on the {len(common)} rows both attacked"
    return a.value, b.value, f"on {a.value.n} and {b.value.n} rows"


def _interval(v: MetricValue) -> tuple[float, float]:
    low = v.value if v.low is None or not math.isfinite(v.low) else v.low
    high = v.value if v.high is None or not math.isfinite(v.high) else v.high
    return low, high


def _above(a: MetricValue, b: MetricValue) -> bool:
    """Is ``a`` higher than ``b`` beyond sampling noise (95% intervals disjoint)?"""
    return _interval(a)[0] > _interval(b)[1]


def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def _show(v: MetricValue) -> str:
    low, high = _interval(v)
    if low == high:
        return _pct(v.value)
    return f"{_pct(v.value)} [{_pct(low)}–{_pct(high)}]"


def _by_budget(points: Iterable[_Point]) -> dict[tuple[str, float], list[_Point]]:
    groups: dict[tuple[str, float], list[_Point]] = {}
    for p in points:
        if p.budget is not None:
            groups.setdefault(p.budget, []).append(p)
    return dict(sorted(groups.items()))


def _check(rule: str, status: str, evidence: str) -> Check:
    return Check(rule, TITLES[rule], status, evidence)


def _comparisons(rule: str, pairs: list[tuple[str, _Point, _Point]], *, none: str,
                 broken: str, held: str) -> Check:
    """Fail when in some pair the first attack's robust accuracy is significantly above
    the second's (the expected order broken); else pass, citing the closest pair.

    ``broken`` and ``held`` are sentence templates over ``{where}``, ``{a}``, ``{b}``,
    ``{va}``, ``{vb}`` and ``{rows}``; ``none`` says why the rule is n/a.
    """
    if not pairs:
        return _check(rule, NA, none)
    compared = []
    for where, a, b in pairs:
        va, vb, rows = _pair(a, b)
        compared.append((_above(va, vb), va.value - vb.value, where, a, b, va, vb, rows))
    failed = [c for c in compared if c[0]]
    status = FAIL if failed else PASS
    worst = max(failed or compared, key=lambda c: c[1])
    _, gap, where, a, b, va, vb, rows = worst
    text = (broken if failed else held).format(where=where, a=a.label, b=b.label,
                                                va=_show(va), vb=_show(vb), rows=rows)
    if not failed and gap > 0:
        text += " (higher, but within sampling noise)"
    n = len(pairs)
    if len(failed) > 1:
        text += f". {len(failed)} of {n} comparisons fail; the largest gap is shown."
    elif n > 1:
        text += f". ({n} comparisons; the closest is shown.)"
    else:
        text += "."
    return _check(rule, status, text)


# -- the rules ----------------------------------------------------------------------------


def _iterative(points: list[_Point]) -> Check:
    pairs = []
    for budget, group in _by_budget(points).items():
        white = [p for p in group if p.white_box]
        single = [p for p in white if p.steps is None or p.steps <= 1]
        multi = [p for p in white if p.steps is not None and p.steps > 1]
        pairs += [(budget_label(*budget), i, s) for i in multi for s in single]
    return _comparisons(
        "iterative", pairs,
        none="No budget at which both an iterative and a single-step gradient attack ran.",
        broken="At {where}, iterative {a} leaves {va} robust, significantly more than "
               "single-step {b}'s {vb} ({rows}): more steps made the attack weaker, a sign "
               "of masked gradients or a broken step size",
        held="At every budget, iterative attacks were no weaker than single-step ones; "
             "closest at {where}: {a} {va} against {b} {vb} ({rows})")


def _monotone(points: list[_Point]) -> Check:
    import json

    series: dict[tuple[str, str, str], list[_Point]] = {}
    for p in points:
        if p.budget is None:
            continue
        others = {k: v for k, v in (p.cell.get("attack_params") or {}).items() if k != "eps"}
        key = (p.attack, p.budget[0], json.dumps(others, sort_keys=True, default=str))
        series.setdefault(key, []).append(p)
    pairs = []
    for run in series.values():
        run.sort(key=lambda p: p.budget[1] if p.budget else 0.0)
        pairs += [(p.attack, q, p) for p, q in zip(run, run[1:])
                  if p.budget and q.budget and q.budget[1] > p.budget[1]]
    return _comparisons(
        "monotone", pairs,
        none="No attack ran at more than one budget.",
        broken="{a} leaves {va} robust, significantly more than {vb} at the smaller "
               "budget {b} ({rows}): a larger budget made the attack weaker, so the "
               "attack is not finding the adversarial examples that exist",
        held="Every attack's robust accuracy fell or held as its budget grew; closest: "
             "{a} {va} after {b} {vb} ({rows})")


def _unbounded(points: list[_Point]) -> Check:
    largest: dict[str, float] = {}
    for p in points:
        if p.budget is not None and not p.noise:
            largest[p.budget[0]] = max(largest.get(p.budget[0], -math.inf), p.budget[1])
    minimal = [p for p in points if p.minimal]
    candidates = minimal + [p for p in points if p.budget is not None and not p.noise
                            and p.budget[1] == largest[p.budget[0]]]
    if not candidates:
        return _check("unbounded", NA, "No minimal-perturbation attack ran, and no "
                      "budgeted attack other than the noise baseline.")
    # the lowest; of equals, the one with the tightest interval (most rows)
    best = min(candidates, key=lambda p: (p.value.value, _interval(p.value)[1]))
    kind = "a minimal-perturbation attack (unbounded)" if best.minimal else \
        "at the largest budget run"
    said = f"{best.label}, {kind}, leaves {_show(best.value)} robust on {best.value.n} rows"
    if _interval(best.value)[0] <= NEAR_ZERO:
        return _check("unbounded", PASS, f"{said}: near zero, as it must be when the "
                      "budget allows any change.")
    if minimal:
        return _check("unbounded", FAIL, f"{said}, above {_pct(NEAR_ZERO)} beyond sampling "
                      "noise: even an unbounded attack cannot flip the remaining rows, so "
                      "the attacks do not reach the model's decisions (masked gradients or "
                      "a broken attack).")
    return _check("unbounded", WARN, f"{said}, above {_pct(NEAR_ZERO)} beyond sampling "
                  "noise, and no minimal-perturbation attack ran: run a larger budget (or "
                  "cw-l2 / deepfool) to confirm the attacks can reach every decision.")


def _beats_noise(points: list[_Point]) -> Check:
    pairs = []
    for budget, group in _by_budget(points).items():
        noise = [p for p in group if p.noise]
        pairs += [(budget_label(*budget), g, n) for n in noise
                  for g in group if g.white_box and not g.noise]
    return _comparisons(
        "beats-noise", pairs,
        none="No budget at which both a gradient attack and the noise baseline ran.",
        broken="At {where}, gradient attack {a} leaves {va} robust, significantly more "
               "than random noise ({b}: {vb}, {rows}): the gradients point nowhere useful "
               "(gradient masking)",
        held="At every budget, gradient attacks did at least as well as random noise; "
             "closest at {where}: {a} {va} against {b} {vb} ({rows})")


def _black_box(points: list[_Point]) -> Check:
    groups: dict[str, list[_Point]] = {}
    for budget, group in _by_budget(points).items():
        groups[budget_label(*budget)] = group
    minimal = [p for p in points if p.minimal]
    if minimal:
        groups["an unbounded budget (minimal-perturbation attacks)"] = minimal
    pairs = []
    for where, group in groups.items():
        white = [p for p in group if p.white_box]
        black = [p for p in group if p.needs in ("scores", "labels") and not p.noise]
        for b in black:
            if white:  # the strongest white-box attack on the rows b attacked
                w = min(white, key=lambda p: _pair(p, b)[0].value)
                pairs.append((where, w, b))
    return _comparisons(
        "black-box", pairs,
        none="No budget at which both a white-box and a score- or decision-based attack "
             "ran.",
        broken="At {where}, black-box {b} leaves {vb} robust, significantly less than the "
               "strongest white-box attack {a} ({va}, {rows}): an attack without gradients "
               "beats one with them, so the gradients are masked and the white-box numbers "
               "overstate robustness",
        held="At every budget, the white-box attacks did at least as well as the score- "
             "and decision-based ones; closest at {where}: {a} {va} against {b} {vb} "
             "({rows})")


def _gradients(checks: Mapping[str, Any] | None) -> Check:
    if not isinstance(checks, Mapping) or "gradients" not in checks:
        return _check("gradients", NA, "Not measured (no clean cell with live checks).")
    g = checks["gradients"]
    if g is None:
        return _check("gradients", NA, "The deployment gives no gradient access, so no "
                      "gradient attack runs against it.")
    rows = int(g.get("rows", 0))
    if "error" in g:
        return _check("gradients", FAIL, f"The loss gradient could not be computed on "
                      f"{rows} clean rows: {g['error']}.")
    finite, nonzero = int(g.get("finite", 0)), int(g.get("nonzero", 0))
    said = (f"On {rows} clean rows, the loss gradient (through any gradient stand-in) is "
            f"finite on {finite} and non-zero on {nonzero}")
    if finite < rows:
        return _check("gradients", FAIL, f"{said}: NaN or infinite gradients break every "
                      "gradient attack, so its numbers say nothing.")
    if nonzero * 2 < rows:
        return _check("gradients", FAIL, f"{said}: gradients vanish (masked, or a "
                      "non-differentiable step with no stand-in), so gradient attacks are "
                      "blind and their robust accuracies are not trustworthy.")
    if nonzero < rows:
        return _check("gradients", WARN, f"{said}: on the zero-gradient rows gradient "
                      "attacks are blind (saturated or masked).")
    norm = g.get("median_norm")
    tail = f" (median L2 norm {norm:.3g})" if isinstance(norm, (int, float)) else ""
    return _check("gradients", PASS, f"{said}{tail}.")


def _repeatable(checks: Mapping[str, Any] | None, params: Mapping[str, Any]) -> Check:
    r = checks.get("repeat") if isinstance(checks, Mapping) else None
    if not isinstance(r, Mapping):
        return _check("repeatable", NA, "Not measured (no clean cell with live checks).")
    rows = int(r.get("rows", 0))
    if "error" in r:
        return _check("repeatable", WARN, f"Could not predict {rows} clean rows twice: "
                      f"{r['error']}.")
    agree, change = int(r.get("agree", 0)), float(r.get("max_score_change") or 0.0)
    tolerance = float(r.get("tolerance") or 0.0)
    said = (f"{rows} clean rows predicted twice: labels agree on {agree}, probabilities "
            f"moved by at most {change:.2g}")
    if agree == rows and change <= tolerance:
        return _check("repeatable", PASS, f"{said}: the deployment is deterministic.")
    eot = params.get("eot")
    if isinstance(eot, int) and not isinstance(eot, bool) and eot > 1:
        return _check("repeatable", PASS, f"{said}: the defense is randomised, and it is "
                      f"attacked with EOT over eot={eot} draws (Athalye et al., 2018).")
    shown = f"its parameters show eot={eot}" if eot is not None else "it has no eot parameter"
    return _check("repeatable", WARN, f"{said}: the defense is randomised, and {shown}: "
                  "attacks must average their gradients or queries over its randomness (EOT, "
                  "Athalye et al., 2018), else its robust accuracies overstate it.")


def _naive(points: list[_Point]) -> Check:
    compared = []
    for p in points:
        rec = (p.cell.get("metrics") or {}).get(NAIVE)
        if not rec or rec.get("value") is None or not math.isfinite(float(rec["value"])):
            continue
        naive = MetricValue(float(rec["value"]), int(rec.get("n") or p.value.n),
                            rec.get("low"), rec.get("high"))
        compared.append((_above(p.value, naive), p.value.value - naive.value, p, naive))
    if not compared:
        return _check("naive", NA, "No attack was also measured naively (made against the "
                      "undefended model): the defense does not transform or screen inputs.")
    weaker = [c for c in compared if c[0]]
    _, gap, p, naive = max(weaker or compared, key=lambda c: c[1])
    if not weaker:
        text = (f"Every attack did at least as well against the deployment as made against "
                f"the undefended model; closest: {p.label} {_show(p.value)} adaptive against "
                f"{_show(naive)} naive")
        if gap > 0:
            text += " (higher, but within sampling noise)"
        return _check("naive", PASS, text + f" ({len(compared)} attacks).")
    text = (f"{p.label} leaves {_show(p.value)} robust when run against the deployment, "
            f"significantly more than the same attack made against the undefended model "
            f"({_show(naive)}, same rows): the attack's view of the defense misleads it (a "
            "randomised defense attacked without EOT, a gradient through a non-smooth "
            "transform, a search confused by noisy answers), so the lower, naive number is "
            "the better bound")
    if len(weaker) > 1:
        others = ", ".join(c[2].label for c in sorted(weaker, key=lambda c: -c[1])[1:])
        text += f". Also {others} ({len(weaker)} of {len(compared)} attacks)"
    return _check("naive", WARN, text + ".")


def _adaptive(adaptive: Any) -> Check:
    if adaptive is None:
        return _check("adaptive", NA, "The defense does not say whether its evaluation is "
                      "adaptive.")
    if adaptive:
        return _check("adaptive", PASS, "Attacks account for this defense (gradients pass "
                      "through it or its stand-in, or nothing needs adapting to).")
    return _check("adaptive", WARN, "The attacks do not account for this defense (it "
                  "declares adaptive = False): its robust accuracies are upper bounds, not "
                  "measurements of what an adaptive attacker achieves.")
