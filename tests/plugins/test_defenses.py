"""Built-in defenses on the real digits CNN: what each does to inputs and scores, what it
exposes to an attacker, and that re-deploying on a new base keeps the defense."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from gauntlet import Access, Model, NotApplicable, Stage
from gauntlet.plugins import defenses
from gauntlet.plugins.defenses import (
    PROBABILITY_FLOOR,
    ConfidenceClip,
    ConfidenceNoise,
    InputNoiseDefense,
    NoDefense,
)
from gauntlet.registry import make_registry

ALL = (NoDefense, ConfidenceClip, InputNoiseDefense, ConfidenceNoise)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def state(model: Model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.module.state_dict().items()}


@pytest.fixture(scope="module")
def x(digits) -> np.ndarray:
    return digits.x_test[:200]


@pytest.fixture(scope="module")
def sharper_base(digits_model) -> torch.nn.Module:
    """Another trained base: the digits CNN with its last layer scaled by 3 (larger logits,
    same argmax), standing in for a re-trained one."""
    module = copy.deepcopy(digits_model.module)
    with torch.no_grad():
        module[-1].weight.mul_(3.0)
        module[-1].bias.mul_(3.0)
    return module.eval()


def test_registered_with_metadata():
    registry = make_registry(entrypoints=False, plugins={"defenses": defenses})
    assert not registry.broken
    assert set(registry.defenses) == {"none", "confidence-clip", "input-noise",
                                      "confidence-noise"}
    for cls in ALL:
        assert cls.evaluation.strip() and isinstance(cls.stage, Stage)
    assert ConfidenceClip(r=1).r == 1.0


@pytest.mark.parametrize("cls", ALL)
def test_apply_returns_new_model_and_leaves_base_alone(cls, digits, digits_model, x, rng):
    before_state, before_pred = state(digits_model), digits_model.predict(x)
    defended = cls().apply(digits_model, digits, rng)
    assert defended is not digits_model
    for attr in ("input_shape", "n_classes", "clip_values", "recipe", "name", "source"):
        assert getattr(defended, attr) == getattr(digits_model, attr), attr
    defended.predict(x)
    assert digits_model.access is Access.GRADIENTS
    after = state(digits_model)
    assert all(torch.equal(before_state[k], after[k]) for k in before_state)
    np.testing.assert_array_equal(digits_model.predict(x), before_pred)


def test_none_is_the_undefended_model(digits, digits_model, x, rng, sharper_base):
    defended = NoDefense().apply(digits_model, digits, rng)
    np.testing.assert_array_equal(defended.predict(x), digits_model.predict(x))
    assert defended.access is digits_model.access
    rebuilt = defended.with_module(sharper_base)
    assert rebuilt.module is sharper_base
    np.testing.assert_array_equal(rebuilt.logits(x), sharper_base(torch.as_tensor(x)).detach())


def clip_cap(r: float, n_classes: int) -> float:
    return 1.0 / (1.0 + (n_classes - 1) * math.exp(-2 * r))


def test_confidence_clip_caps_confidence_keeps_argmax(digits, digits_model, x, rng):
    r = 2.0
    defended = ConfidenceClip(r=r).apply(digits_model, digits, rng)
    base_z, z = digits_model.logits(x), defended.logits(x)
    p = defended.predict(x)
    np.testing.assert_array_equal(p.argmax(axis=1), base_z.argmax(axis=1))
    assert z.min() >= -r and z.max() <= r
    np.testing.assert_allclose(z.max(axis=1), r)
    cap = clip_cap(r, digits.n_classes)
    assert p.max() <= cap + 1e-6
    # The defense must bite on this model: most undefended rows are more confident.
    assert (softmax(base_z).max(axis=1) > cap).mean() > 0.5
    # Reference: anchor the top logit at r, clip, softmax (numpy, float64).
    expected = softmax(np.clip(base_z - base_z.max(axis=1, keepdims=True) + r, -r, r))
    np.testing.assert_allclose(p, expected, atol=1e-5)


def test_confidence_clip_serves_scores_only(digits, digits_model, rng):
    defended = ConfidenceClip().apply(digits_model, digits, rng)
    assert defended.access is Access.SCORES
    with pytest.raises(NotApplicable, match="gradients"):
        defended.to_art()
    labels_only = Model(digits_model.module, input_shape=digits_model.input_shape,
                        n_classes=10, access=Access.LABELS)
    assert ConfidenceClip().apply(labels_only, digits, rng).access is Access.LABELS


def test_confidence_clip_survives_with_module(digits, digits_model, x, rng, sharper_base):
    defended = ConfidenceClip().apply(digits_model, digits, rng)
    rebuilt = defended.with_module(sharper_base)
    base_z = sharper_base(torch.as_tensor(x)).detach().numpy()
    p = rebuilt.predict(x)
    assert p.max() <= clip_cap(2.0, 10) + 1e-6
    assert (softmax(base_z).max(axis=1) > clip_cap(2.0, 10)).mean() > 0.5
    np.testing.assert_array_equal(p.argmax(axis=1), base_z.argmax(axis=1))
    assert rebuilt.access is Access.SCORES and rebuilt.recipe is digits_model.recipe
    # And once more: a rebuilt model rebuilds too.
    again = rebuilt.with_module(digits_model.module)
    np.testing.assert_allclose(again.predict(x), defended.predict(x))


class Recorder:
    """Records the inputs a base module receives (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: list[np.ndarray] = []
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.seen.append(args[0].detach().numpy().copy())

    def close(self) -> None:
        self.handle.remove()


def test_input_noise_perturbs_inputs_by_at_most_r(digits, digits_model, x, rng):
    r = 0.1
    defended = InputNoiseDefense(r=r).apply(digits_model, digits, rng)
    assert defended.access is Access.GRADIENTS
    rec = Recorder(digits_model.module)
    try:
        defended.logits(x)
        defended.logits(x)
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


def test_input_noise_is_seeded_by_torch(digits, digits_model, x, rng):
    defended = InputNoiseDefense().apply(digits_model, digits, rng)
    torch.manual_seed(7)
    a = defended.predict(x)
    torch.manual_seed(7)
    b = defended.predict(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, defended.predict(x))


def test_input_noise_passes_gradients(digits, digits_model, x, rng):
    defended = InputNoiseDefense().apply(digits_model, digits, rng)
    xt = torch.as_tensor(x[:16]).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(defended.module(xt),
                                             torch.as_tensor(digits.y_test[:16]))
    loss.backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0


def test_input_noise_survives_with_module(digits, digits_model, x, rng, sharper_base):
    rebuilt = InputNoiseDefense(r=0.2).apply(digits_model, digits, rng).with_module(
        sharper_base)
    rec = Recorder(sharper_base)
    try:
        rebuilt.logits(x)
    finally:
        rec.close()
    delta = np.abs(rec.seen[0] - x)
    assert 0.15 < delta.max() <= 0.2 + 1e-6


def test_confidence_noise_matches_reference_draw(digits, digits_model, x, rng):
    r = 0.1
    defended = ConfidenceNoise(r=r).apply(digits_model, digits, rng)
    assert defended.access is Access.SCORES
    xt = torch.as_tensor(x)
    torch.manual_seed(3)
    out = defended.module(xt).detach().double()
    # The module returns log p, so Model.predict's softmax gives p back: softmax(log p) = p.
    np.testing.assert_allclose(torch.softmax(out, dim=1), out.exp(), atol=1e-6)
    # Reference: the same uniform draw on the base model's softmax, floored, renormalised.
    torch.manual_seed(3)
    p = torch.softmax(digits_model.module(xt).detach().double(), dim=1)
    noise = torch.rand(p.shape, dtype=torch.float64) * 2 * r - r
    assert noise.abs().max() <= r
    raw = (p + noise).clamp_min(PROBABILITY_FLOOR)
    assert (raw - p).abs().max() <= r + 1e-12  # before renormalisation: within r
    expected = raw / raw.sum(dim=1, keepdim=True)
    np.testing.assert_allclose(out.exp(), expected, atol=1e-5)
    torch.manual_seed(3)
    np.testing.assert_allclose(defended.predict(x), expected, atol=1e-5)


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
    torch.manual_seed(11)
    c = defended.predict(x)
    torch.manual_seed(11)
    np.testing.assert_array_equal(c, defended.predict(x))


def test_confidence_noise_survives_with_module(digits, digits_model, x, rng, sharper_base):
    r = 0.1
    rebuilt = ConfidenceNoise(r=r).apply(digits_model, digits, rng).with_module(sharper_base)
    base = softmax(sharper_base(torch.as_tensor(x)).detach().numpy())
    p = rebuilt.predict(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(p, base, atol=1e-3)
    # Noise of at most r cannot overturn a top class above 0.5 + r (renormalising keeps
    # the order), so those rows keep the new base's argmax.
    sure = base.max(axis=1) > 0.5 + r
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(p[sure].argmax(axis=1), base[sure].argmax(axis=1))
    assert rebuilt.access is Access.SCORES


def test_stacked_defenses_are_rebuilt_together(digits, digits_model, x, rng, sharper_base):
    clipped = ConfidenceClip().apply(digits_model, digits, rng)
    stacked = InputNoiseDefense().apply(clipped, digits, rng)
    assert stacked.access is Access.SCORES
    rebuilt = stacked.with_module(sharper_base)
    rec = Recorder(sharper_base)
    try:
        z = rebuilt.logits(x)
    finally:
        rec.close()
    assert len(rec.seen) == 1 and not np.array_equal(rec.seen[0], x)  # noise kept
    np.testing.assert_allclose(z.max(axis=1), 2.0)  # clip kept


def test_retrain_keeps_the_defense(digits, digits_model, x, rng):
    defended = ConfidenceClip().apply(digits_model, digits, rng)
    # Same data and seed as the fixture: the recipe's cache returns the trained base.
    retrained = defended.retrain(digits.x_train, digits.y_train, 0)
    np.testing.assert_allclose(retrained.predict(x), defended.predict(x))
    assert retrained.access is Access.SCORES
