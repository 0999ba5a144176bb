"""The evaluation checklist: each rule fires on a case built to break it and stays silent
on the undefended digits model; a gradient-masking test defense (defined here, never
shipped) is caught on a real audit; input-noise without EOT warns."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from conftest import plugin
from torch import nn

import gauntlet
from gauntlet import Defense, Stage
from gauntlet.checklist import FAIL, NA, PASS, RULES, WARN, checklist
from gauntlet.plan import live_checks
from gauntlet.registry import make_registry
from gauntlet.reports.html import render_report
from gauntlet.results import check_result
from gauntlet.rows import pack


class Quantise(nn.Module):
    """Rounds every input value to one of five levels: the gradient of round() is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


class MaskingDefense(Defense):
    """Hard input quantisation with no gradient stand-in: gradients vanish.

    Test defense: a textbook case of gradient masking (Athalye et al., 2018) that claims
    an adaptive evaluation; the checklist must catch it.
    """

    name = "test-masking"
    stage = Stage.INPUT
    adaptive = True
    evaluation = "Gradients pass through round(), whose gradient is zero."

    def apply(self, model, dataset, rng):
        return model.deploy(pre=Quantise())


def _input_noise_without_eot() -> dict[str, Any]:
    """input-noise with eot=1 where the defense has the parameter (attacked without EOT)."""
    cls = make_registry().defenses["input-noise"]
    return {"eot": 1} if "eot" in cls.parameters() else {}


@pytest.fixture(scope="module")
def audit(digits, digits_model):
    registry = make_registry(plugins={"masking": plugin("masking", MaskingDefense)})
    return gauntlet.audit(
        model=digits_model, data=digits, registry=registry, samples=60, seed=0,
        attacks={"fgsm": {"eps": [0.1, 0.3]}, "pgd": {"eps": [0.1, 0.3], "max_iter": 10},
                 "noise": {"eps": [0.1, 0.3]}},
        defenses={"none": {}, "input-noise": _input_noise_without_eot(),
                  "test-masking": {}, "confidence-clip": {}})


def _checks(result: dict[str, Any], defense: str) -> dict[str, dict[str, str]]:
    (entry,) = [d for d in result["checklist"] if d["defense"] == defense]
    return {c["rule"]: c for c in entry["checks"]}


# -- on a real audit ------------------------------------------------------------------------


def test_checklist_is_stored_in_results_and_follows_the_schema(audit):
    check_result(audit.result)
    json.dumps(audit.result["checklist"])
    for entry in audit.result["checklist"]:
        assert [c["rule"] for c in entry["checks"]] == [r for r, _ in RULES]
        assert all(c["evidence"].strip() for c in entry["checks"])


def test_undefended_model_passes_every_rule(audit):
    checks = _checks(audit.result, "none")
    fired = {r: c["evidence"] for r, c in checks.items() if c["status"] not in (PASS, NA)}
    assert not fired
    # the rules that this audit can check all ran, and say what they compared
    for rule in ("iterative", "monotone", "unbounded", "beats-noise", "gradients",
                 "repeatable", "adaptive"):
        assert checks[rule]["status"] == PASS, checks[rule]
    assert "fgsm (eps=0.1)" in checks["iterative"]["evidence"] or \
        "fgsm (eps=0.3)" in checks["iterative"]["evidence"]
    assert "%" in checks["unbounded"]["evidence"]


def test_clean_cell_measures_the_live_checks(audit):
    clean = next(c for c in audit.cells if c["defense"] == "none" and c["attack"] == "clean")
    checks = clean["artifacts"]["checks"]
    assert checks["gradients"] == {**checks["gradients"], "rows": 32, "finite": 32,
                                   "nonzero": 32}
    assert checks["repeat"]["agree"] == 32 and checks["repeat"]["max_score_change"] == 0
    clip = next(c for c in audit.cells
                if c["defense"] == "confidence-clip" and c["attack"] == "clean")
    assert clip["artifacts"]["checks"]["gradients"] is None  # scores only: no gradients


def test_live_checks_do_not_count_queries(digits, digits_model):
    model = digits_model.deploy()
    checks = live_checks(model, digits.x_test[:40], digits.y_test[:40])
    assert model.queries == 0
    assert checks["gradients"]["rows"] == 32 and checks["repeat"]["rows"] == 32


