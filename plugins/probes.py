"""Probes: what the model answers on inputs that belong to no class.

Each probe here is a :class:`gauntlet.ProbeAttack` and writes only its inputs; the base
measures the model on them. Metrics in ``gauntlet.plugins.metrics`` read how concentrated
and how confident the answers are.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import Attack, Dataset, Model, ProbeAttack, hookimpl, param


def uniform_noise(shape: tuple[int, ...], clip_values: tuple[float, float], n: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``n`` inputs of ``shape``, each value uniform in ``clip_values`` (float32)."""
    low, high = clip_values
    return rng.uniform(low, high, size=(n, *shape)).astype(np.float32)


class TrashBucket(ProbeAttack):
    """Uniform-noise probe: where does the model put inputs that are no class at all?

    Nguyen et al., 2015, "Deep Neural Networks are Easily Fooled: High Confidence
    Predictions for Unrecognizable Images"; Hendrycks & Gimpel, 2017, "A Baseline for
    Detecting Misclassified and Out-of-Distribution Examples".
    """

    name = "trash-bucket"
    probes: int = param(1000, "noise inputs sent to the model", ge=1)

    def inputs(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> np.ndarray:
        return uniform_noise(model.input_shape, model.clip_values, self.probes, rng)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(TrashBucket)
