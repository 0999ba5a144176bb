"""The runner: per-cell isolation, defended models built once, common random numbers,
timeouts, outcomes checked and blamed on their plugin, and the executor seam."""
from __future__ import annotations

import pickle
import signal
import time

import numpy as np
import pytest
import torch
from conftest import plugin

import gauntlet
from gauntlet import (
    Access,
    Attack,
    CleanOutcome,
    Defense,
    EvasionAttack,
    EvasionOutcome,
    Family,
    Metric,
    Stage,
    param,
    proportion,
)
from gauntlet.contract import ContractError, check_outcome
from gauntlet.executor import SerialExecutor
from gauntlet.plan import Cell, Selection, plan
from gauntlet.registry import make_registry
from gauntlet.rows import unpack
from gauntlet.run import Runner
from gauntlet.serving import Served


class Accuracy(Metric):
    """Accuracy on whatever inputs the outcome holds.

    Test metric.
    """

    name = "acc"
    applies_to = (CleanOutcome, EvasionOutcome)
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome):
        return proportion(float(outcome.correct.sum()), outcome.n)


class RandomSign(EvasionAttack):
    """Adds eps times a random sign to every input.

    Test attack.
    """

    name = "random-sign"
    needs = Access.LABELS
    eps: float = param((0.1, 0.3), "step size", ge=0)

    def generate(self, model, x, y, rng):
        return np.clip(x + self.eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1)


class Crashes(EvasionAttack):
    """Always raises.

    Test attack.
    """

    name = "crashes"
    needs = Access.LABELS

    def generate(self, model, x, y, rng):
        raise ValueError("deliberate failure")


class NeedsGradients(Attack):
    """Needs gradients and implements nothing.

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
    adaptive = True
    builds = 0

    def apply(self, model, dataset, rng):
        type(self).builds += 1
        return model.deploy(access=Access.SCORES)


class NoDefense(Defense):
    """Nothing.

    Test defense.
    """

    name = "nothing"
    stage = Stage.NONE
    adaptive = True

    def apply(self, model, dataset, rng):
        return model


class Identity(Defense):
    """Deploys the model behind a layer that changes nothing.

    Test defense: for the common-random-numbers test, a defense that is not 'none'.
    """

    name = "identity"
    stage = Stage.INPUT
    adaptive = True

    def apply(self, model, dataset, rng):
        rng.random(100)  # a defense's own draws must not shift the attack's
        return model.deploy(pre=lambda x: x)


@pytest.fixture
def registry():
    test = plugin("test", RandomSign, Crashes, NeedsGradients, NoDefense, HideGradients,
                  Accuracy)
    return make_registry(entrypoints=False, plugins={"test": test})


def run_cells(runner, cells):
    return SerialExecutor(progress=False).run(runner, cells)


def test_cells_are_isolated_and_classified(registry, digits, digits_model):
    HideGradients.builds = 0
    data = digits.subsample_test(60, 0)
    cells = plan(registry, [Selection("nothing"), Selection("hide")],
                 [Selection("random-sign"), Selection("crashes"), Selection("needs-gradients")])
    runner = Runner(digits_model, data, registry.metrics.values(), seed=0)
    seen = []
    results = SerialExecutor(progress=False).run(runner, cells, on_result=seen.append)
    assert [r.id for r in results] == [r.id for r in seen] == [c.id for c in cells]
    by = {(r.defense, r.attack, r.attack_point): r for r in results}
    crash = by[("nothing", "crashes", "")]
    assert crash.status == "error" and "deliberate failure" in crash.reason
    assert "ValueError" in crash.traceback and not crash.metrics
    # the base Attack has no run(): with gradients available it is an error cell ...
    assert by[("nothing", "needs-gradients", "")].status == "error"
    # ... and behind a scores-only deployment, not applicable, before it runs
    na = by[("hide", "needs-gradients", "")]
    assert na.status == "not_applicable" and "gradients" in na.reason
    clean = by[("nothing", "clean", "")]
    expected = (digits_model.labels(data.x_test) == data.y_test).mean()
    assert clean.metrics["acc"]["value"] == pytest.approx(expected)
    assert clean.metrics["acc"]["n"] == 60
    assert unpack(clean.rows)["correct"].mean() == pytest.approx(expected)
    assert HideGradients.builds == 1  # one defended model shared by its cells


def test_clean_cell_is_a_measurement_not_queries(registry, digits, digits_model):
    data = digits.subsample_test(30, 0)
    before = digits_model.queries
    (clean,) = run_cells(Runner(digits_model, data, [Accuracy], 0),
                         plan(registry, [Selection("nothing")], []))
    assert clean.status == "ok" and digits_model.queries == before


def test_same_seed_same_numbers_and_order_does_not_matter(registry, digits, digits_model):
    data = digits.subsample_test(60, 0)
    cells = plan(registry, [Selection("nothing")], [Selection("random-sign")])

    def values(cs, seed):
        runner = Runner(digits_model, data, [Accuracy], seed=seed)
        return {r.id: (r.metrics["acc"]["value"], r.rows) for r in run_cells(runner, cs)}

    first = values(cells, 0)
    assert first == values(list(reversed(cells)), 0)
    assert first != values(cells, 1)  # another seed draws other noise


def test_common_random_numbers_across_defenses(digits, digits_model):
    """Two defenses that leave the model as it is face the same draws of an attack: their
    rows are identical. Mixing the defense into the attack's seed breaks this."""
    registry = make_registry(plugins={"identity": plugin("identity", Identity)})
    result = gauntlet.audit(model=digits_model, data=digits, attacks={"noise": {"eps": 0.2}},
                            defenses=["none", "identity"], samples=60, seed=0,
                            registry=registry)
    cells = {(r["defense"], r["attack"]): r for r in result.records}
    none, identity = cells[("none", "noise")], cells[("identity", "noise")]
    assert none["status"] == identity["status"] == "ok"
    rows = unpack(none["rows"]), unpack(identity["rows"])
    assert set(rows[0]) == {"row", "correct_before", "correct_after", "l0", "l2", "linf"}
    for name in rows[0]:
        np.testing.assert_array_equal(rows[0][name], rows[1][name], err_msg=name)
    # An input defense also reports the naive number: the attack made against the
    # undefended model with the same draws, which for a defense that changes nothing is
    # the adaptive number, row by row.
    naive = identity["metrics"].pop("naive_robust_accuracy")
    np.testing.assert_array_equal(rows[1]["correct_naive"], rows[1]["correct_after"])
    assert naive == identity["metrics"]["robust_accuracy"]
    assert none["metrics"] == identity["metrics"]
    assert rows[0]["l2"].min() > 0  # the noise really drew something to compare


