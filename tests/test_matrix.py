"""The runner: plan expansion, per-cell isolation, defended models built once, seeding."""
from __future__ import annotations

import types

import numpy as np
import pytest

from gauntlet import (
    Access,
    Attack,
    CleanOutcome,
    ConfigError,
    Defense,
    EvasionOutcome,
    Family,
    Metric,
    Stage,
    hookimpl,
    proportion,
)
from gauntlet.matrix import Runner, Selection, plan, run_cells
from gauntlet.registry import make_registry


class Accuracy(Metric):
    """Accuracy on whatever inputs the outcome holds.

    Test metric.
    """

    name = "acc"
    applies_to = (CleanOutcome, EvasionOutcome)

    def compute(self, outcome):
        return proportion(float((outcome.y_pred == outcome.y_true).sum()), outcome.n)


class RandomSign(Attack):
    """Adds eps times a random sign to every input.

    Test attack.
    """

    name = "random-sign"
    family = Family.EVASION
    needs = Access.LABELS
    outcome = EvasionOutcome
    params = {"eps": (0.1, 0.3)}

    def run(self, model, dataset, rng):
        x = dataset.x_test
        adv = np.clip(x + self.eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1)
        return EvasionOutcome(y_true=dataset.y_test, proba=model.predict(adv.astype(np.float32)),
                              proba_clean=model.predict(x), linf=self.eps)


class Crashes(Attack):
    """Always raises.

    Test attack.
    """

    name = "crashes"
    family = Family.EVASION

    def run(self, model, dataset, rng):
        raise ValueError("deliberate failure")


class NeedsGradients(Attack):
    """Needs gradients.

    Test attack.
    """

    name = "needs-gradients"
    family = Family.EVASION
    needs = Access.GRADIENTS


class HideGradients(Defense):
    """Serves scores only.

    Test defense.
    """

    name = "hide"
    stage = Stage.OUTPUT
    builds = 0

    def apply(self, model, dataset, rng):
        type(self).builds += 1
        from gauntlet import Model
        return Model(model.module, input_shape=model.input_shape, n_classes=model.n_classes,
                     access=Access.SCORES)


class NoDefense(Defense):
    """Nothing.

    Test defense.
    """

    name = "nothing"
    stage = Stage.NONE

    def apply(self, model, dataset, rng):
        return model


@pytest.fixture
def registry():
    ns = types.SimpleNamespace(__name__="test_plugins")
    ns.register_attacks = hookimpl(lambda register: [register(c) for c in
                                                     (RandomSign, Crashes, NeedsGradients)])
    ns.register_defenses = hookimpl(
        lambda register: [register(c) for c in (NoDefense, HideGradients)])
    ns.register_metrics = hookimpl(lambda register: register(Accuracy))
    return make_registry(entrypoints=False, plugins={"test": ns})


def test_plan_expands_defenses_times_clean_plus_attack_points(registry):
    cells = plan(registry, [Selection("nothing"), Selection("hide")],
                 [Selection("random-sign"), Selection("crashes")])
    assert len(cells) == 2 * (1 + 2 + 1)
    assert [c.attack.name for c in cells[:4]] == ["clean", "random-sign", "random-sign", "crashes"]
    assert len({c.id for c in cells}) == len(cells)


def test_plan_rejects_unknown_names_and_parameters(registry):
    with pytest.raises(ConfigError, match="unknown attack 'nope'; known attacks: crashes"):
        plan(registry, [Selection("nothing")], [Selection("nope")])
    with pytest.raises(ConfigError, match="unknown parameter 'epsilon'"):
        plan(registry, [Selection("nothing")], [Selection("random-sign", {"epsilon": 1})])


def test_cells_are_isolated_and_classified(registry, digits, digits_model):
    HideGradients.builds = 0
    data = digits.subsample_test(60, 0)
    cells = plan(registry, [Selection("nothing"), Selection("hide")],
                 [Selection("random-sign"), Selection("crashes"), Selection("needs-gradients")])
    runner = Runner(digits_model, data, registry.metrics.values(), seed=0)
    seen = []
    results = run_cells(runner, cells, progress=False, on_result=seen.append)
    assert len(results) == len(seen) == len(cells)
    by = {(r.defense, r.attack, r.attack_point): r for r in results}
    crash = by[("nothing", "crashes", "")]
    assert crash.status == "error" and "deliberate failure" in crash.reason
    assert "ValueError" in crash.traceback
    # the base attack class has no run(): with gradients available it is an error cell
    assert by[("nothing", "needs-gradients", "")].status == "error"
    na = by[("hide", "needs-gradients", "")]
    assert na.status == "not_applicable" and "gradients" in na.reason
    clean = by[("nothing", "clean", "")]
    expected = (digits_model.predict(data.x_test).argmax(1) == data.y_test).mean()
    assert clean.metrics["acc"]["value"] == pytest.approx(expected)
    assert clean.metrics["acc"]["n"] == 60
    assert HideGradients.builds == 1  # one defended model shared by its cells


def test_same_seed_same_numbers_and_order_does_not_matter(registry, digits, digits_model):
    data = digits.subsample_test(60, 0)
    cells = plan(registry, [Selection("nothing")], [Selection("random-sign")])

    def values(cs, seed):
        runner = Runner(digits_model, data, registry.metrics.values(), seed=seed)
        return {r.id: r.metrics["acc"]["value"] for r in run_cells(runner, cs, progress=False)}

    first = values(cells, 0)
    assert first == values(list(reversed(cells)), 0)
    # a different seed draws different noise: at least one number moves
    assert first != values(cells, 1)


def test_defense_that_fails_to_build_errors_its_cells_only(registry, digits, digits_model):
    class Broken(NoDefense):
        """Fails.

        Test defense.
        """
        name = "broken"

        def apply(self, model, dataset, rng):
            raise RuntimeError("cannot build")

    data = digits.subsample_test(30, 0)
    from gauntlet.matrix import Cell
    cells = [Cell(Broken, {}, "", RandomSign, {"eps": 0.1}, ""),
             Cell(NoDefense, {}, "", RandomSign, {"eps": 0.1}, "")]
    results = run_cells(Runner(digits_model, data, [Accuracy], 0), cells, progress=False)
    assert results[0].status == "error" and "cannot build" in results[0].reason
    assert results[1].status == "ok"


class Sleeps(Attack):
    """Sleeps in Python code for a long time.

    Test attack.
    """

    name = "sleeps"
    family = Family.EVASION

    def run(self, model, dataset, rng):
        import time
        for _ in range(200):
            time.sleep(0.05)
        raise AssertionError("the deadline should have stopped this cell")


def test_a_cell_past_the_timeout_is_an_error_and_the_audit_goes_on(digits, digits_model):
    from gauntlet.matrix import Cell
    data = digits.subsample_test(30, 0)
    cells = [Cell(NoDefense, {}, "", Sleeps, {}, ""),
             Cell(NoDefense, {}, "", RandomSign, {"eps": 0.1}, "")]
    runner = Runner(digits_model, data, [Accuracy], 0, timeout=0.3)
    slow, fast = run_cells(runner, cells, progress=False)
    assert slow.status == "error" and "timed out after 0.3 s" in slow.reason
    assert slow.duration_s < 2.0
    assert fast.status == "ok"
    import signal
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left behind
