"""Evasion attacks on the real digits CNN, checked against independent references:
a hand-written torch FGSM loop and ART's FastGradientMethod."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gauntlet import (
    Access,
    ConfigError,
    Dataset,
    EvasionOutcome,
    Family,
    Model,
    NotApplicable,
)
from gauntlet.plugins import evasion
from gauntlet.registry import make_registry

ROWS = 150
ATTACKS = (evasion.FGSM, evasion.PGD, evasion.UniformNoise)


def robust_accuracy(outcome: EvasionOutcome) -> float:
    return float((outcome.proba.argmax(axis=1) == outcome.y_true).mean())


def reference_fgsm(model: Model, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """FGSM written out by hand, on a copy of the module, all rows in one batch."""
    module = copy.deepcopy(model.module)
    xt = torch.tensor(x, requires_grad=True)
    F.cross_entropy(module(xt), torch.tensor(y)).backward()
    return (xt + eps * xt.grad.sign()).clamp(0.0, 1.0).detach().numpy()


@pytest.fixture(scope="module")
def rows(digits: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return digits.x_test[:ROWS], digits.y_test[:ROWS]


# -- contract ----------------------------------------------------------------------------


def test_registered_through_the_hook() -> None:
    registry = make_registry(entrypoints=False, plugins={"evasion": evasion})
    assert not registry.broken
    assert {"fgsm", "pgd", "noise"} <= set(registry.attacks)
    assert registry.attacks["fgsm"] is evasion.FGSM


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_metadata_and_docstring(cls: type) -> None:
    cls.validate_class()
    assert cls.family is Family.EVASION
    assert cls.outcome is EvasionOutcome
    summary, blank, reference = (cls.__doc__ or "").strip().splitlines()[:3]
    assert summary.strip() and not blank.strip() and reference.strip()
    assert cls.params["eps"] == (0.05, 0.1, 0.2, 0.3)
    assert cls.params["samples"] == 0


def test_needs() -> None:
    assert evasion.FGSM.needs is Access.GRADIENTS
    assert evasion.PGD.needs is Access.GRADIENTS
    assert evasion.UniformNoise.needs is Access.LABELS


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_grid_expands_the_eps_sweep(cls: type) -> None:
    grid = cls.grid()
    assert [p["eps"] for p, _ in grid] == [0.05, 0.1, 0.2, 0.3]
    assert [label for _, label in grid] == ["eps=0.05", "eps=0.1", "eps=0.2", "eps=0.3"]
    assert [p["eps"] for p, _ in cls.grid({"eps": [0.25]})] == [0.25]
    attack = cls(eps=0.2)
    assert attack.eps == 0.2 and attack.samples == 0
    with pytest.raises(ConfigError, match="known parameters"):
        cls(epsilon=0.2)


def test_pgd_parameters() -> None:
    attack = evasion.PGD(eps=0.1)
    assert (attack.step_ratio, attack.max_iter, attack.batch_size) == (0.25, 20, 256)
    assert attack.num_random_init in (0, 1)


# -- each attack on the real CNN --------------------------------------------------------


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_outcome_on_digits(cls: type, digits: Dataset, digits_model: Model,
                           rng: np.random.Generator) -> None:
    eps = 0.1
    for p in digits_model.module.parameters():  # training leaves its last gradients
        p.grad = None
    outcome = cls(eps=eps, samples=ROWS).run(digits_model, digits, rng)
    assert isinstance(outcome, EvasionOutcome)
    assert outcome.n == ROWS
    np.testing.assert_array_equal(outcome.y_true, digits.y_test[:ROWS])
    assert outcome.proba.shape == outcome.proba_clean.shape == (ROWS, digits.n_classes)
    np.testing.assert_allclose(outcome.proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(outcome.proba_clean, digits_model.predict(digits.x_test[:ROWS]),
                               atol=1e-5)
    assert 0.0 < outcome.linf <= eps + 1e-6
    # The attack changed some predictions, and the model was left as it was found.
    assert (outcome.proba.argmax(1) != outcome.proba_clean.argmax(1)).any()
    assert all(p.requires_grad and p.grad is None for p in digits_model.module.parameters())


def test_samples_zero_means_every_test_row(digits: Dataset, digits_model: Model,
                                           rng: np.random.Generator) -> None:
    small = dataclasses.replace(digits, x_test=digits.x_test[:40], y_test=digits.y_test[:40])
    for cls in (evasion.FGSM, evasion.UniformNoise):
        assert cls(eps=0.1).run(digits_model, small, rng).n == 40
        assert cls(eps=0.1, samples=25).run(digits_model, small, rng).n == 25


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_fgsm_matches_a_hand_written_loop(eps: float, digits: Dataset, digits_model: Model,
                                          rows: tuple[np.ndarray, np.ndarray],
                                          rng: np.random.Generator) -> None:
    x, y = rows
    x_ref = reference_fgsm(digits_model, x, y, eps)
    expected = float((digits_model.predict(x_ref).argmax(1) == y).mean())
    outcome = evasion.FGSM(eps=eps, samples=ROWS).run(digits_model, digits, rng)
    assert abs(robust_accuracy(outcome) - expected) <= 0.001
    np.testing.assert_allclose(outcome.proba, digits_model.predict(x_ref), atol=1e-4)
    assert outcome.linf == pytest.approx(np.abs(x_ref - x).max(), abs=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_fgsm_matches_art(eps: float, digits: Dataset, digits_model: Model,
                          rows: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> None:
    from art.attacks.evasion import FastGradientMethod

    x, y = rows
    art = FastGradientMethod(digits_model.to_art(), norm=np.inf, eps=eps, batch_size=256)
    x_art = art.generate(x, y=y)
    for p in digits_model.module.parameters():  # ART's backward leaves weight gradients
        p.grad = None
    outcome = evasion.FGSM(eps=eps, samples=ROWS).run(digits_model, digits, rng)
    assert robust_accuracy(outcome) == pytest.approx(
        float((digits_model.predict(x_art).argmax(1) == y).mean()), abs=0.001)
    np.testing.assert_allclose(outcome.proba, digits_model.predict(x_art), atol=1e-4)


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_pgd_at_least_as_strong_as_fgsm_and_noise_weaker(
        eps: float, digits: Dataset, digits_model: Model, rng: np.random.Generator) -> None:
    fgsm = robust_accuracy(evasion.FGSM(eps=eps, samples=ROWS).run(digits_model, digits, rng))
    pgd = evasion.PGD(eps=eps, samples=ROWS).run(digits_model, digits, rng)
    noise = robust_accuracy(
        evasion.UniformNoise(eps=eps, samples=ROWS).run(digits_model, digits, rng))
    assert robust_accuracy(pgd) <= fgsm + 0.01
    assert noise >= fgsm
    assert pgd.linf <= eps + 1e-6


def test_pgd_is_reproducible_and_restores_numpy_state(digits: Dataset,
                                                      digits_model: Model) -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    attack = evasion.PGD(eps=0.1, max_iter=5, samples=60)
    a = attack.run(digits_model, digits, np.random.default_rng(7))
    b = attack.run(digits_model, digits, np.random.default_rng(7))
    np.testing.assert_array_equal(a.proba, b.proba)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_noise_is_drawn_from_rng(digits: Dataset, digits_model: Model) -> None:
    attack = evasion.UniformNoise(eps=0.3, samples=ROWS)
    a = attack.run(digits_model, digits, np.random.default_rng(1))
    b = attack.run(digits_model, digits, np.random.default_rng(1))
    c = attack.run(digits_model, digits, np.random.default_rng(2))
    np.testing.assert_array_equal(a.proba, b.proba)
    assert not np.array_equal(a.proba, c.proba)
    assert 0.29 < a.linf <= 0.3 + 1e-6


def test_zero_eps_changes_nothing(digits: Dataset, digits_model: Model,
                                  rng: np.random.Generator) -> None:
    for cls in ATTACKS:
        outcome = cls(eps=0.0, samples=50).run(digits_model, digits, rng)
        assert outcome.linf == 0.0
        np.testing.assert_allclose(outcome.proba, outcome.proba_clean, atol=1e-6)


# -- models the attacks meet ------------------------------------------------------------


def _with_access(model: Model, access: Access) -> Model:
    return Model(model.module, input_shape=model.input_shape, n_classes=model.n_classes,
                 clip_values=model.clip_values, access=access)


def test_gradient_attacks_not_applicable_without_gradients(digits_model: Model) -> None:
    scores_only = _with_access(digits_model, Access.SCORES)
    for cls in (evasion.FGSM, evasion.PGD):
        with pytest.raises(NotApplicable, match="gradients"):
            cls(eps=0.1).check(scores_only)
    evasion.UniformNoise(eps=0.1).check(scores_only)
    evasion.UniformNoise(eps=0.1).check(_with_access(digits_model, Access.LABELS))


def test_fgsm_asks_an_overridden_predict(digits: Dataset, digits_model: Model,
                                         rng: np.random.Generator) -> None:
    class LabelOnly(Model):
        """Answers one-hot labels: predict() is not the softmax of the module."""

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.eye(self.n_classes, dtype=np.float32)[super().predict(x).argmax(1)]

    model = LabelOnly(digits_model.module, input_shape=digits_model.input_shape,
                      n_classes=digits_model.n_classes)
    labels = evasion.FGSM(eps=0.1, samples=ROWS).run(model, digits, rng)
    plain = evasion.FGSM(eps=0.1, samples=ROWS).run(digits_model, digits, rng)
    assert set(np.unique(labels.proba)) <= {0.0, 1.0}
    np.testing.assert_array_equal(labels.proba.argmax(1), plain.proba.argmax(1))
    assert labels.linf == pytest.approx(plain.linf)


@pytest.mark.parametrize("params", [{"eps": -0.1}, {"samples": -1}, {"batch_size": 0}])
def test_bad_parameters_are_config_errors(params: dict, digits: Dataset, digits_model: Model,
                                          rng: np.random.Generator) -> None:
    with pytest.raises(ConfigError):
        evasion.FGSM(**params).run(digits_model, digits, rng)


def test_fgsm_art_backend_matches_the_torch_step(digits, digits_model, rows, rng):
    """backend="art" runs ART's FastGradientMethod itself; both backends agree."""
    for eps in (0.1, 0.2):
        art = evasion.FGSM(eps=eps, samples=ROWS, backend="art").run(digits_model, digits, rng)
        ours = evasion.FGSM(eps=eps, samples=ROWS).run(digits_model, digits, rng)
        assert robust_accuracy(art) == pytest.approx(robust_accuracy(ours), abs=0.001)
        np.testing.assert_allclose(art.proba, ours.proba, atol=1e-4)
        assert art.linf <= eps + 1e-6
    assert all(p.grad is None for p in digits_model.module.parameters())
    with pytest.raises(ConfigError, match="backend must be"):
        evasion.FGSM(eps=0.1, backend="jax").run(digits_model, digits, rng)
