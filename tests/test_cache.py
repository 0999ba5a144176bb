"""The content cache: an unchanged re-run reuses every cell, an added attack runs only its
cells, a changed plugin version or parameter re-runs exactly the cells it takes part in,
an error or timeout is never reused, recipe trainings are stored and read back without
unpickling, and concurrent writers never leave a torn entry."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import plugin

import gauntlet
from gauntlet import Access, EvasionAttack, Recipe, param
from gauntlet.cache import Cache, default_dir, train_cached, using
from gauntlet.registry import make_registry


class Counted(EvasionAttack):
    """Adds uniform noise and counts its runs.

    Test attack for the cache.
    """

    name = "counted"
    needs = Access.LABELS
    eps: float = param((0.1, 0.2), "noise size", ge=0)
    runs: list[float] = []

    def generate(self, model, x, y, rng):
        type(self).runs.append(self.eps)
        return np.clip(x + rng.uniform(-self.eps, self.eps, x.shape), 0, 1)


class Other(EvasionAttack):
    """Returns the inputs unchanged and counts its runs.

    Test attack added to a finished audit.
    """

    name = "other"
    needs = Access.LABELS
    runs = 0

    def generate(self, model, x, y, rng):
        type(self).runs += 1
        return x


class FailsOnce(EvasionAttack):
    """Fails on its first run in this process, then works.

    Test attack: a transient failure.
    """

    name = "fails-once"
    needs = Access.LABELS
    calls = 0

    def generate(self, model, x, y, rng):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("transient failure")
        return x


class SlowOnce(EvasionAttack):
    """Sleeps past the audit's timeout on its first run, then works.

    Test attack: a timeout on a busy machine.
    """

    name = "slow-once"
    needs = Access.LABELS
    calls = 0

    def generate(self, model, x, y, rng):
        import time

        type(self).calls += 1
        if type(self).calls == 1:
            time.sleep(5)
        return x


def registry(version: str = "1.0"):
    reg = make_registry()
    reg.add_plugin(plugin("cachetest", Counted, Other, FailsOnce, SlowOnce), "cachetest",
                   "cachetest-dist", version)
    return reg


@pytest.fixture(autouse=True)
def _reset():
    Counted.runs, Other.runs, FailsOnce.calls, SlowOnce.calls = [], 0, 0, 0


def run(digits, digits_model, cache_dir, **kw):
    kwargs = {"model": digits_model, "data": digits, "attacks": ["counted"],
              "defenses": ["none"], "samples": 40, "seed": 0, "cache": cache_dir,
              "registry": registry()} | kw
    return gauntlet.audit(**kwargs)


def numbers(result):
    return {c["id"]: (c["status"], c["metrics"]) for c in result.cells}


def test_an_unchanged_rerun_reuses_every_cell_with_its_rows(digits, digits_model, tmp_path):
    first = run(digits, digits_model, tmp_path)
    assert sorted(Counted.runs) == [0.1, 0.2]
    Counted.runs = []
    again = run(digits, digits_model, tmp_path)
    assert Counted.runs == []
    assert numbers(again) == numbers(first)
    # the per-row results came back too: the worst-case column is recomputed from them
    assert [r["rows"] for r in again.records] == [r["rows"] for r in first.records]
    assert again.result["provenance"]["run"]["cells_reused"] == 3
    assert again.result["provenance"]["run"]["cells_run"] == 0
    # and with the cache off, everything runs
    run(digits, digits_model, False)
    assert sorted(Counted.runs) == [0.1, 0.2]


def test_adding_an_attack_runs_only_its_cells(digits, digits_model, tmp_path):
    run(digits, digits_model, tmp_path, defenses=["none", "input-noise"])
    Counted.runs = []
    calls = []
    run(digits, digits_model, tmp_path, defenses=["none", "input-noise"],
        attacks=["counted", "other"], on_cell=lambda c: calls.append((c.defense, c.attack)))
    # (input-noise makes the attack against the undefended model too: the naive number)
    assert Counted.runs == [] and Other.runs == 3
    assert sorted(calls) == [("input-noise", "other"), ("none", "other")]


def test_one_parameter_or_a_plugin_version_invalidates_exactly_its_cells(digits, digits_model,
                                                                          tmp_path):
    run(digits, digits_model, tmp_path, attacks={"counted": {"eps": [0.1, 0.2]}})
    Counted.runs = []
    run(digits, digits_model, tmp_path, attacks={"counted": {"eps": [0.1, 0.3]}})
    assert Counted.runs == [0.3]  # eps 0.1 and the clean cell were reused
    Counted.runs = []
    calls = []
    run(digits, digits_model, tmp_path, attacks={"counted": {"eps": [0.1, 0.3]}},
        registry=registry("1.1"), on_cell=lambda c: calls.append(c.attack))
    assert sorted(Counted.runs) == [0.1, 0.3]  # the plugin's version moved: its cells ran
    assert "clean" not in calls  # the clean cell is the core's: reused
    Counted.runs = []
    run(digits, digits_model, tmp_path, attacks={"counted": {"eps": [0.1, 0.3]}}, seed=1)
    assert sorted(Counted.runs) == [0.1, 0.3]  # another seed is another audit


def test_a_reused_cell_takes_this_audits_point_label(digits, digits_model, tmp_path):
    """A point's label names the parameters its sweep varies, so the same cell reads
    'eps=0.1' in a sweep and '' alone."""
    run(digits, digits_model, tmp_path, attacks={"counted": {"eps": [0.1, 0.2]}})
    Counted.runs = []
    alone = run(digits, digits_model, tmp_path, attacks={"counted": {"eps": 0.1}})
    assert Counted.runs == []
    assert {c["attack_point"] for c in alone.cells if c["attack"] == "counted"} == {""}


def test_an_error_or_a_timeout_is_never_reused(digits, digits_model, tmp_path):
    first = run(digits, digits_model, tmp_path, attacks=["fails-once", "slow-once"],
                timeout=1)
    status = {c["attack"]: (c["status"], c["reason"] or "") for c in first.cells}
    assert status["fails-once"][0] == "error" and "transient" in status["fails-once"][1]
    assert status["slow-once"][0] == "error" and "CellTimeout" in status["slow-once"][1]
    again = run(digits, digits_model, tmp_path, attacks=["fails-once", "slow-once"],
                timeout=1)
    assert FailsOnce.calls == 2 and SlowOnce.calls == 2  # both ran again, and now pass
    assert {c["attack"]: c["status"] for c in again.cells} == \
        {"clean": "ok", "fails-once": "ok", "slow-once": "ok"}
    assert again.result["provenance"]["run"]["cells_reused"] == 1  # the clean cell


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("GAUNTLET_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg" / "gauntlet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_dir() == tmp_path / "home" / ".cache" / "gauntlet"
    monkeypatch.setenv("GAUNTLET_CACHE_DIR", str(tmp_path / "mine"))
    assert default_dir() == tmp_path / "mine"


def _recipe(fits: list[int]) -> Recipe:
    def build():
        return torch.nn.Linear(4, 3)

    def fit(module, x, y, seed):
        fits.append(seed)
        with torch.no_grad():
            module.weight.add_(float(seed))

    return Recipe(build, fit, "linear 4-3 test recipe")


def test_a_recipe_training_is_stored_and_read_back(tmp_path):
    x, y = np.random.default_rng(0).random((8, 4)).astype(np.float32), np.arange(8) % 3
    fits: list[int] = []
    with using(Cache(tmp_path)):
        first = _recipe(fits).train(x, y, 5)  # a fresh recipe: its memory cache is empty
        again = _recipe(fits).train(x, y, 5)
        other = _recipe(fits).train(x, y, 6)
    assert fits == [5, 6]
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(first.weight, other.weight)
    stored = list((tmp_path / "models").rglob("*.pt"))
    assert len(stored) == 2


def test_a_cache_hit_leaves_the_global_generators_as_a_training_would(tmp_path):
    x, y = np.zeros((4, 4), np.float32), np.arange(4) % 3

    def draws():
        torch.manual_seed(1)
        np.random.seed(1)
        _recipe([]).train(x, y, 3)
        return torch.rand(2), np.random.random_sample(2)

    with using(Cache(tmp_path)):
        trained, hit = draws(), draws()
    assert torch.equal(trained[0], hit[0]) and np.array_equal(trained[1], hit[1])


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_cached_model_is_never_unpickled(tmp_path, caplog):
    """A cache folder anyone could write to holds data only: a pickle planted under a
    training's key is refused (weights-only loading), and the model is trained instead."""
    x, y = np.zeros((4, 4), np.float32), np.arange(4) % 3
    fits: list[int] = []
    cache = Cache(tmp_path)
    with using(cache):
        _recipe(fits).train(x, y, 3)
        (path,) = (tmp_path / "models").rglob("*.pt")
        path.write_bytes(pickle.dumps(_Payload()))
        _recipe(fits).train(x, y, 3)
    assert fits == [3, 3]
    assert "does not load" in caplog.text


