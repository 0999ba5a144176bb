"""The Ray executor against a real local Ray (the test extra installs it): cells run in
actors and give the serial numbers, the demo matrix agrees value for value on all three
executors, and a crashing or hanging plugin is an error cell, as in the process pool."""
from __future__ import annotations

import time

import pytest
import torch
from conftest import plugin
from test_executor import HangsInNative, Segfaults

import gauntlet
from gauntlet import config as config_mod
from gauntlet.executor import RayExecutor
from gauntlet.registry import make_registry

ray = pytest.importorskip("ray")
# A local Ray takes seconds to start and each actor imports torch: CI runs these with the
# slow tests, not the README's command.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for this file (an executor uses a Ray already initialised)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each worker's, so the serial run computes the same bits
    yield
    torch.set_num_threads(threads)


def test_a_crash_and_a_hang_under_ray_are_error_cells(digits, digits_model):
    # The process pool's crashing plugins; Ray ships their test module by value.
    registry = make_registry(plugins={"raytest": plugin("raytest", Segfaults,
                                                        HangsInNative)})
    start = time.perf_counter()
    result = gauntlet.audit(model=digits_model, data=digits, registry=registry, samples=30,
                            seed=0, timeout=3, attacks=["segfaults", "hangs", "noise"],
                            defenses=["none"], cache=False,
                            executor=RayExecutor(workers=2, progress=False))
    cells = {c["attack"]: c for c in result.cells if not c.get("derived")}
    assert cells["segfaults"]["status"] == "error"
    assert "WorkerDied" in cells["segfaults"]["reason"]
    assert "Ray actor" in cells["segfaults"]["reason"]
    assert cells["hangs"]["status"] == "error"
    assert "CellTimeout" in cells["hangs"]["reason"]
    assert cells["noise"]["status"] == "ok" and cells["clean"]["status"] == "ok"
    assert time.perf_counter() - start < 300


def test_the_demo_matrix_agrees_on_every_executor(one_thread):
    """The demo's config (its model, data, every default attack and defense), on fewer
    evaluated rows to keep CI's time: serial, a process pool of 2 and Ray with 2 actors
    give every cell's status and every metric's value, n and interval identically.

    Except under fhe, which two serial runs do not reproduce either: CKKS encryption
    draws its noise from SEAL's own unseeded generator (a row near the boundary can
    flip), and its latency cells are timings."""
    cfg = config_mod.demo()
    cfg.samples = 100
    runs = {}
    for executor in ("serial", "process", "ray"):
        result = gauntlet.audit(config=cfg, executor=executor, workers=2, cache=False)
        runs[executor] = {c["id"]: (c["status"], c["reason"], c["metrics"])
                          for c in result.cells if c["defense"] != "fhe"}
    serial = runs["serial"]
    assert len(serial) > 250 and sum(s == "ok" for s, _, _ in serial.values()) > 200
    for executor in ("process", "ray"):
        assert list(runs[executor]) == list(serial)
        differ = [k for k in serial if runs[executor][k] != serial[k]]
        assert not differ, (executor, differ[:5],
                            [(serial[k], runs[executor][k]) for k in differ[:2]])
