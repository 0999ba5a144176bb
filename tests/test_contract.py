"""One contract for every registered plugin class (garak's test_probes pattern): metadata,
docstring shape, parameters round-trip, a real run on tiny digits data that yields the
declared outcome type and passes the runner's outcome checks, and every metric measured
on those real outcomes lands inside its declared bounds."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gauntlet import Access, Attack, Dataset, Defense, Metric, Model, NotApplicable, Outcome
from gauntlet.contract import check_outcome
from gauntlet.plan import Clean
from gauntlet.plugins.torch_models import load_model
from gauntlet.registry import make_registry

REGISTRY = make_registry()
ATTACKS = sorted(REGISTRY.attacks.items())
DEFENSES = sorted(REGISTRY.defenses.items())
METRICS = sorted(REGISTRY.metrics.items())
# The smallest setting of each size-like parameter, so every attack runs in a blink.
SMALL = {"rows": 40, "max_iter": 2, "fraction": 0.2, "probes": 40, "members": 40,
         "seeds": 1}
#: Attacks whose defaults do not fit image data: the point every one can run on digits.
SMALL_FOR = {"subpopulation": {"method": "clustermatch", "min_rows": 5}}


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


def small_run(cls: type[Attack], model: Model, data: Dataset) -> Outcome:
    overrides = {k: v for k, v in SMALL.items() if k in cls.parameters()}
    overrides.update(SMALL_FOR.get(cls.name, {}))
    (point, _), *_ = cls.grid(overrides)
    attack = cls(**point)
    try:
        attack.check(model)
    except NotApplicable:  # pragma: no cover - every built-in runs on the built-in CNN
        pytest.fail(f"{cls.name} is not applicable to the built-in CNN")
    return attack.run(model, data, np.random.default_rng(0))


@pytest.fixture(scope="module")
def outcomes(tiny, tiny_model) -> dict[str, Outcome]:
    """Each attack's outcome on the tiny data (the clean baseline's too), for the metric
    contract."""
    return {name: small_run(cls, tiny_model, tiny) for name, cls in [("clean", Clean),
                                                                     *ATTACKS]}


@pytest.mark.parametrize("name, cls", ATTACKS, ids=[n for n, _ in ATTACKS])
def test_attack_contract(name, cls: type[Attack], tiny, tiny_model):
    assert cls.name == name and cls.family and cls.needs
    check_docstring(cls)
    for p in cls.parameters().values():
        assert p.help and p.describe()["name"] == p.name
    for point, _label in cls.grid():
        assert cls(**point).values == point  # parameters round-trip
    outcome = small_run(cls, tiny_model, tiny)
    assert isinstance(outcome, cls.outcome)
    assert outcome.n > 0
    # what the runner would check before any metric: a built-in never trips it
    check_outcome(f"attack {name!r}", outcome, len(tiny.x_test), tiny_model.n_classes)
    per_row = outcome.per_row()
    assert len({len(a) for a in per_row.values()}) <= 1, "per-row arrays of one length"
    assert any(m().applies(outcome) for m in REGISTRY.metrics.values()), \
        f"no metric measures {type(outcome).__name__}"


@pytest.mark.parametrize("name, cls", DEFENSES, ids=[n for n, _ in DEFENSES])
def test_defense_contract(name, cls: type[Defense], tiny, tiny_model, rng):
    assert cls.name == name and cls.stage and cls.evaluation
    assert isinstance(cls.adaptive, bool)
    check_docstring(cls)
    for point, _ in cls.grid():
        defended = cls(**point).apply(tiny_model, tiny, rng)
        assert isinstance(defended, Model)
        assert defended.access <= tiny_model.access
        if defended.access >= Access.SCORES:
            proba = defended.predict(tiny.x_test)
            assert proba.shape == (len(tiny.x_test), tiny_model.n_classes)
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        assert defended.labels(tiny.x_test).shape == (len(tiny.x_test),)


@pytest.mark.parametrize("name, cls", METRICS, ids=[n for n, _ in METRICS])
def test_metric_contract(name, cls: type[Metric], outcomes):
    assert cls.name == name and cls.title and cls.applies_to
    assert isinstance(cls.higher_is_better, bool)
    assert cls.description()
    if cls.format == "percent":
        assert cls.bounds is not None, "a percentage is a bounded proportion"
    measured = [o for o in outcomes.values() if cls().applies(o)]
    if not measured:
        pytest.skip(f"no built-in attack yields an outcome {name} applies to")
    for outcome in measured:
        value = cls().evaluate(outcome)
        assert np.isfinite(value.value) and value.n > 0
        if cls.bounds is not None:
            assert cls.bounds[0] <= value.value <= cls.bounds[1], (name, value)
        if value.low is not None and value.high is not None:
            # (a Wilson bound at 0 or 1 may miss by a rounding error, no more)
            assert value.low - 1e-12 <= value.value <= value.high + 1e-12
