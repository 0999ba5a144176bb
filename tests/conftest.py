"""Shared fixtures: the real digits data and the built-in CNN, trained once per session;
and :func:`plugin`, which makes an in-process plugin of test classes."""
from __future__ import annotations

import os
import types

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


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
