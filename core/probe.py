"""The probe family's base: the plugin writes ``inputs``, the base does the rest.

A probe asks what the model answers on inputs that belong to no class (noise, blank
images, another domain). A classifier has no "none of these" answer, so it still picks a
class, often one class with high confidence. :class:`ProbeAttack` takes the plugin's
probe inputs (:meth:`ProbeAttack.inputs`), checks them and measures the deployed model on
them; the metrics read how concentrated and how confident its answers are.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.contract import check_in_range, returned_array
from gauntlet.errors import GauntletError
from gauntlet.model import Access, measure
from gauntlet.outcome import ProbeOutcome

if TYPE_CHECKING:
    from gauntlet.dataset import Dataset
    from gauntlet.model import Model

class ProbeInputsError(GauntletError):
    """``inputs`` returned something that is not a batch of valid model inputs."""


class ProbeAttack(Attack):
    """Base of probes: subclasses implement :meth:`inputs` only.

    Set ``name``, the docstring and the parameters. The default ``needs`` is scores
    access: the probe metrics read the model's confidence, which a labels-only
    deployment does not show.
    """

    family = Family.PROBE
    needs = Access.SCORES
    outcome = ProbeOutcome

    def inputs(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> np.ndarray:
        """Return the probe inputs, shaped ``(N, *model.input_shape)``, inside
        ``model.clip_values``. The base sends them to the model.

        :param model: the deployed model (its shape and valid range; no need to query it).
        :param dataset: the audit's data, for probes built from real inputs (read-only).
        :param rng: the cell's generator; draw all randomness from it.
        """
        raise NotImplementedError

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> ProbeOutcome:
        self.check(model)
        x = self._checked(self.inputs(model, dataset, rng), model)
        return ProbeOutcome(proba=measure(model, x))

    def _checked(self, x: object, model: Model) -> np.ndarray:
        """``x`` as float32, or ProbeInputsError naming the attack and the fault."""
        owner, call = self.owner(), "inputs()"
        out = returned_array(ProbeInputsError, owner, call, x, np.float32, "inputs")
        if out.ndim != len(model.input_shape) + 1 or out.shape[1:] != model.input_shape:
            raise ProbeInputsError(f"{owner}: inputs() returned shape {out.shape}; the model "
                                   f"takes (N, {', '.join(map(str, model.input_shape))})")
        check_in_range(ProbeInputsError, owner, call, out, model.clip_values)
        return out