def test_gradient_masking_defense_is_caught(audit):
    checks = _checks(audit.result, "test-masking")
    assert checks["gradients"]["status"] == FAIL
    assert "non-zero on 0" in checks["gradients"]["evidence"]
    # robust accuracy stays high at the largest budget, with no minimal attack to confirm
    assert checks["unbounded"]["status"] in (WARN, FAIL)
    clean = next(c for c in audit.cells
                 if c["defense"] == "test-masking" and c["attack"] == "clean")
    assert clean["artifacts"]["checks"]["gradients"]["nonzero"] == 0


def test_input_noise_without_eot_warns_on_repeated_predictions(audit):
    check = _checks(audit.result, "input-noise")["repeatable"]
    assert check["status"] == WARN
    assert "randomised" in check["evidence"] and "EOT" in check["evidence"]


def test_non_adaptive_defense_is_flagged_with_upper_bounds(audit):
    (entry,) = [d for d in audit.result["checklist"] if d["defense"] == "confidence-clip"]
    assert entry["upper_bound"] is True
    assert _checks(audit.result, "confidence-clip")["adaptive"]["status"] == WARN
    assert _checks(audit.result, "confidence-clip")["gradients"]["status"] == NA


def test_report_shows_the_checklist_and_summary_findings(audit):
    html = render_report(audit.result)
    assert 'id="checklist"' in html and "Evaluation checklist" in html
    summary = html[html.index('id="summary"'):html.index('id="defenses"')]
    assert 'id="checklist-findings"' in summary
    assert "Gradients are finite and non-zero" in summary  # test-masking fails it
    assert "Repeated predictions agree" in summary  # input-noise warns
    assert 'data-rule="gradients" data-status="fail"' in html
    # naive vs adaptive, for the input defenses
    assert 'id="naive"' in html and "naive-input-noise" in html


def test_checklist_recomputed_from_results_alone_agrees_on_statuses(audit):
    """Without per-row results (an old results.json), the stored intervals decide."""
    again = checklist({k: v for k, v in audit.result.items() if k != "checklist"})
    stored = {(d["defense"], c["rule"]): c["status"] for d in audit.result["checklist"]
              for c in d["checks"]}
    assert {(d.defense, c.rule): c.status for d in again for c in d.checks} == stored


# -- each rule fires on a case built to break it ----------------------------------------


ATTACKS = {
    "fgsm": {"family": "evasion", "needs": "gradients", "norm": "linf", "minimal": False},
    "pgd": {"family": "evasion", "needs": "gradients", "norm": "linf", "minimal": False},
    "noise": {"family": "evasion", "needs": "labels", "norm": "linf", "minimal": False},
    "square": {"family": "evasion", "needs": "scores", "norm": "linf", "minimal": False},
    "cw-l2": {"family": "evasion", "needs": "gradients", "norm": "", "minimal": True},
}
N = 200


def _cell(attack: str, correct: int, eps: float | None = None, *, defense: str = "d",
          params: dict[str, Any] | None = None, rows: bool = True,
          naive: int | None = None) -> dict[str, Any]:
    from gauntlet.metric import proportion

    p = proportion(correct, N)
    attack_params = dict(params or {})
    if eps is not None:
        attack_params["eps"] = eps
    point = f"eps={eps:g}" if eps is not None else ""
    cell = {"id": f"{defense}|{attack}{json.dumps(attack_params, sort_keys=True)}",
            "defense": defense, "defense_params": {}, "defense_point": "",
            "attack": attack, "family": "evasion", "attack_params": attack_params,
            "attack_point": point, "status": "ok", "n": N,
            "metrics": {"robust_accuracy": {"value": p.value, "n": N, "low": p.low,
                                            "high": p.high}},
            "artifacts": {}}
    if naive is not None:  # the same attack made against the undefended model
        q = proportion(naive, N)
        cell["metrics"]["naive_robust_accuracy"] = {"value": q.value, "n": N, "low": q.low,
                                                    "high": q.high}
    if rows:
        after = np.zeros(N, bool)
        after[:correct] = True
        cell["rows"] = pack({"row": np.arange(N), "correct_after": after})
    return cell


