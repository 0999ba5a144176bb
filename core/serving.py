"""Deployments that serve a model in their own way (defense stage ``wrapper``).

Most defenses add a pre- or post-processing around the model and are served in the
clear: the server sees every input and computes every answer. A wrapper replaces how
the model is served, e.g. encrypted inference: ``model.deploy(serve=build)`` where
``build(inner)`` returns a torch module that also subclasses :class:`Served`, and serves
in place of ``inner`` (the model below it, with every earlier defense). ``build`` is
called again for a re-trained base (``Model.with_module``), so a poisoned model is
served the same way.

A served module says what the serving side sees of each input (:meth:`Served.observe`,
for confidentiality attacks), what a malicious server can make the client receive
(:meth:`Served.tamper`), what it costs (:meth:`Served.facts`) and how many test rows an
attack cell may send through it (:attr:`Served.rows`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from gauntlet.metric import MetricValue


class Rehearsal(Exception):
    """Raised when a rehearsed cell asks a deployment for something other than answers
    (what the server sees, a tampered answer, its facts): the rehearsal of that cell
    stops there, and the cell itself runs as usual."""


class Served:
    """Mixin for the torch module a wrapper deploys (subclass it and ``nn.Module``).

    Its ``forward`` without gradients returns the logits the deployment serves; with
    gradients enabled, the logits gradient attacks differentiate (e.g. a plaintext twin
    of an encrypted model: BPDA). Set :attr:`gradient_values_served` to False when those
    differ from the served ones, so a gradient pass is never taken as a prediction.
    """

    #: The most test rows an attack cell evaluates through this deployment (None: all).
    #: The runner cuts the evaluated test set to its first ``rows`` rows for such cells.
    rows: int | None = None
    #: Rows per call of this module when the model evaluates a large array (None: the
    #: model's own batch size).
    batch_size: int | None = None
    #: False when the forward pass under gradients is not what the deployment serves.
    gradient_values_served: bool = True
    #: Rows this deployment answers for about the price of one when they come in one call
    #: (encrypted inference: one row per CKKS slot). Above 1, the runner rehearses the
    #: cells against it first (:meth:`rehearsing`) and has every batch they will ask for
    #: answered together (:meth:`answer_many`), so a cell of 256 rows does not pay for
    #: 4,096.
    pack: int = 1
    #: While rehearsing, the batches asked for so far (None otherwise).
    recording: list[np.ndarray] | None = None

    @contextlib.contextmanager
    def rehearsing(self) -> Iterator[list[np.ndarray]]:
        """Record instead of serve: while the block runs, ``forward`` without gradients
        appends each batch to :attr:`recording` and returns stand-in logits (a subclass
        with ``pack > 1`` implements this); the list is yielded."""
        self.recording = []
        try:
            yield self.recording
        finally:
            self.recording = None

    def answer_many(self, batches: list[np.ndarray]) -> None:
        """Answer ``batches`` together (packed) and keep each answer for when that exact
        batch is served. Default: nothing (a deployment with ``pack == 1``)."""

    def observe(self, x: np.ndarray) -> np.ndarray:
        """Per row of ``x``, numbers describing what the server receives when it serves
        that row: shape ``(N, k)``. The default is the input itself (served in the clear)."""
        return x.reshape(len(x), -1)

    @property
    def exposes_inputs(self) -> bool:
        """Whether the server receives inputs in the clear."""
        return type(self).observe is Served.observe

    def tamper(self, x: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """The logits the client receives for ``x`` when a malicious server adds ``shift``
        (one value per class) to its answer, using only what the server holds."""
        raise NotImplementedError

    def facts(self, x: np.ndarray, scores: np.ndarray) -> dict[str, MetricValue]:
        """Measurements of the deployment on the clean test rows ``x`` (``scores``: what
        it served for them), by metric name: agreement, latency, bytes, ... Default none."""
        return {}