def _hammer(root: str, key: str, worker: int) -> None:
    cache = Cache(root)
    for i in range(60):
        cache.put_cell(key, {"status": "ok", "id": "c", "worker": worker, "i": i,
                             "pad": "x" * 20000})


def test_concurrent_writers_never_leave_a_torn_entry(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), "k" * 64, w)) for w in range(3)]
    for p in procs:
        p.start()
    cache, seen = Cache(tmp_path), 0
    while any(p.is_alive() for p in procs):
        record = cache.get_cell("k" * 64)
        if record is not None:
            assert record["pad"] == "x" * 20000  # whole, never half of one and another
            seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert cache.get_cell("k" * 64)["i"] == 59
    assert not list(Path(tmp_path).rglob(".tmp-*"))  # no temporary file left behind


def test_an_unreadable_entry_is_a_miss(tmp_path, caplog):
    cache = Cache(tmp_path)
    cache.put_cell("a" * 64, {"status": "ok", "id": "c"})
    (path,) = (tmp_path / "cells").rglob("*.json")
    path.write_text('{"status": "ok", "id"')
    assert cache.get_cell("a" * 64) is None
    assert "unreadable" in caplog.text
    assert not cache.put_cell("b" * 64, {"status": "error", "id": "c"})
    assert json.loads(path.read_text() + ': "c"}')["id"] == "c"  # untouched, for forensics


