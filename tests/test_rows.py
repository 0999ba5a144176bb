"""Per-row results: packed compactly, restored exactly, and the per-sample worst case
over attacks computed from real cells."""
from __future__ import annotations

import json

import numpy as np
import pytest

import gauntlet
from gauntlet.rows import pack, unpack, worst_case


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 450])
def test_pack_unpack_round_trip(n):
    rng = np.random.default_rng(n)
    arrays = {"correct": rng.random(n) < 0.5, "row": np.arange(n, dtype=np.int64) * 3,
              "l2": rng.random(n).astype(np.float32), "big": np.full(n, 2**40, np.int64)}
    packed = pack(arrays)
    json.dumps(packed)  # plain data
    back = unpack(json.loads(json.dumps(packed)))
    assert set(back) == set(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name], a, err_msg=name)
    assert back["correct"].dtype == bool and back["l2"].dtype == np.float32
    assert packed["row"]["dtype"] == "int32"
    assert packed["big"]["dtype"] == ("int64" if n else "int32")  # whatever fits


def test_packing_is_compact():
    n = 450
    packed = pack({"correct": np.ones(n, bool), "linf": np.full(n, 0.1, np.float64)})
    # one bit per boolean, four bytes per number, base64 (4/3)
    assert len(packed["correct"]["data"]) <= 4 * -(-n // 8 // 3) + 4
    assert len(packed["linf"]["data"]) <= 4 * -(-4 * n // 3) + 4
    assert unpack(packed)["linf"].dtype == np.float32


@pytest.fixture(scope="module")
def tiny_audit(digits, digits_model):
    return gauntlet.audit(model=digits_model, data=digits,
                          attacks={"fgsm": {"eps": 0.1}, "noise": {"eps": 0.1}},
                          defenses=["none"], samples=60, seed=0)


def test_rows_are_kept_for_records_not_for_results_json(tiny_audit):
    assert all("rows" not in c for c in tiny_audit.cells)
    records = {(r["attack"], r["attack_point"]): r for r in tiny_audit.records}
    fgsm = unpack(records[("fgsm", "")]["rows"])
    assert set(fgsm) == {"row", "correct_before", "correct_after", "l0", "l2", "linf"}
    assert len(fgsm["row"]) == 60
    np.testing.assert_allclose(fgsm["linf"], 0.1, atol=1e-5)
    # One eps each, so no sweep: the points are "" (they name swept parameters only).
    # The per-row results give back the cell's own metric
    value = records[("fgsm", "")]["metrics"]["robust_accuracy"]["value"]
    assert fgsm["correct_after"].mean() == pytest.approx(value)
    clean = unpack(records[("clean", "")]["rows"])
    np.testing.assert_array_equal(clean["correct"], fgsm["correct_before"])


def test_worst_case_is_the_per_sample_union_of_what_attacks_break(tiny_audit):
    records = tiny_audit.records
    by = {r["attack"]: unpack(r["rows"])["correct_after"] for r in records
          if r["family"] == "evasion"}
    both = worst_case(records, "none", attacks=[("fgsm", ""), ("noise", "")])
    assert both.n == 60
    assert both.value == pytest.approx((by["fgsm"] & by["noise"]).mean())
    # never better than the best single attack; here noise breaks rows FGSM does not
    single = {a: worst_case(records, "none", attacks=[(a, "")]).value for a in by}
    assert single["fgsm"] == pytest.approx(by["fgsm"].mean())
    assert both.value <= min(single.values())
    assert both.low <= both.value <= both.high
    assert worst_case(records, "none").value == both.value  # None: every evasion cell
    with pytest.raises(ValueError, match="no ok evasion cell of defense 'none' for pgd"):
        worst_case(records, "none", attacks=[("pgd", "")])


def test_worst_case_uses_only_rows_every_attack_attacked():
    def record(attack, rows, after):
        return {"id": attack, "defense": "d", "defense_point": "", "attack": attack,
                "attack_point": "", "family": "evasion", "status": "ok",
                "rows": pack({"row": np.array(rows), "correct_after": np.array(after)})}

    records = [record("a", [0, 1, 2, 3], [True, True, False, True]),
               record("b", [1, 2, 3], [False, True, True])]
    value = worst_case(records, "d")
    assert (value.value, value.n) == (1 / 3, 3)  # rows 1-3: only row 3 survives both
