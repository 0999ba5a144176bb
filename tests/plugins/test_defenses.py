"""Built-in defenses on the real digits CNN: what each does to inputs and scores, what it
exposes to an attacker, and that re-deploying on a new base keeps the defense."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import plugin

from gauntlet import Access, AccessDenied, ConfigError, Defense, Model, PluginError, Stage
from gauntlet.model import weights_sha256
from gauntlet.plugins import defenses
from gauntlet.plugins.defenses import (
    EOT_DEFAULT,
    PROBABILITY_FLOOR,
    ConfidenceClip,
    ConfidenceNoise,
    InputNoiseDefense,
    NoDefense,
)
from gauntlet.plugins.evasion import FGSM
from gauntlet.provenance import catalogue
from gauntlet.registry import make_registry
from gauntlet.reports.context import build_context

ALL = (NoDefense, ConfidenceClip, InputNoiseDefense, ConfidenceNoise)
SCORES_ONLY = (ConfidenceClip, ConfidenceNoise)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def x(digits) -> np.ndarray:
    return digits.x_test[:200]


@pytest.fixture(scope="module")
def base(digits_model) -> torch.nn.Module:
    """The trained base module (private to the Model; read here to watch what reaches it)."""
    return digits_model._base


@pytest.fixture(scope="module")
def sharper_base(base) -> torch.nn.Module:
    """Another trained base: the digits CNN with its last layer scaled by 3 (larger logits,
    same argmax), standing in for a re-trained one."""
    module = copy.deepcopy(base)
    with torch.no_grad():
        module[-1].weight.mul_(3.0)
        module[-1].bias.mul_(3.0)
    return module.eval()


def around(module: torch.nn.Module, like: Model) -> Model:
    return Model(module, input_shape=like.input_shape, n_classes=like.n_classes,
                 clip_values=like.clip_values, recipe=like.recipe)


def seeded_predict(model: Model, x: np.ndarray, seed: int = 5) -> np.ndarray:
    torch.manual_seed(seed)
    return model.predict(x)


class Recorder:
    """Records the inputs a base module receives (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: list[np.ndarray] = []
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.seen.append(args[0].detach().numpy().copy())

    def close(self) -> None:
        self.handle.remove()


# -- declarations ----------------------------------------------------------------------


def test_registered_with_metadata():
    registry = make_registry(entrypoints=False, plugins={"defenses": defenses})
    assert not registry.broken
    assert set(registry.defenses) == {"none", "confidence-clip", "input-noise",
                                      "confidence-noise"}
    for cls in ALL:
        assert cls.evaluation.strip() and isinstance(cls.stage, Stage)
        assert "adaptive" in vars(cls), f"{cls.name} inherits adaptive instead of declaring it"
    # Defenses that hide gradients are evaluated by attacks that do not adapt to them.
    assert {cls.name for cls in ALL if not cls.adaptive} == {"confidence-clip",
                                                             "confidence-noise"}
    assert ConfidenceClip(r=1).r == 1.0


def test_report_flags_the_defenses_that_attacks_do_not_adapt_to():
    registry = make_registry(entrypoints=False, plugins={"defenses": defenses})
    declared = catalogue(registry)["defenses"]
    # The report lists the defenses an audit ran: one clean cell under each.
    cells = [{"id": f"{name}|clean|", "defense": name, "defense_point": "", "attack": "clean",
              "attack_point": "", "family": "baseline", "status": "ok", "metrics": {}}
             for name in declared]
    notes = {d.name: d for d in build_context({"defenses": declared, "cells": cells}).defenses}
    assert set(notes) == set(declared)
    assert {n for n, d in notes.items() if d.not_adaptive} == {"confidence-clip",
                                                               "confidence-noise"}
    assert "upper bound" in notes["confidence-clip"].evaluation
    assert f"over {EOT_DEFAULT} fresh noise draws" in notes["input-noise"].evaluation


@pytest.mark.parametrize("cls,bad", [(ConfidenceClip, 0), (InputNoiseDefense, -0.1),
                                     (ConfidenceNoise, 0), (ConfidenceNoise, 1.5)])
def test_out_of_bounds_r_is_a_config_error(cls, bad):
    with pytest.raises(ConfigError, match=rf"{cls.name}.*'r'"):
        cls(r=bad)


def test_a_defense_that_does_not_declare_adaptive_is_rejected():
    class Undeclared(Defense):
        """Leaves the model alone but never says how attacks account for it.

        Test defense.
        """

        name = "undeclared"
        evaluation = "Unknown."

        def apply(self, model, dataset, rng):
            return model.deploy()

    with pytest.raises(PluginError, match="'undeclared'.*adaptive"):
        Undeclared.validate_class()
    registry = make_registry(entrypoints=False, plugins={"mine": plugin("mine", Undeclared)})
    assert "undeclared" not in registry.defenses
    [broken] = registry.broken
    assert broken.name == "mine" and "'undeclared'" in broken.error
    assert "adaptive" in broken.error


# -- every defense ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_deploying_leaves_the_base_untouched(cls, digits, digits_model, x, rng):
    sha, before = weights_sha256(digits_model), digits_model.predict(x)
    defended = cls().apply(digits_model, digits, rng)
    assert isinstance(defended, Model) and defended is not digits_model
    for attr in ("input_shape", "n_classes", "clip_values", "recipe", "name", "source"):
        assert getattr(defended, attr) == getattr(digits_model, attr), attr
    defended.predict(x)
    assert digits_model.access is Access.GRADIENTS
    assert weights_sha256(defended) == weights_sha256(digits_model) == sha
    np.testing.assert_array_equal(digits_model.predict(x), before)


@pytest.mark.parametrize("cls", ALL)
def test_with_module_keeps_the_defense(cls, digits, digits_model, x, rng, sharper_base):
    """Poisoning re-trains the base and must face the defense as deployed: a defended
    model moved onto a new base answers as the defense applied to that base directly."""
    defended = cls().apply(digits_model, digits, rng)
    rebuilt = defended.with_module(sharper_base)
    direct = cls().apply(around(sharper_base, digits_model), digits, rng)
    assert rebuilt.access is defended.access
    assert rebuilt.recipe is digits_model.recipe
    np.testing.assert_array_equal(seeded_predict(rebuilt, x), seeded_predict(direct, x))
    assert not np.allclose(seeded_predict(rebuilt, x), seeded_predict(defended, x))
    # And back: a rebuilt model rebuilds too.
    np.testing.assert_array_equal(seeded_predict(rebuilt.with_module(digits_model._base), x),
                                  seeded_predict(defended, x))


@pytest.mark.parametrize("cls", SCORES_ONLY)
def test_output_defenses_hide_gradients(cls, digits, digits_model, x, rng):
    defended = cls().apply(digits_model, digits, rng)
    assert defended.access is Access.SCORES
    y = digits.y_test[:len(x)]
    for ask in (lambda: defended.loss_gradient(x, y), lambda: defended.logits(x),
                defended.differentiable, defended.to_art):
        with pytest.raises(AccessDenied, match="scores only"):
            ask()
    p = defended.predict(x)
    assert p.shape == (len(x), 10) and defended.queries == len(x)
    # The same draws for both (confidence-noise is randomised: unseeded, a row near a
    # tie flips between two calls, as CI saw under another test order).
    torch.manual_seed(3)
    labels = defended.labels(x[:20])
    np.testing.assert_array_equal(labels, seeded_predict(defended, x[:20], 3).argmax(axis=1))
    # Stacked on a labels-only deployment, the access stays labels only.
    labels_only = digits_model.deploy(access=Access.LABELS)
    assert cls().apply(labels_only, digits, rng).access is Access.LABELS


# -- none ------------------------------------------------------------------------------


def test_none_is_the_undefended_model(digits, digits_model, x, rng):
    defended = NoDefense().apply(digits_model, digits, rng)
    np.testing.assert_array_equal(defended.predict(x), digits_model.predict(x))
    np.testing.assert_array_equal(defended.loss_gradient(x, digits.y_test[:200]),
                                  digits_model.loss_gradient(x, digits.y_test[:200]))
    assert defended.access is digits_model.access


# -- confidence-clip -------------------------------------------------------------------


def clip_cap(r: float, n_classes: int) -> float:
    return 1.0 / (1.0 + (n_classes - 1) * math.exp(-2 * r))


def test_confidence_clip_caps_confidence_keeps_argmax(digits, digits_model, x, rng):
    r = 2.0
    defended = ConfidenceClip(r=r).apply(digits_model, digits, rng)
    base_z = digits_model.logits(x)
    p = defended.predict(x)
    np.testing.assert_array_equal(p.argmax(axis=1), base_z.argmax(axis=1))
    cap = clip_cap(r, digits.n_classes)
    assert p.max() <= cap + 1e-6
    # The defense must bite on this model: most undefended rows are more confident.
    assert (softmax(base_z).max(axis=1) > cap).mean() > 0.5
    # Reference: anchor the top logit at r, clip, softmax (numpy, float64).
    expected = softmax(np.clip(base_z - base_z.max(axis=1, keepdims=True) + r, -r, r))
    np.testing.assert_allclose(p, expected, atol=1e-5)


def test_retrain_keeps_the_defense(digits, digits_model, x, rng):
    defended = ConfidenceClip().apply(digits_model, digits, rng)
    # Same data and seed as the fixture: the recipe's cache returns the trained base.
    retrained = defended.retrain(digits.x_train, digits.y_train, 0)
    np.testing.assert_allclose(retrained.predict(x), defended.predict(x))
    assert retrained.access is Access.SCORES


# -- input-noise -----------------------------------------------------------------------


def test_input_noise_perturbs_inputs_by_at_most_r(digits, digits_model, base, x, rng):
    r = 0.1
    defended = InputNoiseDefense(r=r).apply(digits_model, digits, rng)
    assert defended.access is Access.GRADIENTS
    rec = Recorder(base)
    try:
        defended.labels(x)
        defended.labels(x)
    finally:
        rec.close()
    first, second = rec.seen
    delta = first - x
    assert np.abs(delta).max() <= r + 1e-6
    assert first.min() >= 0.0 and first.max() <= 1.0
    # Interior pixels get the full noise; clipping only shrinks it at the range ends.
    interior = (x > r) & (x < 1 - r)
    assert np.abs(delta[interior]).max() > 0.9 * r
    assert np.abs(delta[interior]).mean() == pytest.approx(r / 2, rel=0.05)
    assert not np.array_equal(first, second)  # a fresh draw every call


def test_input_noise_draws_as_before(digits, digits_model, base, x, rng):
    """The noise comes from torch's global generator in the order it always did (the
    demo audit's recorded numbers depend on it): uniform, scaled, added, clipped."""
    r = 0.1
    defended = InputNoiseDefense(r=r).apply(digits_model, digits, rng)
    xt = torch.as_tensor(x)
    torch.manual_seed(7)
    noisy = (xt + (torch.rand_like(xt) * 2.0 - 1.0) * r).clamp(0.0, 1.0)
    expected = softmax(base(noisy).numpy())
    np.testing.assert_allclose(seeded_predict(defended, x, 7), expected, atol=1e-6)
    assert not np.array_equal(seeded_predict(defended, x, 7), defended.predict(x))


def test_input_noise_passes_gradients(digits, digits_model, base, x, rng):
    """Gradients flow through the real noise (no stand-in): with one draw (eot=1) the
    gradient is the base's at the noisy input, zero where clipping held a value at the
    edge of the range."""
    r, y = 0.1, digits.y_test[:200]
    defended = InputNoiseDefense(r=r, eot=1).apply(digits_model, digits, rng)
    torch.manual_seed(3)
    grad = defended.loss_gradient(x, y)
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    torch.manual_seed(3)
    noisy = (xt + (torch.rand_like(xt) * 2.0 - 1.0) * r).clamp(0.0, 1.0)
    torch.nn.functional.cross_entropy(base(noisy), torch.as_tensor(y)).backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5, atol=1e-9)
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    assert not np.array_equal(grad, defended.loss_gradient(x, y))  # a fresh draw