def test_defense_that_fails_to_build_errors_its_cells_only(digits, digits_model):
    class Broken(NoDefense):
        """Fails.

        Test defense.
        """

        name = "broken"

        def apply(self, model, dataset, rng):
            raise RuntimeError("cannot build")

    data = digits.subsample_test(30, 0)
    cells = [Cell(Broken, {}, "", RandomSign, RandomSign.resolve({"eps": 0.1}), ""),
             Cell(NoDefense, {}, "", RandomSign, RandomSign.resolve({"eps": 0.1}), "")]
    results = run_cells(Runner(digits_model, data, [Accuracy], 0), cells)
    assert results[0].status == "error" and "cannot build" in results[0].reason
    assert results[0].reason.startswith("DefenseFailed: defense 'broken' failed to build")
    assert results[1].status == "ok"


class Sleeps(Attack):
    """Sleeps in Python code for a long time.

    Test attack.
    """

    name = "sleeps"
    family = Family.EVASION

    def run(self, model, dataset, rng):
        for _ in range(200):
            time.sleep(0.05)
        raise AssertionError("the deadline should have stopped this cell")


def test_a_cell_past_the_timeout_is_an_error_and_the_audit_goes_on(digits, digits_model):
    data = digits.subsample_test(30, 0)
    cells = [Cell(NoDefense, {}, "", Sleeps, {}, ""),
             Cell(NoDefense, {}, "", RandomSign, RandomSign.resolve({}), "")]
    runner = Runner(digits_model, data, [Accuracy], 0, timeout=1.0)
    slow, fast = run_cells(runner, cells)
    assert slow.status == "error" and "timed out after 1 s" in slow.reason
    assert slow.duration_s < 5.0  # not the 10 s it would sleep
    assert fast.status == "ok"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left behind


