"""Executors: a pool of worker processes turns a plugin that segfaults, aborts, exhausts
memory or hangs in native code into an error cell and goes on; its timeout, enforced by
the parent, stops native code; and every executor gives the numbers a serial run gives."""
from __future__ import annotations

import ctypes
import os
import signal
import time

import numpy as np
import pytest
import torch
from conftest import plugin

import gauntlet
from gauntlet import Access, EvasionAttack
from gauntlet.executor import ProcessExecutor, SerialExecutor, _Plan, _Slot
from gauntlet.plan import Selection, plan
from gauntlet.registry import make_registry


class Segfaults(EvasionAttack):
    """Reads address 0 through ctypes: a segmentation fault in native code.

    Test attack for crash isolation.
    """

    name = "segfaults"
    needs = Access.LABELS

    def generate(self, model, x, y, rng):
        ctypes.string_at(0)
        return x


class Aborts(EvasionAttack):
    """Calls abort(): what a failed assertion in a C++ extension does.

    Test attack for crash isolation.
    """

    name = "aborts"
    needs = Access.LABELS

    def generate(self, model, x, y, rng):
        os.abort()


class Hogs(EvasionAttack):
    """Reserves 256 MiB blocks without bound.

    Test attack for the workers' memory limit. The blocks are reserved, not written:
    the limit caps address space, so it is reached at once, where filling 64 MiB blocks
    could outlast the 2 s cell timeout on a loaded machine (CI saw it time out).
    """

    name = "hogs"
    needs = Access.LABELS

    def generate(self, model, x, y, rng):
        blocks = []
        while True:
            blocks.append(np.empty(2**25))


class HangsInNative(EvasionAttack):
    """Sleeps in C with the timer's signal blocked: a native call that never returns to
    Python, which the in-process timeout cannot stop.

    Test attack for the parent-enforced timeout.
    """

    name = "hangs"
    needs = Access.LABELS

    def generate(self, model, x, y, rng):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        ctypes.CDLL(None).sleep(600)
        return x


class Noise(EvasionAttack):
    """Adds uniform noise of 0.1.

    Test attack that works.
    """

    name = "noise-ok"
    needs = Access.LABELS

    def generate(self, model, x, y, rng):
        return np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32)


@pytest.fixture
def registry():
    return make_registry(plugins={"crashtest": plugin("crashtest", Segfaults, Aborts, Hogs,
                                                      HangsInNative, Noise)})


def by_attack(result):
    return {(c["defense"], c["attack"]): c for c in result.cells}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the process pool forks")
