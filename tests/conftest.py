"""Shared fixtures: the real digits data and the built-in CNN, trained once per session."""
from __future__ import annotations

import numpy as np
import pytest

from gauntlet import Dataset, Model
from gauntlet.plugins.datasets import load_sklearn
from gauntlet.plugins.torch_models import load_model


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
