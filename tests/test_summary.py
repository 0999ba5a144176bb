"""The Summary a reviewer acts on: a verdict per threat family, findings ranked by what
each attack changes, and only what the audit ran (defenses, plugins with versions).

Most tests read a real small audit with a third-party plugin (an attack, a defense and a
metric from a distribution with a version); the numbers they expect are computed here from
its cells, not by the report's code.
"""
from __future__ import annotations

import copy
import math
import re
from html import unescape
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from conftest import plugin
from test_report import CLEAN, EPS, MIA_SEPARATION, STRENGTH, build_result, robust

import gauntlet
from gauntlet import (
    Access,
    Defense,
    EvasionAttack,
    EvasionOutcome,
    Metric,
    MetricValue,
    Stage,
    param,
)
from gauntlet.registry import make_registry
from gauntlet.reports.context import build_context
from gauntlet.reports.findings import attack_findings
from gauntlet.reports.html import render_report
from gauntlet.reports.tables import worst_findings

DIST, VERSION = "acme-gauntlet-plugins", "2.3.1"
EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
FGSM_EPS = (0.05, 0.1, 0.2)


class Nudge(EvasionAttack):
    """Adds eps times a random sign to every input value.

    Test attack, shipped by a third-party distribution.
    """

    name = "acme-nudge"
    needs = Access.LABELS
    eps: float = param((0.1, 0.3), "step size", ge=0)

    def generate(self, model, x, y, rng):
        low, high = model.clip_values
        return np.clip(x + self.eps * rng.choice([-1.0, 1.0], size=x.shape), low, high)


class Squeeze(Defense):
    """Rounds each input value to one of a few levels before the model.

    Test defense, shipped by a third-party distribution.
    """

    name = "acme-squeeze"
    stage = Stage.INPUT
    adaptive = True
    evaluation = "Adaptive: gradients pass through the rounding unchanged (BPDA)."
    levels: int = param(4, "levels per input value", ge=1)

    def apply(self, model, dataset, rng):
        import torch

        low, high = model.clip_values
        levels = self.levels

        def squeeze(x: torch.Tensor) -> torch.Tensor:
            return torch.round((x - low) / (high - low) * levels) / levels * (high - low) + low

        return model.deploy(pre=squeeze, gradient=lambda x: x)


class MeanL2(Metric):
    """Mean L2 distance of the attacked inputs from the clean ones.

    Test metric, shipped by a third-party distribution.
    """

    name = "acme_l2"
    title = "Mean L2 (acme)"
    applies_to = (EvasionOutcome,)
    higher_is_better = True
    bounds = None
    format = "number"

    def compute(self, outcome: EvasionOutcome) -> MetricValue:  # type: ignore[override]
        return MetricValue(float(np.mean(outcome.l2)), len(outcome.l2))


@pytest.fixture(scope="module")
def result(digits: Any, digits_model: Any) -> dict[str, Any]:
    # An installed package's plugin comes with its distribution and version; an in-process
    # one (make_registry(plugins=...)) is "(in-process)" without one, so add it as a
    # package's entry point would be added.
    registry = make_registry()
    info = registry.add_plugin(plugin("acme", Nudge, Squeeze, MeanL2), "acme", DIST, VERSION)
    assert info.error is None
    audit = gauntlet.audit(model=digits_model, data=digits,
                           attacks={"fgsm": {"eps": list(FGSM_EPS)}, "acme-nudge": {}},
                           defenses=["none", "input-noise", "confidence-clip", "acme-squeeze"],
                           samples=60, seed=0, registry=registry)
    return audit.result


def _section(html: str, name: str) -> str:
    start = html.index(f'<section id="{name}"')
    return html[start:html.index("</section>", start)]


def _text(fragment: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))).strip()


def _value(cell: dict[str, Any], metric: str) -> float:
    return float(cell["metrics"][metric]["value"])


def _ok(result: dict[str, Any], **match: str) -> list[dict[str, Any]]:
    return [c for c in result["cells"] if c["status"] == "ok"
            and all(c.get(k) == v for k, v in match.items())]


def _clean(result: dict[str, Any], defense: str) -> float:
    (cell,) = _ok(result, defense=defense, attack="clean")
    return _value(cell, "clean_accuracy")


def _doubted(result: dict[str, Any]) -> set[str]:
    """Defenses whose numbers the stored checklist marks as upper bounds or failed."""
    return {d["defense"] for d in result["checklist"]
            if d["upper_bound"] or any(c["status"] == "fail" for c in d["checks"])}


