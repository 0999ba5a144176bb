"""The poisoning base and label-flip on the real digits data, re-training the built-in CNN."""
from __future__ import annotations

import hashlib
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
    PoisonedSet,
    PoisoningAttack,
    PoisoningOutcome,
    Recipe,
    param,
    train_classifier,
)
from gauntlet.plugins import poisoning
from gauntlet.plugins.metrics import AccuracyDrop, PoisonedAccuracy
from gauntlet.plugins.poisoning import LabelFlip, flip_labels
from gauntlet.plugins.torch_models import build_cnn
from gauntlet.poisoning import PoisonedSetError
from gauntlet.registry import make_registry

EPOCHS = 3  # enough for ~93% clean accuracy; keeps each re-train well under a second


#: Weights of every training already run in this session, by training set and seed: the
#: same training in another test loads them instead of training again (training is
#: deterministic, so the weights are the same either way).
_TRAINED: dict[str, dict[str, torch.Tensor]] = {}


def _key(x: np.ndarray, y: np.ndarray, seed: int) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return f"{h.hexdigest()}-{seed}"


class RecordingRecipe(Recipe):
    """The built-in CNN recipe, shortened, that records each training the recipe asks
    for (its own cache hits ask for none)."""

    def __init__(self, shape: tuple[int, ...], n_classes: int) -> None:
        self.fits: list[tuple[np.ndarray, np.ndarray, int]] = []

        def build() -> torch.nn.Module:
            torch.manual_seed(0)
            return build_cnn(shape, n_classes)

        def fit(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
            self.fits.append((x.copy(), y.copy(), seed))
            key = _key(x, y, seed)
            if key in _TRAINED:
                module.load_state_dict(_TRAINED[key])
                return
            train_classifier(module, x, y, seed, epochs=EPOCHS)
            _TRAINED[key] = {k: v.clone() for k, v in module.state_dict().items()}

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


class CornerBackdoor(PoisoningAttack):
    """Test backdoor: a bright bottom-right corner pixel makes the model answer ``target``.

    Gu et al., 2017, "BadNets" (a one-pixel trigger, the simplest of its kind).
    """

    name = "corner-backdoor"
    fraction: float = param(0.2, "share of training rows stamped and relabelled", ge=0, le=1)
    target: int = param(0, "the class the trigger forces", ge=0)

    @staticmethod
    def stamp(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[..., -2:, -2:] = 1.0
        return x

    def poison(self, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        chosen = rng.choice(len(dataset.x_train), round(self.fraction * len(dataset.x_train)),
                            replace=False)
        x, y = dataset.x_train.copy(), dataset.y_train.copy()
        x[chosen], y[chosen] = self.stamp(x[chosen]), self.target
        return PoisonedSet(x, y, n_poisoned=len(chosen),
                           x_triggered=self.stamp(dataset.x_test), target=self.target)


def test_registers_with_its_metadata() -> None:
    registry = make_registry(entrypoints=False, plugins={"poisoning": poisoning})
    assert registry.broken == []
    cls = registry.attacks["label-flip"]
    assert cls is LabelFlip
    assert cls.family is Family.POISONING
    assert cls.needs is Access.LABELS
    assert cls.needs_recipe is True
    assert cls.outcome is PoisoningOutcome
    assert set(cls.parameters()) == {"fraction", "train_seed"}
    assert [(p["fraction"], label) for p, label in cls.grid()] == [
        (0.1, "fraction=0.1"), (0.3, "fraction=0.3"), (0.5, "fraction=0.5")]


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

    # Per-row results: one entry per test row, and the metrics are their means.
    rows = outcome.per_row()
    assert set(rows) == {"row", "correct_reference", "correct_poisoned"}  # no backdoor: no hit
    assert np.array_equal(rows["row"], np.arange(len(digits.y_test)))
    assert np.array_equal(rows["correct_poisoned"], outcome.proba.argmax(1) == digits.y_test)
    assert PoisonedAccuracy().evaluate(outcome).value == pytest.approx(poisoned)
    drop = rows["correct_reference"].astype(float) - rows["correct_poisoned"]
    assert AccuracyDrop().evaluate(outcome).value == pytest.approx(drop.mean())
    assert drop.mean() == pytest.approx(clean - poisoned)


def test_backdoor_outcome_carries_per_row_hits(model: Model, digits: Dataset, rng) -> None:
    outcome = CornerBackdoor().run(model, digits, rng)
    assert outcome.target == 0 and outcome.n_poisoned == round(0.2 * len(digits.x_train))
    hit = outcome.per_row()["hit"]
    assert len(hit) == len(digits.y_test)
    assert np.array_equal(hit, outcome.proba_triggered.argmax(1) == 0)
    # The trigger works on the poisoned model: most non-target rows now read as class 0,
    # while the model stays accurate on clean rows.
    others = digits.y_test != 0
    assert hit[others].mean() > 0.8
    assert accuracy(outcome.proba, digits.y_test) > 0.8


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
    base = small_cnn(digits)
    deployed = base.deploy(post=lambda z: z * 0.5)
    outcome = LabelFlip(fraction=0.3).run(deployed, digits, rng)
    np.testing.assert_allclose(outcome.proba_reference, deployed.predict(digits.x_test),
                               rtol=1e-6)
    poisoned_module = base.recipe.train(digits.x_train, base.recipe.fits[1][1], 0)
    logits = Model(poisoned_module, input_shape=digits.input_shape,
                   n_classes=10).logits(digits.x_test)
    expected = torch.softmax(torch.as_tensor(logits) * 0.5, dim=1).numpy()
    np.testing.assert_allclose(outcome.proba, expected, rtol=1e-5, atol=1e-6)


def test_labels_only_deployment_is_measured_as_deployed(model: Model, digits: Dataset,
                                                        rng) -> None:
    # Poisoning never queries the model, so a labels-only deployment is in scope; the core
    # measures what it would output: one-hot rows of the classes it answers.
    labels_only = model.deploy(access=Access.LABELS)
    outcome = LabelFlip(fraction=0.3).run(labels_only, digits, rng)
    assert set(np.unique(outcome.proba)) == {0.0, 1.0}
    assert np.array_equal(outcome.proba_reference.argmax(1), model.labels(digits.x_test))
    assert labels_only.queries == 0


def test_a_bad_poisoned_set_is_an_error_naming_the_attack(model: Model, digits: Dataset,
                                                          rng) -> None:
    class OffByOne(PoisoningAttack):
        """Test attack: shifts every label up by one, past the last class.

        No paper: a bug on purpose.
        """

        name = "off-by-one"

        def poison(self, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
            return PoisonedSet(dataset.x_train, dataset.y_train + 1, len(dataset.y_train))

    with pytest.raises(PoisonedSetError, match=r"attack 'off-by-one'.*\[0, 10\)"):
        OffByOne().run(model, digits, rng)
    assert len(model.recipe.fits) == 1  # refused before any training was paid for


def test_model_without_recipe_is_not_applicable(model: Model, digits: Dataset) -> None:
    module = model.recipe.train(digits.x_train, digits.y_train, 0)
    frozen = Model(module, input_shape=model.input_shape, n_classes=model.n_classes)
    attack = LabelFlip()
    with pytest.raises(NotApplicable, match="recipe"):
        attack.check(frozen)
    with pytest.raises(NotApplicable):
        attack.run(frozen, digits, np.random.default_rng(0))


@pytest.mark.parametrize(("values", "bound"), [({"fraction": -0.1}, ">= 0"),
                                               ({"fraction": 1.5}, "<= 1"),
                                               ({"train_seed": -1}, ">= 0")])
def test_out_of_bounds_values_name_the_bound(values: dict[str, Any], bound: str) -> None:
    (name,) = values
    with pytest.raises(ConfigError, match=f"'{name}' must be {bound}"):
        LabelFlip(**values)


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


def test_a_poisoned_set_is_trained_once_for_every_defense_that_keeps_the_recipe(
        digits: Dataset) -> None:
    from gauntlet.executor import SerialExecutor
    from gauntlet.plan import Selection, plan
    from gauntlet.plugins import defenses, metrics, poisoning, preprocessing
    from gauntlet.plugins.torch_models import load_model
    from gauntlet.run import Runner

    model = load_model("builtin:cnn", {"dataset": digits, "seed": 0, "epochs": 2})
    recipe = model.recipe
    assert recipe is not None
    trained: list[str] = []
    fit = recipe.fit

    def counting(module, x, y, seed):
        trained.append(f"{len(x)}:{hash(x.tobytes())}:{hash(np.asarray(y).tobytes())}")
        fit(module, x, y, seed)

    recipe.fit = counting
    registry = make_registry(entrypoints=False, plugins={
        "p": poisoning, "m": metrics, "d": defenses, "pre": preprocessing})
    cells = plan(registry, [Selection("none"), Selection("feature-squeezing"),
                            Selection("spatial-smoothing")],
                 [Selection("label-flip", {"fraction": [0.2, 0.4]})])
    results = SerialExecutor(progress=False).run(
        Runner(model, digits.subsample_test(50, 0), registry.metrics.values(), 0), cells)
    assert all(r.status == "ok" for r in results), [r.reason for r in results]
    # Two poisoned sets, each trained once across the three defenses; the reference
    # (the clean set) is the model under audit, already in the cache.
    assert len(trained) == 2 and len(set(trained)) == 2
    flips = [r for r in results if r.attack == "label-flip"]
    assert len(flips) == 6
