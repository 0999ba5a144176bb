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


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(ThresholdMembership)