def eot_gradient_by_hand(base: torch.nn.Module, x: np.ndarray, y: np.ndarray, r: float,
                         draws: int, seed: int) -> np.ndarray:
    """The gradient of the cross-entropy of the mean probabilities over ``draws`` noise
    draws, drawn one after the other from torch's generator seeded with ``seed``."""
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    torch.manual_seed(seed)
    probs = []
    for _ in range(draws):
        noisy = (xt + (torch.rand_like(xt) * 2.0 - 1.0) * r).clamp(0.0, 1.0)
        probs.append(torch.softmax(base(noisy), dim=1))
    mean = torch.stack(probs).mean(dim=0)
    torch.nn.functional.nll_loss(mean.log(), torch.as_tensor(y)).backward()
    return xt.grad.numpy()


def test_eot_gradient_is_that_of_the_mean_probabilities(digits, digits_model, base, x, rng):
    """EOT (Athalye et al. 2018): with eot=k the gradient is that of the expected
    probabilities over k fresh noise draws, equal to a hand computation on the same draws."""
    r, y, k = 0.1, digits.y_test[:200], 5
    defended = InputNoiseDefense(r=r, eot=k).apply(digits_model, digits, rng)
    torch.manual_seed(11)
    grad = defended.loss_gradient(x, y)
    np.testing.assert_allclose(grad, eot_gradient_by_hand(base, x, y, r, k, 11), rtol=1e-4,
                               atol=1e-8)
    # Not one draw's gradient: the first draw alone differs.
    assert not np.allclose(grad, eot_gradient_by_hand(base, x, y, r, 1, 11), atol=1e-6)


