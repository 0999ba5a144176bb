"""The classic FGSM table: its numbers are the cells' own metrics, the clean row comes from
the defense's clean cell, rows follow eps, and plugin text stays escaped."""
from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from gauntlet.reports.classic import METRICS, classic
from gauntlet.reports.html import render_report

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def result(digits: Any, digits_model: Any) -> dict[str, Any]:
    """A real tiny audit: FGSM at three budgets (given out of order) on the undefended
    model, behind input-noise and behind confidence-clip (not applicable there)."""
    import gauntlet

    return gauntlet.audit(model=digits_model, data=digits,
                          attacks={"fgsm": {"eps": [0.3, 0.1, 0.2]}},
                          defenses=["none", "input-noise", "confidence-clip"], samples=40,
                          seed=0).result


def _tables(html: str) -> dict[str, list[list[str]]]:
    """Each classic table's rows as text cells, by the defense it belongs to."""
    section = html[html.index('<section id="classic">'):]
    section = section[:section.index("</section>")]
    out = {}
    for defense, body in re.findall(r'<table class="plain classic" data-defense="([^"]*)">'
                                    r".*?<tbody>(.*?)</tbody>", section, re.DOTALL):
        out[defense] = [re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row)
                        for row in re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)]
    return out


def test_classic_numbers_are_the_cells_metrics(result: dict[str, Any]) -> None:
    tables = _tables(render_report(result))
    assert list(tables) == ["none", "input-noise", "confidence-clip"]
    cells = {(c["defense"], c["attack"], c["attack_point"]): c for c in result["cells"]}
    for defense in ("none", "input-noise"):
        rows = tables[defense]
        assert [r[0] for r in rows] == ["clean", "eps = 0.1", "eps = 0.2", "eps = 0.3"]
        for row, (attack, point) in zip(rows, [("clean", ""), ("fgsm", "eps=0.1"),
                                               ("fgsm", "eps=0.2"), ("fgsm", "eps=0.3")]):
            metrics = cells[(defense, attack, point)]["metrics"]
            assert row[1:5] == [f"{metrics[m]['value']:.3f}" for m in METRICS], (defense, row)
        assert [r[5] for r in rows] == ["0.958", "0.777", "0.443", "0.329"]  # the study's
    # FGSM needs gradients; confidence-clip serves scores only: its clean row stays.
    clip = tables["confidence-clip"]
    assert clip[0][1] != "n/a" and all(v == "n/a" for r in clip[1:] for v in r[1:5])


def test_undefended_fgsm_drops_f1_and_the_verdict_follows_the_numbers(
        result: dict[str, Any]) -> None:
    view = classic(result)
    assert view is not None and view.title.startswith("The classic FGSM table")
    none = view.tables[0]
    f1 = [r.values[METRICS.index("f1")].value for r in none.rows]
    conf = [r.values[METRICS.index("confidence")].value for r in none.rows]
    assert f1[0] > f1[-1]
    confident = conf[-1] >= 0.7 and f1[-1] <= f1[0] - 0.2
    assert bool(none.verdict) == confident
    if confident:
        assert none.verdict.startswith("Confidently wrong: at eps 0.3")


def test_verdict_on_a_built_case(result: dict[str, Any]) -> None:
    changed = copy.deepcopy(result)
    for c in changed["cells"]:
        if c["defense"] == "none" and c["attack"] == "fgsm":
            c["metrics"]["f1"]["value"] = 0.3
            c["metrics"]["confidence"]["value"] = 0.81
    view = classic(changed)
    assert view is not None
    assert "0.300 while the mean confidence was 0.810" in view.tables[0].verdict
    for c in changed["cells"]:
        if c["defense"] == "none" and c["attack"] == "fgsm":
            c["metrics"]["confidence"]["value"] = 0.4  # wrong, but unsure: no verdict
    view = classic(changed)
    assert view is not None and view.tables[0].verdict == ""


def test_no_fgsm_no_table(result: dict[str, Any]) -> None:
    changed = copy.deepcopy(result)
    changed["cells"] = [c for c in changed["cells"] if c["attack"] != "fgsm"]
    assert classic(changed) is None
    html = render_report(changed)
    assert 'id="classic"' not in html and 'href="#classic"' not in html


def test_plugin_names_in_the_classic_table_are_escaped(result: dict[str, Any]) -> None:
    changed = copy.deepcopy(result)
    for c in changed["cells"]:
        if c["defense"] == "input-noise":
            c["defense"] = EVIL
        if c["status"] == "not_applicable":
            c["reason"] = EVIL
    changed["defenses"][EVIL] = changed["defenses"].pop("input-noise")
    html = render_report(changed)
    assert "<script" not in html.lower()
    section = html[html.index('<section id="classic">'):]
    section = section[:section.index("</section>")]
    assert 'data-defense="&lt;script&gt;alert(1)&lt;/script&gt;"' in section
    assert "n/a: &lt;script&gt;" in section  # the reason, in the cell's tooltip
