"""The report's privacy section on a real (small) audit: the TPR-at-low-FPR table, the
summary's strongest attack, the theft table and chart, the ROC on log axes, and the
stored ROC curve's low-FPR end."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from sklearn.metrics import roc_curve

import gauntlet
from gauntlet import MembershipOutcome
from gauntlet.outcome import thin_roc
from gauntlet.reports.privacy import privacy_rows, privacy_summary, theft_rows


@pytest.fixture(scope="module")
def result(digits, digits_model):
    data = dataclasses.replace(digits, x_train=digits.x_train[:150],
                               y_train=digits.y_train[:150], x_test=digits.x_test[:150],
                               y_test=digits.y_test[:150])
    return gauntlet.audit(
        model=digits_model, data=data,
        attacks={"mia-threshold": {}, "mia-loss": {},
                 "mia-label-only": {"directions": 2, "steps": 3},
                 "knockoff": {"budget": [40, 120], "epochs": 3}},
        defenses=["none", "confidence-noise", "label-only"])


def test_the_table_lists_every_membership_cell(result):
    cells = [c for c in result.cells if c["family"] == "inference" and c["status"] == "ok"]
    rows = privacy_rows(result.result)
    assert len(rows) == len(cells) > 0
    # Under label-only only the label-only attack runs; the others are not applicable.
    assert [r.attack for r in rows if r.defense == "label-only"] == ["mia-label-only"]
    assert {c["attack"] for c in result.cells if c["defense"] == "label-only"
            and c["status"] == "not_applicable"} >= {"mia-threshold", "mia-loss"}


def test_the_summary_names_the_strongest_attack(result):
    # 75 members and 75 non-members: no low false-positive rate is resolved, so the AUC
    # ranks the attacks.
    auc = {a: result.value("membership_auc", a)
           for a in ("mia-threshold", "mia-loss", "mia-label-only")}
    strongest = max(auc, key=auc.get)
    sentence = privacy_summary(result.result)
    assert sentence.startswith(f"{strongest} separates members from non-members best")
    assert "cannot be measured" in sentence


def _cell(attack, members, tpr_low, tpr_1, auc):
    metric = {"tpr_at_0_1pct_fpr": tpr_low, "tpr_at_1pct_fpr": tpr_1, "membership_auc": auc,
              "membership_advantage": 0.1}
    return {"defense": "none", "defense_point": "", "attack": attack, "attack_point": "",
            "family": "inference", "status": "ok",
            "metrics": {k: {"value": v, "n": members} for k, v in metric.items()}}


@pytest.mark.parametrize("members,expected,metric_words", [
    (100, "lira", "at most 1% of non-members"),  # 0.1% FPR is unresolved: 1% ranks
    (1000, "mia-loss", "at most 0.1% of non-members"),  # 0.1% resolved: it ranks
])
def test_the_strongest_attack_is_ranked_at_the_lowest_resolved_fpr(members, expected,
                                                                   metric_words):
    # mia-loss catches one member with no false positive; lira catches many at 1%.
    cells = [_cell("mia-loss", members, 0.03, 0.09, 0.62),
             _cell("lira", members, 0.0, 0.16, 0.72)]
    result = {"cells": cells, "metrics": {}}
    sentence = privacy_summary(result)
    assert sentence.startswith(f"{expected} is the strongest") and metric_words in sentence
    strongest = [r.attack for r in privacy_rows(result) if r.strongest]
    assert strongest == [expected]


def test_theft_rows_say_what_was_trained_on(result):
    rows = theft_rows(result.result)
    by = {(r.defense, r.attack): r for r in rows}
    assert by[("none", "knockoff (budget=40)")].answers == "scores"
    assert by[("label-only", "knockoff (budget=40)")].answers == "labels"
    assert by[("none", "knockoff (budget=120)")].queries == "120"


def test_the_section_renders_with_log_axes_and_a_theft_chart(result, tmp_path):
    html = result.write_report(tmp_path / "report.html").read_text()
    section = html[html.index('<section id="privacy">'):]
    section = section[:section.index("</section>")]
    assert 'id="privacy-table"' in section and 'id="theft-table"' in section
    assert "log scale" in section
    assert 'id="charts-theft"' in section and "knockoff: fidelity against queries" in section
    assert 'id="charts-privacy-utility"' in section
    # The summary's sentence is also one of the report's facts.
    assert re.search(r"<dt>Membership inference</dt><dd>[^<]+ separates members", html)


def test_the_stored_roc_keeps_its_low_fpr_end():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, 3000), rng.normal(0, 1, 3000)
    outcome = MembershipOutcome(scores_members=members, scores_nonmembers=nonmembers,
                                threshold=0.5)
    stored = outcome.artifacts()["roc"]
    y = np.r_[np.ones(3000), np.zeros(3000)]
    fpr, tpr, _ = roc_curve(y, np.r_[members, nonmembers])
    assert len(stored["fpr"]) <= 200 < len(fpr)
    # Every distinct FPR up to 1% (30 non-members) is kept with its highest TPR, so a
    # chart on log axes and the TPR at 1% FPR read the same curve as the full one.
    for level in sorted(set(fpr[(fpr > 0) & (fpr <= 0.01)])):
        full = tpr[fpr == level].max()
        kept = [t for f, t in zip(stored["fpr"], stored["tpr"]) if abs(f - level) < 1e-6]
        assert kept and max(kept) == pytest.approx(full, abs=1e-6)
    assert stored["fpr"][0] == 0 and stored["fpr"][-1] == 1
    assert list(thin_roc(np.linspace(0, 1, 10), 200)) == list(range(10))
