"""Label-flip poisoning on the real digits data, re-training the built-in CNN."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from gauntlet import (
    Access,
    ConfigError,
    Dataset,
    Family,
    Model,
    NotApplicable,
    PoisoningOutcome,
    Recipe,
    train_classifier,
)
from gauntlet.plugins import poisoning
from gauntlet.plugins.poisoning import LabelFlip, flip_labels
from gauntlet.plugins.torch_models import build_cnn
from gauntlet.registry import make_registry

EPOCHS = 3  # enough for ~93% clean accuracy; keeps each re-train well under a second


class RecordingRecipe(Recipe):
    """The built-in CNN recipe, shortened, that records each training it really runs
    (cache hits run none)."""

    def __init__(self, shape: tuple[int, ...], n_classes: int) -> None:
        self.fits: list[tuple[np.ndarray, np.ndarray, int]] = []

        def build() -> torch.nn.Module:
            torch.manual_seed(0)
            return build_cnn(shape, n_classes)

        def fit(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
            self.fits.append((x.copy(), y.copy(), seed))
            train_classifier(module, x, y, seed, epochs=EPOCHS)

        super().__init__(build, fit, f"cnn trained {EPOCHS} epochs")


def small_cnn(digits: Dataset, **kwargs: Any) -> Model:
    """A freshly trained CNN with its own (recording) recipe, as a loader would build it."""
    recipe = RecordingRecipe(digits.input_shape, digits.n_classes)
    module = recipe.train(digits.x_train, digits.y_train, 0)
    return Model(module, input_shape=digits.input_shape, n_classes=digits.n_classes,
                 recipe=recipe, **kwargs)


@pytest.fixture
def model(digits: Dataset) -> Model:
    return small_cnn(digits)


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float(accuracy_score(y, proba.argmax(axis=1)))


def test_registers_with_its_metadata() -> None:
    registry = make_registry(entrypoints=False, plugins={"poisoning": poisoning})
    assert registry.broken == []
    cls = registry.attacks["label-flip"]
    assert cls is LabelFlip
    assert cls.family is Family.POISONING
    assert cls.needs is Access.LABELS
    assert cls.needs_recipe is True
    assert cls.outcome is PoisoningOutcome
    assert [p["fraction"] for p, _ in cls.grid()] == [0.1, 0.3, 0.5]


def test_half_flipped_trains_a_worse_model(model: Model, digits: Dataset, rng) -> None:
    recipe = model.recipe
    assert isinstance(recipe, RecordingRecipe)
    outcome = LabelFlip(fraction=0.5).run(model, digits, rng)

    # One new training only: the clean reference is the cached original training.
    assert len(recipe.fits) == 2
    x_used, y_used, seed = recipe.fits[1]
    n_flip = round(0.5 * len(digits.y_train))
    flipped = y_used != digits.y_train
    assert flipped.sum() == n_flip == outcome.n_poisoned
    assert np.array_equal(x_used, digits.x_train) and seed == 0
    assert outcome.n_train == len(digits.y_train)
    assert np.array_equal(outcome.y_true, digits.y_test)

    np.testing.assert_array_equal(outcome.proba_reference, model.predict(digits.x_test))
    clean, poisoned = (accuracy(outcome.proba_reference, digits.y_test),
                       accuracy(outcome.proba, digits.y_test))
    assert clean > 0.85
    assert poisoned < clean - 0.03


def test_flips_go_uniformly_to_other_classes() -> None:
    y = np.repeat(np.arange(10), 9_000)
    y_new, flipped = flip_labels(y, 1.0, 10, np.random.default_rng(0))
    assert len(flipped) == len(y) and np.all(y_new != y)
    # Per true class, each of the 9 other classes gets ~1000 of its 9000 rows.
    for c in range(10):
        counts = np.bincount(y_new[y == c], minlength=10)
        assert counts[c] == 0
        others = np.delete(counts, c)
        assert np.all(np.abs(others - 1000) < 150), others


def test_only_the_drawn_rows_change(digits: Dataset) -> None:
    before = digits.y_train.copy()
    y_new, flipped = flip_labels(digits.y_train, 0.3, 10, np.random.default_rng(4))
    assert len(flipped) == round(0.3 * len(digits.y_train)) == len(np.unique(flipped))
    changed = np.flatnonzero(y_new != digits.y_train)
    assert np.array_equal(changed, np.sort(flipped))
    assert y_new.min() >= 0 and y_new.max() < 10
    assert np.array_equal(digits.y_train, before)  # the dataset itself is left alone


def test_train_seed_is_shared_by_both_models(model: Model, digits: Dataset, rng) -> None:
    recipe = model.recipe
    LabelFlip(fraction=0.1, train_seed=7).run(model, digits, rng)
    new = recipe.fits[1:]
    assert [seed for _, _, seed in new] == [7, 7]
    # One of the two is the clean set, the other the poisoned one.
    assert sorted(int((y != digits.y_train).sum()) for _, y, _ in new) == [
        0, round(0.1 * len(digits.y_train))]


def test_no_flips_no_damage(model: Model, digits: Dataset, rng) -> None:
    outcome = LabelFlip(fraction=0.0).run(model, digits, rng)
    assert outcome.n_poisoned == 0
    assert len(model.recipe.fits) == 1  # both are the cached original training
    np.testing.assert_array_equal(outcome.proba, outcome.proba_reference)


def test_same_seed_same_poisoned_set(model: Model, digits: Dataset) -> None:
    recipe = model.recipe
    first = LabelFlip(fraction=0.3).run(model, digits, np.random.default_rng(3))
    again = LabelFlip(fraction=0.3).run(model, digits, np.random.default_rng(3))
    # The second run hit the cache: its poisoned set was identical, byte for byte.
    assert len(recipe.fits) == 2
    np.testing.assert_array_equal(first.proba, again.proba)
    LabelFlip(fraction=0.3).run(model, digits, np.random.default_rng(4))
    assert len(recipe.fits) == 3
    assert not np.array_equal(recipe.fits[1][1], recipe.fits[2][1])


def test_defense_stays_on_top_of_the_retrained_model(digits: Dataset, rng) -> None:
    # A "defense" that halves the logits; retraining must keep it around the new module.
    def defended(module: torch.nn.Module) -> Model:
        halved = torch.nn.Sequential(module, _Scale(0.5))
        return Model(halved, input_shape=digits.input_shape, n_classes=digits.n_classes,
                     recipe=base.recipe, rebuild=defended)

    base = small_cnn(digits)
    deployed = defended(base.module)
    outcome = LabelFlip(fraction=0.3).run(deployed, digits, rng)
    np.testing.assert_allclose(outcome.proba_reference, deployed.predict(digits.x_test),
                               rtol=1e-6)
    poisoned_module = base.recipe.train(digits.x_train, base.recipe.fits[1][1], 0)
    logits = Model(poisoned_module, input_shape=digits.input_shape,
                   n_classes=10).logits(digits.x_test)
    expected = torch.softmax(torch.as_tensor(logits) * 0.5, dim=1).numpy()
    np.testing.assert_allclose(outcome.proba, expected, rtol=1e-5, atol=1e-6)


class _Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.factor


def test_model_without_recipe_is_not_applicable(model: Model, digits: Dataset) -> None:
    frozen = Model(model.module, input_shape=model.input_shape, n_classes=model.n_classes)
    attack = LabelFlip()
    with pytest.raises(NotApplicable, match="recipe"):
        attack.check(frozen)
    with pytest.raises(NotApplicable):
        attack.run(frozen, digits, np.random.default_rng(0))


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_rejects_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        LabelFlip(fraction=fraction)


def test_single_class_data_is_not_applicable() -> None:
    with pytest.raises(NotApplicable, match="2 classes"):
        flip_labels(np.zeros(10, dtype=np.int64), 0.5, 1, np.random.default_rng(0))


@pytest.mark.slow
def test_default_cnn_reference_is_the_model_under_audit(digits_model: Model, digits: Dataset,
                                                        rng) -> None:
    outcome = LabelFlip(fraction=0.5).run(digits_model, digits, rng)
    # The reference is the audited model itself (same set, same seed: a cache hit).
    np.testing.assert_array_equal(outcome.proba_reference, digits_model.predict(digits.x_test))
    assert accuracy(outcome.proba, digits.y_test) < accuracy(outcome.proba_reference,
                                                             digits.y_test)