def _clean(checks: dict[str, Any], defense: str = "d", params: dict | None = None) -> dict:
    return {"id": f"{defense}|clean", "defense": defense, "defense_params": params or {},
            "defense_point": "", "attack": "clean", "family": "baseline",
            "attack_params": {}, "attack_point": "", "status": "ok", "n": N,
            "metrics": {}, "artifacts": {"checks": checks}}


GOOD_CHECKS = {"gradients": {"rows": 32, "finite": 32, "nonzero": 32, "median_norm": 1.0},
               "repeat": {"rows": 32, "agree": 32, "max_score_change": 0.0,
                          "tolerance": 1e-3}}


def _run(cells: list[dict[str, Any]], *, adaptive: bool = True, checks=GOOD_CHECKS,
         params: dict | None = None) -> dict[str, dict[str, str]]:
    result = {"attacks": ATTACKS, "defenses": {"d": {"adaptive": adaptive}},
              "cells": [_clean(checks, params=params), *cells]}
    records = [c for c in result["cells"] if "rows" in c]
    (entry,) = checklist(result, records)
    return {c.rule: {"status": c.status, "evidence": c.evidence} for c in entry.checks}


def _sound() -> list[dict[str, Any]]:
    """A healthy evaluation: iterative < single-step < noise, falling with eps, and an
    unbounded attack that flips every row."""
    return [_cell("fgsm", 100, 0.1), _cell("fgsm", 40, 0.3),
            _cell("pgd", 60, 0.1, params={"max_iter": 10}, naive=150),
            _cell("pgd", 0, 0.3, params={"max_iter": 10}),
            _cell("noise", 190, 0.1), _cell("noise", 170, 0.3),
            _cell("square", 150, 0.1), _cell("square", 60, 0.3), _cell("cw-l2", 0)]


def test_a_sound_built_evaluation_passes_every_rule():
    statuses = {r: c["status"] for r, c in _run(_sound()).items()}
    assert statuses == {r: PASS for r, _ in RULES}


def test_an_adaptive_attack_weaker_than_its_naive_counterpart_warns():
    """A randomised defense attacked without EOT: the attack run against the deployment
    leaves more rows robust than the same attack made against the undefended model."""
    cells = [c for c in _sound() if c["attack"] != "cw-l2"]
    cells += [_cell("cw-l2", 130, naive=60)]
    check = _run(cells)["naive"]
    assert check["status"] == WARN
    assert "cw-l2 leaves 65.0%" in check["evidence"] and "30.0%" in check["evidence"]
    assert "pgd" not in check["evidence"]  # pgd did better adaptively: not cited
    # Within sampling noise it does not fire; with no naive number it is not applicable.
    close = [c for c in _sound() if c["attack"] != "cw-l2"] + [_cell("cw-l2", 130, naive=120)]
    assert _run(close)["naive"]["status"] == PASS
    plain = [{**c, "metrics": {"robust_accuracy": c["metrics"]["robust_accuracy"]}}
             for c in _sound()]
    assert _run(plain)["naive"]["status"] == NA


def test_iterative_weaker_than_single_step_fails():
    cells = [c for c in _sound() if not (c["attack"] == "pgd" and c["attack_params"]["eps"]
                                         == 0.1)]
    cells.append(_cell("pgd", 160, 0.1, params={"max_iter": 10}))
    check = _run(cells)["iterative"]
    assert check["status"] == FAIL
    assert "pgd (eps=0.1)" in check["evidence"] and "80.0%" in check["evidence"]
    assert "fgsm (eps=0.1)" in check["evidence"] and "50.0%" in check["evidence"]


def test_a_difference_within_sampling_noise_does_not_fire():
    cells = [c for c in _sound() if not (c["attack"] == "pgd" and c["attack_params"]["eps"]
                                         == 0.1)]
    cells.append(_cell("pgd", 108, 0.1, params={"max_iter": 10}))  # 54% vs fgsm's 50%
    check = _run(cells)["iterative"]
    assert check["status"] == PASS and "within sampling noise" in check["evidence"]


