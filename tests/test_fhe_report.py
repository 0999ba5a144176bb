"""The report states FHE's three answers in the Summary, and a defense's row limit.

The results are hand-made in the shape a real ``--defenses none,fhe`` audit writes to
results.json (cells with defense/attack points, defense_params, n and metric records), so
every number asserted is one put in.
"""
from __future__ import annotations

import re
from typing import Any

import pytest

from gauntlet.plugins._fhe_summary import summary_lines
from gauntlet.reports.context import build_context
from gauntlet.reports.html import render_report

EVIL = "<script>alert(1)</script>"
FHE_PARAMS = {"twin": "auto", "hidden": 32, "steps": 800, "poly_modulus_degree": 8192,
              "scale_bits": 40, "outer_bits": 49, "rows": 256}
FACTS = {"fhe_agreement_model": (0.97265625, 256), "fhe_agreement_twin": (1.0, 256),
         "fhe_twin_agreement": (0.97265625, 256), "fhe_latency_single_ms": (2054.24, 1),
         "fhe_latency_amortised_ms": (0.5929, 4096), "fhe_upload_bytes": (6443.59, 4096),
         "fhe_download_bytes": (281.93, 4096), "fhe_security_bits": (128.0, 1)}
FAMILY = {"clean": "baseline", "fgsm": "evasion", "mia-threshold": "inference",
          "server-view": "confidentiality", "server-tamper": "confidentiality"}


def cell(defense: str, attack: str, metrics: dict[str, float | tuple[float, int]], *,
         n: int = 256, point: str = "", defense_point: str = "",
         params: dict[str, Any] | None = None, status: str = "ok",
         reason: str | None = None) -> dict[str, Any]:
    records = {}
    for name, v in metrics.items():
        value, count = v if isinstance(v, tuple) else (v, n)
        records[name] = {"value": value, "n": count, "low": None, "high": None}
    return {"id": f"{defense}|{defense_point}|{attack}|{point}", "defense": defense,
            "defense_params": dict(params if params is not None else
                                   FHE_PARAMS if defense == "fhe" else {}),
            "defense_point": defense_point, "attack": attack, "family": FAMILY[attack],
            "attack_params": {}, "attack_point": point, "status": status,
            "reason": reason, "traceback": None, "duration_s": 1.0,
            "n": n if status == "ok" else None, "metrics": records if status == "ok" else {}}


def result(cells: list[dict[str, Any]], n_eval: int = 450) -> dict[str, Any]:
    return {"schema": 1, "provenance": {"data": {"name": "digits", "n_eval": n_eval}},
            "defenses": {d: {"stage": "wrapper", "description": "", "evaluation": "",
                             "adaptive": True} for d in dict.fromkeys(c["defense"] for c in cells)},
            "cells": cells}


def full() -> dict[str, Any]:
    return result([
        cell("none", "clean", {"clean_accuracy": 0.98667}, n=450),
        cell("none", "fgsm", {"robust_accuracy": 0.5689}, n=450, point="eps=0.1"),
        cell("none", "fgsm", {"robust_accuracy": 0.0178}, n=450, point="eps=0.3"),
        cell("none", "server-view", {"server_recovery": 1.0, "server_chance": 0.12}, n=50),
        cell("none", "server-tamper", {"tamper_success": 1.0}, n=230),
        cell("none", "mia-threshold", {"membership_advantage": 0.061}, n=400),
        cell("fhe", "clean", {**FACTS, "clean_accuracy": 0.9609375}),
        cell("fhe", "fgsm", {"robust_accuracy": 0.3125}, point="eps=0.1"),
        cell("fhe", "fgsm", {"robust_accuracy": 0.0039}, point="eps=0.3"),
        cell("fhe", "fgsm", {"robust_accuracy": 0.9}, point="eps=0.01"),  # none lacks it
        cell("fhe", "server-view", {"server_recovery": 0.14, "server_chance": 0.12}, n=50),
        cell("fhe", "server-tamper", {"tamper_success": 0.996}, n=231),
        cell("fhe", "mia-threshold", {"membership_advantage": 0.052}, n=256),
    ])


def texts(res: dict[str, Any]) -> list[str]:
    lines = summary_lines(res)
    assert all(line["place"] == "summary" for line in lines)
    return [line["text"] for line in lines]


def test_three_lines_with_the_numbers_put_in():
    lines = summary_lines(full())
    assert [line["title"] for line in lines] == [
        "Encrypted inference (fhe): same answers?", "Encrypted inference (fhe): what it costs",
        "Encrypted inference (fhe): what it stops, and what it does not"]
    same, cost, stops = (line["text"] for line in lines)
    assert same == ("Encrypted predictions agree with the model on 97.3% (with its plaintext "
                    "twin: 100.0%) of 256 test rows. Clean accuracy 96.1% encrypted vs 98.7% "
                    "for the undefended model (on 256 and 450 rows).")
    assert cost == ("0.59 ms per input in a full batch of 4,096, 2,054 ms for one input "
                    "alone; 6.3 KiB uploaded and 282 bytes downloaded per input; "
                    "128-bit security.")
    assert "recovers 14.0% of 50 served labels from what it sees (chance 12.0%; 100.0% " \
           "from the plaintext deployment 'none')." in stops
    assert "replaces 99.6% of 231 answers with its chosen class, undetected (100.0% in " \
           "plaintext)." in stops
    # The strongest evasion cell both ran; fhe's eps=0.01 has no undefended twin to pair.
    assert "Evasion: robust accuracy 0.4% under fhe vs 1.8% undefended (fgsm eps=0.3, the " \
           "strongest of 2 cells run against both)." in stops
    assert "Membership inference: advantage 5.2% under fhe vs 6.1% undefended " \
           "(mia-threshold)." in stops
    assert "not run" not in stops


