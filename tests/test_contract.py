"""One contract for every registered plugin class (garak's test_probes pattern): metadata,
docstring shape, parameters round-trip, and a real run on tiny digits data that yields
the declared outcome type."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gauntlet import Attack, Dataset, Defense, Metric, Model, NotApplicable
from gauntlet.plugins.torch_models import load_model
from gauntlet.registry import make_registry

REGISTRY = make_registry()
ATTACKS = sorted(REGISTRY.attacks.items())
DEFENSES = sorted(REGISTRY.defenses.items())
METRICS = sorted(REGISTRY.metrics.items())
# The smallest setting of each size-like parameter, so every attack runs in a blink.
SMALL = {"samples": 40, "max_iter": 2, "fraction": 0.2}


@pytest.fixture(scope="module")
def tiny(digits: Dataset) -> Dataset:
    return dataclasses.replace(digits, x_train=digits.x_train[:300],
                               y_train=digits.y_train[:300]).subsample_test(60, 0)


@pytest.fixture(scope="module")
def tiny_model(tiny: Dataset) -> Model:
    return load_model("builtin:cnn", {"dataset": tiny, "epochs": 2, "seed": 0})


def check_docstring(cls: type) -> None:
    doc = (cls.__doc__ or "").strip()
    summary, _, rest = doc.partition("\n\n")
    assert summary and "\n" not in summary.strip(), f"{cls.name}: one summary line"
    assert rest.strip(), f"{cls.name}: a reference paragraph after a blank line"


@pytest.mark.parametrize("name, cls", ATTACKS, ids=[n for n, _ in ATTACKS])
def test_attack_contract(name, cls: type[Attack], tiny, tiny_model, rng):
    assert cls.name == name and cls.family and cls.needs
    check_docstring(cls)
    for point, _label in cls.grid():
        assert cls(**point).values == point  # parameters round-trip
    overrides = {k: v for k, v in SMALL.items() if k in cls.params}
    (point, _), *_ = cls.grid(overrides)
    attack = cls(**point)
    try:
        attack.check(tiny_model)
    except NotApplicable:  # pragma: no cover - every built-in runs on the built-in CNN
        pytest.fail(f"{name} is not applicable to the built-in CNN")
    outcome = attack.run(tiny_model, tiny, rng)
    assert isinstance(outcome, cls.outcome)
    assert outcome.n > 0
    assert any(m().applies(outcome) for m in REGISTRY.metrics.values()), \
        f"no metric measures {type(outcome).__name__}"


@pytest.mark.parametrize("name, cls", DEFENSES, ids=[n for n, _ in DEFENSES])
def test_defense_contract(name, cls: type[Defense], tiny, tiny_model, rng):
    assert cls.name == name and cls.stage and cls.evaluation
    check_docstring(cls)
    for point, _ in cls.grid():
        defended = cls(**point).apply(tiny_model, tiny, rng)
        assert isinstance(defended, Model)
        proba = defended.predict(tiny.x_test)
        assert proba.shape == (len(tiny.x_test), tiny_model.n_classes)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        assert defended.access <= tiny_model.access


@pytest.mark.parametrize("name, cls", METRICS, ids=[n for n, _ in METRICS])
def test_metric_contract(name, cls: type[Metric]):
    assert cls.name == name and cls.title and cls.applies_to
    assert isinstance(cls.higher_is_better, bool)
    assert cls.description()
    if cls.bounds is not None:
        assert cls.bounds[0] < cls.bounds[1]
