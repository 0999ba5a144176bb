"""Built-in defenses that wrap a trained model: input noise and output post-processing.

Each defense returns a new :class:`gauntlet.Model` around a torch module that wraps the
base module (shared, never copied or modified), and passes ``rebuild=`` so that
``defended.with_module(new_base)`` puts the same defense around a re-trained base: a
poisoning attack re-trains the base and still faces the defense as deployed.

Output defenses that work on probabilities return ``log(p)``, because
:meth:`Model.predict` applies a softmax to the module's output and ``softmax(log p) = p``
for any ``p`` that sums to one.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gauntlet import Access, Dataset, Defense, Model, Stage, hookimpl

#: Probabilities are floored here before renormalising, so log(p) stays finite.
PROBABILITY_FLOOR = 1e-6


def _derive(model: Model, module: nn.Module, *, access: Access,
            wrap: Callable[[nn.Module], nn.Module]) -> Model:
    """A Model around ``module`` with ``model``'s metadata, rebuildable on a new base.

    ``rebuild`` first asks ``model`` to re-deploy itself on the new base (so defenses
    stacked underneath this one are kept), then wraps the result with ``wrap``.
    """

    def rebuild(new_base: nn.Module) -> Model:
        inner = model.with_module(new_base)
        return _derive(inner, wrap(inner.module), access=access, wrap=wrap)

    return Model(
        module,
        input_shape=model.input_shape,
        n_classes=model.n_classes,
        clip_values=model.clip_values,
        access=access,
        recipe=model.recipe,
        name=model.name,
        source=model.source,
        rebuild=rebuild,
        batch_size=model.batch_size,
    )


def _wrapped(model: Model, wrap: Callable[[nn.Module], nn.Module], access: Access) -> Model:
    return _derive(model, wrap(model.module), access=access, wrap=wrap)


# -- torch modules ---------------------------------------------------------------------


class ClippedLogits(nn.Module):
    """Logits shifted so the top one is ``r``, then clipped to ``[-r, r]``.

    Plain clipping of raw logits ties every class above ``r`` at the cap and so changes
    the predicted class (a third of the digits test set at r = 2). Anchoring the top logit
    at ``r`` first keeps the argmax while capping the top-one probability at
    ``1 / (1 + (C - 1) exp(-2r))``.
    """

    def __init__(self, base: nn.Module, r: float) -> None:
        super().__init__()
        self.base = base
        self.r = float(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x)
        z = z - z.max(dim=1, keepdim=True).values + self.r
        return z.clamp(-self.r, self.r)


class InputNoise(nn.Module):
    """Uniform noise in ``[-r, r]`` added to every input, clipped to the valid range;
    a fresh draw at every call, from torch's global generator."""

    def __init__(self, base: nn.Module, r: float, clip_values: tuple[float, float]) -> None:
        super().__init__()
        self.base = base
        self.r = float(r)
        self.low, self.high = clip_values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = (torch.rand_like(x) * 2.0 - 1.0) * self.r
        return self.base((x + noise).clamp(self.low, self.high))


class ScoreNoise(nn.Module):
    """Uniform noise in ``[-r, r]`` added to the probabilities, floored at
    :data:`PROBABILITY_FLOOR`, renormalised to sum to one; returns their log."""

    def __init__(self, base: nn.Module, r: float) -> None:
        super().__init__()
        self.base = base
        self.r = float(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.base(x).double(), dim=1)
        noise = (torch.rand(p.shape, dtype=p.dtype, device=p.device) * 2.0 - 1.0) * self.r
        q = (p + noise).clamp_min(PROBABILITY_FLOOR)
        q = q / q.sum(dim=1, keepdim=True)
        return q.log().float()


# -- defenses --------------------------------------------------------------------------


class NoDefense(Defense):
    """No defense: the model as trained, the baseline every defended row is compared with.

    The undefended reference row of the evaluation matrix.
    """

    name = "none"
    stage = Stage.NONE
    evaluation = "The undefended model; every attack runs against it as its access allows."

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        return _derive(model, model.module, access=model.access, wrap=lambda base: base)


class ConfidenceClip(Defense):
    """Confidence masking: logits anchored at r and clipped to [-r, r], scores only.

    Jia et al., 2019, "MemGuard: Defending against Black-Box Membership Inference Attacks
    via Adversarial Examples"; Shokri et al., 2017, "Membership Inference Attacks against
    Machine Learning Models" (confidence masking as a mitigation).
    """

    name = "confidence-clip"
    stage = Stage.OUTPUT
    # r = 2 caps the top-one probability at 0.86 for ten classes; the digits CNN's median
    # top-one probability is above 0.9999, so the defense visibly changes its scores.
    params = {"r": 2.0}
    evaluation = (
        "Clipped logits would mask gradients and fake robustness, so the served model "
        "exposes scores only and gradient attacks on it are not run (not applicable); "
        "here the noise baseline, membership, poisoning and probe attacks evaluate it "
        "(score- and decision-based evasion attacks are still to come)."
    )

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        r = self.r
        return _wrapped(model, lambda base: ClippedLogits(base, r),
                        min(model.access, Access.SCORES))


class InputNoiseDefense(Defense):
    """Random input perturbation: uniform noise in [-r, r] added before classification.

    Cohen et al., 2019, "Certified Adversarial Robustness via Randomized Smoothing" (for
    context: this is a single noisy draw, not the certified smoothed classifier).
    """

    name = "input-noise"
    stage = Stage.INPUT
    params = {"r": 0.1}
    evaluation = (
        "Adaptive: gradients pass through the additive noise, so gradient attacks "
        "differentiate through one noise draw per step (EOT with 1 sample)."
    )

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        r, clip = self.r, model.clip_values
        return _wrapped(model, lambda base: InputNoise(base, r, clip), model.access)


class ConfidenceNoise(Defense):
    """Output perturbation: uniform noise in [-r, r] added to the probability scores.

    Jia et al., 2019, "MemGuard: Defending against Black-Box Membership Inference Attacks
    via Adversarial Examples" (noise on confidence scores; here random, not crafted).
    """

    name = "confidence-noise"
    stage = Stage.OUTPUT
    params = {"r": 0.1}
    evaluation = (
        "Noisy scores would mask gradients and fake robustness, so the served model "
        "exposes scores only and gradient attacks on it are not run (not applicable); "
        "here the noise baseline, membership, poisoning and probe attacks evaluate it "
        "(score- and decision-based evasion attacks are still to come)."
    )

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        r = self.r
        return _wrapped(model, lambda base: ScoreNoise(base, r),
                        min(model.access, Access.SCORES))


@hookimpl
def register_defenses(register: Callable[[type[Defense]], None]) -> None:
    for cls in (NoDefense, ConfidenceClip, InputNoiseDefense, ConfidenceNoise):
        register(cls)
