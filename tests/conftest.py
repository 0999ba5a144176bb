"""Shared fixtures: the real digits data and the built-in CNN, trained once per session;
the demo audit's content cache, kept between sessions; and :func:`plugin`, which makes an
in-process plugin of test classes."""
from __future__ import annotations

import os
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

from gauntlet import Attack, Dataset, Defense, Metric, Model, hookimpl
from gauntlet.plugins.datasets import load_sklearn
from gauntlet.plugins.torch_models import load_model

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (pyproject's addopts: one worker per core), each worker and the
    # gauntlet processes it starts use one thread: two workers with torch's default of a
    # thread per core would contend for the cores and run several times slower.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# A content cache for this test session (each test then gets its own, _own_cache): a
# module-scoped fixture's audit, which runs before any function-scoped fixture, must not
# read or fill the user's cache folder either.
os.environ["GAUNTLET_CACHE_DIR"] = tempfile.mkdtemp(prefix="gauntlet-test-cache-")


def plugin(name: str, *classes: type) -> types.ModuleType:
    """A plugin module registering ``classes`` (attacks, defenses and metrics), for
    ``make_registry(plugins={name: plugin(name, ...)})``."""
    module = types.ModuleType(name)
    for hook, base in (("register_attacks", Attack), ("register_defenses", Defense),
                       ("register_metrics", Metric)):
        mine = [c for c in classes if issubclass(c, base)]
        if mine:
            setattr(module, hook, hookimpl(lambda register, mine=mine: [register(c)
                                                                       for c in mine]))
    return module


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_sklearn("digits", {})


@pytest.fixture(scope="session")
def digits_model(digits: Dataset) -> Model:
    """The default audit's CNN (with its recipe), trained on the digits training split."""
    return load_model("builtin:cnn", {"dataset": digits, "seed": 0})


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory,
               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test (and every gauntlet process it starts) gets a content cache of its own:
    a test must never reuse another's cells, nor fill the user's cache folder."""
    monkeypatch.setenv("GAUNTLET_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def demo_cache(pytestconfig: pytest.Config,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo audit's content cache, kept in pytest's cache folder between sessions
    (``--cache-clear`` empties it): the CLI demo test copies its freshly computed cells
    here, and the browser test (tests/test_browser.py) replays them to get the demo's
    report instead of computing the same 578 cells a second time."""
    if getattr(pytestconfig, "cache", None) is None:  # -p no:cacheprovider
        return tmp_path_factory.mktemp("demo-cache")
    return Path(pytestconfig.cache.mkdir("gauntlet-demo-cache"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
