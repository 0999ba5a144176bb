"""cells.jsonl: every finished cell on disk at once, per-row results included, and a
line torn by a crash dropped. (Reusing finished cells is the content cache's work:
tests/test_cache.py.)"""
from __future__ import annotations

import json

import numpy as np
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


def test_a_line_cut_short_by_a_crash_is_dropped_and_what_came_before_is_kept(
        registry, digits, digits_model, tmp_path):
    audit(registry, digits, digits_model, tmp_path)
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    (tmp_path / "cells.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    header, records, whole = read_records(tmp_path / "cells.jsonl")
    assert header == json.loads(lines[0]) and len(records) == 2
    assert whole == len(("\n".join(lines[:3]) + "\n").encode())


def test_the_log_holds_every_cell_of_the_run_reused_or_not(registry, digits, digits_model,
                                                           tmp_path):
    first = audit(registry, digits, digits_model, tmp_path)
    again = audit(registry, digits, digits_model, tmp_path)  # every cell from the cache
    assert Counted.runs == 0
    _, records, _ = read_records(tmp_path / "cells.jsonl")
    assert sorted(r["id"] for r in records) == sorted(c["id"] for c in first.cells
                                                      if not c.get("derived"))
    assert [r["metrics"] for r in records] == [r["metrics"] for r in again.records]


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
    store.append(cell.to_dict())  # a record already made plain (one from the cache)
    assert read_records(tmp_path / "cells.jsonl")[1] == [cell.to_dict()] * 2