# -- what plugins hand back is checked, and blamed on the plugin -----------------------------
class ReturnsNothing(Defense):
    """Forgets to return the defended model.

    Test defense.
    """

    name = "returns-nothing"
    stage = Stage.INPUT
    adaptive = False

    def apply(self, model, dataset, rng):
        model.deploy()  # does its work, then falls off the end


def outcome_attack(name: str, make):
    """An attack class (on the bare Attack base) whose outcome is ``make(model, dataset)``."""
    return type(name.title().replace("-", ""), (Attack,), {
        "__doc__": "Returns a hand-made outcome.\n\nTest attack.", "name": name,
        "family": Family.EVASION, "outcome": EvasionOutcome,
        "run": lambda self, model, dataset, rng: make(model, dataset)})


def evasion(model, dataset, **changes):
    p = model.predict(dataset.x_test)
    return EvasionOutcome(**{"y_true": dataset.y_test, "proba": p, "proba_clean": p,
                             **changes})


ShortRows = outcome_attack("short-rows", lambda m, d: evasion(
    m, d, proba=m.predict(d.x_test[:-1])))
NanProba = outcome_attack("nan-proba", lambda m, d: evasion(
    m, d, proba=m.predict(d.x_test + np.float32(np.nan))))


class Blows(EvasionAttack):
    """Scales its perturbation by ``scale``; an infinite scale makes NaN inputs.

    Test attack: the plugin bug a parameter value can trigger.
    """

    name = "blows"
    scale: float = param(0.1, "step size")

    def generate(self, model, x, y, rng):
        with np.errstate(invalid="ignore"):
            step = np.where(x > 0.5, 1.0, 0.0) * self.scale  # 0 * inf is NaN
        return np.clip(x + step, 0, 1)


def run_one(model, data, defense, attack, params=None, metrics=(Accuracy,)):
    (result,) = run_cells(Runner(model, data, list(metrics), 0),
                          [Cell(defense, {}, "", attack, attack.resolve(params or {}), "")])
    return result


def test_defense_that_returns_no_model_is_named_with_what_it_returned(digits, digits_model,
                                                                      caplog):
    data = digits.subsample_test(20, 0)
    cells = [Cell(ReturnsNothing, {}, "", RandomSign, RandomSign.resolve({"eps": e}), "")
             for e in (0.1, 0.3)]
    with caplog.at_level("WARNING", logger="gauntlet"):
        results = run_cells(Runner(digits_model, data, [Accuracy], 0), cells)
    for r in results:
        assert r.status == "error"
        assert r.reason.startswith("DefenseFailed: defense 'returns-nothing' returned None "
                                   "from apply(), not a gauntlet.Model")
    assert caplog.text.count("returned None from apply()") == 1  # logged once, not per cell


def test_outcome_with_the_wrong_number_of_rows_is_blamed_on_the_attack(digits, digits_model):
    r = run_one(digits_model, digits.subsample_test(30, 0), NoDefense, ShortRows)
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
    assert "'blows'" in r.reason and "non-finite" in r.reason


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
    rows = tidy_rows({"cells": [r.to_dict(rows=False)]})
    (failed,) = [row for row in rows if row["metric"] == "fails"]
    assert failed["value"] is None and "ZeroDivisionError" in failed["reason"]


def test_tracebacks_name_files_relative_to_the_package(digits, digits_model):
    import os
    r = run_one(digits_model, digits.subsample_test(10, 0), NoDefense, Crashes)
    assert r.status == "error"
    assert 'File "gauntlet/run.py"' in r.traceback
    assert 'File "gauntlet/evasion.py"' in r.traceback
    assert os.path.dirname(gauntlet.__file__) not in r.traceback


def test_display_path_strips_package_site_packages_and_home():
    import os
    import site

    from gauntlet.results import display_path, short_paths

    package = os.path.dirname(gauntlet.__file__)
    assert display_path(os.path.join(package, "plugins", "x.py")) == "gauntlet/plugins/x.py"
    import gauntlet.plugins.evasion as evasion_plugins
    assert display_path(evasion_plugins.__file__) == "gauntlet/plugins/evasion.py"
    lib = site.getsitepackages()[0]
    assert display_path(os.path.join(lib, "torch", "nn", "m.py")) == "torch/nn/m.py"
    home = os.path.expanduser("~")
    assert display_path(os.path.join(home, "work", "audit", "mine.py")) == "~/work/audit/mine.py"
    assert display_path("/srv/elsewhere/x.py") == "/srv/elsewhere/x.py"
    text = f'  File "{os.path.join(lib, "numpy", "core.py")}", line 3, in f\n'
    assert short_paths(text) == '  File "numpy/core.py", line 3, in f\n'


