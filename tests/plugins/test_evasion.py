"""Evasion attacks on the real digits CNN, checked against independent references:
hand-written torch FGSM and BIM loops, ART's FastGradientMethod and ART's PGD called
directly."""
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
    EvasionAttack,
    EvasionOutcome,
    Family,
    GauntletError,
    Model,
    NotApplicable,
)
from gauntlet.plugins import evasion
from gauntlet.registry import make_registry

ROWS = 150
ATTACKS = (evasion.FGSM, evasion.PGD, evasion.BIM, evasion.UniformNoise)
#: Fewer steps where the test is not about the attack's strength, to keep the file fast.
QUICK = {evasion.PGD: {"max_iter": 5}, evasion.BIM: {"max_iter": 5}}


def robust_accuracy(outcome: EvasionOutcome) -> float:
    return float(outcome.correct_after.mean())


def reference_fgsm(model: Model, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """FGSM written out by hand on a copy of the base module, all rows in one batch."""
    module = copy.deepcopy(model._base)
    xt = torch.tensor(x, requires_grad=True)
    F.cross_entropy(module(xt), torch.tensor(y)).backward()
    return (xt + eps * xt.grad.sign()).clamp(0.0, 1.0).detach().numpy()


def first_rows(dataset: Dataset, n: int) -> Dataset:
    return dataclasses.replace(dataset, x_test=dataset.x_test[:n], y_test=dataset.y_test[:n])


@pytest.fixture(scope="module")
def rows(digits: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return digits.x_test[:ROWS], digits.y_test[:ROWS]


# -- contract ----------------------------------------------------------------------------


def test_registered_through_the_hook() -> None:
    registry = make_registry(entrypoints=False, plugins={"evasion": evasion})
    assert not registry.broken
    assert {"fgsm", "pgd", "bim", "noise"} <= set(registry.attacks)
    assert registry.attacks["bim"] is evasion.BIM
    assert registry.attacks["fgsm"] is evasion.FGSM


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_metadata_docstring_and_declared_parameters(cls: type[EvasionAttack]) -> None:
    cls.validate_class()
    assert issubclass(cls, EvasionAttack)
    assert cls.family is Family.EVASION and cls.outcome is EvasionOutcome
    summary, blank, reference = (cls.__doc__ or "").strip().splitlines()[:3]
    assert summary.strip() and not blank.strip() and reference.strip()
    params = {name: p.describe() for name, p in cls.parameters().items()}
    # One-pass attacks sweep every budget; iterative ones skip the smallest (dearest) one.
    sweep = evasion.ITERATIVE_SWEEP if cls in (evasion.PGD, evasion.BIM) else evasion.EPS_SWEEP
    assert params["eps"]["default"] == list(sweep) and params["eps"]["sweep"]
    assert sweep[-3:] == (0.1, 0.2, 0.3)
    assert params["eps"]["bounds"] == ">= 0"
    assert params["rows"]["default"] == 0
    assert all(p["help"] for p in params.values())


def test_needs_and_batching_defaults() -> None:
    assert evasion.FGSM.needs is Access.GRADIENTS
    assert evasion.PGD.needs is Access.GRADIENTS
    assert evasion.BIM.needs is Access.GRADIENTS
    assert evasion.UniformNoise.needs is Access.LABELS
    # The torch loops batch themselves (256 rows a call); noise is one draw, as before.
    assert evasion.FGSM(eps=0.1).batch_size == evasion.PGD(eps=0.1).batch_size == 256
    assert evasion.BIM(eps=0.1).batch_size == 256
    assert evasion.UniformNoise(eps=0.1).batch_size == 0
    pgd = evasion.PGD(eps=0.1)
    assert (pgd.step_ratio, pgd.max_iter, pgd.num_random_init) == (0.25, 20, 1)
    assert pgd.backend == "torch"
    bim = evasion.BIM(eps=0.1)
    assert (bim.target, bim.max_iter, bim.step_ratio) == ("none", 10, 0.0)
    assert not evasion.BIM.minimal and evasion.BIM.norm == "linf"


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_grid_expands_the_eps_sweep(cls: type[EvasionAttack]) -> None:
    grid = cls.grid()
    sweep = evasion.ITERATIVE_SWEEP if cls in (evasion.PGD, evasion.BIM) else evasion.EPS_SWEEP
    assert [p["eps"] for p, _ in grid] == list(sweep)
    assert [label for _, label in grid] == [f"eps={e}" for e in sweep]
    assert [p["eps"] for p, _ in cls.grid({"eps": [0.25]})] == [0.25]
    with pytest.raises(ConfigError, match="known parameters"):
        cls(samples=10)  # the old name: rows is the base's


@pytest.mark.parametrize(("cls", "params", "bound"), [
    (evasion.FGSM, {"eps": -1}, "'eps' must be >= 0"),
    (evasion.FGSM, {"backend": "jax"}, "'backend' must be one of 'torch', 'art'"),
    (evasion.FGSM, {"rows": -1}, "'rows' must be >= 0"),
    (evasion.PGD, {"step_ratio": 0.0}, "'step_ratio' must be > 0"),
    (evasion.PGD, {"max_iter": 0}, "'max_iter' must be >= 1"),
    (evasion.PGD, {"num_random_init": -1}, "'num_random_init' must be >= 0"),
    (evasion.PGD, {"backend": "jax"}, "'backend' must be one of 'torch', 'art'"),
    (evasion.BIM, {"target": "most-likely"}, "'target' must be one of 'none', 'least-likely'"),
    (evasion.BIM, {"max_iter": 0}, "'max_iter' must be >= 1"),
    (evasion.UniformNoise, {"eps": float("nan")}, "'eps' is NaN"),
])
def test_out_of_bounds_parameters_name_the_bound(cls: type[EvasionAttack], params: dict,
                                                  bound: str) -> None:
    with pytest.raises(ConfigError, match=f"attack '{cls.name}'.*{bound}"):
        cls(**params)


# -- each attack on the real CNN --------------------------------------------------------


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_outcome_on_digits(cls: type[EvasionAttack], digits: Dataset, digits_model: Model,
                           rng: np.random.Generator) -> None:
    eps = 0.1
    weights = [p.clone() for p in digits_model._base.parameters()]
    for p in digits_model._base.parameters():  # training leaves its last gradients
        p.grad = None
    outcome = cls(eps=eps, rows=ROWS, **QUICK.get(cls, {})).run(digits_model, digits, rng)
    assert isinstance(outcome, EvasionOutcome)
    assert outcome.n == ROWS
    np.testing.assert_array_equal(outcome.rows, np.arange(ROWS))
    np.testing.assert_array_equal(outcome.y_true, digits.y_test[:ROWS])
    assert outcome.proba.shape == outcome.proba_clean.shape == (ROWS, digits.n_classes)
    np.testing.assert_allclose(outcome.proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(outcome.proba_clean, digits_model.predict(digits.x_test[:ROWS]),
                               atol=1e-6)
    assert outcome.linf.shape == outcome.l2.shape == outcome.l0.shape == (ROWS,)
    assert (outcome.linf <= eps + 1e-6).all()
    # Every row moves, except (early stop) rows already misclassified at the start.
    moved = outcome.linf > 0
    stops = cls.name == "bim"  # PGD starts at random; FGSM and noise always move
    assert moved.all() if not stops else (moved == outcome.correct_before).all()
    # The attack changed some predictions (noise, the weak baseline, at least the scores:
    # at eps 0.1 it may flip none of these rows), and the weights were left as they were.
    if cls is evasion.UniformNoise:
        assert np.abs(outcome.proba - outcome.proba_clean).max() > 1e-3
    else:
        assert (outcome.correct_before & ~outcome.correct_after).any()
    for p, value in zip(digits_model._base.parameters(), weights, strict=True):
        assert not p.requires_grad and p.grad is None and torch.equal(p, value)


def test_rows_zero_means_every_test_row(digits: Dataset, digits_model: Model,
                                        rng: np.random.Generator) -> None:
    small = first_rows(digits, 40)
    for cls in ATTACKS:
        quick = QUICK.get(cls, {})
        assert cls(eps=0.1, **quick).run(digits_model, small, rng).n == 40
        assert cls(eps=0.1, rows=25, **quick).run(digits_model, small, rng).n == 25


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_fgsm_matches_a_hand_written_loop(eps: float, digits: Dataset, digits_model: Model,
                                          rows: tuple[np.ndarray, np.ndarray],
                                          rng: np.random.Generator) -> None:
    x, y = rows
    x_ref = reference_fgsm(digits_model, x, y, eps)
    expected = digits_model.predict(x_ref)
    outcome = evasion.FGSM(eps=eps, rows=ROWS).run(digits_model, digits, rng)
    assert robust_accuracy(outcome) == float((expected.argmax(1) == y).mean())
    np.testing.assert_allclose(outcome.proba, expected, atol=1e-5)
    np.testing.assert_allclose(outcome.linf, np.abs(x_ref - x).reshape(ROWS, -1).max(1),
                               atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_fgsm_matches_art(eps: float, digits: Dataset, digits_model: Model,
                          rows: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> None:
    from art.attacks.evasion import FastGradientMethod

    x, y = rows
    art = FastGradientMethod(digits_model.to_art(), norm=np.inf, eps=eps, batch_size=256)
    expected = digits_model.predict(art.generate(x, y=y))
    ours = evasion.FGSM(eps=eps, rows=ROWS).run(digits_model, digits, rng)
    backend = evasion.FGSM(eps=eps, rows=ROWS, backend="art").run(digits_model, digits, rng)
    for outcome in (ours, backend):
        assert robust_accuracy(outcome) == float((expected.argmax(1) == y).mean())
        np.testing.assert_allclose(outcome.proba, expected, atol=1e-5)
    np.testing.assert_array_equal(ours.linf, backend.linf)


def test_pgd_art_backend_matches_art_called_directly(
        digits: Dataset, digits_model: Model, rows: tuple[np.ndarray, np.ndarray]) -> None:
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = rows
    eps = 0.1
    np.random.seed(int(np.random.default_rng(7).integers(2**32)))  # as the base seeds ART
    art = ProjectedGradientDescent(digits_model.to_art(), norm=np.inf, eps=eps,
                                   eps_step=eps / 4, max_iter=10, num_random_init=1,
                                   batch_size=64, verbose=False)
    expected = digits_model.predict(art.generate(x, y=y))
    ours = evasion.PGD(eps=eps, max_iter=10, rows=ROWS, backend="art").run(
        digits_model, digits, np.random.default_rng(7))
    np.testing.assert_allclose(ours.proba, expected, atol=1e-5)
    fgsm = evasion.FGSM(eps=eps, rows=ROWS).run(digits_model, digits, np.random.default_rng(7))
    assert robust_accuracy(ours) <= robust_accuracy(fgsm)


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_pgd_torch_equals_art_from_the_input(eps: float, digits: Dataset, digits_model: Model,
                                            rows: tuple[np.ndarray, np.ndarray],
                                            rng: np.random.Generator) -> None:
    """No random start: the torch loop takes ART's steps, so the examples are ART's."""
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = rows
    x_art = ProjectedGradientDescent(digits_model.to_art(), norm=np.inf, eps=eps,
                                     eps_step=eps / 4, max_iter=10, num_random_init=0,
                                     batch_size=256, verbose=False).generate(x, y=y)
    expected = digits_model.predict(x_art)
    ours = evasion.PGD(eps=eps, max_iter=10, num_random_init=0, rows=ROWS,
                       early_stop=False).run(digits_model, digits, rng)
    assert robust_accuracy(ours) == float((expected.argmax(1) == y).mean())
    np.testing.assert_allclose(ours.proba, expected, atol=1e-5)
    np.testing.assert_allclose(ours.linf, np.abs(x_art - x).reshape(ROWS, -1).max(1),
                               atol=1e-6)
    np.testing.assert_allclose(
        evasion.signed_steps(digits_model, x, y, x, eps, eps / 4, 10), x_art, atol=1e-6)


def test_pgd_torch_with_random_starts_is_close_to_art(digits: Dataset,
                                                      digits_model: Model) -> None:
    """Random starts differ (the cell's generator, not numpy's), so compare the robust
    accuracy over every test row and a few seeds: within 2 points at eps 0.1, where it is
    most sensitive (about 48%)."""
    seeds = range(2)
    torch_acc = [robust_accuracy(evasion.PGD(eps=0.1, max_iter=10).run(
        digits_model, digits, np.random.default_rng(s))) for s in seeds]
    art_acc = [robust_accuracy(evasion.PGD(eps=0.1, max_iter=10, backend="art").run(
        digits_model, digits, np.random.default_rng(s))) for s in seeds]
    assert abs(np.mean(torch_acc) - np.mean(art_acc)) <= 0.02
    two = evasion.PGD(eps=0.1, max_iter=10, num_random_init=2).run(
        digits_model, digits, np.random.default_rng(0))
    assert robust_accuracy(two) <= min(torch_acc) + 0.01  # a second start only adds rows


# -- BIM ------------------------------------------------------------------------------------


def reference_bim(model: Model, x: np.ndarray, y: np.ndarray, eps: float, alpha: float,
                  n_iter: int, *, toward: np.ndarray | None = None) -> np.ndarray:
    """BIM written out by hand on a copy of the base module, all rows in one batch; with
    ``toward``, the iterative least-likely class method (descend the loss of that class)."""
    module = copy.deepcopy(model._base)
    x0 = torch.tensor(x)
    labels = torch.tensor(y if toward is None else toward)
    sign = 1.0 if toward is None else -1.0
    x_adv = x0.clone()
    for _ in range(n_iter):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(module(x_adv), labels), x_adv)
        with torch.no_grad():
            x_adv = (x_adv + sign * alpha * grad.sign()).clamp(0.0, 1.0)
            x_adv = torch.min(torch.max(x_adv, x0 - eps), x0 + eps)
    return x_adv.detach().numpy()


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_bim_matches_a_hand_written_loop(eps: float, digits: Dataset, digits_model: Model,
                                         rows: tuple[np.ndarray, np.ndarray],
                                         rng: np.random.Generator) -> None:
    x, y = rows
    x_ref = reference_bim(digits_model, x, y, eps, eps / 8, 10)  # the defaults' alpha
    expected = digits_model.predict(x_ref)
    outcome = evasion.BIM(eps=eps, rows=ROWS, early_stop=False).run(digits_model, digits, rng)
    assert robust_accuracy(outcome) == float((expected.argmax(1) == y).mean())
    np.testing.assert_allclose(outcome.proba, expected, atol=1e-5)
    np.testing.assert_allclose(outcome.linf, np.abs(x_ref - x).reshape(ROWS, -1).max(1),
                               atol=1e-6)
    # The clean predictions are those of BIM's first gradient pass: no extra query.
    np.testing.assert_allclose(outcome.proba_clean, digits_model.predict(x), atol=1e-6)
    assert outcome.queries == 10 * ROWS


def test_bim_step_ratio_and_no_random_start(digits: Dataset, digits_model: Model,
                                            rows: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = rows
    x_ref = reference_bim(digits_model, x, y, 0.1, 0.1 * 0.3, 4)
    a = evasion.BIM(eps=0.1, max_iter=4, step_ratio=0.3, rows=ROWS, early_stop=False).run(
        digits_model, digits, np.random.default_rng(1))
    b = evasion.BIM(eps=0.1, max_iter=4, step_ratio=0.3, rows=ROWS, early_stop=False).run(
        digits_model, digits, np.random.default_rng(2))
    np.testing.assert_array_equal(a.proba, b.proba)  # deterministic: nothing drawn
    np.testing.assert_allclose(a.proba, digits_model.predict(x_ref), atol=1e-5)


def test_least_likely_bim_moves_predictions_to_the_least_likely_class(
        digits: Dataset, digits_model: Model, rows: tuple[np.ndarray, np.ndarray],
        rng: np.random.Generator) -> None:
    x, y = rows
    least = digits_model.predict(x).argmin(axis=1)
    eps = 0.3
    outcome = evasion.BIM(eps=eps, target="least-likely", rows=ROWS, early_stop=False).run(
        digits_model, digits, rng)
    clean_share = float((outcome.proba_clean.argmax(1) == least).mean())
    share = float((outcome.proba.argmax(1) == least).mean())
    assert clean_share == 0.0 and share > 0.5
    # The same steps written by hand, and robust accuracy still against the true labels.
    x_ref = reference_bim(digits_model, x, y, eps, eps / 8, 10, toward=least)
    np.testing.assert_allclose(outcome.proba, digits_model.predict(x_ref), atol=1e-5)
    assert robust_accuracy(outcome) == float((outcome.proba.argmax(1) == y).mean())
    untargeted = evasion.BIM(eps=eps, rows=ROWS).run(digits_model, digits, rng)
    assert float((untargeted.proba.argmax(1) == least).mean()) < share


@pytest.mark.parametrize(("target", "eps"), [("none", 0.1), ("least-likely", 0.3)])
def test_early_stop_is_never_weaker_and_leaves_standing_rows_alone(
        target: str, eps: float, digits: Dataset, digits_model: Model,
        rows: tuple[np.ndarray, np.ndarray]) -> None:
    """A row stops at its first misclassified iterate (least-likely: first iterate in the
    target class). Every row that never got there takes exactly the full run's steps, and
    every stopped row is misclassified (in its target class), so robust accuracy can
    only fall; the stopped rows are not asked again, so fewer queries."""
    x, y = rows
    alpha, n_iter = eps / 8, 10
    toward = digits_model.predict(x).argmin(axis=1) if target == "least-likely" else None
    labels = y if toward is None else toward
    full = reference_bim(digits_model, x, y, eps, alpha, n_iter, toward=toward)
    # The iterates of the full run, to know where each row first got there.
    reached = np.zeros(len(x), bool)
    for k in range(n_iter):  # iterates 0 .. n_iter - 1 are the ones a gradient pass sees
        x_k = reference_bim(digits_model, x, y, eps, alpha, k, toward=toward) if k else x
        pred = digits_model.labels(x_k)
        reached |= pred != labels if toward is None else pred == labels
    before = digits_model.queries
    stopped = evasion.signed_steps(digits_model, x, labels, x, eps, alpha, n_iter,
                                   ascend=toward is None, early_stop=True)
    queries = digits_model.queries - before
    assert 0 < reached.sum() < len(x)
    np.testing.assert_allclose(stopped[~reached], full[~reached], atol=1e-6)
    pred = digits_model.labels(stopped)
    assert (pred[reached] != y[reached] if toward is None
            else pred[reached] == toward[reached]).all()
    if toward is None:
        assert (pred == y).mean() <= (digits_model.labels(full) == y).mean()
    assert queries < n_iter * len(x)


def test_early_stop_keeps_stepping_where_the_gradient_pass_is_not_the_served_answer(
        digits: Dataset, digits_model: Model, rows: tuple[np.ndarray, np.ndarray]) -> None:
    """Under EOT the gradient pass is an average of draws, not an answer the deployment
    serves: no row is judged from it, so every row takes every step."""
    x, y = rows
    noisy = digits_model.deploy(pre=lambda t: t + 0.01 * torch.randn_like(t), eot=2)
    before = noisy.queries
    evasion.signed_steps(noisy, x, y, x, 0.3, 0.3 / 8, 5, early_stop=True)
    assert noisy.queries - before == 5 * len(x)


def test_pgd_is_reproducible_and_restores_numpy_state(digits: Dataset,
                                                      digits_model: Model) -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    attack = evasion.PGD(eps=0.1, max_iter=5, rows=60)  # torch: draws from the cell's rng
    a = attack.run(digits_model, digits, np.random.default_rng(7))
    b = attack.run(digits_model, digits, np.random.default_rng(7))
    c = attack.run(digits_model, digits, np.random.default_rng(8))
    np.testing.assert_array_equal(a.proba, b.proba)
    assert not np.array_equal(a.l2, c.l2)  # the random start comes from the cell's rng
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_noise_is_drawn_from_rng_and_its_distances_are_exact(
        digits: Dataset, digits_model: Model) -> None:
    eps = 0.3
    x = digits.x_test[:ROWS]
    a = evasion.UniformNoise(eps=eps, rows=ROWS).run(digits_model, digits,
                                                     np.random.default_rng(1))
    b = evasion.UniformNoise(eps=eps, rows=ROWS).run(digits_model, digits,
                                                     np.random.default_rng(1))
    c = evasion.UniformNoise(eps=eps, rows=ROWS).run(digits_model, digits,
                                                     np.random.default_rng(2))
    np.testing.assert_array_equal(a.proba, b.proba)
    assert not np.array_equal(a.proba, c.proba)
    # Redo the draw: digits has many pixels at 0 and 1, so clipping shrinks some changes.
    noise = np.random.default_rng(1).uniform(-eps, eps, size=x.shape).astype(np.float32)
    d = (np.clip(x + noise, 0.0, 1.0) - x).reshape(ROWS, -1).astype(np.float64)
    np.testing.assert_array_equal(a.l0, (d != 0).sum(1))
    np.testing.assert_allclose(a.l2, np.sqrt((d * d).sum(1)), rtol=1e-6)
    np.testing.assert_allclose(a.linf, np.abs(d).max(1), rtol=1e-6)
    assert (a.l0 < x[0].size).any() and (a.linf <= eps + 1e-6).all()


def test_fgsm_distances_per_row_on_a_tiny_linear_model() -> None:
    """Two rows, four inputs: where the step leaves the valid range, it is clipped."""
    linear = torch.nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 2.0], [-1.0, 1.0, 0.0, -2.0]]))
        linear.bias.zero_()
    model = Model(linear, input_shape=(4,), n_classes=2)
    x = np.array([[0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.5, 0.05]], np.float32)
    y = np.array([0, 0])
    data = Dataset(name="tiny", x_train=x, y_train=y, x_test=x, y_test=y, n_classes=2)
    outcome = evasion.FGSM(eps=0.1).run(model, data, np.random.default_rng(0))
    # Class 0's loss falls with w0 - w1 = (2, -2, 0, 4): the step is -0.1 * (1, -1, 0, 1).
    x_adv = np.clip(x - 0.1 * np.array([1, -1, 0, 1], np.float32), 0, 1)
    d = (x_adv - x).astype(np.float64)
    np.testing.assert_array_equal(outcome.l0, [3, 1])  # row 2: two inputs already at a bound
    np.testing.assert_allclose(outcome.l2, np.sqrt((d * d).sum(1)), rtol=1e-6)
    np.testing.assert_allclose(outcome.linf, np.abs(d).max(1), rtol=1e-6)
    np.testing.assert_allclose(outcome.linf, [0.1, 0.05], rtol=1e-5)


def test_zero_eps_changes_nothing(digits: Dataset, digits_model: Model,
                                  rng: np.random.Generator) -> None:
    for cls in ATTACKS:
        outcome = cls(eps=0.0, rows=50).run(digits_model, digits, rng)
        assert not outcome.linf.any() and not outcome.l0.any()
        np.testing.assert_allclose(outcome.proba, outcome.proba_clean, atol=1e-6)


# -- what the Model sees ------------------------------------------------------------------


def test_queries_are_what_the_model_counted(digits: Dataset, digits_model: Model,
                                            rng: np.random.Generator) -> None:
    small = first_rows(digits, 300)
    before = digits_model.queries
    fgsm = evasion.FGSM(eps=0.1).run(digits_model, small, rng)
    assert fgsm.queries == 300  # one gradient query per row; the measurements are free
    noise = evasion.UniformNoise(eps=0.1).run(digits_model, small, rng)
    assert noise.queries == 0  # it never asks the model
    pgd = evasion.PGD(eps=0.1, max_iter=3, early_stop=False).run(digits_model, small, rng)
    assert pgd.queries == 300 * 3  # one gradient query per row and step
    stopping = evasion.PGD(eps=0.1, max_iter=3).run(digits_model, small, rng)
    assert 300 < stopping.queries < 300 * 3  # stopped rows are not asked again
    art = evasion.PGD(eps=0.1, max_iter=3, backend="art").run(digits_model, small, rng)
    # ART: one prediction of the start, then a forward and backward per step (measured).
    assert art.queries == 300 * (3 + 2)
    ll = evasion.BIM(eps=0.1, max_iter=3, target="least-likely", early_stop=False).run(
        digits_model, small, rng)
    assert ll.queries == 300 * (1 + 3)  # the clean scores that pick y_LL, then the steps
    assert digits_model.queries - before == (fgsm.queries + pgd.queries + art.queries
                                             + ll.queries + stopping.queries)


def test_fgsm_gets_its_gradient_through_the_model(digits: Dataset, digits_model: Model,
                                                  rng: np.random.Generator) -> None:
    """Rounding has a zero gradient; with a straight-through stand-in FGSM bites again."""
    def quantise(x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 16) / 16  # digits are sixteenths: clean rows unchanged

    attack = evasion.FGSM(eps=0.1, rows=ROWS)
    masked = attack.run(digits_model.deploy(pre=quantise), digits, rng)
    bpda = attack.run(digits_model.deploy(pre=quantise, gradient=lambda x: x), digits, rng)
    assert not masked.linf.any()  # no gradient, no step: robustness faked by masking
    assert robust_accuracy(masked) == float(masked.correct_before.mean())
    np.testing.assert_allclose(bpda.linf, 0.1, rtol=1e-5)
    assert robust_accuracy(bpda) < robust_accuracy(masked) - 0.2


def test_gradient_attacks_not_applicable_without_gradients(
        digits: Dataset, digits_model: Model, rng: np.random.Generator) -> None:
    for access in (Access.SCORES, Access.LABELS):
        deployed = digits_model.deploy(access=access)
        for cls in (evasion.FGSM, evasion.PGD, evasion.BIM):
            with pytest.raises(NotApplicable, match="gradients"):
                cls(eps=0.1).run(deployed, digits, rng)
    labels_only = digits_model.deploy(access=Access.LABELS)
    outcome = evasion.UniformNoise(eps=0.1, rows=ROWS).run(labels_only, digits, rng)
    assert set(np.unique(outcome.proba)) == {0.0, 1.0}  # labels only, as one-hot rows


class _Corrupted(evasion.FGSM):
    """FGSM whose output is spoilt after the fact, to see the base catch it.

    Test double; the real FGSM does the work.
    """

    spoil = staticmethod(lambda x_adv: x_adv)

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        return type(self).spoil(super().generate(model, x, y, rng))


def _nan(x_adv: np.ndarray) -> np.ndarray:
    x_adv = x_adv.copy()
    x_adv[0, 0, 0, 0] = np.nan
    return x_adv


@pytest.mark.parametrize(("spoil", "fault"), [
    (lambda x_adv: x_adv + 2.0, "outside the valid range"),
    (_nan, "non-finite"),
    (lambda x_adv: x_adv[:, 0], "shape"),
])
def test_a_bad_generate_output_is_an_error_naming_the_attack(
        spoil, fault: str, digits: Dataset, digits_model: Model,
        rng: np.random.Generator) -> None:
    cls = type("Corrupted", (_Corrupted,), {"spoil": staticmethod(spoil)})
    with pytest.raises(GauntletError, match=f"attack 'fgsm'.*{fault}"):
        cls(eps=0.1, rows=20).run(digits_model, digits, rng)