def test_train_cached_without_a_cache_just_trains():
    fits: list[int] = []
    recipe = _recipe(fits)
    module = train_cached(recipe.build, recipe.fit, "d", {}, "", np.zeros((2, 4), np.float32),
                          np.zeros(2, int), 1)
    assert fits == [1] and isinstance(module, torch.nn.Linear)


def test_the_reports_charts_are_drawn_once_per_results(digits, digits_model, tmp_path):
    """An unchanged re-run draws no chart again (drawing was most of its time): the
    charts come back from the cache, keyed by what they draw, not where or when."""
    first = run(digits, digits_model, tmp_path / "cache", out=tmp_path / "a",
                attacks={"counted": {"eps": [0.1, 0.2]}})
    stored = [p for p in (tmp_path / "cache" / "charts").rglob("*.json")
              if json.loads(p.read_text())]  # (a builder with nothing to draw: [])
    assert stored, "no chart was stored"
    entry = json.loads(stored[0].read_text())
    first_svg = entry[0]["__chart__"][3]
    entry[0]["__chart__"][3] = "<svg><!-- from the cache --></svg>"
    stored[0].write_text(json.dumps(entry))
    run(digits, digits_model, tmp_path / "cache", out=tmp_path / "b",
        attacks={"counted": {"eps": [0.1, 0.2]}})
    html = (tmp_path / "b" / "report.html").read_text()
    assert "<!-- from the cache -->" in html and first_svg not in html
    assert first_svg in (tmp_path / "a" / "report.html").read_text()
    # another seed is other results: drawn afresh
    run(digits, digits_model, tmp_path / "cache", out=tmp_path / "c", seed=1,
        attacks={"counted": {"eps": [0.1, 0.2]}})
    assert "<!-- from the cache -->" not in (tmp_path / "c" / "report.html").read_text()
    assert first.cells