def test_robust_accuracy_rising_with_budget_fails():
    cells = [c for c in _sound() if c["attack"] != "fgsm"]
    cells += [_cell("fgsm", 60, 0.1), _cell("fgsm", 120, 0.3)]
    check = _run(cells)["monotone"]
    assert check["status"] == FAIL and "fgsm (eps=0.3)" in check["evidence"]


def test_unbounded_attack_that_cannot_flip_rows_fails():
    cells = [c for c in _sound() if c["attack"] not in ("cw-l2", "pgd", "fgsm")]
    cells += [_cell("cw-l2", 80), _cell("pgd", 70, 0.3, params={"max_iter": 10})]
    check = _run(cells)["unbounded"]
    # the strongest candidate: square at the largest budget (30%), above zero for sure
    assert check["status"] == FAIL and "square (eps=0.3)" in check["evidence"]
    # with no minimal-perturbation attack, a large budget short of zero only warns
    no_minimal = [c for c in cells if c["attack"] != "cw-l2"]
    assert _run(no_minimal)["unbounded"]["status"] == WARN


def test_gradient_attack_no_better_than_noise_fails():
    cells = [c for c in _sound() if c["attack"] != "noise"]
    cells += [_cell("noise", 80, 0.1), _cell("noise", 10, 0.3)]
    check = _run(cells)["beats-noise"]
    assert check["status"] == FAIL
    assert "noise (eps=0.3)" in check["evidence"] and "random noise" in check["evidence"]


def test_black_box_beating_white_box_fails():
    cells = [c for c in _sound() if c["attack"] != "square"]
    cells += [_cell("square", 10, 0.1), _cell("square", 0, 0.3)]
    check = _run(cells)["black-box"]
    assert check["status"] == FAIL
    assert "square (eps=0.1)" in check["evidence"] and "masked" in check["evidence"]


def test_black_box_compared_on_the_rows_both_attacked():
    """square attacked only the first 50 rows, which pgd left all correct: on those rows
    square (20 of 50 correct) beats pgd, though pgd's number over all rows is lower."""
    cells = [c for c in _sound() if c["attack"] != "square"]
    square = _cell("square", 20, 0.1)
    after = np.zeros(50, bool)
    after[:20] = True
    square["rows"] = pack({"row": np.arange(50), "correct_after": after})
    check = _run([*cells, square])["black-box"]
    assert check["status"] == FAIL and "50 rows both attacked" in check["evidence"]


def test_non_finite_or_vanishing_gradients_fail():
    nan = {**GOOD_CHECKS, "gradients": {"rows": 32, "finite": 30, "nonzero": 30}}
    assert _run(_sound(), checks=nan)["gradients"]["status"] == FAIL
    zero = {**GOOD_CHECKS, "gradients": {"rows": 32, "finite": 32, "nonzero": 3}}
    assert _run(_sound(), checks=zero)["gradients"]["status"] == FAIL
    few = {**GOOD_CHECKS, "gradients": {"rows": 32, "finite": 32, "nonzero": 30}}
    assert _run(_sound(), checks=few)["gradients"]["status"] == WARN


def test_randomised_defense_passes_only_with_eot():
    noisy = {**GOOD_CHECKS, "repeat": {"rows": 32, "agree": 32, "max_score_change": 0.2,
                                       "tolerance": 1e-3}}
    assert _run(_sound(), checks=noisy)["repeatable"]["status"] == WARN
    assert _run(_sound(), checks=noisy, params={"eot": 1})["repeatable"]["status"] == WARN
    check = _run(_sound(), checks=noisy, params={"eot": 8})["repeatable"]
    assert check["status"] == PASS and "eot=8" in check["evidence"]


def test_non_adaptive_defense_warns():
    check = _run(_sound(), adaptive=False)["adaptive"]
    assert check["status"] == WARN and "upper bounds" in check["evidence"]


def test_rules_with_nothing_to_compare_are_not_applicable():
    checks = _run([_cell("noise", 150, 0.1)], checks={"gradients": None,
                                                     "repeat": GOOD_CHECKS["repeat"]})
    assert {r for r, c in checks.items() if c["status"] == NA} == {
        "iterative", "monotone", "unbounded", "beats-noise", "black-box", "gradients",
        "naive"}
