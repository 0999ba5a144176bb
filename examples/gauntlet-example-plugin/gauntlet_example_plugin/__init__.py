"""An example Gauntlet plugin: one attack, one defense and one metric.

- ``box-blur``: an evasion attack that blurs images; needs labels only, never queries.
- ``bit-depth``: a defense that squeezes inputs to a few bits per value before the model,
  deployed with ``model.deploy`` and a straight-through gradient (BPDA), so gradient
  attacks still run against it.
- ``mean_l2``: a metric, the mean L2 distance of an evasion attack's inputs from the
  clean ones (a number, not a proportion).

Install it next to Gauntlet (``pip install ./examples/gauntlet-example-plugin``) and all
three appear in ``gauntlet plugins`` and in every audit. docs/plugins.md explains each
line.
"""
from __future__ import annotations

import math

import numpy as np

from gauntlet import (
    Access,
    ConfigError,
    Defense,
    EvasionAttack,
    EvasionOutcome,
    Metric,
    MetricValue,
    NotApplicable,
    Stage,
    hookimpl,
    param,
)


class BoxBlur(EvasionAttack):
    """Blurs each image with a k x k box filter, blended with strength alpha.

    A common corruption, as in Hendrycks & Dietterich, 2019, "Benchmarking Neural Network
    Robustness to Common Corruptions and Perturbations".
    """

    name = "box-blur"
    needs = Access.LABELS  # it never even asks: the blur does not look at the model

    alpha: float = param((0.5, 1.0), "weight of the blurred image (1: fully blurred)",
                         gt=0, le=1)
    k: int = param(3, "side of the square box filter, in pixels (odd)", ge=1)

    def validate(self) -> None:
        if self.k % 2 == 0:
            raise ConfigError(f"attack 'box-blur': parameter 'k' must be odd, got {self.k}")

    def generate(self, model, x, y, rng):
        if x.ndim != 4:  # images only: (N, C, H, W)
            raise NotApplicable("box-blur needs image data shaped (N, C, H, W)")
        pad = self.k // 2
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
        h, w = x.shape[2:]
        blurred = sum(padded[:, :, i:i + h, j:j + w]
                      for i in range(self.k) for j in range(self.k)) / self.k ** 2
        return (1 - self.alpha) * x + self.alpha * blurred


class BitDepth(Defense):
    """Feature squeezing: each input value rounded to one of 2**bits levels.

    Xu, Evans & Qi, 2018, "Feature Squeezing: Detecting Adversarial Examples in Deep
    Neural Networks".
    """

    name = "bit-depth"
    stage = Stage.INPUT
    adaptive = True
    evaluation = ("Adaptive: rounding has no useful gradient, so gradient attacks "
                  "differentiate through the identity instead (BPDA, Athalye et al., "
                  "2018) while the forward pass still squeezes.")

    bits: int = param(3, "bits kept per input value", ge=1, le=16)

    def apply(self, model, dataset, rng):
        import torch

        low, high = model.clip_values
        levels = 2 ** self.bits - 1

        def squeeze(x: torch.Tensor) -> torch.Tensor:
            unit = (x - low) / (high - low)
            return torch.round(unit * levels) / levels * (high - low) + low

        return model.deploy(pre=squeeze, gradient=lambda x: x)


class MeanL2(Metric):
    """Mean L2 distance between the attacked and the clean inputs, with a normal 95% interval.

    Higher is better for the defender: the attack had to move inputs further. Read it
    beside robust accuracy; a fixed-budget attack moves inputs about as far on any model.
    """

    name = "mean_l2"
    title = "Mean L2 perturbation"
    applies_to = (EvasionOutcome,)
    higher_is_better = True
    bounds = None  # a distance has no upper end
    format = "number"  # 1.37, never 137.0%

    def compute(self, outcome: EvasionOutcome) -> MetricValue:
        l2 = outcome.l2.astype(np.float64)
        n = len(l2)
        if n == 0:
            return MetricValue(math.nan, 0)
        mean = float(l2.mean())
        if n == 1:
            return MetricValue(mean, 1)
        half = 1.96 * float(l2.std(ddof=1)) / math.sqrt(n)
        return MetricValue(mean, n, max(0.0, mean - half), mean + half)


@hookimpl
def register_attacks(register):
    register(BoxBlur)


@hookimpl
def register_defenses(register):
    register(BitDepth)


@hookimpl
def register_metrics(register):
    register(MeanL2)
