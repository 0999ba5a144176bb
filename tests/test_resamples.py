"""``--resamples K``: each metric's spread over K bootstrap resamples of a cell's rows,
recomputed from the outcome (no attack runs again), checked against the same resamples
drawn by hand from the per-row results in cells.jsonl."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import plugin
from sklearn.metrics import roc_auc_score

import gauntlet
from gauntlet import Access, EvasionAttack
from gauntlet.cli import main
from gauntlet.errors import ConfigError
from gauntlet.registry import make_registry
from gauntlet.results import check_result
from gauntlet.rows import unpack
from gauntlet.store import read_records

K = 40
SEED = 3


class CountingNoise(EvasionAttack):
    """Adds uniform noise of 0.2 and counts its calls.

    Test attack: resampling must not call it again.
    """

    name = "counting-noise"
    needs = Access.LABELS
    calls = 0

    def generate(self, model, x, y, rng):
        CountingNoise.calls += 1
        return np.clip(x + rng.uniform(-0.2, 0.2, x.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def audited(digits, digits_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("resampled")
    CountingNoise.calls = 0
    registry = make_registry(plugins={"counting": plugin("counting", CountingNoise)})
    result = gauntlet.audit(model=digits_model, data=digits, registry=registry,
                            attacks=["counting-noise", "fgsm", "mia-threshold"],
                            defenses=["none"], samples=120, seed=SEED, resamples=K,
                            cache=False, out=out)
    records = {r["id"]: r for r in read_records(out / "cells.jsonl")[1]}
    return result, records, out


def _cell(result, attack, point=""):
    (cell,) = [c for c in result.cells if c["attack"] == attack and c["attack_point"] == point]
    return cell


def _draws(n: int) -> list[np.ndarray]:
    """The rows resample k draws, as the core documents it: a generator seeded by the
    audit seed and k, n integers below n."""
    return [np.random.default_rng([SEED, k]).integers(0, n, n) for k in range(K)]


def test_resampled_accuracy_equals_the_same_rows_drawn_by_hand(audited):
    result, records, _ = audited
    cell = _cell(result, "fgsm", "eps=0.1")
    rows = unpack(records[cell["id"]]["rows"])
    correct = rows["correct_after"]
    expected = [float(correct[pick].mean()) for pick in _draws(len(correct))]
    got = records[cell["id"]]["resampled"]["robust_accuracy"]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    spread = cell["metrics"]["robust_accuracy"]["spread"]
    assert spread["k"] == K
    assert spread["low"] == pytest.approx(np.percentile(expected, 2.5), abs=1e-6)
    assert spread["high"] == pytest.approx(np.percentile(expected, 97.5), abs=1e-6)
    assert spread["sd"] == pytest.approx(np.std(expected, ddof=1), abs=1e-6)
    # The clean row too, from its own per-row results.
    clean = _cell(result, "clean")
    right = unpack(records[clean["id"]]["rows"])["correct"]
    np.testing.assert_allclose(records[clean["id"]]["resampled"]["clean_accuracy"],
                               [right[p].mean() for p in _draws(len(right))], atol=1e-6)


def test_membership_resamples_members_and_non_members_apart(audited):
    result, records, _ = audited
    cell = _cell(result, "mia-threshold")
    rows = unpack(records[cell["id"]]["rows"])
    members, scores = rows["member"], rows["score"].astype(np.float64)
    sm, sn = scores[members], scores[~members]
    expected = []
    for k in range(K):
        rng = np.random.default_rng([SEED, k])
        m = rng.integers(0, len(sm), len(sm))
        n = rng.integers(0, len(sn), len(sn))
        y = np.r_[np.ones(len(m)), np.zeros(len(n))]
        expected.append(roc_auc_score(y, np.r_[sm[m], sn[n]]))
    np.testing.assert_allclose(records[cell["id"]]["resampled"]["membership_auc"], expected,
                               atol=1e-5)


def test_the_spread_matches_the_binomial_standard_error(audited):
    """A bootstrap's sd of a proportion estimates sqrt(p (1 - p) / n): with K = 40 it is
    within about a quarter of it (the sd of an sd estimate is ~1/sqrt(2K) = 11%)."""
    result, _, _ = audited
    for point in ("eps=0.05", "eps=0.1"):
        m = _cell(result, "fgsm", point)["metrics"]["robust_accuracy"]
        se = math.sqrt(m["value"] * (1 - m["value"]) / m["n"])
        assert m["spread"]["sd"] == pytest.approx(se, rel=0.35)


def test_no_attack_runs_again(audited):
    result, _, _ = audited
    # counting-noise sweeps nothing: one cell, one call, whatever K is.
    assert len([c for c in result.cells if c["attack"] == "counting-noise"]) == 1
    assert CountingNoise.calls == 1


def test_results_json_keeps_the_spread_and_cells_jsonl_the_values(audited):
    result, records, out = audited
    written = json.loads((out / "results.json").read_text())
    check_result(written)
    assert written["config"]["resamples"] == K
    for cell in written["cells"]:
        assert "resampled" not in cell and "rows" not in cell
    spreads = [m["spread"] for c in written["cells"] if c["status"] == "ok"
               for m in c["metrics"].values() if "spread" in m]
    assert len(spreads) > 20 and all(s["low"] <= s["high"] for s in spreads)
    assert all(len(v) == K for r in records.values() for v in r.get("resampled", {}).values())


def test_no_resamples_no_spread(digits, digits_model):
    result = gauntlet.audit(model=digits_model, data=digits, attacks=["fgsm"],
                            defenses=["none"], samples=40, cache=False)
    assert all("spread" not in m for c in result.cells for m in c["metrics"].values())


def test_a_cached_cell_without_resamples_is_not_reused_for_a_run_with_them(digits,
                                                                           digits_model,
                                                                           tmp_path):
    kw = dict(model=digits_model, data=digits, attacks=["fgsm"], defenses=["none"],
              samples=40, cache=tmp_path / "cache")
    gauntlet.audit(**kw)
    again = gauntlet.audit(**kw, resamples=5)
    assert all("spread" in m for c in again.cells if c["status"] == "ok"
               for m in c["metrics"].values())


@pytest.mark.parametrize("value", [-1, 1, 1.5, True, 10_001])
def test_a_bad_resample_count_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"resamples must be 0 \(none\) or an integer"):
        gauntlet.audit(model="builtin:mlp", data="sklearn:digits", resamples=value)


def test_the_cli_refuses_a_negative_count(capsys, tmp_path: Path):
    assert main(["audit", "--resamples", "-2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resamples must be 0 (none) or an integer" in err and "Traceback" not in err


def test_the_report_shows_the_spread_in_the_matrix_and_the_clean_table(audited):
    from gauntlet.reports.html import render_report
    from gauntlet.reports.tables import format_interval, metric_meta

    result, _, _ = audited
    html = render_report(result.result)
    section = html.split('id="stability"', 1)[1].split("</section>", 1)[0]
    clean = _cell(result, "clean")["metrics"]["clean_accuracy"]
    meta = metric_meta(result.result, "clean_accuracy")
    assert f"over {K} resamples" in section.split("</h2>")[0].replace("Stability over", "over")
    assert f"± {100 * clean['spread']['sd']:.1f} pts" in section
    assert format_interval(clean["spread"]["low"], clean["spread"]["high"], meta) in section
    # The matrix: the robust-accuracy cell of fgsm at eps=0.1 carries its range.
    fgsm = _cell(result, "fgsm", "eps=0.1")["metrics"]["robust_accuracy"]["spread"]
    shown = format_interval(fgsm["low"], fgsm["high"],
                            metric_meta(result.result, "robust_accuracy"))
    matrix = html.split('class="matrix" data-metric="robust_accuracy"', 1)[1]
    matrix = matrix.split("</table>", 1)[0]
    cell = matrix.split('data-attack="fgsm" data-attack-point="eps=0.1"', 1)[1].split("</td>")[0]
    assert f'<span class="spread">{shown}</span>' in cell
    # Without resamples there is no such section.
    plain = dict(result.result, config={**result.result["config"], "resamples": 0})
    assert 'id="stability"' not in render_report(plain)
