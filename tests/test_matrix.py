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


# -- what plugins hand back is checked, and blamed on the plugin -----------------------------
class ReturnsNothing(Defense):
    """Forgets to return the defended model.

    Test defense.
    """

    name = "returns-nothing"
    stage = Stage.INPUT

    def apply(self, model, dataset, rng):
        model.module.eval()  # does its work, then falls off the end


def outcome_attack(name: str, make):
    """An evasion attack class whose outcome is ``make(model, dataset)``."""
    return type(name.title().replace("-", ""), (Attack,), {
        "__doc__": "Returns a hand-made outcome.\n\nTest attack.", "name": name,
        "family": Family.EVASION, "outcome": EvasionOutcome,
        "run": lambda self, model, dataset, rng: make(model, dataset)})


def evasion(model, dataset, **changes):
    p = model.predict(dataset.x_test)
    return EvasionOutcome(**{"y_true": dataset.y_test, "proba": p, "proba_clean": p,
                             "linf": 0.0, **changes})


ShortRows = outcome_attack("short-rows", lambda m, d: evasion(
    m, d, proba=m.predict(d.x_test[:-1])))
NanProba = outcome_attack("nan-proba", lambda m, d: evasion(
    m, d, proba=m.predict(d.x_test + np.float32(np.nan))))


class Blows(Attack):
    """Scales its perturbation by ``scale``; an infinite scale makes NaN inputs.

    Test attack: the plugin bug a parameter value can trigger.
    """

    name = "blows"
    family = Family.EVASION
    outcome = EvasionOutcome
    params = {"scale": 0.1}

    def run(self, model, dataset, rng):
        x = dataset.x_test
        with np.errstate(invalid="ignore"):
            step = np.where(x > 0.5, 1.0, 0.0) * self.scale  # 0 * inf is NaN
        adv = np.clip(x + step, 0, 1).astype(np.float32)
        return EvasionOutcome(y_true=dataset.y_test, proba=model.predict(adv),
                              proba_clean=model.predict(x),
                              linf=float(np.abs(adv - x).max()))


def run_one(model, data, defense, attack, params=None, metrics=(Accuracy,)):
    from gauntlet.matrix import Cell
    (result,) = run_cells(Runner(model, data, list(metrics), 0),
                          [Cell(defense, {}, "", attack, params or {}, "")], progress=False)
    return result


def test_defense_that_returns_no_model_is_named_with_what_it_returned(digits, digits_model,
                                                                      caplog):
    data = digits.subsample_test(20, 0)
    from gauntlet.matrix import Cell
    cells = [Cell(ReturnsNothing, {}, "", a, p, "") for a, p in
             ((RandomSign, {"eps": 0.1}), (RandomSign, {"eps": 0.3}))]
    with caplog.at_level("WARNING", logger="gauntlet"):
        results = run_cells(Runner(digits_model, data, [Accuracy], 0), cells, progress=False)
    for r in results:
        assert r.status == "error"
        assert r.reason == "DefenseFailed: defense 'returns-nothing' returned None from " \
                           "apply(), not a gauntlet.Model"
        assert "'NoneType' object has no attribute" not in r.reason
    # the failed build is logged once, not once per cell
    assert caplog.text.count("returned None from apply()") == 1


def test_outcome_with_the_wrong_number_of_rows_is_blamed_on_the_attack(digits, digits_model):
    from gauntlet.plugins.metrics import RobustAccuracy
    r = run_one(digits_model, digits.subsample_test(30, 0), NoDefense, ShortRows,
                metrics=(Accuracy, RobustAccuracy))
    assert r.status == "error"
    assert "attack 'short-rows' returned arrays with different numbers of rows " \
           "(y_true 30, proba 29, proba_clean 30)" in r.reason
    assert "metric" not in r.reason and "broadcast" not in r.reason


def test_non_finite_probabilities_make_an_error_cell_naming_the_attack(digits, digits_model):
    r = run_one(digits_model, digits.subsample_test(30, 0), NoDefense, NanProba)
    assert r.status == "error" and not r.metrics
    assert "attack 'nan-proba' returned proba with" in r.reason
    assert "non-finite values (NaN or inf)" in r.reason


def test_parameter_value_that_makes_nan_inputs_is_an_error_not_plausible_numbers(
        digits, digits_model):
    data = digits.subsample_test(30, 0)
    assert run_one(digits_model, data, NoDefense, Blows, {"scale": 0.1}).status == "ok"
    r = run_one(digits_model, data, NoDefense, Blows, {"scale": float("inf")})
    assert r.status == "error" and not r.metrics
    assert "attack 'blows' returned" in r.reason and "non-finite" in r.reason


def test_nan_parameter_is_rejected_before_anything_runs(registry):
    with pytest.raises(ConfigError, match="attack 'random-sign': parameter 'eps' is NaN"):
        plan(registry, [Selection("nothing")],
             [Selection("random-sign", {"eps": [0.1, float("nan")]})])


def test_a_plugin_selected_twice_is_rejected(registry):
    with pytest.raises(ConfigError, match="attack 'random-sign' is selected more than once"):
        plan(registry, [Selection("nothing")], [Selection("random-sign"),
                                                Selection("random-sign", {"eps": 0.2})])


