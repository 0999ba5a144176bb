"""Shadow-model membership attacks (mia-shadow, lira) and the label-only attack, on real
digits models: the likelihood ratio by hand, shadows trained once per audit, the access
and recipe each needs, and LiRA beating the global threshold on an overfit model."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import norm

import gauntlet
from gauntlet import Access, Dataset, Model, NotApplicable, Recipe, train_classifier
from gauntlet.membership import shadow_subsets, train_shadows
from gauntlet.plugins.datasets import load_sklearn
from gauntlet.plugins.shadow_membership import (
    LabelOnlyMembership,
    LiRA,
    ShadowMembership,
    logit_confidence,
)
from gauntlet.plugins.torch_models import build_mlp, load_model


def _small(digits: Dataset, n_train: int, n_test: int) -> Dataset:
    return dataclasses.replace(digits, x_train=digits.x_train[:n_train],
                               y_train=digits.y_train[:n_train],
                               x_test=digits.x_test[:n_test], y_test=digits.y_test[:n_test])


class CountingFit:
    """The built-in training loop, counting its calls (each is one model trained)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module, x, y, seed):
        self.calls += 1
        train_classifier(module, x, y, seed, epochs=5, lr=3e-3, batch_size=64)


def _counted_model(data: Dataset) -> tuple[Model, CountingFit]:
    import torch

    fit = CountingFit()

    def build():
        torch.manual_seed(0)
        return build_mlp(data.input_shape, data.n_classes, hidden=(32,))

    recipe = Recipe(build, fit, "mlp 32, 5 epochs")
    module = recipe.train(data.x_train, data.y_train, 0)
    return Model(module, input_shape=data.input_shape, n_classes=data.n_classes,
                 clip_values=data.clip_values, recipe=recipe), fit


def test_logit_confidence_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]])
    got = logit_confidence(p, np.array([0, 2]))
    assert got == pytest.approx([np.log(0.7 / 0.3), np.log(0.25 / 0.75)])
    # A confident answer keeps its precision: 1 - p_y would round to 0 in float32.
    sure = np.array([[1.0 - 1e-12, 1e-12]])
    assert logit_confidence(sure, np.array([0]))[0] == pytest.approx(np.log(1 / 1e-12), rel=1e-3)


def test_lira_scores_against_scipy():
    rng = np.random.default_rng(0)
    k, n = 6, 5
    inside = np.zeros((k, n), dtype=bool)
    inside[::2] = True  # shadows 0, 2, 4 trained on every row; 1, 3, 5 on none
    observed = np.where(inside, 3.0, 0.0) + rng.normal(0, 1, (k, n))
    target = np.array([3.5, 0.2, 1.5, -1.0, 2.8])
    for variance in ("global", "per-example"):
        mu_in = observed[::2].mean(0)
        mu_out = observed[1::2].mean(0)
        if variance == "global":
            sd_in = np.full(n, np.sqrt(((observed[::2] - mu_in) ** 2).sum() / (3 * n - n)))
            sd_out = np.full(n, np.sqrt(((observed[1::2] - mu_out) ** 2).sum() / (3 * n - n)))
        else:
            sd_in, sd_out = observed[::2].std(0, ddof=1), observed[1::2].std(0, ddof=1)
        online = LiRA(mode="online", variance=variance).ratio(target, observed, inside)
        expected = norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)
        assert online == pytest.approx(expected)
        offline = LiRA(mode="offline", variance=variance).ratio(target, observed, inside)
        assert offline == pytest.approx((target - mu_out) / sd_out)
    # The row most like the IN shadows scores highest, the one below OUT lowest.
    assert np.argmax(online) == 0 and np.argmin(online) == 3


def test_lira_falls_back_where_no_shadow_trained_on_a_row():
    inside = np.array([[True, False], [True, False], [False, False]])
    observed = np.array([[2.0, 0.0], [4.0, 1.0], [0.0, 1.0]])
    score = LiRA(mode="online").ratio(np.array([3.0, 3.0]), observed, inside)
    assert np.isfinite(score).all()  # row 1 has no IN shadow: the overall IN mean (3) stands


def test_shadow_subsets_pair_up_and_repeat():
    pairs = shadow_subsets(10, 4, 5, seed=3)
    assert (pairs.sum(axis=1) == 5).all()
    assert (pairs[0] == ~pairs[1]).all() and (pairs[2] == ~pairs[3]).all()
    assert (pairs.sum(axis=0) == 2).all()  # every row inside exactly half the shadows
    fixed = shadow_subsets(10, 3, 4, seed=3)
    assert (fixed.sum(axis=1) == 4).all()
    assert (shadow_subsets(10, 3, 4, seed=3) == fixed).all()
    assert not (shadow_subsets(10, 3, 4, seed=4) == fixed).all()


def test_shadows_are_trained_once_per_audit_and_shared(digits):
    data = _small(digits, 120, 80)
    model, fit = _counted_model(data)
    assert fit.calls == 1
    result = gauntlet.audit(model=model, data=data,
                            attacks={"lira": {"shadows": 4}, "mia-shadow": {"shadows": 2}},
                            defenses=["none", "confidence-clip", "confidence-noise"])
    assert all(c["status"] == "ok" for c in result.cells), [c["reason"] for c in result.cells]
    # 4 shadows for lira, mia-shadow's 2 are lira's first two; three defenses share them.
    assert fit.calls == 1 + 4
    shadows = train_shadows(model, data, 4, 0, 0)
    assert shadows.inside.shape == (4, 200)
    assert (shadows.inside.sum(axis=1) == 100).all()  # the target's size, half the population
    assert fit.calls == 1 + 4


