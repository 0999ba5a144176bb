"""Privacy defenses on real digits data: what each serves, what it leaves an attacker, the
privacy budget DP-SGD reports in its clean cell, and what it does to membership attacks
on a small overfit model."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import gauntlet
from gauntlet import AccessDenied, ConfigError, Model, NotApplicable, Recipe, Stage
from gauntlet.metric import MetricValue
from gauntlet.plugins.defenses import (
    PROBABILITY_FLOOR,
    ClippedLogits,
    NoisyScores,
    UniformInputNoise,
)
from gauntlet.plugins.privacy_defenses import (
    DPSGD,
    Combined,
    LabelOnly,
    PrivateFit,
    Rounding,
    TopK,
    privacy_budget,
    train_private,
)
from gauntlet.plugins.torch_models import build_mlp, load_model
from gauntlet.registry import make_registry

NAMES = ("rounding", "top-k", "label-only", "combined", "dp-sgd")


@pytest.fixture(scope="module")
def x(digits) -> np.ndarray:
    return digits.x_test[:200]


def reference(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """What the output defenses serve, in numpy: ``q`` floored, the top class of ``p``
    one floor up, renormalised."""
    q = np.maximum(q.astype(np.float64), PROBABILITY_FLOOR)
    q[np.arange(len(q)), p.argmax(axis=1)] += PROBABILITY_FLOOR
    return q / q.sum(axis=1, keepdims=True)


def test_registered_with_metadata():
    registry = make_registry()
    for name in NAMES:
        cls = registry.defenses[name]
        assert cls.description() and isinstance(cls.adaptive, bool)
    assert registry.defenses["dp-sgd"].stage is Stage.TRAINING
    assert {"dp_epsilon", "dp_delta"} <= set(registry.metrics)
    assert not registry.metrics["dp_epsilon"].higher_is_better
    opt_in = {n for n in NAMES if not registry.defenses[n].in_default_audit}
    assert opt_in == {"top-k", "dp-sgd"}


def test_parameters_are_bounded():
    with pytest.raises(ConfigError):
        Rounding(decimals=0)
    with pytest.raises(ConfigError):
        TopK(k=0)
    with pytest.raises(ConfigError):
        Combined(noise_r=1.5)
    with pytest.raises(ConfigError):
        DPSGD(noise_multiplier=0)
    with pytest.raises(ConfigError):
        DPSGD(delta=1.0)
    assert DPSGD().delta == 1e-5 and not DPSGD.parameters()["noise_multiplier"].sweep


@pytest.mark.parametrize("decimals", [1, 2])
def test_rounding_serves_rounded_scores(digits, digits_model, x, rng, decimals):
    p = digits_model.predict(x)
    served = Rounding(decimals=decimals).apply(digits_model, digits, rng)
    q = served.predict(x)
    expected = reference(p, np.round(p.astype(np.float64), decimals))
    np.testing.assert_allclose(q, expected, atol=1e-5)
    assert (q.argmax(axis=1) == p.argmax(axis=1)).all()
    assert served.access == gauntlet.Access.SCORES
    with pytest.raises(AccessDenied):
        served.loss_gradient(x[:2], digits.y_test[:2])


def toy(top: int = 7, classes: int = 100) -> Model:
    """A 100-class model whose probabilities are all about 0.01 (class ``top`` barely
    highest): rounded to one decimal, every one of them is 0."""
    linear = torch.nn.Linear(4, classes)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[top] = 1e-3
    return Model(torch.nn.Sequential(torch.nn.Flatten(), linear), input_shape=(4,),
                 n_classes=classes)


def test_rounding_a_row_to_zeros_still_serves_a_distribution_with_its_argmax(digits, rng):
    served = Rounding(decimals=1).apply(toy(), digits, rng)
    q = served.predict(np.zeros((3, 4), np.float32))
    assert np.allclose(q.sum(axis=1), 1.0, atol=1e-5) and np.isfinite(q).all()
    assert (q.argmax(axis=1) == 7).all()
    assert (served.labels(np.zeros((3, 4), np.float32)) == 7).all()


def test_rounding_breaks_ties_for_the_undefended_top_class(digits, rng):
    # Probabilities 0.46 and 0.44 (and 0.1 spread): both round to 0.5 and 0.4; the top
    # one must win. Class 1 first: a tie broken by index would pick class 0.
    logits = np.log(np.array([[0.44, 0.46] + [0.1 / 8] * 8]))
    module = torch.nn.Linear(1, 10)
    with torch.no_grad():
        module.weight.zero_()
        module.bias.copy_(torch.as_tensor(logits[0], dtype=torch.float32))
    model = Model(module, input_shape=(1,), n_classes=10)
    for decimals in (1, 2):
        served = Rounding(decimals=decimals).apply(model, digits, rng)
        assert served.labels(np.zeros((1, 1), np.float32))[0] == 1


@pytest.mark.parametrize("k", [1, 3])
def test_top_k_serves_at_most_k_scores(digits, digits_model, x, rng, k):
    p = digits_model.predict(x)
    q = TopK(k=k).apply(digits_model, digits, rng).predict(x)
    assert ((q > 10 * PROBABILITY_FLOOR).sum(axis=1) <= k).all()
    assert (q.argmax(axis=1) == p.argmax(axis=1)).all()
    top = np.argsort(-p, axis=1)[:, :k]
    kept = np.zeros_like(p)
    np.put_along_axis(kept, top, np.take_along_axis(p, top, axis=1), axis=1)
    np.testing.assert_allclose(q, reference(p, kept), atol=1e-5)


def test_label_only_serves_labels_only(digits, digits_model, x, rng):
    served = LabelOnly().apply(digits_model, digits, rng)
    assert served.access == gauntlet.Access.LABELS
    np.testing.assert_array_equal(served.labels(x), digits_model.labels(x))
    with pytest.raises(AccessDenied):
        served.predict(x)


def test_label_only_makes_score_attacks_not_applicable(digits, digits_model):
    result = gauntlet.audit(digits_model, digits, attacks={"mia-threshold": {},
                                                           "mia-loss": {}},
                            defenses=["none", "label-only"])
    cells = {(c["defense"], c["attack"]): c for c in result.cells}
    for attack in ("mia-threshold", "mia-loss"):
        cell = cells[("label-only", attack)]
        assert cell["status"] == "not_applicable"
        assert "labels only" in cell["reason"] and "scores" in cell["reason"]
        assert cells[("none", attack)]["status"] == "ok"
    assert result.value("clean_accuracy", "clean", "label-only") == \
        result.value("clean_accuracy", "clean", "none")


def test_combined_reuses_the_three_defenses(digits, digits_model, x, rng):
    defense = Combined(clip_r=1.0, input_r=0.2, noise_r=0.15)
    served = defense.apply(digits_model, digits, rng)
    (layer,) = served._layers
    assert isinstance(layer.pre, UniformInputNoise) and layer.pre.r == 0.2
    clip, noise = layer.post
    assert isinstance(clip, ClippedLogits) and clip.r == 1.0
    assert isinstance(noise, NoisyScores) and noise.r == 0.15
    assert served.access == gauntlet.Access.SCORES
    q = served.predict(x)
    # Clipping at r = 1 caps the top probability at 1 / (1 + 9 exp(-2)) = 0.45 before
    # the probability noise (at most 0.15 each) and renormalising; undefended, the median
    # top probability is above 0.99.
    cap = 1 / (1 + 9 * math.exp(-2))
    assert np.median(digits_model.predict(x).max(axis=1)) > 0.99
    assert np.median(q.max(axis=1)) < cap + 0.15
    assert np.allclose(q.sum(axis=1), 1, atol=1e-5)


def test_combined_costs_a_few_points_of_accuracy(digits, digits_model):
    result = gauntlet.audit(digits_model, digits, attacks={"mia-threshold": {}},
                            defenses=["none", "combined"])
    none = result.value("clean_accuracy", "clean", "none")
    combined = result.value("clean_accuracy", "clean", "combined")
    assert none - 0.04 <= combined <= none + 0.01


# -- DP-SGD ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(digits):
    """200 training rows: a model trained 200 epochs on them overfits."""
    return dataclasses.replace(digits, x_train=digits.x_train[:200],
                               y_train=digits.y_train[:200])


def mlp(shape=(1, 8, 8), classes=10) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_mlp(shape, classes)


def test_train_private_is_deterministic_and_leaves_the_global_generator(small):
    kwargs = dict(noise_multiplier=1.0, max_grad_norm=1.0, epochs=2, lr=3e-3, batch_size=64)
    a, b, c = mlp(), mlp(), mlp()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    train_private(a, small.x_train, small.y_train, 5, **kwargs)
    train_private(b, small.x_train, small.y_train, 5, **kwargs)
    assert torch.equal(torch.rand(3), before)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    train_private(c, small.x_train, small.y_train, 6, **kwargs)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    assert not any(hasattr(p, "grad_sample") for p in a.parameters())  # opacus left
    assert not a._forward_hooks and not a[1]._forward_hooks


def test_privacy_budget_is_what_opacus_accounted(small):
    spent = train_private(mlp(), small.x_train, small.y_train, 0, noise_multiplier=1.5,
                          max_grad_norm=1.0, epochs=3, lr=3e-3, batch_size=64)
    assert spent == pytest.approx(privacy_budget(1.5, 200, 64, 3, 1e-5), rel=1e-9)
    assert privacy_budget(1.5, 200, 64, 3, 1e-5, "prv") < spent  # PRV is tighter


def test_privacy_budget_falls_as_noise_grows():
    eps = [privacy_budget(s, 1347, 128, 20, 1e-5) for s in (0.5, 1, 2, 4)]
    assert all(math.isfinite(e) for e in eps) and eps == sorted(eps, reverse=True)


def small_model(small, epochs: int = 200) -> Model:
    return load_model("builtin:mlp", {"dataset": small, "seed": 0, "epochs": epochs})


def test_dp_sgd_states_its_budget_and_trains_privately_when_retrained(small, rng):
    model = small_model(small, epochs=2)
    defended = DPSGD(noise_multiplier=2.0, delta=0.5).apply(model, small, rng)
    facts = defended.deployment_facts(small.x_test, defended.predict(small.x_test))
    assert facts["dp_delta"] == MetricValue(1 / 200, 200)  # 0.5 > 1/n: 1/n is used
    assert facts["dp_epsilon"].value == pytest.approx(privacy_budget(2.0, 200, 64, 2, 1 / 200))
    assert isinstance(defended.recipe.fit, PrivateFit)
    assert defended.recipe.fit.epochs == 2 and defended.recipe.fit.noise_multiplier == 2.0
    # facts belong to the trained module: a deployment of it keeps them, another module
    # (a poisoning attack's re-training) does not
    assert "dp_epsilon" in defended.deploy().deployment_facts(small.x_test[:2],
                                                              np.zeros((2, 10)))
    retrained = defended.retrain(small.x_train[:100], small.y_train[:100], 0)
    assert retrained.deployment_facts(small.x_test[:2], np.zeros((2, 10))) == {}
    assert model.deployment_facts(small.x_test[:2], np.zeros((2, 10))) == {}


def test_dp_sgd_needs_a_recipe(small, rng):
    module = mlp()
    bare = Model(module, input_shape=(1, 8, 8), n_classes=10)
    with pytest.raises(NotApplicable, match="training recipe"):
        DPSGD().apply(bare, small, rng)


def test_dp_sgd_refuses_layers_opacus_cannot_handle(small, rng):
    def build() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10),
                                   torch.nn.BatchNorm1d(10))

    recipe = Recipe(build, lambda m, x, y, s: None)
    model = Model(build(), input_shape=(1, 8, 8), n_classes=10, recipe=recipe)
    with pytest.raises(NotApplicable, match="opacus"):
        DPSGD().apply(model, small, rng)


@pytest.mark.slow
def test_dp_sgd_lowers_the_loss_attack_and_reports_epsilon(small):
    """On an overfit model (200 rows, 200 epochs), mia-loss's advantage falls from 0.22
    undefended to 0.04 at noise multiplier 4 (ε 9.5); ε falls as the noise grows."""
    model = small_model(small)
    result = gauntlet.audit(model, small, attacks={"mia-loss": {}},
                            defenses={"none": {}, "dp-sgd": {"noise_multiplier": [1.0, 4.0]}})
    advantage = {point: result.value("membership_advantage", "mia-loss", defense, "", point)
                 for defense, point in (("none", ""), ("dp-sgd", "noise_multiplier=1"),
                                        ("dp-sgd", "noise_multiplier=4"))}
    assert advantage[""] > 0.15
    assert advantage["noise_multiplier=4"] < advantage[""] - 0.1
    eps = {p: result.value("dp_epsilon", "clean", "dp-sgd", "", p)
           for p in ("noise_multiplier=1", "noise_multiplier=4")}
    assert all(math.isfinite(e) for e in eps.values())
    assert eps["noise_multiplier=4"] < eps["noise_multiplier=1"]
    assert result.value("dp_delta", "clean", "dp-sgd", "", "noise_multiplier=4") == 1e-5
    assert result.value("dp_epsilon", "clean", "none") is None


def test_the_clean_cell_of_a_dp_sgd_row_carries_epsilon(small):
    model = small_model(small, epochs=2)
    result = gauntlet.audit(model, small, attacks={"mia-loss": {}},
                            defenses={"none": {}, "dp-sgd": {"epochs": 2}})
    clean = next(c for c in result.cells
                 if (c["defense"], c["attack"]) == ("dp-sgd", "clean"))
    assert clean["status"] == "ok"
    assert clean["metrics"]["dp_epsilon"]["value"] == pytest.approx(
        privacy_budget(1.0, 200, 64, 2, 1e-5))
    assert clean["metrics"]["dp_delta"]["value"] == 1e-5
    assert "clean_accuracy" in clean["metrics"]
    mia = next(c for c in result.cells if (c["defense"], c["attack"]) == ("dp-sgd", "mia-loss"))
    assert mia["status"] == "ok" and "dp_epsilon" not in mia["metrics"]
