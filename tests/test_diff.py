"""``gauntlet diff``: two versions of a digits model audited on the same rows. Seeds
that differ change little beyond noise; a version with a mixture backdoor (issue 7's
patch and target label) is flagged by the trigger scan, its target class named. Paired
intervals are checked against the resampled values by hand, the behaviour probes against
the clean cells' per-row predictions."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import gauntlet
from gauntlet.cli import main
from gauntlet.diff import Z95, _benjamini_hochberg, compare, diff, load_audit, text
from gauntlet.plugins.poisoning import Backdoor
from gauntlet.plugins.torch_models import load_model
from gauntlet.reports.diff import render_diff
from gauntlet.rows import unpack

TARGET = 3
ATTACKS = ["fgsm", "mia-threshold", "trigger-scan"]


def _mlp(digits, seed):
    return load_model("builtin:mlp", {"dataset": digits, "seed": seed, "hidden": [64],
                                      "epochs": 30})


@pytest.fixture(scope="module")
def audits(digits, tmp_path_factory):
    """Audit folders of version A (seed 0), a retrain with seed 1, and A's recipe
    retrained on data with a mixture backdoor (10% of rows patched and labelled 3)."""
    a = _mlp(digits, 0)
    poisoned = Backdoor(kind="mixture", fraction=0.1, patch=3, target=TARGET).poison(
        digits, np.random.default_rng(0))
    versions = {"a": a, "seed1": _mlp(digits, 1), "backdoor": a.retrain(poisoned.x,
                                                                         poisoned.y, 0)}
    root = tmp_path_factory.mktemp("versions")
    for name, model in versions.items():
        gauntlet.audit(model=model, data=digits, attacks=ATTACKS, defenses=["none"],
                       samples=150, seed=0, resamples=30, cache=False, out=root / name)
    return root


def test_two_seeds_change_little_beyond_noise(audits):
    d = diff(audits / "a", audits / "seed1")
    counts = d.counts()
    # Every value is paired on resamples but the trigger scan's two (per class, no rows).
    assert {c.metric for c in d.changes if c.method != "paired"} == {"trigger_anomaly",
                                                                     "trigger_size"}
    assert counts["paired"] == counts["values"] - 2 > 30
    assert counts["cells_significant"] <= 0.2 * counts["cells"], text(d)
    assert d.backdoor_targets == []
    assert not any(t.flagged for t in d.triggers)


def test_a_mixture_backdoor_is_flagged_with_its_target_class(audits, capsys):
    d = diff(audits / "a", audits / "backdoor")
    assert d.changed and d.backdoor_targets == [TARGET]
    (flag,) = [t for t in d.triggers if t.flagged]
    assert flag.size_b <= 0.5 * flag.size_a and flag.reach_b >= 0.9
    assert f"target class {TARGET}" in text(d)[2]
    # The command line: exit 1 for changed, the target in the text and the JSON.
    assert main(["diff", str(audits / "a"), str(audits / "backdoor"),
                 "--out", str(audits / "d1")]) == 1
    assert f"target class {TARGET}" in capsys.readouterr().out
    written = json.loads((audits / "d1" / "diff.json").read_text())
    assert written["changed"] is True and written["backdoor_targets"] == [TARGET]
    html = (audits / "d1" / "diff.html").read_text()
    assert "backdoor suspected" in html and "Content-Security-Policy" in html


def test_an_audit_against_itself_is_no_change_and_exits_0(audits, capsys):
    d = diff(audits / "a", audits / "a")
    assert not d.changed and all(c.delta == 0 and not c.beyond_noise for c in d.changes)
    assert d.behaviour is not None and d.behaviour.disagree == 0
    assert main(["diff", str(audits / "a"), str(audits / "a"), "--json",
                 "--out", str(audits / "d0")]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False


def test_a_paired_interval_is_the_resampled_differences_by_hand(audits):
    a, b = load_audit(audits / "a"), load_audit(audits / "seed1")
    d = compare(a, b)
    change = next(c for c in d.changes if c.attack == "fgsm" and c.metric ==
                  "robust_accuracy" and c.attack_point == "eps=0.1")
    id_a = next(c["id"] for c in a.result["cells"] if c["attack"] == "fgsm" and
                c["attack_point"] == "eps=0.1")
    va = np.array(a.records[id_a]["resampled"]["robust_accuracy"])
    vb = np.array(b.records[id_a]["resampled"]["robust_accuracy"])  # same plan, same ids
    se = np.std(vb - va, ddof=1)
    assert change.method == "paired"
    assert change.low == pytest.approx(change.delta - Z95 * se)
    assert change.high == pytest.approx(change.delta + Z95 * se)


def test_pairing_is_tighter_than_comparing_two_intervals(audits, tmp_path):
    """The point of pairing: the same rows' shared difficulty cancels. Without
    cells.jsonl the diff falls back to the two intervals, and its intervals widen."""
    for name in ("a", "seed1"):
        shutil.copy(audits / name / "results.json", tmp_path / f"{name}.json")
    paired = diff(audits / "a", audits / "seed1")
    unpaired = diff(tmp_path / "a.json", tmp_path / "seed1.json")
    # Metrics with an interval fall back to the two intervals; those without one
    # (precision, recall, F1, the trigger scan's) cannot be tested at all.
    assert {c.method for c in unpaired.changes if c.metric == "robust_accuracy"} == \
        {"unpaired"}
    assert {c.method for c in unpaired.changes} == {"unpaired", "none"}
    assert any("cells.jsonl is missing" in n for n in unpaired.notes)
    assert unpaired.behaviour is None

    def width(d):
        return {(c.cell, c.metric): c.high - c.low for c in d.changes
                if c.metric == "robust_accuracy" and c.high > c.low}

    wp, wu = width(paired), width(unpaired)
    common = wp.keys() & wu.keys()
    assert len(common) >= 3
    assert np.median([wp[k] / wu[k] for k in common]) < 0.8


def test_behaviour_probes_match_the_clean_rows(audits):
    a, b = load_audit(audits / "a"), load_audit(audits / "backdoor")

    def clean_rows(audit):
        cell = next(c for c in audit.result["cells"] if c["attack"] == "clean")
        return unpack(audit.records[cell["id"]]["rows"])

    ra, rb = clean_rows(a), clean_rows(b)
    d = compare(a, b)
    assert d.behaviour.rows == len(ra["row"])
    assert d.behaviour.disagree == int((ra["predicted"] != rb["predicted"]).sum())
    shift = rb["confidence"].astype(float) - ra["confidence"].astype(float)
    assert d.behaviour.confidence_shift == pytest.approx(shift.mean())
    for m in d.behaviour.moved:
        mine = ra["label"] == m.label
        assert m.gained == int(((rb["predicted"] == m.predicted) &
                                (ra["predicted"] != m.predicted) & mine).sum())


def test_benjamini_hochberg_against_its_definition():
    ps = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    # The largest k with p_(k) <= k / m * q (q = 0.05, m = 10): k = 2.
    assert _benjamini_hochberg(ps) == [True, True] + [False] * 8
    assert _benjamini_hochberg([0.5] * 3) == [False] * 3
    assert _benjamini_hochberg([0.01, 0.02, 0.03]) == [True] * 3


def test_bad_input_exits_2_with_one_line(audits, tmp_path, capsys):
    assert main(["diff", str(audits / "a"), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results.json" in err and "Traceback" not in err
    (tmp_path / "bad.json").write_text("{\"cells\": []}")
    assert main(["diff", str(audits / "a"), str(tmp_path / "bad.json")]) == 2
    assert "not a Gauntlet results.json" in capsys.readouterr().err
    # A folder that cannot be written is bad input too, never exit 1 ("changed").
    (tmp_path / "afile").write_text("")
    assert main(["diff", str(audits / "a"), str(audits / "a"), "--out",
                 str(tmp_path / "afile")]) == 2
    assert "cannot write the diff to" in capsys.readouterr().err
    other = json.loads((audits / "a" / "results.json").read_text())
    other["provenance"]["data"]["n_eval"] = 99
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["diff", str(audits / "a"), str(tmp_path / "other.json")]) == 2
    assert "same rows" in capsys.readouterr().err


def test_other_data_of_the_same_shape_is_never_paired(audits, tmp_path):
    """Same shape, same row count, another dataset (a new user's npz split): row i is
    another input in each audit, so nothing may be paired row by row."""
    for name in ("a", "seed1"):
        shutil.copytree(audits / name, tmp_path / name)
    moved = json.loads((tmp_path / "seed1" / "results.json").read_text())
    moved["provenance"]["data"]["spec"] = "npz:other-split.npz"
    (tmp_path / "seed1" / "results.json").write_text(json.dumps(moved))
    d = diff(tmp_path / "a", tmp_path / "seed1")
    assert "paired" not in {c.method for c in d.changes}
    assert d.behaviour is None
    assert any("data specs differ" in n for n in d.notes)


def test_the_page_shows_the_counts(audits):
    d = diff(audits / "a", audits / "seed1")
    html = render_diff(d)
    assert "built-in method" not in html
    assert f"<dd>{d.counts()['values']} ({d.counts()['paired']} paired)</dd>" in html


def test_plugin_text_in_the_diff_page_is_escaped(audits, tmp_path):
    hostile = json.loads((audits / "a" / "results.json").read_text())
    hostile["provenance"]["model"]["name"] = "<script>alert(1)</script>"
    for cell in hostile["cells"]:
        cell["attack_point"] = cell["attack_point"] and "<img src=x onerror=alert(2)>"
    (tmp_path / "h.json").write_text(json.dumps(hostile))
    html = render_diff(diff(audits / "a" / "results.json", tmp_path / "h.json"))
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_verdict_needs_a_test_to_survive_the_correction(audits):
    """An interval that excludes zero by chance alone is not a change: with hundreds of
    values some do, and the verdict counts only what survives the FDR control."""
    d = diff(audits / "a", audits / "seed1")
    tested = [c for c in d.changes if c.p is not None]
    assert all(math.isfinite(c.p) and 0 <= c.p <= 1 for c in tested)
    assert all(c.beyond_noise for c in d.changes if c.significant)
