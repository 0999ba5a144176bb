"""Probes: what the model answers on inputs that belong to no class.

A classifier has no "none of these" answer, so on garbage it still picks a class, and
often one class (the "trash bucket") with high confidence. Metrics in
``gauntlet.plugins.metrics`` measure how concentrated and how confident those answers are.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import Access, Attack, ConfigError, Dataset, Family, Model, ProbeOutcome, hookimpl


def uniform_noise(shape: tuple[int, ...], clip_values: tuple[float, float], samples: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``samples`` inputs of ``shape``, each value uniform in ``clip_values`` (float32)."""
    low, high = clip_values
    return rng.uniform(low, high, size=(samples, *shape)).astype(np.float32)


class TrashBucket(Attack):
    """Uniform-noise probe: where does the model put inputs that are no class at all?

    Nguyen et al., 2015, "Deep Neural Networks are Easily Fooled: High Confidence
    Predictions for Unrecognizable Images"; Hendrycks & Gimpel, 2017, "A Baseline for
    Detecting Misclassified and Out-of-Distribution Examples".
    """

    name = "trash-bucket"
    family = Family.PROBE
    needs = Access.SCORES
    outcome = ProbeOutcome
    params = {"samples": 1000}

    def __init__(self, **values: object) -> None:
        super().__init__(**values)
        if self.samples < 1:
            raise ConfigError(f"{self.owner()}: samples must be >= 1, got {self.samples}")

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> ProbeOutcome:
        self.check(model)
        x = uniform_noise(model.input_shape, model.clip_values, self.samples, rng)
        return ProbeOutcome(proba=model.predict(x))


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(TrashBucket)