def test_crashing_plugins_become_error_cells_and_the_audit_completes(registry, digits,
                                                                    digits_model):
    start = time.perf_counter()
    result = gauntlet.audit(
        model=digits_model, data=digits, registry=registry, samples=30, seed=0, timeout=2,
        attacks=["segfaults", "aborts", "hogs", "hangs", "noise-ok"],
        defenses=["none", "input-noise"], cache=False,
        executor=ProcessExecutor(workers=2, progress=False, memory_mb=512))
    elapsed = time.perf_counter() - start
    cells = by_attack(result)
    for defense in ("none", "input-noise"):
        seg = cells[(defense, "segfaults")]
        assert seg["status"] == "error"
        assert "SIGSEGV" in seg["reason"] and "new worker" in seg["reason"]
        # what the report shows: the worker's Python stack at the crash, our frame in it
        assert "test_executor.py" in seg["traceback"] and "generate" in seg["traceback"]
        # the worker's own frames only: not the list of native modules, nor the parent's
        # frames the fork copied
        assert "Extension modules" not in seg["traceback"]
        assert seg["traceback"].rstrip().endswith("in _serve")
        assert "SIGABRT" in cells[(defense, "aborts")]["reason"]
        hog = cells[(defense, "hogs")]
        assert hog["status"] == "error"
        assert "MemoryError" in hog["reason"] or "SIGKILL" in hog["reason"] \
            or "WorkerDied" in hog["reason"]
        hang = cells[(defense, "hangs")]
        assert hang["status"] == "error"
        assert "CellTimeout" in hang["reason"] and "stopped" in hang["reason"]
        assert hang["duration_s"] < 30
        assert cells[(defense, "clean")]["status"] == "ok"
        assert cells[(defense, "noise-ok")]["status"] == "ok"
    assert elapsed < 240  # nothing waited on a dead or hung worker for long
    # the cells that worked give a serial run's numbers
    serial = gauntlet.audit(model=digits_model, data=digits, registry=registry, samples=30,
                            seed=0, attacks=["noise-ok"], defenses=["none", "input-noise"],
                            cache=False, executor=SerialExecutor(progress=False))
    for key, cell in by_attack(serial).items():
        if not cell.get("derived"):
            assert cells[key]["metrics"] == cell["metrics"], key


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the process pool forks")
def test_pool_results_equal_serial_results_on_a_mixed_matrix(digits, digits_model):
    """Evasion with and without input defenses, membership, and a poisoning re-training,
    each seeded by its point only: the pool gives the serial numbers exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker uses
    try:
        kw = {"model": digits_model, "data": digits, "samples": 60, "seed": 0, "cache": False,
              "attacks": {"fgsm": {"eps": [0.1, 0.2]}, "mia-threshold": {},
                          "label-flip": {"fraction": 0.1}},
              "defenses": ["none", "input-noise", "confidence-clip"]}
        serial = gauntlet.audit(**kw, executor="serial")
        pooled = gauntlet.audit(**kw, executor="process", workers=2)
    finally:
        torch.set_num_threads(threads)
    assert [c["id"] for c in pooled.cells] == [c["id"] for c in serial.cells]
    for a, b in zip(serial.cells, pooled.cells):
        assert (a["status"], a["metrics"], a["reason"]) == (b["status"], b["metrics"],
                                                            b["reason"]), a["id"]
    assert pooled.result["provenance"]["run"]["executor"] == "process"
    assert not [c["id"] for c in pooled.cells if c["status"] == "error"]


def test_the_scheduler_keeps_a_worker_to_its_defense_and_splits_a_rehearsal(registry):
    cells = plan(registry, [Selection("none"), Selection("input-noise")],
                 [Selection(n) for n in ("segfaults", "aborts", "hogs", "hangs", "noise-ok")])
    assert len(cells) == 12  # none: 0-5, input-noise: 6-11 (clean + 5 attacks each)
    a, b = _Slot(), _Slot()
    work = _Plan(cells, list(range(12)), workers=2)
    assert work.pick(a, [a, b]) == 0
    # The first worker on a defense prepares it with its share: half of its cells,
    # dealt round-robin (a sweep's points and the costly attacks land in both shares).
    assert work.take(0, a) == [0, 2, 4]
    a.cell, a.last, a.defenses = 0, cells[0].defense_key, {cells[0].defense_key}
    assert work.pick(b, [a, b]) == 6  # a defense no other worker is on
    # Once a defense is known to pack (it rehearsed), its group stays with its worker ...
    work.prepared(a, cells[0].defense_key, True)
    a.cell = None
    assert work.pick(a, [a, b]) == 2 and work.take(2, a) is None  # rehearsed: run at once
    # ... and the rest of it is another worker's share, rehearsed there.
    only_none = _Plan(cells, [3, 4, 5], workers=2)
    assert only_none.take(3, b) == [3, 5]
    assert only_none.pick(a, [a, b]) == 4
    # A defense that does not pack frees its group: any worker may run those cells.
    only_none.prepared(b, cells[3].defense_key, False)
    assert only_none.pick(b, [a, b]) == 4
    # A lost worker's claims go back to everyone.
    work.release(a)
    assert work.pick(b, [a, b]) == 1


def test_worker_memory_on_an_executor_that_ignores_it_is_said(digits, caplog):
    import logging

    import torch
    from torch import nn

    import gauntlet
    from gauntlet.config import AuditConfig

    torch.manual_seed(0)
    cfg = AuditConfig(worker_memory=512)
    with caplog.at_level(logging.WARNING, logger="gauntlet"):
        gauntlet.audit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, config=cfg,
                       attacks=["noise"], defenses=["none"], samples=10)
    assert any("caps process-pool workers only" in r.getMessage() and "'serial'" in
               r.getMessage() for r in caplog.records)
