"""Evasion attacks: FGSM and PGD (white box, L-infinity) and a uniform-noise baseline.

Each attack perturbs test rows within an L-infinity ball of radius ``eps``, clipped to
the model's valid input range; :class:`gauntlet.EvasionAttack` picks the rows, batches
them, measures the model and counts the queries. Labels are the true ones (not the
model's predictions), as robust accuracy is defined. Gradients come only from the Model
(``model.loss_gradient``, ``model.to_art``), so a defense's gradient stand-in (BPDA) is
what these attacks differentiate through.

Why ``fgsm`` is a step on ``loss_gradient`` and ``pgd`` is ART
---------------------------------------------------------------
``pgd`` runs ART's ``ProjectedGradientDescent`` on ``model.to_art()``. ``fgsm`` computes
the same step as ART's ``FastGradientMethod`` (norm inf, true labels, clipped) from one
``model.loss_gradient`` per batch, because FGSM's cell has a speed budget (at most 1.10x
a hand-written torch loop; ``bench/bench_fgsm.py``) and ART cannot meet it, for reasons
outside this plugin:

* ``FastGradientMethod._compute_perturbation`` checks each gradient row for NaN in a
  Python loop (a few microseconds per row: 20% of the cell on 8x8 digits);
* ART's forward pass is hidden inside the estimator, so the clean predictions an
  outcome carries cost one more forward pass, where ``loss_gradient`` hands the base
  those of the forward pass the gradient needs anyway.

Measured with the benchmark after the core redesign (builtin CNN, 5,000 rows, batch 256,
2 CPU cores, medians of 9 rounds), relative to the hand-written loop: on digits this cell
1.05x with two torch threads and 1.00x with one (ART direct 1.10x and 1.12x); on
Fashion-MNIST 1.00x with two threads (ART 1.06x) and 0.97x with one (ART 1.10x). Before
the Model froze the weights, ART direct also back-propagated into them: 1.7-2.4x on digits.
``tests/plugins/test_evasion.py`` checks the step against ART's
``FastGradientMethod`` and against an independent hand-written loop.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import Access, Attack, EvasionAttack, Model, hookimpl, param

EPS_SWEEP = (0.05, 0.1, 0.2, 0.3)
EPS_HELP = "L-infinity budget: the largest change to any input value"
#: Rows per forward/backward pass inside ART. Results do not depend on it (ART's random
#: starts are drawn batch after batch from one stream).
ART_BATCH = 256


class FGSM(EvasionAttack):
    """Fast Gradient Sign Method: one signed-gradient step of size eps (L-infinity).

    Goodfellow, Shlens and Szegedy, 2015, "Explaining and Harnessing Adversarial Examples".
    """

    name = "fgsm"
    needs = Access.GRADIENTS

    eps: float = param(EPS_SWEEP, EPS_HELP, ge=0)
    backend: str = param("torch", "torch: one loss_gradient step per batch (fast); "
                         "art: ART's FastGradientMethod (the same step)",
                         choices=("torch", "art"))

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        low, high = model.clip_values
        if self.backend == "art":
            from art.attacks.evasion import FastGradientMethod

            return FastGradientMethod(model.to_art(), norm=np.inf, eps=self.eps,
                                      batch_size=ART_BATCH).generate(x, y=y)
        # ``x`` itself, not a copy: the base reuses this pass's scores as the clean ones.
        step = self.eps * np.sign(model.loss_gradient(x, y))
        return np.clip(x + step, low, high).astype(np.float32, copy=False)


class PGD(EvasionAttack):
    """Projected Gradient Descent: iterated signed-gradient steps projected on the eps-ball.

    Madry et al., 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks".
    """

    name = "pgd"
    needs = Access.GRADIENTS
    uses_numpy_global = True  # ART draws its random starts from numpy's global generator

    eps: float = param(EPS_SWEEP, EPS_HELP, ge=0)
    step_ratio: float = param(0.25, "step size as a fraction of eps", gt=0)
    max_iter: int = param(20, "gradient steps per random start", ge=1)
    num_random_init: int = param(1, "random starts in the eps-ball (0: start at the input)",
                                 ge=0)
    batch_size: int = param(0, "rows per generate() call (0: all rows in one call; ART "
                            f"batches by {ART_BATCH} inside)", ge=0)

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        if self.eps == 0:  # ART rejects a zero step; nothing can move anyway
            return x
        from art.attacks.evasion import ProjectedGradientDescent

        return ProjectedGradientDescent(
            model.to_art(), norm=np.inf, eps=self.eps, eps_step=self.eps * self.step_ratio,
            max_iter=self.max_iter, num_random_init=self.num_random_init,
            batch_size=ART_BATCH, verbose=False).generate(x, y=y)


class UniformNoise(EvasionAttack):
    """Uniform random noise in [-eps, eps]: the chance baseline a real attack must beat.

    Carlini et al., 2019, "On Evaluating Adversarial Robustness" (random noise of the same
    budget as a sanity check of gradient-based attacks).
    """

    name = "noise"
    needs = Access.LABELS

    eps: float = param(EPS_SWEEP, EPS_HELP, ge=0)
    batch_size: int = param(0, "rows per generate() call (0: all rows in one call)", ge=0)

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        noise = rng.uniform(-self.eps, self.eps, size=x.shape).astype(np.float32)
        return np.clip(x + noise, *model.clip_values).astype(np.float32, copy=False)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(FGSM)
    register(PGD)
    register(UniformNoise)
