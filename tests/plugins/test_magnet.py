"""MagNet on the real digits CNN: the reformer reconstructs clean inputs and keeps the
model's accuracy, the detector rejects about 1 - quantile of clean rows and more of the
adversarial rows made against the undefended model, and an adaptive PGD through the
reformer still breaks it (Carlini and Wagner, 2017)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gauntlet import Dataset, Model, NotApplicable, Stage
from gauntlet.plugins import magnet
from gauntlet.plugins.evasion import FGSM, PGD
from gauntlet.plugins.magnet import MagNet
from gauntlet.registry import make_registry

#: Test rows the PGD tests attack (the first ones; PGD-20 through the reformer is the
#: slowest part of this file).
ROWS = 200


@pytest.fixture(scope="module")
def defended(digits, digits_model) -> Model:
    return MagNet().apply(digits_model, digits, np.random.default_rng(0))


def reformed(model: Model, x: np.ndarray) -> np.ndarray:
    """The reformer's output (the deployment's pre-processing) for ``x``."""
    with torch.no_grad():
        return model._layers[-1].pre(torch.from_numpy(x)).numpy()


def accuracy(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.labels(x) == y).mean())


def test_registered_as_an_adaptive_detector() -> None:
    registry = make_registry(entrypoints=False, plugins={"magnet": magnet})
    assert not registry.broken
    cls = registry.defenses["magnet"]
    assert cls is MagNet and cls.stage is Stage.DETECTOR and cls.adaptive is True
    assert "Carlini and Wagner" in cls.evaluation


def test_reformer_reconstructs_clean_inputs_and_keeps_accuracy(digits, digits_model,
                                                               defended) -> None:
    x, y = digits.x_test, digits.y_test
    r = reformed(defended, x)
    assert r.shape == x.shape and r.min() >= 0.0 and r.max() <= 1.0
    error = np.abs(r - x).mean()
    # The trivial reconstruction, the mean training image, is off by 0.24 per value; the
    # autoencoder by about 0.06.
    baseline = np.abs(digits.x_train.mean(axis=0) - x).mean()
    assert error < 0.1 < baseline
    assert error < baseline / 3
    # Measured: 98.7% -> 96.7% (the paper's MNIST reformer cost 0.3 points).
    assert accuracy(defended, x, y) >= accuracy(digits_model, x, y) - 0.05
    # The classifier sees the reconstruction: the deployment's scores are the base's on it.
    np.testing.assert_allclose(defended.predict(x[:50]), digits_model.predict(r[:50]),
                               atol=1e-5)


def test_detector_is_the_reconstruction_error_above_the_threshold(digits, defended) -> None:
    """Cross-checked by hand: the mean |x - reformer(x)| of each row against the threshold."""
    x = digits.x_test
    detector = defended._layers[-1].detect
    by_hand = np.abs(x - reformed(defended, x)).reshape(len(x), -1).mean(axis=1)
    np.testing.assert_allclose(detector.error(torch.from_numpy(x)).numpy(), by_hand,
                               rtol=1e-5)
    np.testing.assert_array_equal(defended.rejects(x), by_hand > detector.threshold)


@pytest.mark.parametrize("quantile", [0.99, 0.9])
def test_false_rejection_rate_is_near_one_minus_the_quantile(digits, digits_model,
                                                            quantile) -> None:
    """The threshold is an order statistic of the errors of the 269 held-out training rows,
    and the false-rejection rate is measured on 450 test rows: both are samples, so the
    rate may differ from p = 1 - quantile by their combined standard error,
    sqrt(p(1-p)/269 + p(1-p)/450); three of them is the margin (2.3 points at p = 0.01,
    6.9 at p = 0.1). Measured at seed 0: 0.2% and 11.6%."""
    defended = MagNet(quantile=quantile).apply(digits_model, digits, np.random.default_rng(0))
    frr = defended.rejects(digits.x_test).mean()
    p, n_hold, n_test = 1 - quantile, round(0.2 * len(digits.x_train)), len(digits.x_test)
    margin = 3 * math.sqrt(p * (1 - p) * (1 / n_hold + 1 / n_test))
    assert abs(frr - p) <= margin, (frr, p, margin)


@pytest.mark.parametrize("attack", [FGSM(eps=0.2), PGD(eps=0.2, rows=ROWS, early_stop=False)],
                         ids=["fgsm", "pgd"])
def test_naive_adversarial_inputs_are_rejected_more_than_clean(digits, digits_model,
                                                               defended, attack) -> None:
    """Inputs made against the undefended model with all their steps are far from the
    clean data: the detector rejects most of them (measured on the first 200 rows at eps
    0.2: 72% FGSM, 77% PGD) and 0.5% of the clean ones. (PGD stopped at each row's first
    misclassified step stays nearer: 38% rejected.)"""
    x, y = digits.x_test[:ROWS], digits.y_test[:ROWS]
    x_naive = attack.adversarial(digits_model, x, y, np.random.default_rng(1))
    detection, false_rejection = defended.rejects(x_naive).mean(), defended.rejects(x).mean()
    assert detection > false_rejection + 0.4
    assert detection > 0.5 and false_rejection < 0.03


def test_adaptive_pgd_through_the_reformer_still_breaks_it(digits, digits_model,
                                                           defended) -> None:
    """Carlini and Wagner (2017): gradients go through the autoencoder, so PGD against the
    deployment drives robust accuracy far down, where PGD made against the undefended
    model (the naive evaluation) and then reformed leaves much of it (measured on the first
    200 rows at eps 0.2: 6.0% adaptive, 27.5% naive, 1.5% undefended, 96% clean)."""
    outcome = PGD(eps=0.2, rows=ROWS).run(defended, digits, np.random.default_rng(1),
                                          naive=digits_model)
    y = outcome.y_true
    adaptive = (outcome.proba.argmax(axis=1) == y).mean()
    naive = (outcome.proba_naive.argmax(axis=1) == y).mean()
    clean = (outcome.proba_clean.argmax(axis=1) == y).mean()
    assert clean > 0.9
    assert adaptive < 0.15
    assert naive > adaptive + 0.1
    # The outcome carries what the detector saw, for the report's rates.
    assert outcome.rejected is not None and outcome.rejected_clean is not None
    assert outcome.rejected_clean.mean() < 0.03
    # The gradient is the deployment's, through the reformer, not the base model's.
    g_defended = defended.loss_gradient(digits.x_test[:20], y[:20])
    g_base = digits_model.loss_gradient(digits.x_test[:20], y[:20])
    assert np.isfinite(g_defended).all() and np.abs(g_defended).sum() > 0
    assert not np.allclose(g_defended, g_base, atol=1e-6)


def test_deterministic_for_a_seed_and_leaves_global_state(digits, digits_model) -> None:
    x = digits.x_test[:100]
    torch_state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = MagNet().apply(digits_model, digits, np.random.default_rng(3))
    b = MagNet().apply(digits_model, digits, np.random.default_rng(3))
    c = MagNet().apply(digits_model, digits, np.random.default_rng(4))
    assert torch.equal(torch.get_rng_state(), torch_state)  # drew from the given rng only
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(reformed(a, x), reformed(b, x))
    assert a._layers[-1].detect.threshold == b._layers[-1].detect.threshold
    assert not np.array_equal(reformed(a, x), reformed(c, x))


def test_any_input_shape_and_range(digits, digits_model) -> None:
    """Tabular rows (flattened digits) in [-1, 1]: the MLP autoencoder handles them and
    keeps reconstructions inside the range; the conv one needs images."""
    flat = Dataset("flat-digits", digits.x_train.reshape(-1, 64) * 2 - 1, digits.y_train,
                   digits.x_test.reshape(-1, 64) * 2 - 1, digits.y_test, 10,
                   clip_values=(-1.0, 1.0))
    base = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)),
                               _Affine(0.5, 0.5), digits_model._base)
    model = Model(base, input_shape=(64,), n_classes=10, clip_values=(-1.0, 1.0))
    defended = MagNet(epochs=10).apply(model, flat, np.random.default_rng(0))
    r = reformed(defended, flat.x_test)
    assert r.shape == flat.x_test.shape and r.min() >= -1.0 and r.max() <= 1.0
    assert accuracy(defended, flat.x_test, flat.y_test) > 0.8
    with pytest.raises(NotApplicable, match="image inputs"):
        MagNet(autoencoder="conv").apply(model, flat, np.random.default_rng(0))


def test_conv_autoencoder_on_images(digits, digits_model) -> None:
    defended = MagNet(autoencoder="conv", epochs=5).apply(digits_model, digits,
                                                          np.random.default_rng(0))
    r = reformed(defended, digits.x_test[:50])
    assert r.shape == (50, 1, 8, 8) and 0.0 <= r.min() and r.max() <= 1.0


class _Affine(torch.nn.Module):
    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def test_the_clean_cell_reports_what_the_detector_costs_users(digits, digits_model,
                                                             defended) -> None:
    from gauntlet.plan import Clean
    from gauntlet.plugins.metrics import FalseRejectionRate

    outcome = Clean().run(defended, digits, np.random.default_rng(0))
    assert outcome.rejected is not None
    assert np.array_equal(outcome.rejected, defended.rejects(digits.x_test))
    rate = FalseRejectionRate().evaluate(outcome)
    assert rate.value == pytest.approx(outcome.rejected.mean()) and rate.n == len(digits.x_test)
    assert Clean().run(digits_model, digits, np.random.default_rng(0)).rejected is None
