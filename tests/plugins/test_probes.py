"""The probe base and the trash-bucket probe on the real digits CNN."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gauntlet import (
    Access,
    ConfigError,
    Dataset,
    Family,
    Model,
    NotApplicable,
    ProbeAttack,
    ProbeOutcome,
)
from gauntlet.plugins import probes
from gauntlet.plugins.datasets import load_sklearn
from gauntlet.plugins.metrics import ProbeConfidence, TopClassShare
from gauntlet.plugins.probes import TrashBucket, uniform_noise
from gauntlet.plugins.torch_models import build_cnn
from gauntlet.probe import ProbeInputsError
from gauntlet.registry import make_registry


def test_registers_with_its_metadata() -> None:
    registry = make_registry(entrypoints=False, plugins={"probes": probes})
    assert registry.broken == []
    cls = registry.attacks["trash-bucket"]
    assert cls is TrashBucket
    assert cls.family is Family.PROBE
    assert cls.needs is Access.SCORES
    assert cls.outcome is ProbeOutcome
    described = {name: p.describe() for name, p in cls.parameters().items()}
    assert list(described) == ["probes"]
    assert described["probes"]["default"] == 1000 and described["probes"]["bounds"] == ">= 1"


@pytest.mark.parametrize("clip_values", [(0.0, 1.0), (-1.0, 2.0)])
def test_noise_fills_the_valid_range(clip_values: tuple[float, float]) -> None:
    low, high = clip_values
    x = uniform_noise((1, 8, 8), clip_values, 1000, np.random.default_rng(0))
    assert x.shape == (1000, 1, 8, 8) and x.dtype == np.float32
    assert x.min() >= low and x.max() <= high
    # Uniform over the whole range: reaches both ends, centred, flat (4 equal bins).
    width = high - low
    assert x.min() < low + 0.01 * width and x.max() > high - 0.01 * width
    assert abs(x.mean() - (low + high) / 2) < 0.01 * width
    counts, _ = np.histogram(x, bins=4, range=clip_values)
    assert np.all(np.abs(counts / x.size - 0.25) < 0.01)


def test_outcome_is_the_model_on_its_own_range_of_noise() -> None:
    # The probe follows the model's clip_values and input_shape, not the data's.
    torch.manual_seed(0)
    module = build_cnn((1, 8, 8), 10)
    wide = Model(module, input_shape=(1, 8, 8), n_classes=10, clip_values=(-1.0, 2.0))
    outcome = TrashBucket(probes=300).run(wide, _no_data(), np.random.default_rng(1))
    x = uniform_noise((1, 8, 8), (-1.0, 2.0), 300, np.random.default_rng(1))
    with torch.no_grad():
        expected = torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()
    assert outcome.proba.shape == (300, 10) and outcome.n == 300
    np.testing.assert_allclose(outcome.proba, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outcome.proba.sum(axis=1), 1.0, rtol=1e-5)


def _no_data() -> Dataset:
    """A dataset the probe must not need (its inputs come from the model's shape)."""
    empty = np.zeros((0, 1, 8, 8), np.float32)
    return Dataset("none", empty, np.zeros(0, np.int64), empty, np.zeros(0, np.int64), 10)


def test_per_row_results_are_the_answers_to_each_probe(digits_model: Model,
                                                       digits: Dataset) -> None:
    outcome = TrashBucket(probes=250).run(digits_model, digits, np.random.default_rng(3))
    rows = outcome.per_row()
    assert set(rows) == {"predicted", "confidence"}
    assert len(rows["predicted"]) == len(rows["confidence"]) == 250
    assert np.array_equal(np.bincount(rows["predicted"], minlength=10), outcome.class_counts())
    assert TopClassShare().evaluate(outcome).value == pytest.approx(
        outcome.class_counts().max() / 250)
    assert ProbeConfidence().evaluate(outcome).value == pytest.approx(
        rows["confidence"].mean(), rel=1e-6)


def test_same_seed_same_numbers(digits_model: Model, digits: Dataset) -> None:
    first = TrashBucket(probes=200).run(digits_model, digits, np.random.default_rng(7))
    again = TrashBucket(probes=200).run(digits_model, digits, np.random.default_rng(7))
    other = TrashBucket(probes=200).run(digits_model, digits, np.random.default_rng(8))
    assert np.array_equal(first.proba, again.proba)
    assert not np.array_equal(first.proba, other.proba)


def test_cnn_answers_noise_confidently_and_lopsidedly(digits_model: Model, digits: Dataset,
                                                      rng) -> None:
    outcome = TrashBucket().run(digits_model, digits, rng)
    assert outcome.proba.shape == (1000, 10)
    shares = np.bincount(outcome.proba.argmax(axis=1), minlength=10) / 1000
    # A model that knew it did not know would spread noise evenly at ~0.1 confidence.
    assert shares.max() > 2 * 0.1
    assert outcome.proba.max(axis=1).mean() > 0.5


def test_a_probe_from_real_inputs_measures_the_deployed_model(digits_model: Model,
                                                              digits: Dataset) -> None:
    class Inverted(ProbeAttack):
        """Test probe: test images with their pixel values inverted (white on black).

        Hendrycks & Gimpel, 2017 (out-of-distribution inputs from a shifted domain).
        """

        name = "inverted"

        def inputs(self, model, dataset, rng):  # type: ignore[no-untyped-def]
            low, high = model.clip_values
            return high + low - dataset.x_test[:40]

    cooled = digits_model.deploy(post=lambda z: z / 4.0)  # a defense the base must see
    outcome = Inverted().run(cooled, digits, np.random.default_rng(0))
    expected = cooled.predict(1.0 - digits.x_test[:40])
    np.testing.assert_allclose(outcome.proba, expected, rtol=1e-6)
    assert outcome.n == 40


@pytest.mark.parametrize(("returned", "fault"), [
    (np.zeros((5, 64), np.float32), r"shape \(5, 64\); the model takes \(N, 1, 8, 8\)"),
    (np.full((5, 1, 8, 8), 3.0, np.float32), r"inputs in \[3, 3\], outside the valid range"),
    (np.full((5, 1, 8, 8), np.nan, np.float32), "non-finite inputs"),
])
def test_bad_inputs_are_an_error_naming_the_probe(digits_model: Model, digits: Dataset,
                                                  returned: np.ndarray, fault: str) -> None:
    class Broken(ProbeAttack):
        """Test probe: returns unusable inputs.

        No paper: a bug on purpose.
        """

        name = "broken-probe"

        def inputs(self, model, dataset, rng):  # type: ignore[no-untyped-def]
            return returned

    with pytest.raises(ProbeInputsError, match="attack 'broken-probe': inputs.. returned " +
                       fault):
        Broken().run(digits_model, digits, np.random.default_rng(0))


def test_labels_only_model_is_not_applicable(digits_model: Model, digits: Dataset) -> None:
    labels_only = digits_model.deploy(access=Access.LABELS)
    with pytest.raises(NotApplicable, match="scores"):
        TrashBucket().check(labels_only)
    with pytest.raises(NotApplicable):
        TrashBucket().run(labels_only, digits, np.random.default_rng(0))


@pytest.mark.parametrize("probes", [0, -5])
def test_rejects_no_probes_naming_the_bound(probes: int) -> None:
    with pytest.raises(ConfigError, match="'probes' must be >= 1"):
        TrashBucket(probes=probes)


# -- training order ----------------------------------------------------------------------


def test_epoch_order_puts_the_class_last() -> None:
    from gauntlet.training import epoch_order

    y = np.array([0, 1, 2, 0, 1, 2, 2, 0, 1, 1])
    gen = torch.Generator().manual_seed(0)
    block = epoch_order(y, 1, "last-block", gen)
    assert sorted(block) == list(range(len(y)))
    assert (y[block][-4:] == 1).all() and (y[block][:-4] != 1).all()
    blocks = epoch_order(y, 0, "class-blocks", gen)
    assert list(y[blocks]) == [1, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    shuffled = epoch_order(y, None, "last-block", gen)
    assert sorted(shuffled) == list(range(len(y)))


def test_the_class_trained_last_takes_more_of_the_trash(digits: Dataset,
                                                        digits_model: Model) -> None:
    from gauntlet.plugins.metrics import LastClassShare, LastClassShareShuffled, OrderedAccuracy
    from gauntlet.plugins.probes import TrainingOrder

    outcome = TrainingOrder(last=0, seeds=2).run(digits_model, digits, np.random.default_rng(0))
    assert outcome.proba.shape == outcome.proba_reference.shape == (2000, 10)
    # By hand: per seed, the share of the 1,000 noise inputs given class 0.
    by_hand = [(outcome.proba[i * 1000:(i + 1) * 1000].argmax(axis=1) == 0).mean()
               for i in range(2)]
    ordered = LastClassShare().evaluate(outcome)
    assert ordered.value == pytest.approx(np.mean(by_hand)) and ordered.n == 2
    shuffled = LastClassShareShuffled().evaluate(outcome).value
    # On digits the order moves the garbage class at no cost (measured: 10-17% of the
    # noise for class 0 trained last against 1% shuffled; accuracy 98% both ways).
    assert ordered.value >= 3 * shuffled and ordered.value >= shuffled + 0.05
    accuracy = OrderedAccuracy().evaluate(outcome).value
    assert accuracy >= float(np.mean(outcome.accuracy_reference)) - 0.02


def test_class_by_class_training_hands_the_last_class_everything(
        digits: Dataset, digits_model: Model) -> None:
    from gauntlet.plugins.probes import TrainingOrder

    # The founding study's finding (the class trained last took 100% of random inputs),
    # and its price: in small batches the curriculum leaves a model that answers that
    # class to everything.
    outcome = TrainingOrder(last=5, protocol="class-blocks", seeds=1, batch_size=16,
                            probes=300).run(digits_model, digits, np.random.default_rng(0))
    assert outcome.shares()[0] >= 0.9 > outcome.shares(reference=True)[0]
    assert outcome.accuracy[0] < 0.5 < outcome.accuracy_reference[0]


def test_training_order_is_an_opt_in_probe(digits: Dataset) -> None:
    from gauntlet.plugins.probes import TrainingOrder
    from gauntlet.plugins.torch_models import load_model

    registry = make_registry(entrypoints=False, plugins={"probes": probes})
    assert registry.attacks["training-order"] is TrainingOrder and not registry.broken
    assert TrainingOrder.in_default_audit is False and TrainingOrder.needs_recipe
    model = load_model("builtin:cnn", {"dataset": digits, "seed": 0, "epochs": 1})
    with pytest.raises(NotApplicable, match="class 12"):
        TrainingOrder(last=12).run(model, digits, np.random.default_rng(0))


def test_the_shuffled_reference_is_the_plain_training_loop(digits: Dataset) -> None:
    from gauntlet.training import train_classifier, train_ordered

    x, y = digits.x_train[:300], digits.y_train[:300]
    plain, reference = build_cnn((1, 8, 8), 10), build_cnn((1, 8, 8), 10)
    reference.load_state_dict(plain.state_dict())
    train_classifier(plain, x, y, 3, epochs=2, batch_size=32)
    train_ordered(reference, x, y, 3, last=None, epochs=2, batch_size=32)
    for a, b in zip(plain.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


# -- trigger scan --------------------------------------------------------------------------


def test_the_anomaly_index_is_neural_cleanses() -> None:
    """(median - size) / (1.4826 x MAD), by hand, for classes below the median; 0 above."""
    from gauntlet import TriggerScanOutcome
    from gauntlet.outcome import below_median

    size = np.array([10.0, 9.0, 11.0, 12.0, 2.0, 10.5, 9.5, 11.5, 10.0, 8.0])
    median = np.median(size)
    mad = 1.4826 * np.median(np.abs(size - median))
    scan = TriggerScanOutcome(size=size, reach=np.ones(10), pixels=64, rows=32)
    expected = np.maximum((median - size) / mad, 0)
    np.testing.assert_allclose(scan.anomaly(), expected)
    assert scan.flagged() == [4]  # only the planted class stands out
    assert scan.artifacts()["trigger_scan"]["flagged"] == [4]
    # Equal sizes: nothing stands out; a floor caps how small the spread may be taken.
    assert not below_median(np.full(5, 3.0)).any()
    assert below_median(np.array([0.0, 0.0, 0.0, -0.1]), floor=0.05)[3] == \
        pytest.approx(2.0)


def test_the_scan_needs_images_and_gradients(digits_model: Model, digits: Dataset) -> None:
    from gauntlet.plugins.probes import TriggerScan

    with pytest.raises(NotApplicable, match="gradients"):
        TriggerScan().run(digits_model.deploy(access=Access.SCORES), digits,
                          np.random.default_rng(0))
    tabular = load_sklearn("iris", {})
    with pytest.raises(NotApplicable, match="image inputs"):
        TriggerScan().run(digits_model, tabular, np.random.default_rng(0))


def test_a_clean_model_s_triggers_all_reach_their_class(digits_model: Model,
                                                        digits: Dataset) -> None:
    """Every class gets a trigger reaching 90% of other classes' rows, smaller than the
    whole input, and the outcome's metrics read it."""
    from gauntlet.plugins.metrics import TriggerAnomaly, TriggerSize
    from gauntlet.plugins.probes import TriggerScan

    out = TriggerScan(rows=32, steps=60).run(digits_model, digits, np.random.default_rng(0))
    assert out.rows == 32 and out.pixels == 64
    reached = out.size < out.pixels
    assert reached.sum() >= 8 and (out.reach[reached] >= 0.9).all()
    assert TriggerSize().evaluate(out).value == pytest.approx(out.size.min() / 64)
    assert TriggerAnomaly().evaluate(out).value == pytest.approx(out.anomaly().max())