def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def test_no_finding_from_the_clean_row(result: dict[str, Any]) -> None:
    clean_metrics = {m for c in _ok(result, attack="clean") for m in c["metrics"]}
    assert "clean_accuracy" in clean_metrics  # what the old ranking listed as a finding
    findings = attack_findings(result, k=100)
    assert findings
    assert all(f.worst.attack != "clean" for f in findings)
    assert not {f.worst.metric for f in findings} & clean_metrics
    table = _section(render_report(result), "summary")
    table = table[table.index('id="findings"'):]
    attacks = re.findall(r'<tr data-metric="([^"]+)" data-attack="([^"]+)"', table)
    assert attacks and all(a != "clean" and m not in clean_metrics for m, a in attacks)
    # The table helper no longer ranks the clean row either.
    assert all(f.attack != "clean" for f in worst_findings(result, k=100))


def test_a_sweep_is_one_finding_at_its_worst_point(result: dict[str, Any]) -> None:
    rows = [f for f in attack_findings(result, k=100) if f.worst.attack == "fgsm"]
    assert len(rows) == 1  # three eps points, one row
    (row,) = rows
    # Worst point, computed here: the largest drop from the undefended clean accuracy.
    none = sorted(_ok(result, defense="none", attack="fgsm"),
                  key=lambda c: c["attack_params"]["eps"])
    worst = min(none, key=lambda c: _value(c, "robust_accuracy"))
    assert row.worst.point == worst["attack_point"] and row.swept
    clean = _clean(result, "none")
    assert row.worst.value == _value(worst, "robust_accuracy")
    assert row.worst.reference == clean
    html = render_report(result)
    findings = _section(html, "summary")[_section(html, "summary").index('id="findings"'):]
    assert findings.count('data-attack="fgsm"') == 1
    row_html = re.search(r'<tr data-metric="robust_accuracy" data-attack="fgsm">.*?</tr>',
                         findings, re.DOTALL).group(0)
    text = _text(row_html)
    drop = _value(worst, "robust_accuracy") - clean
    assert f"worst at {worst['attack_point']}" in text
    assert f"{_pct(clean)} (clean)" in text and f"−{abs(drop) * 100:.1f} points" in text
    # The best trusted defense at that point, its change against its own clean row.
    defended = [c for c in _ok(result, attack="fgsm", attack_point=worst["attack_point"])
                if c["defense"] != "none" and c["defense"] not in _doubted(result)]
    best = max(defended, key=lambda c: (_value(c, "robust_accuracy"),
                                        _clean(result, c["defense"])))
    own = _value(best, "robust_accuracy") - _clean(result, best["defense"])
    assert f"{best['defense']} {_pct(_value(best, 'robust_accuracy'))} " \
           f"(−{abs(own) * 100:.1f} points)" in text


