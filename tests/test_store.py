"""cells.jsonl: every finished cell on disk at once, per-row results included; a resumed
audit reuses finished cells of the same audit only, and never an error cell."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import plugin

import gauntlet
from gauntlet import Access, EvasionAttack, param
from gauntlet.registry import make_registry
from gauntlet.results import CellResult
from gauntlet.rows import unpack
from gauntlet.store import Store, read_records


class Counted(EvasionAttack):
    """Adds uniform noise and counts its runs.

    Test attack for resuming.
    """

    name = "counted"
    needs = Access.LABELS
    eps: float = param((0.1, 0.2), "noise size", ge=0)
    runs = 0

    def generate(self, model, x, y, rng):
        type(self).runs += 1
        return np.clip(x + rng.uniform(-self.eps, self.eps, x.shape), 0, 1)


class FailsOnce(EvasionAttack):
    """Fails on its first run in this process, then works.

    Test attack: a transient failure (a timeout on a busy machine, say).
    """

    name = "fails-once"
    needs = Access.LABELS
    calls = 0

    def generate(self, model, x, y, rng):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("transient failure")
        return x


@pytest.fixture
def registry():
    return make_registry(plugins={"test": plugin("test", Counted, FailsOnce)})


def audit(registry, digits, digits_model, out, **kw):
    Counted.runs = 0
    kwargs = {"model": digits_model, "data": digits, "attacks": ["counted"],
              "defenses": ["none"], "samples": 40, "registry": registry, "out": out,
              "seed": 0} | kw
    return gauntlet.audit(**kwargs)


def test_resume_reuses_finished_cells_of_the_same_audit(registry, digits, digits_model,
                                                        tmp_path):
    first = audit(registry, digits, digits_model, tmp_path)
    assert Counted.runs == 2 and all(c["status"] == "ok" for c in first.cells)
    # an interrupted audit: only the first attack cell made it to disk
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    (tmp_path / "cells.jsonl").write_text("\n".join(lines[:3]) + "\n")  # header, clean, 0.1
    resumed = audit(registry, digits, digits_model, tmp_path, resume=True)
    assert Counted.runs == 1  # only eps=0.2 ran again
    numbers = ["cell_id", "metric", "value", "low", "high", "n", "status"]
    pd.testing.assert_frame_equal(resumed.table[numbers], first.table[numbers])
    # the reused cells brought their per-row results back from disk
    def untimed(result):
        return [{k: v for k, v in r.items() if k != "duration_s"} for r in result.records]

    assert untimed(resumed) == untimed(first)
    assert all(r["rows"] for r in resumed.records)
    audit(registry, digits, digits_model, tmp_path, resume=True, seed=1)  # another audit
    assert Counted.runs == 2  # nothing reused


def test_resume_never_reuses_an_error_cell(registry, digits, digits_model, tmp_path):
    FailsOnce.calls = 0
    first = audit(registry, digits, digits_model, tmp_path, attacks=["fails-once", "counted"])
    status = {c["attack"]: c["status"] for c in first.cells}
    assert status == {"clean": "ok", "fails-once": "error", "counted": "ok"}
    resumed = audit(registry, digits, digits_model, tmp_path, attacks=["fails-once", "counted"],
                    resume=True)
    assert FailsOnce.calls == 2  # the error cell ran again ...
    assert Counted.runs == 0  # ... and nothing else did
    assert {c["attack"]: c["status"] for c in resumed.cells} == \
        {"clean": "ok", "fails-once": "ok", "counted": "ok"}
    # On disk the error stays as history, and the next resume takes the ok record.
    _, records, _ = read_records(tmp_path / "cells.jsonl")
    assert [r["status"] for r in records if r["attack"] == "fails-once"] == ["error", "ok"]
    header = json.loads((tmp_path / "cells.jsonl").read_text().splitlines()[0])
    again = Store(tmp_path, header["fingerprint"], resume=True)
    assert {again.done[c["id"]]["status"] for c in resumed.cells} == {"ok"}


def test_resume_survives_a_line_cut_short_by_a_crash(registry, digits, digits_model, tmp_path):
    audit(registry, digits, digits_model, tmp_path)
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    (tmp_path / "cells.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    audit(registry, digits, digits_model, tmp_path, resume=True)
    assert Counted.runs == 1  # the cut line's cell ran again, the others were reused
    _, records, whole = read_records(tmp_path / "cells.jsonl")
    assert len(records) == 3 and whole == (tmp_path / "cells.jsonl").stat().st_size


def test_store_writes_rows_and_reads_them_back(tmp_path):
    cell = CellResult(id="d|a", defense="d", defense_params={}, defense_point="", attack="a",
                      family="evasion", attack_params={}, attack_point="",
                      rows={"correct": {"dtype": "bool", "n": 3, "data": "oA=="}})
    store = Store(tmp_path, "abc")
    store.append(cell)
    header, records, _ = read_records(tmp_path / "cells.jsonl")
    assert header == {"fingerprint": "abc"}
    assert records == [cell.to_dict()]
    np.testing.assert_array_equal(unpack(records[0]["rows"])["correct"], [True, False, True])
    assert Store(tmp_path, "abc", resume=True).done == {"d|a": cell.to_dict()}
    assert Store(tmp_path, "other", resume=True).done == {}  # another audit's file