def test_missing_pieces_are_left_out_or_say_not_run():
    only = {k: v for k, v in FACTS.items() if k in ("fhe_agreement_model",
                                                    "fhe_latency_amortised_ms")}
    same, cost, stops = texts(result([cell("fhe", "clean", only)]))
    assert same == "Encrypted predictions agree with the model on 97.3% of 256 test rows."
    assert cost == "0.59 ms per input in a full batch of 4,096."
    assert stops == ("server-view: not run. server-tamper: not run. Evasion: not run. "
                     "Membership inference: not run.")
    for text in (same, cost, stops):
        assert "twin" not in text and "undefended" not in text and "—" not in text


def test_an_fhe_cell_without_an_undefended_one_stands_alone():
    same, _, stops = texts(result([
        cell("fhe", "clean", {"clean_accuracy": 0.9}),
        cell("fhe", "fgsm", {"robust_accuracy": 0.25}, point="eps=0.1"),
        cell("fhe", "server-view", {}, status="not_applicable", reason="no view\nmore"),
        cell("fhe", "server-tamper", {}, status="error", reason="ValueError: boom")]))
    assert same == "Clean accuracy 90.0% encrypted."
    assert "Evasion: robust accuracy 25.0% under fhe (fgsm eps=0.1; no undefended cell " \
           "to compare)." in stops
    assert "server-view: not applicable (no view)." in stops
    assert "server-tamper: error (ValueError: boom)." in stops


def test_a_failed_clean_cell_says_why_instead_of_numbers():
    same, cost, _ = texts(result([cell("fhe", "clean", {}, status="error",
                                       reason="DefenseFailed: tenseal missing")]))
    assert same == cost == "Not measured: the clean cell is error (DefenseFailed: tenseal missing)."


def test_each_fhe_point_gets_its_own_lines_and_no_fhe_gets_none():
    res = result([cell("none", "clean", {"clean_accuracy": 0.95}, n=450),
                  cell("fhe", "clean", {"clean_accuracy": 0.9}, defense_point="rows=64"),
                  cell("fhe", "clean", {"clean_accuracy": 0.8}, defense_point="rows=128")])
    lines = summary_lines(res)
    assert [line["title"].split(":")[0] for line in lines] == \
        ["Encrypted inference (fhe, rows=64)"] * 3 + ["Encrypted inference (fhe, rows=128)"] * 3
    assert "90.0% encrypted vs 95.0%" in lines[0]["text"]
    assert "80.0% encrypted vs 95.0%" in lines[3]["text"]
    assert summary_lines(result([cell("none", "clean", {"clean_accuracy": 0.95})])) == []


def part(html: str, section: str) -> str:
    match = re.search(rf'<section id="{section}">(.*?)</section>', html, re.S)
    assert match, section
    return match.group(1)


def test_summary_place_renders_inside_the_summary_escaped():
    sections = [{"title": EVIL, "text": f"{EVIL} 12.5%", "place": "summary"},
                {"title": "At the end", "text": "plugin says hi"}]
    html = render_report(full(), sections=sections)
    assert EVIL not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    summary, end = part(html, "summary"), part(html, "sections")
    assert "From the plugins" in summary and f"{escaped} 12.5%" in summary
    assert "plugin says hi" in end and "plugin says hi" not in summary
    assert escaped not in end
    # No summary-placed section: no heading, and the rest stay where they were.
    plain = render_report(full(), sections=sections[1:])
    assert "From the plugins" not in plain and "plugin says hi" in part(plain, "sections")


def test_the_fhe_lines_render_in_the_summary():
    res = full()
    summary = part(render_report(res, sections=summary_lines(res)), "summary")
    assert "Encrypted inference (fhe): what it costs" in summary
    assert "0.59 ms per input in a full batch of 4,096" in summary
    assert "under fhe vs 1.8% undefended" in summary
    assert 'id="sections"' not in render_report(res, sections=summary_lines(res))


@pytest.mark.parametrize("rows,n_eval,expected", [
    (256, 450, "Evaluated on the first 256 of the 450 test rows (the defense's row limit)."),
    (256, None, "Evaluated on the first 256 test rows (the defense's row limit)."),
    (1000, 450, "Its row limit (1,000) is not reached: all 450 test rows are evaluated."),
])
def test_a_defense_states_its_row_limit(rows: int, n_eval: int | None, expected: str):
    res = result([cell("none", "clean", {"clean_accuracy": 0.98}, n=450),
                  cell("fhe", "clean", {"clean_accuracy": 0.96},
                       params={**FHE_PARAMS, "rows": rows})], n_eval=n_eval or 0)
    if n_eval is None:
        del res["provenance"]["data"]["n_eval"]
    notes = {d.name: d for d in build_context(res).defenses}
    assert notes["fhe"].row_limit == expected
    assert notes["none"].row_limit == ""
    defenses = part(render_report(res), "defenses")
    assert expected.replace("'", "&#39;") in defenses


def test_row_limits_that_differ_by_point_name_their_points():
    res = result([cell("other", "clean", {"clean_accuracy": 0.9}, defense_point=f"r={r}",
                       params={"r": r, "rows": rows}) for r, rows in ((1, 64), (2, 128))])
    (note,) = build_context(res).defenses
    assert note.row_limit == (
        "Evaluated on the first 64 of the 450 test rows at r=1 (the defense's row limit). "
        "Evaluated on the first 128 of the 450 test rows at r=2 (the defense's row limit).")