class Fails(Metric):
    """Raises on every outcome.

    Test metric.
    """

    name = "fails"
    applies_to = (CleanOutcome, EvasionOutcome)

    def compute(self, outcome):
        raise ZeroDivisionError("no rows to divide by")


def test_a_failing_metric_loses_only_its_own_number(digits, digits_model, caplog):
    with caplog.at_level("WARNING", logger="gauntlet"):
        r = run_one(digits_model, digits.subsample_test(30, 0), NoDefense, RandomSign,
                    {"eps": 0.1}, metrics=(Fails, Accuracy))
    assert r.status == "ok" and r.reason is None
    assert set(r.metrics) == {"acc"} and r.metrics["acc"]["n"] == 30
    assert r.metric_errors == {"fails": "ZeroDivisionError: no rows to divide by"}
    assert caplog.text.count("no rows to divide by") == 1
    from gauntlet.results import tidy_rows
    rows = tidy_rows({"cells": [r.to_dict()]})
    (failed,) = [row for row in rows if row["metric"] == "fails"]
    assert failed["value"] is None and "ZeroDivisionError" in failed["reason"]


def test_tracebacks_name_files_relative_to_the_package(registry, digits, digits_model):
    import os

    import gauntlet
    r = run_one(digits_model, digits.subsample_test(10, 0), NoDefense, Crashes)
    assert r.status == "error"
    assert 'File "gauntlet/matrix.py"' in r.traceback
    assert os.path.dirname(gauntlet.__file__) not in r.traceback


def test_display_path_strips_package_site_packages_and_home():
    import os
    import site

    import gauntlet
    from gauntlet.results import display_path, short_paths

    package = os.path.dirname(gauntlet.__file__)
    assert display_path(os.path.join(package, "plugins", "x.py")) == "gauntlet/plugins/x.py"
    import gauntlet.plugins.evasion as evasion
    assert display_path(evasion.__file__) == "gauntlet/plugins/evasion.py"
    lib = site.getsitepackages()[0]
    assert display_path(os.path.join(lib, "torch", "nn", "m.py")) == "torch/nn/m.py"
    home = os.path.expanduser("~")
    assert display_path(os.path.join(home, "work", "audit", "mine.py")) == "~/work/audit/mine.py"
    assert display_path("/srv/elsewhere/x.py") == "/srv/elsewhere/x.py"
    text = f'  File "{os.path.join(lib, "numpy", "core.py")}", line 3, in f\n'
    assert short_paths(text) == '  File "numpy/core.py", line 3, in f\n'


@pytest.mark.parametrize("changes, message", [
    ({"y_true": np.zeros(5, dtype=np.int64)}, "different numbers of rows (y_true 5, proba 6"),
    ({"proba": np.full((6, 3), 1 / 3)}, "proba shaped (6, 3); expected probabilities shaped "
                                        "(rows, 4)"),
    ({"proba": np.full((6, 4), 2.0)}, "values in [2, 2]; probabilities lie in [0, 1]"),
    ({"proba_clean": np.zeros((0, 0))}, "(y_true 6, proba 6, proba_clean 0)"),
    ({"y_true": np.full(6, 7)}, "y_true that is not a vector of class labels in [0, 4)"),
    ({"y_true": np.zeros(6)}, "y_true that is not a vector of class labels"),
    ({"proba": np.full((6, 4), np.inf)}, "proba with 24 non-finite values"),
    ({"linf": float("nan")}, "linf = nan"),
    ({"proba": [["a"] * 4] * 6}, "proba of dtype <U1, not numbers"),
])
def test_check_outcome_names_what_is_wrong(changes, message):
    from gauntlet.matrix import ContractError, check_outcome
    p = np.full((6, 4), 0.25)
    outcome = EvasionOutcome(**{"y_true": np.arange(6) % 4, "proba": p, "proba_clean": p,
                                **changes})
    with pytest.raises(ContractError) as err:
        check_outcome("attack 'x'", outcome, n_rows=6, n_classes=4)
    assert str(err.value).startswith("attack 'x' returned")
    assert message in str(err.value)


def test_check_outcome_takes_array_likes_and_rows_up_to_those_given():
    from gauntlet import MembershipOutcome, ProbeOutcome
    from gauntlet.matrix import ContractError, check_outcome
    outcome = EvasionOutcome(y_true=[0, 1], proba=[[1.0, 0.0], [0.0, 1.0]],
                             proba_clean=np.eye(2, dtype=np.float32), linf=np.float32(0.1))
    check_outcome("attack 'x'", outcome, n_rows=5, n_classes=2)  # 2 of 5 rows attacked
    assert isinstance(outcome.proba, np.ndarray) and isinstance(outcome.y_true, np.ndarray)
    with pytest.raises(ContractError, match="returned 2 rows, but it was given 1 test rows"):
        check_outcome("attack 'x'", outcome, n_rows=1, n_classes=2)
    check_outcome("attack 'p'", ProbeOutcome(proba=np.eye(2)), n_rows=0, n_classes=2)
    with pytest.raises(ContractError, match="scores_members with 1 non-finite"):
        check_outcome("attack 'm'", MembershipOutcome(np.array([0.1, np.nan]), np.zeros(2),
                                                      0.5), n_rows=2, n_classes=2)