def test_eot_predictions_take_one_draw(digits, digits_model, x, rng):
    """Only the gradient path averages: what the deployment serves is one fresh draw,
    the same one a deployment without EOT serves."""
    with_eot = InputNoiseDefense(eot=8).apply(digits_model, digits, rng)
    without = InputNoiseDefense(eot=1).apply(digits_model, digits, rng)
    np.testing.assert_array_equal(seeded_predict(with_eot, x, 4), seeded_predict(without, x, 4))
    assert with_eot.queries == len(x)


def test_eot_reduces_the_variance_of_the_gradient(digits, digits_model, x, rng):
    """Two gradients of independent draws agree better with more draws per gradient."""
    y = digits.y_test[:200]

    def agreement(eot: int) -> float:
        defended = InputNoiseDefense(eot=eot).apply(digits_model, digits, rng)
        a, b = (defended.loss_gradient(x, y).ravel() for _ in range(2))
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    torch.manual_seed(0)
    one, eight = agreement(1), agreement(8)
    assert eight > one + 0.1 and eight > 0.8, (one, eight)


def test_eot_closes_the_fgsm_gap_on_input_noise(digits, digits_model, rng):
    """The paper's prediction: one draw per gradient made input-noise look robust to FGSM
    (its single step follows one draw's noise); with the default EOT, FGSM on the same rows
    leaves far fewer correct, about as few as on the undefended model."""
    attack = FGSM(eps=0.2, rows=200)

    def robust(model: Model, seed: int) -> float:
        torch.manual_seed(seed)
        out = attack.run(model, digits, np.random.default_rng(seed))
        return float((out.proba.argmax(axis=1) == out.y_true).mean())

    one = robust(InputNoiseDefense(eot=1).apply(digits_model, digits, rng), 0)
    eot = robust(InputNoiseDefense().apply(digits_model, digits, rng), 0)
    undefended = robust(digits_model, 0)
    assert eot < one - 0.08, (eot, one)
    assert eot < undefended + 0.04, (eot, undefended)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_eot_must_be_a_positive_number_of_draws(digits_model, bad):
    with pytest.raises(TypeError, match="eot"):
        digits_model.deploy(pre=lambda t: t, eot=bad)