P = np.full((6, 4), 0.25)


@pytest.mark.parametrize("changes, message", [
    ({"y_true": np.zeros(5, dtype=np.int64)}, "different numbers of rows (y_true 5, proba 6"),
    ({"proba": np.full((6, 3), 1 / 3)}, "proba shaped (6, 3); expected probabilities shaped "
                                        "(rows, 4)"),
    ({"proba": np.full((6, 4), 2.0)}, "values in [2, 2]; probabilities lie in [0, 1]"),
    ({"proba_clean": np.zeros((0, 0))}, "(y_true 6, proba 6, proba_clean 0)"),
    ({"y_true": np.full(6, 7)}, "y_true that is not a vector of class labels in [0, 4)"),
    ({"y_true": np.zeros(6)}, "y_true that is not a vector of class labels"),
    ({"proba": np.full((6, 4), np.inf)}, "proba with 24 non-finite values"),
    ({"linf": np.full(6, np.nan)}, "linf with 6 non-finite values"),
    ({"linf": np.float32(0.1)}, "expected one number per attacked row"),
    ({"l2": np.zeros(5)}, "(y_true 6, proba 6, proba_clean 6, l2 5)"),
    ({"rows": np.array([0, 1, 2, 3, 4, 9])}, "rows that are not distinct indices of the 6"),
    ({"rows": np.zeros(6, dtype=np.int64)}, "rows that are not distinct indices"),
    ({"proba": [["a"] * 4] * 6}, "proba of dtype <U1, not numbers"),
])
def test_check_outcome_names_what_is_wrong(changes, message):
    outcome = EvasionOutcome(**{"y_true": np.arange(6) % 4, "proba": P, "proba_clean": P,
                                **changes})
    with pytest.raises(ContractError) as err:
        check_outcome("attack 'x'", outcome, n_rows=6, n_classes=4)
    assert str(err.value).startswith("attack 'x' returned")
    assert message in str(err.value)


def test_check_outcome_takes_per_row_arrays_array_likes_and_rows_up_to_those_given():
    from gauntlet import MembershipOutcome, ProbeOutcome
    outcome = EvasionOutcome(y_true=[0, 1], proba=[[1.0, 0.0], [0.0, 1.0]],
                             proba_clean=np.eye(2, dtype=np.float32), rows=[3, 1],
                             l0=[1.0, 2.0], l2=[0.1, 0.2], linf=[0.1, 0.1])
    check_outcome("attack 'x'", outcome, n_rows=5, n_classes=2)  # 2 of 5 rows attacked
    assert isinstance(outcome.proba, np.ndarray) and isinstance(outcome.linf, np.ndarray)
    with pytest.raises(ContractError, match="returned rows that are not distinct indices"):
        check_outcome("attack 'x'", outcome, n_rows=3, n_classes=2)
    with pytest.raises(ContractError, match="returned 2 rows, but it was given 1 test rows"):
        check_outcome("attack 'x'", EvasionOutcome(y_true=[0, 1], proba=np.eye(2),
                                                   proba_clean=np.eye(2)), n_rows=1,
                      n_classes=2)
    check_outcome("attack 'p'", ProbeOutcome(proba=np.eye(2)), n_rows=0, n_classes=2)
    with pytest.raises(ContractError, match="scores_members with 1 non-finite"):
        check_outcome("attack 'm'", MembershipOutcome(np.array([0.1, np.nan]), np.zeros(2),
                                                      0.5), n_rows=2, n_classes=2)


