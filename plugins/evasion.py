"""Evasion attacks: FGSM and PGD (white box, L-infinity) and a uniform-noise baseline.

Every attack perturbs the first ``samples`` test rows (all of them when 0) within an
L-infinity ball of radius ``eps``, clipped to the model's valid input range, and returns
the model's probabilities on the perturbed and the clean rows. Labels are the true ones
(not the model's predictions), as robust accuracy is defined.

Why ``fgsm`` is a torch loop and ``pgd`` is ART
-----------------------------------------------
``pgd`` runs ART's ``ProjectedGradientDescent`` on ``model.to_art()``. ``fgsm`` computes
the same step as ART's ``FastGradientMethod`` (norm inf, true labels, clipped) in plain
torch, because FGSM's cell has a speed budget (at most 1.10x a hand-written torch loop;
``bench/bench_fgsm.py``) and ART cannot meet it, for reasons outside this plugin:

* ART's ``loss_gradient`` calls ``loss.backward()``, so it also back-propagates into
  every weight (avoidable: parameters are frozen while ART runs, see ``_frozen``);
* ``FastGradientMethod._compute_perturbation`` checks each gradient row for NaN in a
  Python loop (a few microseconds per row: 20% of the cell on 8x8 digits);
* ART's forward pass is hidden inside the estimator, so the clean predictions an
  outcome carries cost one more forward pass, where the torch loop takes them from the
  forward pass the gradient needs anyway.

Measured with the benchmark (builtin CNN, 5,000 rows, batch 256, 2 CPU cores), relative
to the hand-written loop: on digits ART direct took 1.7-2.4x, ART with frozen weights and
no clean pass still ~1.5x, this cell 1.00x (one torch thread; 1.03-1.13x with two on a
shared machine); on Fashion-MNIST ART 1.19x, this cell 0.99x.
``tests/plugins/test_evasion.py`` checks the torch step against ART's
``FastGradientMethod`` and against an independent hand-written loop.

The fast path reads probabilities from ``model.module`` exactly as ``Model.predict`` does
(softmax of the logits); a Model subclass that overrides ``predict`` or ``logits`` is
queried through them instead.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from gauntlet import (
    Access,
    Attack,
    ConfigError,
    Dataset,
    EvasionOutcome,
    Family,
    Model,
    hookimpl,
)

EPS_SWEEP = (0.05, 0.1, 0.2, 0.3)


# -- shared helpers ----------------------------------------------------------------------


def _test_rows(dataset: Dataset, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``samples`` test rows (all when 0), as contiguous float32 / int64."""
    if samples < 0:
        raise ConfigError(f"samples must be >= 0 (0 means all test rows), got {samples}")
    x, y = dataset.x_test, dataset.y_test
    if samples:
        x, y = x[:samples], y[:samples]
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