def test_stacked_defenses_are_rebuilt_together(digits, digits_model, x, rng, sharper_base):
    clipped = ConfidenceClip().apply(digits_model, digits, rng)
    stacked = InputNoiseDefense().apply(clipped, digits, rng)
    assert stacked.access is Access.SCORES
    rebuilt = stacked.with_module(sharper_base)
    rec = Recorder(sharper_base)
    try:
        p = rebuilt.predict(x)
    finally:
        rec.close()
    assert len(rec.seen) == 1 and not np.array_equal(rec.seen[0], x)  # noise kept
    # Clip kept: the top logit is anchored at r, so every top-one probability is the cap.
    cap = clip_cap(2.0, 10)
    assert p.max() <= cap + 1e-6
    assert np.mean(p.max(axis=1) > cap - 1e-3) > 0.9


# -- confidence-noise ------------------------------------------------------------------


def test_confidence_noise_matches_reference_draw(digits, digits_model, x, rng):
    r = 0.1
    defended = ConfidenceNoise(r=r).apply(digits_model, digits, rng)
    base_z = torch.as_tensor(digits_model.logits(x))
    # Reference: the same uniform draw on the base model's softmax, floored, renormalised.
    torch.manual_seed(3)
    p = torch.softmax(base_z.double(), dim=1)
    noise = torch.rand(p.shape, dtype=torch.float64) * 2 * r - r
    assert noise.abs().max() <= r
    raw = (p + noise).clamp_min(PROBABILITY_FLOOR)
    assert (raw - p).abs().max() <= r + 1e-12  # before renormalisation: within r
    expected = (raw / raw.sum(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(seeded_predict(defended, x, 3), expected, atol=1e-5)


def test_confidence_noise_rows_are_distributions(digits, digits_model, x, rng):
    r = 0.1
    defended = ConfidenceNoise(r=r).apply(digits_model, digits, rng)
    base = digits_model.predict(x)
    a, b = defended.predict(x), defended.predict(x)
    for p in (a, b):
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
        assert p.min() >= 0
    assert not np.array_equal(a, b)
    assert 0 < np.abs(a - base).mean() < r
    np.testing.assert_array_equal(seeded_predict(defended, x, 11),
                                  seeded_predict(defended, x, 11))


def test_confidence_noise_keeps_sure_answers(digits, digits_model, x, rng, sharper_base):
    r = 0.1
    rebuilt = ConfidenceNoise(r=r).apply(digits_model, digits, rng).with_module(sharper_base)
    base = around(sharper_base, digits_model).predict(x)
    p = rebuilt.predict(x)
    assert not np.allclose(p, base, atol=1e-3)
    # Noise of at most r cannot overturn a top class above 0.5 + r (renormalising keeps
    # the order), so those rows keep the new base's argmax.
    sure = base.max(axis=1) > 0.5 + r
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(p[sure].argmax(axis=1), base[sure].argmax(axis=1))
