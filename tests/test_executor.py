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
from gauntlet.executor import ProcessExecutor, SerialExecutor, _pick, _Slot
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
    """Allocates 64 MiB blocks without bound.

    Test attack for the workers' memory limit.
    """

    name = "hogs"
    needs = Access.LABELS

    def generate(self, model, x, y, rng):
        blocks = []
        while True:
            blocks.append(np.ones(2**23))


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


def test_the_scheduler_keeps_a_worker_to_its_defense(registry):
    cells = plan(registry, [Selection("none"), Selection("input-noise")],
                 [Selection("noise-ok")])
    pending = list(range(len(cells)))  # none: 0, 1; input-noise: 2, 3
    a, b = _Slot(last=cells[2].defense_key), _Slot()
    assert _pick(cells, pending, a, [a, b], {}) == 2  # the defense it is on
    a.cell = 2
    assert _pick(cells, [0, 1, 3], b, [a, b], {}) == 0  # a defense no one is on
    # a rehearsed (pinned) defense is left to its worker
    assert _pick(cells, [3], b, [a, b], {cells[3].defense_key: a}) is None