def test_evasion_verdict_names_attack_undefended_best_defense_and_cost(
        result: dict[str, Any]) -> None:
    # The representative budget: the lower median of the eps values the undefended model
    # was attacked at; there, the strongest attack (lowest robust accuracy).
    at_none = [c for c in _ok(result, defense="none", family="evasion")
               if "eps" in c["attack_params"]]
    budgets = sorted({c["attack_params"]["eps"] for c in at_none})
    eps = budgets[(len(budgets) - 1) // 2]
    strongest = min((c for c in at_none if c["attack_params"]["eps"] == eps),
                    key=lambda c: _value(c, "robust_accuracy"))
    attack, point = strongest["attack"], strongest["attack_point"]
    undefended, clean = _value(strongest, "robust_accuracy"), _clean(result, "none")
    trusted = [c for c in _ok(result, attack=attack, attack_point=point)
               if c["defense"] != "none" and c["defense"] not in _doubted(result)]
    best = max(trusted, key=lambda c: (_value(c, "robust_accuracy"),
                                       _clean(result, c["defense"])))
    kept = _value(best, "robust_accuracy")
    cost = clean - _clean(result, best["defense"])

    (line,) = [v for v in build_context(result).verdict if v.family == "evasion"]
    assert line.text.startswith(
        f"{attack} at {point} cuts accuracy from {_pct(clean)} to {_pct(undefended)}; ")
    if kept > undefended:
        where = f"with {best['defense']} {_pct(kept)}"
        assert where in line.text
        if cost >= 0.0005:
            assert f"{where} (clean cost {cost * 100:.1f} points)" in line.text
        else:
            assert f"{where} (no clean cost)" in line.text or \
                f"{where} (clean accuracy +" in line.text
    else:
        assert f"no defense does better (best: {best['defense']} {_pct(kept)})" in line.text
    html = _section(render_report(result), "summary")
    assert html.index('id="verdict"') < html.index('id="findings"')  # at the top
    assert f"<strong>Evasion:</strong> {line.text}" in unescape(html)


def test_evasion_verdict_states_the_clean_cost() -> None:
    """The hand-made audit: at the sweep's lower middle budget, the strongest attack on
    the undefended model, and the trusted defense that keeps the most against it."""
    result = build_result()
    eps = sorted(EPS)[(len(EPS) - 1) // 2]
    attack = min(STRENGTH, key=lambda a: robust("none", a, eps))
    # confidence-noise is not adaptive (an upper bound), never the best defense silently
    best = max((d for d in CLEAN if d not in ("none", "confidence-noise")),
               key=lambda d: robust(d, attack, eps))
    cost = CLEAN["none"] - CLEAN[best]
    (line,) = [v for v in build_context(result).verdict if v.family == "evasion"]
    assert line.text.startswith(
        f"{attack} at eps={eps:g} cuts accuracy from {_pct(CLEAN['none'])} to "
        f"{_pct(robust('none', attack, eps))}; with {best} {_pct(robust(best, attack, eps))} "
        f"(clean cost {cost * 100:.1f} points)")


def test_a_doubted_defense_is_never_silently_the_best() -> None:
    """confidence-noise is not adaptive (an upper bound) and has the lowest membership
    AUC: the verdict names the best trusted defense and the doubted one as a bound."""
    result = build_result()
    auc = {d: round(NormalDist().cdf(s / math.sqrt(2)), 4) for d, s in MIA_SEPARATION.items()}
    trusted = min((d for d in auc if d not in ("none", "confidence-noise")), key=auc.get)
    (line,) = [v for v in build_context(result).verdict if v.family == "inference"]
    assert line.text.startswith(f"mia-threshold tells training members from non-members "
                                f"with AUC {auc['none']:.3g} (chance 0.5)")
    assert f"with {trusted} {auc[trusted]:.3g}" in line.text
    assert "with confidence-noise" not in line.text
    assert f"confidence-noise shows {auc['confidence-noise']:.3g}" in line.text
    assert line.text.endswith("an upper bound (not adaptive).")
    (row,) = [f for f in build_context(result).findings if f.attack == "mia-threshold"]
    assert row.best.startswith(trusted) and "upper bound" in row.best_note


def test_a_family_without_numbers_says_so_in_one_line() -> None:
    result = build_result()
    for cell in result["cells"]:
        if cell["attack"] == "label-flip":
            cell.update(status="not_applicable", reason="needs a recipe", metrics={})
    n = sum(c["attack"] == "label-flip" for c in result["cells"])
    (line,) = [v for v in build_context(result).verdict if v.family == "poisoning"]
    assert line.text == f"no attack produced a number ({n} not applicable)."


def test_only_the_defenses_in_the_audit_are_listed(result: dict[str, Any]) -> None:
    ran = {c["defense"] for c in result["cells"]}
    installed = set(result["defenses"])
    assert "jpeg" in installed - ran  # results list every installed defense
    section = _section(render_report(result), "defenses")
    listed = {_text(name) for name in re.findall(r'<th scope="row">(.*?)<div', section)}
    assert listed == ran
    assert "jpeg" not in _text(section)


def test_third_party_plugin_is_in_the_provenance(result: dict[str, Any]) -> None:
    section = _section(render_report(result), "provenance")
    table = section[section.index('id="plugins"'):section.index("</table>",
                                                                 section.index('id="plugins"'))]
    rows = {_text(r) for r in re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)}
    (acme,) = [r for r in rows if r.startswith("acme ")]
    assert acme.startswith(f"acme {DIST} {VERSION} ")
    assert "attacks: acme-nudge" in acme and "defenses: acme-squeeze" in acme
    assert "metrics: acme_l2" in acme
    # The built-in plugins that contributed, with theirs; an installed plugin the audit
    # did not use (preprocessing: jpeg, feature squeezing) is not listed.
    evasion = result["attacks"]["fgsm"]
    assert any(r.startswith(f"{evasion['plugin']} {evasion['distribution']} "
                            f"{evasion['version']} attacks: fgsm") for r in rows)
    assert not any(r.startswith("preprocessing ") for r in rows)


def test_plugin_text_in_verdict_findings_and_provenance_stays_escaped(
        result: dict[str, Any]) -> None:
    hostile = copy.deepcopy(result)
    for kind, name in (("attacks", "acme-nudge"), ("defenses", "acme-squeeze"),
                       ("metrics", "acme_l2")):
        hostile[kind][name].update(plugin=EVIL, distribution=EVIL, version=EVIL)
    for cell in hostile["cells"]:
        if cell["attack"] == "fgsm":
            cell["attack"] = "fgsm " + EVIL
        if cell["defense"] == "input-noise":
            cell["defense"] = "input-noise " + EVIL
    html = render_report(hostile)
    assert "<script" not in html.lower()
    summary, provenance = _section(html, "summary"), _section(html, "provenance")
    assert ESCAPED in summary[summary.index('id="verdict"'):summary.index('id="findings"')]
    assert ESCAPED in summary[summary.index('id="findings"'):]
    plugins = provenance[provenance.index('id="plugins"'):]
    assert plugins.count(ESCAPED) >= 3  # plugin, distribution, version
