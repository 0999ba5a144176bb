"""The worst-case column: derived per budget from the cells' per-row results (AutoAttack's
rule), never above any single attack, equal to a hand computation, never stored in
cells.jsonl and recomputed when cells are reused."""
from __future__ import annotations

import json

import numpy as np
import pytest

import gauntlet
from gauntlet.results import check_result
from gauntlet.rows import WORST_CASE, pack, worst_case_cells
from gauntlet.store import read_records

ATTACKS = {
    "a": {"family": "evasion", "needs": "gradients", "norm": "linf", "minimal": False},
    "b": {"family": "evasion", "needs": "scores", "norm": "linf", "minimal": False},
    "c": {"family": "evasion", "needs": "gradients", "norm": "l2", "minimal": False},
    "m": {"family": "evasion", "needs": "gradients", "norm": "", "minimal": True},
}


def _record(attack: str, eps: float | None, rows: list[int], after: list[bool],
            defense: str = "d") -> dict:
    params = {} if eps is None else {"eps": eps}
    return {"id": f"{defense}{{}}|{attack}{json.dumps(params)}", "defense": defense,
            "defense_params": {}, "defense_point": "", "attack": attack,
            "family": "evasion", "attack_params": params,
            "attack_point": "" if eps is None else f"eps={eps:g}", "status": "ok",
            "metrics": {"robust_accuracy": {"value": float(np.mean(after)), "n": len(after),
                                            "low": None, "high": None}},
            "rows": pack({"row": np.array(rows), "correct_after": np.array(after)})}


def test_worst_case_cells_equal_a_hand_computation():
    records = [
        _record("a", 0.1, [0, 1, 2, 3, 4], [True, True, False, True, False]),
        _record("b", 0.1, [0, 1, 2, 3], [True, False, True, True]),  # fewer rows
        _record("a", 0.3, [0, 1, 2, 3, 4], [False] * 5),  # alone at its budget
        _record("c", 0.1, [0, 1, 2, 3, 4], [True] * 5),  # L2: another budget
        _record("m", None, [0, 1, 2, 3, 4], [False] * 5),  # minimal: no budget
    ]
    cells = worst_case_cells({"attacks": ATTACKS}, records)
    (cell,) = cells  # only eps=0.1 (L-infinity) has two attacks
    # rows 0-3 (both attacked): a breaks 2, b breaks 1; only rows 0 and 3 survive both
    assert cell["metrics"]["robust_accuracy"]["value"] == pytest.approx(2 / 4)
    assert cell["n"] == 4
    assert cell["derived"] is True and cell["attack"] == WORST_CASE
    assert cell["attack_params"] == {"eps": 0.1, "norm": "linf"}
    assert cell["attack_point"] == "eps=0.1"
    assert cell["artifacts"]["combines"] == ["a (eps=0.1)", "b (eps=0.1)"]
    assert "rows" not in cell


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("worst")


@pytest.fixture(scope="module")
def audit(digits, digits_model, folder):
    return gauntlet.audit(model=digits_model, data=digits, samples=60, seed=0, out=folder,
                          cache=folder / "cache",
                          attacks={"fgsm": {"eps": [0.1, 0.2]},
                                   "pgd": {"eps": [0.1], "max_iter": 5},
                                   "noise": {"eps": [0.1, 0.2]}},
                          defenses=["none", "input-noise"])


def test_worst_case_never_above_any_single_attack(audit):
    derived = [c for c in audit.cells if c.get("derived")]
    assert {(c["defense"], c["attack_point"]) for c in derived} == {
        (d, p) for d in ("none", "input-noise") for p in ("eps=0.1", "eps=0.2")}
    for cell in derived:
        worst = cell["metrics"]["robust_accuracy"]["value"]
        singles = [c["metrics"]["robust_accuracy"]["value"] for c in audit.cells
                   if c["defense"] == cell["defense"] and c["family"] == "evasion"
                   and not c.get("derived")
                   and c["attack_params"].get("eps") == cell["attack_params"]["eps"]]
        assert len(singles) >= 2
        assert worst <= min(singles) + 1e-12
    check_result(audit.result)
    assert audit.result["attacks"][WORST_CASE]["derived"] is True


def test_worst_case_is_a_column_of_the_matrix(audit):
    from gauntlet.reports.tables import matrix

    frame = matrix(audit.result, "robust_accuracy")
    assert "worst-case (eps=0.1)" in frame.columns
    assert frame.loc["none", "worst-case (eps=0.1)"] <= frame.loc["none", "pgd"]  # one eps


def test_derived_cells_are_not_stored_and_are_recomputed_from_reused_cells(
        audit, digits, digits_model, folder):
    _, records, _ = read_records(folder / "cells.jsonl")
    assert not [r for r in records if r["attack"] == WORST_CASE or r.get("derived")]
    assert len(records) == len([c for c in audit.cells if not c.get("derived")])
    resumed = gauntlet.audit(model=digits_model, data=digits, samples=60, seed=0,
                             out=folder, cache=folder / "cache",
                             attacks={"fgsm": {"eps": [0.1, 0.2]},
                                      "pgd": {"eps": [0.1], "max_iter": 5},
                                      "noise": {"eps": [0.1, 0.2]}},
                             defenses=["none", "input-noise"])
    before = {c["id"]: c["metrics"] for c in audit.cells if c.get("derived")}
    after = {c["id"]: c["metrics"] for c in resumed.cells if c.get("derived")}
    assert after == before
    assert resumed.result["checklist"] == audit.result["checklist"]
    assert resumed.result["provenance"]["run"]["cells_run"] == 0  # every cell was reused


def test_with_a_row_limited_attack_it_rests_on_the_shared_rows(digits, digits_model, folder):
    """Square attacks only its first rows: the worst case is then over those rows, and
    never above any attack's accuracy on them (a full-row attack's own number may be
    lower: it is measured on other rows too)."""
    from gauntlet.rows import unpack

    result = gauntlet.audit(model=digits_model, data=digits, samples=80, seed=0,
                            out=folder / "limited", defenses=["none"],
                            attacks={"fgsm": {"eps": [0.1]}, "pgd": {"eps": [0.1],
                                                                     "max_iter": 5},
                                     "square": {"eps": [0.1], "rows": 30,
                                                "max_queries": 20}})
    (worst,) = [c for c in result.cells if c.get("derived")]
    assert worst["n"] == 30
    shared = None
    for cell in result.records:  # with their per-row results
        if cell["attack"] in ("fgsm", "pgd", "square"):
            rows = unpack(cell["rows"])
            on_shared = rows["correct_after"][np.isin(rows["row"], np.arange(30))]
            assert len(on_shared) == 30
            assert worst["metrics"]["robust_accuracy"]["value"] <= on_shared.mean() + 1e-12
            shared = on_shared if shared is None else shared & on_shared
    assert worst["metrics"]["robust_accuracy"]["value"] == pytest.approx(shared.mean())
