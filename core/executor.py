"""Executors decide where and in what order an audit's cells run.

An :class:`Executor` takes the :class:`~gauntlet.run.Runner` and the planned cells and
returns one :class:`~gauntlet.results.CellResult` per cell, in plan order. It calls
``on_result`` with each cell it computes (the store appends it to ``cells.jsonl``
there), and reuses the records in ``done`` (a resumed audit) instead of running them.

:class:`SerialExecutor` runs them one after another in this process. A parallel
executor (a process pool, Ray) implements the same method without touching plugins:
each worker builds its runner with :meth:`Runner.from_config` from the audit's config
(plain data) and calls :meth:`Runner.run_cell`; a cell's seeds depend on its points
only, never on which cells ran before it or where, so the numbers are those of a
serial run. ``on_result`` is then called in the parent as results arrive. (An audit of
an in-memory model or Dataset has no config to rebuild them from: there a parallel
executor must ship the model itself, or run serially.)
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gauntlet.plan import Cell
from gauntlet.results import CellResult
from gauntlet.run import Runner

log = logging.getLogger(__name__)

OnResult = Callable[[CellResult], None]


class Executor(Protocol):
    """Runs an audit's cells (see the module docstring)."""

    def run(self, runner: Runner, cells: Sequence[Cell], *, on_result: OnResult | None,
            done: Mapping[str, Mapping[str, Any]]) -> list[CellResult]:
        """One result per cell of ``cells``, in their order.

        :param runner: runs one cell (``runner.run_cell(cell)``).
        :param cells: the planned cells.
        :param on_result: called once with each newly computed result, as it arrives.
        :param done: finished records by cell id (a resumed audit): reused, not run.
        """
        ...


class SerialExecutor:
    """Runs cells one after another in this process, with a progress bar.

    :param progress: a live bar on a terminal; one log line per cell elsewhere (a log
        file, CI); nothing when False.
    """

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, runner: Runner, cells: Sequence[Cell], *, on_result: OnResult | None = None,
            done: Mapping[str, Mapping[str, Any]] | None = None) -> list[CellResult]:
        from tqdm.auto import tqdm

        done = done or {}
        runner.expect([cell for cell in cells if cell.id not in done])
        results = []
        live = self.progress and sys.stderr.isatty()
        # Warnings logged while the bar is up go through tqdm, so they do not tear it.
        redirect: Any = contextlib.nullcontext()
        if live:
            from tqdm.contrib.logging import logging_redirect_tqdm
            redirect = logging_redirect_tqdm()
        with redirect, tqdm(total=len(cells), unit="cell", desc="audit", disable=not live,
                            dynamic_ncols=True) as bar:
            for i, cell in enumerate(cells, 1):
                bar.set_postfix_str(cell.label, refresh=True)
                if self.progress and not live:
                    log.info("cell %d/%d: %s", i, len(cells), cell.label)
                if cell.id in done:
                    results.append(CellResult(**done[cell.id]))
                else:
                    result = runner.run_cell(cell)
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
                bar.update(1)
        return results
