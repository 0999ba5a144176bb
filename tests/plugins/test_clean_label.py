"""The clean-label feature-collision attack on the real digits data and the built-in CNN:
labels never change, only base-class rows move and they move toward the target in the
network's feature space while staying nearer their base than the target; the targets
are marked with their base classes, and the metrics agree with a count by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gauntlet import Access, Dataset, Model, NotApplicable, PoisonedSet
from gauntlet.plugins.clean_label import FeatureCollision
from gauntlet.plugins.metrics import (
    CollateralAccuracy,
    PoisonL2,
    PoisonLinf,
    TargetAccuracy,
    TargetSuccess,
)
from gauntlet.registry import make_registry

PARAMS = {"targets": 4, "poisons": 10}


@pytest.fixture(scope="module")
def crafted(digits: Dataset, digits_model: Model) -> PoisonedSet:
    return FeatureCollision(**PARAMS).craft(digits_model, digits, np.random.default_rng(0))


def targets_of(p: PoisonedSet) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(p.notes["targets"]), np.asarray(p.notes["base_classes"])


def test_registered_opt_in_and_white_box() -> None:
    from gauntlet.plugins import clean_label, metrics

    registry = make_registry(entrypoints=False, plugins={"c": clean_label, "m": metrics})
    assert registry.attacks["clean-label"] is FeatureCollision and not registry.broken
    assert FeatureCollision.needs is Access.GRADIENTS and FeatureCollision.needs_recipe
    assert FeatureCollision.in_default_audit is False
    assert len(FeatureCollision.grid()) == 1
    assert {"target_success", "poison_l2", "collateral_accuracy"} <= set(registry.metrics)


def test_labels_are_kept_and_only_base_rows_move(digits: Dataset, crafted: PoisonedSet) -> None:
    p = crafted
    targets, bases = targets_of(p)
    assert len(targets) == PARAMS["targets"] and len(set(targets.tolist())) == len(targets)
    assert np.array_equal(p.y, digits.y_train)  # clean-label: no label touched
    rows = p.poisoned_rows
    assert p.n_poisoned == len(rows) == PARAMS["targets"] * PARAMS["poisons"]
    assert len(np.unique(rows)) == len(rows)
    moved = (p.x != digits.x_train).reshape(len(p.x), -1).any(axis=1)
    assert not moved[np.setdiff1d(np.arange(len(p.x)), rows)].any()
    assert moved[rows].all()
    # Each target's poisons, listed together in the targets' order, are of its base class.
    np.testing.assert_array_equal(digits.y_train[rows], np.repeat(bases, PARAMS["poisons"]))
    np.testing.assert_array_equal(p.bases, digits.x_train[rows])
    low, high = digits.clip_values
    assert p.x.min() >= low and p.x.max() <= high and p.x.dtype == digits.x_train.dtype


def test_targets_are_read_correctly_and_aimed_at_their_runner_up(
        digits: Dataset, digits_model: Model, crafted: PoisonedSet) -> None:
    targets, bases = targets_of(crafted)
    expected = np.full(len(digits.y_test), -1)
    expected[targets] = bases
    np.testing.assert_array_equal(crafted.aimed, expected)
    logits = digits_model.logits(digits.x_test[targets])
    assert np.array_equal(logits.argmax(axis=1), digits.y_test[targets])
    assert np.array_equal(np.argsort(logits, axis=1)[:, -2], bases)
    assert crafted.notes["target_classes"] == digits.y_test[targets].tolist()


def test_a_fixed_base_class(digits: Dataset, digits_model: Model) -> None:
    p = FeatureCollision(targets=3, poisons=5, steps=5, base_class=3).craft(
        digits_model, digits, np.random.default_rng(1))
    targets, bases = targets_of(p)
    assert (bases == 3).all() and (digits.y_test[targets] != 3).all()
    assert (digits.y_train[p.poisoned_rows] == 3).all()


def test_poisons_collide_with_their_target_yet_look_like_their_base(
        digits: Dataset, digits_model: Model, crafted: PoisonedSet) -> None:
    targets, _ = targets_of(crafted)
    rows, w = crafted.poisoned_rows, FeatureCollision.watermark.default
    # Each target's poisons are listed together, in the order of the targets.
    x_target = digits.x_test[np.repeat(targets, PARAMS["poisons"])]
    f_target = digits_model.features(x_target)
    before = np.linalg.norm(digits_model.features(digits.x_train[rows]) - f_target, axis=1)
    after = np.linalg.norm(digits_model.features(crafted.x[rows]) - f_target, axis=1)
    # The objective never rises, so no poison ends farther from its target's features
    # than its watermarked start; on average crafting more than halves the distance.
    start = (1 - w) * digits.x_train[rows] + w * x_target
    at_start = np.linalg.norm(digits_model.features(start) - f_target, axis=1)
    assert (after <= at_start + 1e-3).all()
    assert after.mean() < 0.5 * before.mean()
    # Clean-label: each poison stays nearer its own base image than the target image.
    flat = crafted.x[rows].reshape(len(rows), -1)
    to_base = np.linalg.norm(flat - digits.x_train[rows].reshape(len(rows), -1), axis=1)
    to_target = np.linalg.norm(flat - x_target.reshape(len(rows), -1), axis=1)
    assert (to_base < to_target).all()


def test_not_applicable_without_gradients_or_a_linear_layer(digits: Dataset,
                                                            digits_model: Model) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(NotApplicable, match="gradients access"):
        FeatureCollision().run(digits_model.deploy(access=Access.SCORES), digits, rng)
    conv_only = Model(torch.nn.Sequential(torch.nn.Conv2d(1, 10, 8), torch.nn.Flatten()),
                      input_shape=(1, 8, 8), n_classes=10, recipe=digits_model.recipe)
    with pytest.raises(NotApplicable, match="no Linear layer"):
        FeatureCollision().run(conv_only, digits, rng)
    with pytest.raises(NotApplicable, match="not one of"):
        FeatureCollision(base_class=10).craft(digits_model, digits, rng)
    # About 135 training rows a class: 30 targets of 50 poisons each cannot all be served.
    with pytest.raises(NotApplicable, match="of the 30 targets"):
        FeatureCollision(targets=30, poisons=50, steps=1).craft(digits_model, digits, rng)
    with pytest.raises(NotImplementedError):  # crafted against a model, never without
        FeatureCollision().poison(digits, rng)


def test_run_measures_targets_and_distances_as_counted_by_hand(
        digits: Dataset, digits_model: Model, crafted: PoisonedSet) -> None:
    outcome = FeatureCollision(**PARAMS).run(digits_model, digits, np.random.default_rng(0))
    # The poisoned set the run trained on is the one crafted with the same generator.
    np.testing.assert_array_equal(outcome.poisoned_rows, crafted.poisoned_rows)
    np.testing.assert_array_equal(outcome.aimed, crafted.aimed)
    assert outcome.notes == crafted.notes
    moved = (crafted.x[crafted.poisoned_rows] - crafted.bases).reshape(crafted.n_poisoned, -1)
    np.testing.assert_allclose(outcome.poison_linf, np.abs(moved).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(outcome.poison_l2, np.linalg.norm(moved, axis=1), rtol=1e-5)
    assert PoisonLinf().evaluate(outcome).value == pytest.approx(np.abs(moved).max(1).mean())
    assert PoisonL2().evaluate(outcome).value == pytest.approx(np.linalg.norm(moved, axis=1).mean())
    # Target success by hand: the poisoned model re-trained through the public API.
    targets, bases = targets_of(crafted)
    poisoned_model = digits_model.retrain(crafted.x, crafted.y, 0)
    won = poisoned_model.labels(digits.x_test[targets]) == bases
    success = TargetSuccess().evaluate(outcome)
    assert (success.value, success.n) == (won.mean(), len(targets))
    others = np.ones(len(digits.y_test), dtype=bool)
    others[targets] = False
    right = poisoned_model.labels(digits.x_test[others]) == digits.y_test[others]
    collateral = CollateralAccuracy().evaluate(outcome)
    assert (collateral.value, collateral.n) == (pytest.approx(right.mean()), others.sum())
    # The reference (clean re-train, the audited model itself) reads every target right.
    assert TargetAccuracy().evaluate(outcome).n == len(targets)
    assert (outcome.proba_reference.argmax(axis=1)[targets] == digits.y_test[targets]).all()


def test_through_the_runner(digits: Dataset, digits_model: Model) -> None:
    from gauntlet.executor import SerialExecutor
    from gauntlet.plan import Selection, plan
    from gauntlet.plugins import clean_label, defenses, metrics
    from gauntlet.run import Runner

    registry = make_registry(entrypoints=False, plugins={
        "c": clean_label, "m": metrics, "d": defenses})
    cells = plan(registry, [Selection("none")], [Selection("clean-label", PARAMS)])
    data = digits.subsample_test(150, 0)
    results = SerialExecutor(progress=False).run(
        Runner(digits_model, data, registry.metrics.values(), 0), cells)
    by = {r.attack: r for r in results}
    cell = by["clean-label"]
    assert cell.status == "ok", cell.reason
    m = cell.metrics
    assert {"target_success", "target_accuracy", "collateral_accuracy", "poison_linf",
            "poison_l2", "accuracy_drop"} <= set(m)
    assert m["target_success"]["n"] == PARAMS["targets"]
    assert m["collateral_accuracy"]["n"] == len(data.y_test) - PARAMS["targets"]
    assert m["poison_l2"]["n"] == PARAMS["targets"] * PARAMS["poisons"]
    assert 0 < m["poison_linf"]["value"] <= m["poison_l2"]["value"]
    notes = cell.artifacts["notes"]
    assert len(notes["targets"]) == PARAMS["targets"]
    assert (data.y_test[notes["targets"]] == notes["target_classes"]).all()