def test_a_worker_rebuilds_the_runner_from_plain_data_and_gets_the_same_numbers(tmp_path):
    """The executor seam: the config and the cells pickle, and a runner built from the
    config alone (as a process-pool worker would) reproduces the serial audit's cells."""
    from gauntlet.config import AuditConfig

    cfg = AuditConfig(model="builtin:mlp", data="sklearn:iris", samples=30, seed=3,
                      attacks=[Selection("noise", {"eps": 0.3})],
                      defenses=[Selection("none"), Selection("input-noise")],
                      out=str(tmp_path))
    serial = gauntlet.audit(config=cfg)
    registry = make_registry()
    cells = plan(registry, cfg.defenses, cfg.attacks)
    shipped_cfg, shipped_cells = pickle.loads(pickle.dumps((cfg, cells)))
    worker = Runner.from_config(shipped_cfg)
    # A worker gets the cells in any order, and only some of them.
    mine = [worker.run_cell(c).to_dict(rows=False) for c in reversed(shipped_cells)]
    by_id = {c["id"]: c for c in serial.cells}
    assert len(mine) == 4
    for cell in mine:
        want = by_id[cell["id"]]
        assert cell["status"] == want["status"] == "ok"
        assert cell["metrics"] == want["metrics"], cell["id"]


# -- rehearsal: a deployment that packs many rows per call ---------------------------


class Packed(Served, torch.nn.Module):
    """Serves ``inner`` and counts its calls; answers rehearsed batches from one packed
    call, like encrypted inference (whose calls cost the same for 1 row or 4,096)."""

    pack = 4096

    def __init__(self, inner):
        torch.nn.Module.__init__(self)
        self.inner = inner
        self.calls = 0
        self.answers = {}
        self.recorded = []

    def forward(self, x):
        if self.recording is not None:
            self.recording.append(x.numpy().copy())
            self.recorded.append(len(x))
            return torch.zeros(len(x), 10)  # a stand-in: deliberately wrong answers
        key = x.numpy().tobytes()
        if key not in self.answers:
            self.calls += 1
            self.answers[key] = self.inner(x)
        return self.answers[key]

    def answer_many(self, batches):
        self.calls += 1
        together = self.inner(torch.as_tensor(np.concatenate(batches)))
        start = 0
        for b in batches:
            self.answers[b.tobytes()] = together[start:start + len(b)]
            start += len(b)


class Packs(Defense):
    """Serves the model through :class:`Packed`.

    Test defense.
    """

    name = "packs"
    stage = Stage.WRAPPER
    adaptive = True

    def apply(self, model, dataset, rng):
        type(self).served = []

        def build(inner):
            served = Packed(inner)
            type(self).served.append(served)
            return served
        return model.deploy(serve=build)


class Watches(Attack):
    """Looks at what the server sees, then at the labels.

    Test attack: a cell a rehearsal cannot record past its first step.
    """

    name = "watches"
    family = Family.CONFIDENTIALITY
    outcome = CleanOutcome

    def run(self, model, dataset, rng):
        model.server_view(dataset.x_test[:2])
        return CleanOutcome(y_true=dataset.y_test, proba=model.predict(dataset.x_test))


def test_a_packing_deployment_answers_the_rehearsed_cells_in_one_call(digits, digits_model):
    test = plugin("test", RandomSign, Packs, NoDefense, Watches, Accuracy)
    registry = make_registry(entrypoints=False, plugins={"test": test})
    data = digits.subsample_test(80, 0)
    cells = plan(registry, [Selection("nothing"), Selection("packs")],
                 [Selection("random-sign"), Selection("watches")])
    packed = [c for c in cells if c.defense.name == "packs"]
    assert len(packed) == 4  # clean, random-sign at two eps, watches

    # Without an executor that says what is coming, every batch is its own call ...
    alone = Runner(digits_model, data, registry.metrics.values(), seed=0)
    one_by_one = {c.id: alone.run_cell(c) for c in cells}
    assert Packs.served[0].calls >= 3  # clean rows (once, then remembered), two eps, ...
    # ... with one, the first cell rehearses all four and one packed call answers them.
    results = SerialExecutor(progress=False).run(
        Runner(digits_model, data, registry.metrics.values(), seed=0), cells)
    served = Packs.served[0]
    assert served.recorded and served.calls == 1
    # Same numbers either way: the stand-in answers of the rehearsal never reach a cell,
    # and the cell the rehearsal could not finish (it looks at the wire) runs in full.
    for r in results:
        assert r.status == "ok", r.reason
        assert r.metrics == one_by_one[r.id].metrics
    def acc(defense):
        return {(r.attack, r.attack_point): r.metrics["acc"]["value"]
                for r in results if r.defense == defense}
    assert acc("packs") == acc("nothing")
