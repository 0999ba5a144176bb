"""The trash-bucket probe on the real digits CNN."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gauntlet import Access, ConfigError, Dataset, Family, Model, NotApplicable, ProbeOutcome
from gauntlet.plugins import probes
from gauntlet.plugins.probes import TrashBucket, uniform_noise
from gauntlet.registry import make_registry


def test_registers_with_its_metadata() -> None:
    registry = make_registry(entrypoints=False, plugins={"probes": probes})
    assert registry.broken == []
    cls = registry.attacks["trash-bucket"]
    assert cls is TrashBucket
    assert cls.family is Family.PROBE
    assert cls.needs is Access.SCORES
    assert cls.outcome is ProbeOutcome
    assert cls.params == {"samples": 1000}


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


def test_outcome_is_the_model_on_its_own_range_of_noise(digits_model: Model,
                                                        digits: Dataset) -> None:
    # The probe follows the model's clip_values and input_shape, not the data's.
    wide = Model(digits_model.module, input_shape=digits_model.input_shape,
                 n_classes=digits_model.n_classes, clip_values=(-1.0, 2.0))
    outcome = TrashBucket(samples=300).run(wide, digits, np.random.default_rng(1))
    x = uniform_noise((1, 8, 8), (-1.0, 2.0), 300, np.random.default_rng(1))
    with torch.no_grad():
        expected = torch.softmax(digits_model.module(torch.from_numpy(x)), dim=1).numpy()
    assert outcome.proba.shape == (300, 10) and outcome.n == 300
    np.testing.assert_allclose(outcome.proba, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outcome.proba.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_same_numbers(digits_model: Model, digits: Dataset) -> None:
    first = TrashBucket(samples=200).run(digits_model, digits, np.random.default_rng(7))
    again = TrashBucket(samples=200).run(digits_model, digits, np.random.default_rng(7))
    other = TrashBucket(samples=200).run(digits_model, digits, np.random.default_rng(8))
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


def test_labels_only_model_is_not_applicable(digits_model: Model, digits: Dataset) -> None:
    labels_only = Model(digits_model.module, input_shape=digits_model.input_shape,
                        n_classes=digits_model.n_classes, access=Access.LABELS)
    with pytest.raises(NotApplicable, match="scores"):
        TrashBucket().check(labels_only)
    with pytest.raises(NotApplicable):
        TrashBucket().run(labels_only, digits, np.random.default_rng(0))


@pytest.mark.parametrize("samples", [0, -5])
def test_rejects_no_samples(samples: int) -> None:
    with pytest.raises(ConfigError, match="samples"):
        TrashBucket(samples=samples)
