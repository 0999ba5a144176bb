"""The evasion family's base: the plugin writes ``generate``, the base does the rest.

:class:`EvasionAttack` selects the rows to attack, cuts them into batches, calls
``generate`` once per batch, checks what comes back, measures the model on the
adversarial and the clean rows (reusing the clean predictions of the attack's own
first pass over a batch, e.g. a gradient pass, instead of paying for another), and
returns an :class:`gauntlet.EvasionOutcome` with per-row L0, L2 and L-infinity
distances, per-row correctness before and after, and the queries the Model counted.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.contract import check_in_range, returned_array
from gauntlet.errors import GauntletError
from gauntlet.model import measure
from gauntlet.outcome import EvasionOutcome
from gauntlet.params import param

if TYPE_CHECKING:
    from gauntlet.dataset import Dataset
    from gauntlet.model import Model

class EvasionOutcomeError(GauntletError):
    """``generate`` returned something that is not a batch of adversarial inputs."""


class EvasionAttack(Attack):
    """Base of evasion attacks: subclasses implement :meth:`generate` only.

    Set ``name``, ``needs`` (``Access.GRADIENTS`` for white-box attacks, ``SCORES`` or
    ``LABELS`` for black-box ones), the docstring and the parameters. ``rows`` and
    ``batch_size`` are declared here; a subclass may re-declare them to change a default.
    """

    family = Family.EVASION
    outcome = EvasionOutcome
    #: True if the attack (or the library under it, like ART) draws from numpy's global
    #: generator: the base seeds it from the cell's generator once per cell, then restores it.
    uses_numpy_global: ClassVar[bool] = False

    rows: int = param(0, "test rows to attack, from the first (0: every evaluated row)", ge=0)
    batch_size: int = param(256, "rows per generate() call (0: all rows in one call)", ge=0)

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        """Return adversarial versions of ``x`` (same shape, inside ``model.clip_values``).

        :param model: the deployed model; ask it for what ``needs`` allows
            (``model.loss_gradient(x, y)``, ``model.predict``, ``model.labels``).
        :param x: one batch of clean inputs (read-only).
        :param y: their true labels.
        :param rng: the cell's generator; draw all randomness from it.
        """
        raise NotImplementedError

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> EvasionOutcome:
        self.check(model)
        x_all = np.ascontiguousarray(dataset.x_test, dtype=np.float32)
        y_all = np.asarray(dataset.y_test, dtype=np.int64)
        n = min(self.rows, len(x_all)) if self.rows else len(x_all)
        x_all, y_all = x_all[:n], y_all[:n]  # the last batch must stop at row n
        size = self.batch_size or max(n, 1)
        adv: list[np.ndarray] = []
        clean: list[np.ndarray | None] = []
        dists = []
        queries = model.queries
        with self._numpy_global(rng):
            for start in range(0, n, size):
                x = x_all[start:start + size]
                x.flags.writeable = False  # generate() must not change the clean rows
                y = y_all[start:start + size]
                with model._watching(x) as seen:
                    x_adv = self._checked(self.generate(model, x, y, rng), x, model)
                    taken = seen()
                adv.append(measure(model, x_adv))
                clean.append(taken)
                dists.append(distances(x_adv, x))
        # Clean rows the attack never passed to the model are measured after every batch,
        # so the random draws of a randomised defense follow the attack's own order.
        for i, start in enumerate(range(0, n, size)):
            if clean[i] is None:
                clean[i] = measure(model, x_all[start:start + size])
        spent = model.queries - queries
        empty = np.zeros((0, model.n_classes), np.float32)
        l0, l2, linf = (np.concatenate([d[k] for d in dists]) if dists else
                        np.zeros(0, np.float32) for k in range(3))
        return EvasionOutcome(
            y_true=y_all[:n], proba=np.concatenate(adv) if adv else empty,
            proba_clean=np.concatenate(clean) if clean else empty,  # type: ignore[arg-type]
            rows=np.arange(n, dtype=np.int64), l0=l0, l2=l2, linf=linf,
            queries=spent)

    def _checked(self, x_adv: object, x: np.ndarray, model: Model) -> np.ndarray:
        """``x_adv`` as float32, or EvasionOutcomeError naming the attack and the fault."""
        owner, call = self.owner(), "generate()"
        out = returned_array(EvasionOutcomeError, owner, call, x_adv, np.float32, "inputs")
        if out.shape != x.shape:
            raise EvasionOutcomeError(f"{owner}: generate() returned shape {out.shape} for "
                                      f"inputs shaped {x.shape}")
        check_in_range(EvasionOutcomeError, owner, call, out, model.clip_values)
        return out

    @contextlib.contextmanager
    def _numpy_global(self, rng: np.random.Generator) -> Iterator[None]:
        if not self.uses_numpy_global:
            yield
            return
        state = np.random.get_state()
        np.random.seed(int(rng.integers(2**32)))
        try:
            yield
        finally:
            np.random.set_state(state)


def distances(x_adv: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: L0 (values changed), L2 and L-infinity distances, as float32."""
    d = (x_adv.astype(np.float64) - x).reshape(len(x), -1)
    if not d.size:
        zero = np.zeros(len(x), np.float32)
        return zero, zero.copy(), zero.copy()
    a = np.abs(d)
    return ((a > 0).sum(axis=1).astype(np.float32),
            np.sqrt((d * d).sum(axis=1)).astype(np.float32),
            a.max(axis=1).astype(np.float32))
