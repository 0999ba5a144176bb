"""Membership inference: does the model reveal which rows it was trained on?

Each attack here is a :class:`gauntlet.MembershipAttack` and writes only its membership
score; the base draws members and non-members, calibrates a threshold on half of each
and reports the other half (see :mod:`gauntlet.membership`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import Attack, MembershipAttack, Model, hookimpl


class ThresholdMembership(MembershipAttack):
    """Global threshold on the top-one confidence: members are the confidently answered.

    Yeom et al., 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to
    Overfitting"; Shokri et al., 2017, "Membership Inference Attacks against Machine
    Learning Models".
    """

    name = "mia-threshold"

    def scores(self, model: Model, x: np.ndarray, y: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        return model.predict(x).max(axis=1).astype(np.float64)


class LossMembership(MembershipAttack):
    """Loss threshold: members are the rows the model fits best (lowest cross-entropy).

    Yeom et al., 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to
    Overfitting" (the loss attack). Knows each row's true label; the score is the log
    probability of it (minus the loss), floored at 1e-12 so a zero stays finite.
    """

    name = "mia-loss"

    def scores(self, model: Model, x: np.ndarray, y: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        proba = model.predict(x)
        return np.log(np.maximum(proba[np.arange(len(y)), y], 1e-12)).astype(np.float64)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(ThresholdMembership)
    register(LossMembership)
