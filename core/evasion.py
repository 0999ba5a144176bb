"""The evasion family's base: the plugin writes ``generate``, the base does the rest.

:class:`EvasionAttack` selects the rows to attack, cuts them into batches, calls
``generate`` once per batch, checks what comes back, measures the model on the
adversarial and the clean rows (reusing the clean predictions of the attack's own
first pass over a batch, e.g. a gradient pass, instead of paying for another), and
returns an :class:`gauntlet.EvasionOutcome` with per-row L0, L2 and L-infinity
distances, per-row correctness before and after, and the queries the Model counted.
"""
from __future__ import annotations

import base64
import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.contract import check_in_range, returned_array
from gauntlet.errors import GauntletError
from gauntlet.model import Access, measure
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
    #: True for a minimal-perturbation attack (CW, DeepFool): no budget, it finds the
    #: smallest change that flips each row, and its outcome's per-row ``l2`` is that
    #: distance (the report draws accuracy against an L2 budget from it).
    minimal: ClassVar[bool] = False
    #: The norm of the budget parameter ``eps`` ("linf" or "l2"; "" when the attack has no
    #: eps budget, e.g. a minimal-perturbation or few-pixel attack). The worst-case column
    #: and the evaluation checklist compare attacks of the same norm and eps.
    norm: ClassVar[str] = "linf"

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

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator, *,
            naive: Model | None = None,
            naive_cache: dict[int, np.ndarray] | None = None) -> EvasionOutcome:
        """Attack the evaluated test rows in batches and measure the model on them.

        :param naive: the undefended model, when the runner also wants the naive number:
            the adversarial inputs this attack makes against ``naive`` (with the same
            random draws), measured on ``model``.
        :param naive_cache: where the runner keeps those inputs for this attack point, by
            row count, so every defense of the audit measures the same ones made once.
        """
        self.check(model)
        naive_rng = copy.deepcopy(rng)
        x_all = np.ascontiguousarray(dataset.x_test, dtype=np.float32)
        y_all = np.asarray(dataset.y_test, dtype=np.int64)
        n = min(self.rows, len(x_all)) if self.rows else len(x_all)
        x_all, y_all = x_all[:n], y_all[:n]  # the last batch must stop at row n
        size = self.batch_size or max(n, 1)
        adv: list[np.ndarray] = []
        clean: list[np.ndarray | None] = []
        dists = []
        rejected: list[np.ndarray] = []
        examples: dict[str, Any] | None = None
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
                if model.detects:
                    rejected.append(model.rejects(x_adv))  # type: ignore[arg-type]
                if examples is None:
                    examples = _examples(x, x_adv, y, adv[-1], model.clip_values)
        # Clean rows the attack never passed to the model are measured after every batch,
        # so the random draws of a randomised defense follow the attack's own order.
        for i, start in enumerate(range(0, n, size)):
            if clean[i] is None:
                clean[i] = measure(model, x_all[start:start + size])
        spent = model.queries - queries
        if examples is not None and clean and clean[0] is not None:
            examples["pred_clean"] = [int(v) for v in
                                      clean[0][:len(examples["rows"])].argmax(axis=1)]
        proba_naive = None
        if naive is not None:
            cache = {} if naive_cache is None else naive_cache
            if n not in cache:
                cache[n] = self.adversarial(naive, x_all, y_all, naive_rng)
            proba_naive = measure(model, cache[n])
        empty = np.zeros((0, model.n_classes), np.float32)
        l0, l2, linf = (np.concatenate([d[k] for d in dists]) if dists else
                        np.zeros(0, np.float32) for k in range(3))
        return EvasionOutcome(
            y_true=y_all[:n], proba=np.concatenate(adv) if adv else empty,
            proba_clean=np.concatenate(clean) if clean else empty,  # type: ignore[arg-type]
            rows=np.arange(n, dtype=np.int64), l0=l0, l2=l2, linf=linf,
            queries=spent, proba_naive=proba_naive,
            rejected=np.concatenate(rejected) if rejected else None,
            rejected_clean=model.rejects(x_all) if model.detects else None,
            examples=examples, labels_only=model.access < Access.SCORES)

    def adversarial(self, model: Model, x_all: np.ndarray, y_all: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
        """Adversarial versions of every row of ``x_all`` against ``model``, batch by batch
        as :meth:`run` makes them (the same draws from a generator in the same state),
        without measuring anything."""
        size = self.batch_size or max(len(x_all), 1)
        out = []
        with self._numpy_global(rng):
            for start in range(0, len(x_all), size):
                x = x_all[start:start + size]
                x.flags.writeable = False
                out.append(self._checked(self.generate(model, x, y_all[start:start + size],
                                                       rng), x, model))
        return np.concatenate(out) if out else x_all.copy()

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


#: Rows of each evasion cell kept for the report's gallery (inputs quantised to bytes).
EXAMPLE_ROWS = 3


def _examples(x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, proba_adv: np.ndarray,
              clip_values: tuple[float, float]) -> dict[str, Any]:
    """The first rows of the first batch, clean and adversarial, as bytes over the clip
    range (base64), with their labels: enough to draw them, small enough to keep."""
    k = min(EXAMPLE_ROWS, len(x))
    low, high = clip_values
    span = (high - low) or 1.0

    def as_bytes(a: np.ndarray) -> str:
        q = np.clip(np.rint((a[:k].astype(np.float64) - low) / span * 255), 0, 255)
        return base64.b64encode(q.astype(np.uint8).tobytes()).decode()

    return {"rows": list(range(k)), "shape": list(x.shape[1:]), "x": as_bytes(x),
            "x_adv": as_bytes(x_adv), "y_true": [int(v) for v in y[:k]],
            "pred_adv": [int(v) for v in proba_adv[:k].argmax(axis=1)]}


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