def _check_budget(owner: str, eps: float, batch_size: int | None = None) -> None:
    if not eps >= 0:
        raise ConfigError(f"{owner}: eps must be >= 0, got {eps}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"{owner}: batch_size must be >= 1, got {batch_size}")


def _linf(x_adv: np.ndarray, x: np.ndarray) -> float:
    return float(np.abs(x_adv - x).max()) if len(x) else 0.0


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, computed exactly as ``Model.predict`` does."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def _predicts_through_module(model: Model) -> bool:
    """True when ``model.predict`` is the softmax of ``model.module``'s logits."""
    return type(model).predict is Model.predict and type(model).logits is Model.logits


def _device(module: Any) -> Any:
    import torch

    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def _frozen(module: Any) -> Iterator[None]:
    """Stop gradients into the weights while an attack runs.

    ART's ``loss_gradient`` calls ``loss.backward()``, which would otherwise compute (and
    leave behind in ``.grad``) the gradient of every weight: wasted work, as evasion
    only needs the gradient with respect to the input.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def _numpy_seeded(rng: np.random.Generator) -> Iterator[None]:
    """Seed numpy's global generator (which ART draws from) from ``rng``, then restore it."""
    state = np.random.get_state()
    np.random.seed(int(rng.integers(2**32)))
    try:
        yield
    finally:
        np.random.set_state(state)


# -- FGSM --------------------------------------------------------------------------------


def fgsm_steps(
    module: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    clip_values: tuple[float, float],
    batch_size: int,
) -> Iterator[tuple[slice, Any, Any, Any]]:
    """One signed-gradient step per row: ``clip(x + eps * sign(grad_x CE(module(x), y)))``.

    Yields, batch by batch, the rows' slice, the clean inputs, their logits (from the
    forward pass the gradient needs) and the adversarial inputs, as detached tensors.
    """
    import torch
    import torch.nn.functional as F

    device = _device(module)
    low, high = clip_values
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        xb = torch.as_tensor(x[rows], device=device).requires_grad_(True)
        logits = module(xb)
        loss = F.cross_entropy(logits, torch.as_tensor(y[rows], device=device))
        # autograd.grad asks for the input's gradient only: no weight gradient is
        # computed and no .grad is left on the model.
        (grad,) = torch.autograd.grad(loss, xb)
        with torch.no_grad():
            x_adv = (xb + eps * grad.sign()).clamp_(low, high)
        yield rows, xb.detach(), logits.detach(), x_adv


class FGSM(Attack):
    """Fast Gradient Sign Method: one signed-gradient step of size eps (L-infinity).

    Goodfellow, Shlens and Szegedy, 2015, "Explaining and Harnessing Adversarial Examples".
    """

    name = "fgsm"
    family = Family.EVASION
    needs = Access.GRADIENTS
    outcome = EvasionOutcome
    # backend "torch" is the same step as ART's FastGradientMethod (tested equal) within
    # the speed budget; "art" runs ART's FastGradientMethod itself.
    params = {"eps": EPS_SWEEP, "batch_size": 256, "samples": 0, "backend": "torch"}

    def validate(self) -> None:
        _check_budget(self.owner(), self.eps, self.batch_size)
        if self.backend not in ("torch", "art"):
            raise ConfigError(f"{self.owner()}: backend must be 'torch' or 'art', "
                              f"got {self.backend!r}")

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> EvasionOutcome:
        self.check(model)
        x, y = _test_rows(dataset, self.samples)
        if self.backend == "art":
            return self._run_art(model, x, y)
        return self._run_torch(model, x, y)

    def _run_art(self, model: Model, x: np.ndarray, y: np.ndarray) -> EvasionOutcome:
        from art.attacks.evasion import FastGradientMethod

        attack = FastGradientMethod(model.to_art(), norm=np.inf, eps=self.eps,
                                    batch_size=self.batch_size)
        with _frozen(model.module):
            x_adv = attack.generate(x, y=y).astype(np.float32, copy=False)
        return EvasionOutcome(y_true=y, proba=model.predict(x_adv),
                              proba_clean=model.predict(x), linf=_linf(x_adv, x))

    def _run_torch(self, model: Model, x: np.ndarray, y: np.ndarray) -> EvasionOutcome:
        import torch

        direct = _predicts_through_module(model)
        x_adv = None if direct else np.empty_like(x)
        adv: list[np.ndarray] = []
        clean: list[np.ndarray] = []
        linf = 0.0
        steps = fgsm_steps(model.module, x, y, self.eps, model.clip_values, self.batch_size)
        for rows, xb, logits, xa in steps:
            linf = max(linf, float((xa - xb).abs().max()))
            if x_adv is None:
                with torch.no_grad():
                    adv.append(model.module(xa).float().cpu().numpy())
                clean.append(logits.float().cpu().numpy())
            else:
                x_adv[rows] = xa.cpu().numpy()
        if x_adv is not None:
            # predict() is not the module's softmax here: ask it, as a user would.
            proba, proba_clean = model.predict(x_adv), model.predict(x)
        elif adv:
            proba, proba_clean = _softmax(np.concatenate(adv)), _softmax(np.concatenate(clean))
        else:
            proba = proba_clean = np.zeros((0, model.n_classes), np.float32)
        return EvasionOutcome(y_true=y, proba=proba, proba_clean=proba_clean, linf=linf)


# -- PGD ---------------------------------------------------------------------------------


class PGD(Attack):
    """Projected Gradient Descent: iterated signed-gradient steps projected on the eps-ball.

    Madry et al., 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks".
    """

    name = "pgd"
    family = Family.EVASION
    needs = Access.GRADIENTS
    outcome = EvasionOutcome
    params = {"eps": EPS_SWEEP, "step_ratio": 0.25, "max_iter": 20, "num_random_init": 1,
              "batch_size": 256, "samples": 0}

    def validate(self) -> None:
        _check_budget(self.owner(), self.eps, self.batch_size)
        if not (self.step_ratio > 0 and self.max_iter >= 1 and self.num_random_init >= 0):
            raise ConfigError(f"{self.owner()}: needs step_ratio > 0, max_iter >= 1 and "
                              f"num_random_init >= 0; got {self.values}")

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> EvasionOutcome:
        from art.attacks.evasion import ProjectedGradientDescent

        self.check(model)
        x, y = _test_rows(dataset, self.samples)
        if self.eps == 0 or not len(x):
            x_adv = x.copy()
        else:
            attack = ProjectedGradientDescent(
                model.to_art(), norm=np.inf, eps=self.eps, eps_step=self.eps * self.step_ratio,
                max_iter=self.max_iter, num_random_init=self.num_random_init,
                batch_size=self.batch_size, verbose=False)
            # ART draws its random start from numpy's global generator.
            with _frozen(model.module), _numpy_seeded(rng):
                x_adv = attack.generate(x, y=y).astype(np.float32, copy=False)
        return EvasionOutcome(y_true=y, proba=model.predict(x_adv),
                              proba_clean=model.predict(x), linf=_linf(x_adv, x))


# -- random-noise baseline ---------------------------------------------------------------


class UniformNoise(Attack):
    """Uniform random noise in [-eps, eps]: the chance baseline a real attack must beat.

    Carlini et al., 2019, "On Evaluating Adversarial Robustness" (random noise of the same
    budget as a sanity check of gradient-based attacks).
    """

    name = "noise"
    family = Family.EVASION
    needs = Access.LABELS
    outcome = EvasionOutcome
    params = {"eps": EPS_SWEEP, "samples": 0}

    def validate(self) -> None:
        _check_budget(self.owner(), self.eps)

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> EvasionOutcome:
        self.check(model)
        x, y = _test_rows(dataset, self.samples)
        noise = rng.uniform(-self.eps, self.eps, size=x.shape).astype(np.float32)
        x_adv = np.clip(x + noise, *model.clip_values).astype(np.float32, copy=False)
        return EvasionOutcome(y_true=y, proba=model.predict(x_adv),
                              proba_clean=model.predict(x), linf=_linf(x_adv, x))


@hookimpl
def register_attacks(register: Any) -> None:
    register(FGSM)
    register(PGD)
    register(UniformNoise)