def test_shadows_see_the_deployment(digits):
    data = _small(digits, 120, 80)
    model, _ = _counted_model(data)
    from gauntlet.plugins.defenses import ClippedLogits

    clipped = model.deploy(post=ClippedLogits(0.5), access=Access.SCORES)
    shadow = train_shadows(clipped, data, 2, 0, 0).models[0]
    # r = 0.5 caps the top probability at 1 / (1 + 9 exp(-1)) for ten classes.
    assert shadow.predict(data.x_test).max() <= 1 / (1 + 9 * np.exp(-1.0)) + 1e-6


def test_access_and_recipe_requirements(digits, digits_model):
    data = _small(digits, 60, 40)
    labels_only = digits_model.deploy(access=Access.LABELS)
    rng = np.random.default_rng(0)
    for attack in (LiRA(shadows=2), ShadowMembership(shadows=1)):
        with pytest.raises(NotApplicable, match="scores"):
            attack.run(labels_only, data, rng)
    no_recipe = Model(build_mlp(data.input_shape, data.n_classes), input_shape=data.input_shape,
                      n_classes=data.n_classes, clip_values=data.clip_values)
    with pytest.raises(NotApplicable, match="recipe"):
        LiRA(shadows=2).run(no_recipe, data, rng)
    # The label-only attack needs neither scores nor a recipe.
    out = LabelOnlyMembership(directions=2, steps=3).run(labels_only, data, rng)
    assert out.n == 40 and np.isfinite(out.scores_members).all()


def test_label_only_queries_and_distances(digits, digits_model):
    data = _small(digits, 40, 40)
    model = digits_model.deploy(access=Access.LABELS)
    attack = LabelOnlyMembership(directions=3, steps=4, radius=2.0)
    before = model.queries
    scores = attack.scores(model, data.x_test[:10], data.y_test[:10], np.random.default_rng(0))
    assert model.queries - before == 10 * (1 + 3 * (4 + 1))
    wrong = model.labels(data.x_test[:10]) != data.y_test[:10]
    assert (scores[wrong] == 0).all()
    assert ((scores >= 0) & (scores <= 2.0)).all()
    # The bisection's answer flips the class and half of it does not (a real boundary).
    row = int(np.flatnonzero(~wrong)[0])
    x = data.x_test[row:row + 1]
    u = np.random.default_rng(1).standard_normal(x.size).reshape(x.shape)
    u /= np.linalg.norm(u)
    one = LabelOnlyMembership(directions=1, steps=12, radius=4.0)
    d = one.scores(model, x, data.y_test[row:row + 1], np.random.default_rng(1))[0]
    assert d < 4.0  # this row's class changes within the radius (3.25 on the digits CNN)
    flipped = model.labels(np.clip(x + d * u, 0, 1).astype(np.float32))[0]
    kept = model.labels(np.clip(x + 0.5 * d * u, 0, 1).astype(np.float32))[0]
    assert flipped != data.y_test[row] and kept == data.y_test[row]


@pytest.fixture(scope="module")
def overfit() -> tuple[Model, Dataset]:
    """The demo's leaky model: two hidden layers of 200 trained 100 epochs on 200 digits."""
    data = load_sklearn("digits", {"limit_train": 200})
    model = load_model("builtin:mlp", {"dataset": data, "hidden": [200, 200], "epochs": 100})
    return model, data


@pytest.mark.slow
def test_lira_beats_the_global_threshold_at_low_fpr(overfit):
    model, data = overfit
    result = gauntlet.audit(model=model, data=data,
                            attacks={"mia-threshold": {}, "lira": {}, "mia-label-only": {}},
                            defenses=["none", "confidence-noise"])
    lira = result.value("tpr_at_1pct_fpr", "lira")
    threshold = result.value("tpr_at_1pct_fpr", "mia-threshold")
    assert lira > threshold + 0.05, (lira, threshold)
    # Label-only reads no score, so output noise leaves it above chance.
    label_only = result.value("membership_auc", "mia-label-only", "confidence-noise")
    assert label_only > 0.55


def test_shadows_run_in_the_clear_behind_a_serving_wrapper(digits):
    """A serving wrapper (encrypted inference) is the server's way of computing the model;
    the attacker's shadows keep the deployment's output processing but not the server."""
    import torch

    from gauntlet.plugins.defenses import ClippedLogits
    from gauntlet.serving import Served

    calls = []

    class Doubling(Served, torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(len(x))
            return 2 * self.inner(x)

    data = _small(digits, 120, 80)
    model, _ = _counted_model(data)
    served = model.deploy(serve=Doubling).deploy(post=ClippedLogits(0.5),
                                                 access=Access.SCORES)
    shadow = train_shadows(served, data, 2, 0, 0).models[0]
    calls.clear()
    p = shadow.predict(data.x_test)
    assert calls == []  # the shadow never went through the server
    assert p.max() <= 1 / (1 + 9 * np.exp(-1.0)) + 1e-6  # but it is clipped as served
    served.predict(data.x_test[:5])
    assert calls  # the target itself is served


def test_members_is_checked_against_the_data(digits, caplog):
    from gauntlet import ConfigError
    from gauntlet.plugins.membership import LossMembership

    data = _small(digits, 60, 40)
    with pytest.raises(ConfigError, match="members = 1"):
        LossMembership(members=1).check_data(data)
    with caplog.at_level("WARNING", logger="gauntlet.membership"):
        LossMembership(members=500).check_data(data)
    assert "40 members and as many non-members" in caplog.text
    LossMembership(members=0).check_data(data)  # all the data allows: no complaint
