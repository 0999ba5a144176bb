"""Plan an audit (model x defense x attack x parameter grid) and run its cells.

Each defended model is built once and shared by its cells. Each cell runs in isolation
(pytest's CallInfo pattern): an exception becomes an ``error`` cell, a
:class:`NotApplicable` a ``not_applicable`` cell, and the audit goes on.

Every cell is seeded from the audit seed and its attack point, not its defense: each
defense faces the same random draws of an attack (common random numbers), so
differences between rows are the defenses' doing, and a poisoned training set is the
same under every defense (its re-trained model is cached and shared). Results never
depend on cell order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.component import params_key
from gauntlet.dataset import Dataset
from gauntlet.defense import Defense
from gauntlet.errors import NotApplicable
from gauntlet.metric import Metric
from gauntlet.model import Access, Model
from gauntlet.outcome import CleanOutcome, Outcome
from gauntlet.registry import Registry
from gauntlet.results import CellResult, metric_record

log = logging.getLogger(__name__)


class Clean(Attack):
    """No attack: the defended model on unmodified test data (the baseline column)."""

    name = "clean"
    family = Family.BASELINE
    needs = Access.LABELS
    outcome = CleanOutcome

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Outcome:
        return CleanOutcome(y_true=dataset.y_test, proba=model.predict(dataset.x_test))


@dataclasses.dataclass(frozen=True)
class Selection:
    """A plugin chosen for an audit, with the user's parameter overrides."""

    name: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (defense point, attack point) of the plan."""

    defense: type[Defense]
    defense_params: dict[str, Any]
    defense_point: str
    attack: type[Attack]
    attack_params: dict[str, Any]
    attack_point: str

    @property
    def defense_key(self) -> str:
        return f"{self.defense.name}{params_key(self.defense_params)}"

    @property
    def attack_key(self) -> str:
        return f"{self.attack.name}{params_key(self.attack_params)}"

    @property
    def id(self) -> str:
        return f"{self.defense_key}|{self.attack_key}"

    @property
    def label(self) -> str:
        d = self.defense.name + (f" ({self.defense_point})" if self.defense_point else "")
        a = self.attack.name + (f" ({self.attack_point})" if self.attack_point else "")
        return f"{d} / {a}"


def plan(registry: Registry, defenses: Sequence[Selection],
         attacks: Sequence[Selection]) -> list[Cell]:
    """Expand the selections into cells: every defense point x (clean + every attack
    point). Unknown names, parameters and bad values raise ConfigError before anything
    runs: every point is constructed once here, which runs the plugin's own checks."""
    defense_grid = [(registry.get("defense", s.name), p, label)
                    for s in defenses
                    for p, label in registry.get("defense", s.name).grid(s.params)]
    attack_grid = [(Clean, {}, "")] + [
        (registry.get("attack", s.name), p, label)
        for s in attacks for p, label in registry.get("attack", s.name).grid(s.params)
    ]
    for cls, point, _ in defense_grid + attack_grid:
        cls(**point)
    return [Cell(d, dp, dl, a, ap, al) for d, dp, dl in defense_grid
            for a, ap, al in attack_grid]


def derive_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one cell, from the audit seed and the cell's id."""
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> np.random.Generator:
    """Seed numpy's and torch's global generators (ART draws from them) and return a
    fresh Generator for the plugin."""
    import torch

    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


class CellTimeout(Exception):
    """A cell ran past the audit's per-cell time limit."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise CellTimeout in the block after ``seconds`` (0: no limit).

    A SIGALRM timer: it only works on the main thread of a POSIX process (elsewhere the
    limit is not enforced, and a debug line says so), and it interrupts Python code
    between bytecodes, so one long native call finishes before the cell stops.
    """
    if seconds <= 0:
        yield
        return
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        log.debug("per-cell timeout not enforced outside the main thread of a POSIX process")
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CellTimeout(f"timed out after {seconds:g} s (the audit's per-cell limit)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _format_exception(exc: BaseException) -> tuple[str, str]:
    reason = f"{type(exc).__name__}: {exc}".strip()
    return reason, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class Runner:
    """Runs cells against one model and dataset, building each defended model once."""

    def __init__(self, model: Model, dataset: Dataset, metrics: Iterable[type[Metric]],
                 seed: int, timeout: float = 0.0) -> None:
        self.model = model
        self.dataset = dataset
        self.metrics = [m() for m in metrics]
        self.seed = seed
        self.timeout = timeout
        self._defended: dict[str, Model | BaseException] = {}

    def defended(self, cell: Cell) -> Model:
        """The model behind ``cell``'s defense, built on first use; a failed build is
        remembered and re-raised for every cell that needs it."""
        key = cell.defense_key
        if key not in self._defended:
            rng = seed_everything(derive_seed(self.seed, "defense|" + key))
            try:
                self._defended[key] = cell.defense(**cell.defense_params).apply(
                    self.model, self.dataset, rng)
            except Exception as exc:  # noqa: BLE001 - recorded in every cell it affects
                self._defended[key] = exc
        built = self._defended[key]
        if isinstance(built, BaseException):
            raise RuntimeError(f"defense {cell.defense.name!r} failed to build: "
                               f"{type(built).__name__}: {built}") from built
        return built

    def run_cell(self, cell: Cell) -> CellResult:
        result = CellResult(
            id=cell.id, defense=cell.defense.name, defense_params=cell.defense_params,
            defense_point=cell.defense_point, attack=cell.attack.name,
            family=cell.attack.family.value, attack_params=cell.attack_params,
            attack_point=cell.attack_point,
        )
        start = time.perf_counter()
        try:
            with deadline(self.timeout):
                model = self.defended(cell)
                attack = cell.attack(**cell.attack_params)
                attack.check(model)
                rng = seed_everything(derive_seed(self.seed, "attack|" + cell.attack_key))
                outcome = attack.run(model, self.dataset, rng)
                self._measure(attack, outcome, result)
        except NotApplicable as exc:
            result.status, result.reason = "not_applicable", str(exc)
        except Exception as exc:  # noqa: BLE001 - a crashing plugin never ends the audit
            result.status = "error"
            result.reason, result.traceback = _format_exception(exc)
            log.warning("cell %s failed: %s", cell.label, result.reason)
        result.duration_s = round(time.perf_counter() - start, 4)
        return result

    def _measure(self, attack: Attack, outcome: Outcome, result: CellResult) -> None:
        expected = attack.outcome
        if isinstance(expected, type) and expected is not object and \
                not isinstance(outcome, expected):
            raise TypeError(f"attack {attack.name!r} declares outcome {expected.__name__} "
                            f"but returned {type(outcome).__name__}")
        result.n = outcome.n
        for metric in self.metrics:
            if metric.applies(outcome):
                try:
                    v = metric.evaluate(outcome)
                except Exception as exc:
                    raise RuntimeError(f"metric {metric.name!r} failed: {exc}") from exc
                result.metrics[metric.name] = metric_record(v.value, v.n, v.low, v.high)
        result.artifacts = outcome.artifacts()


def run_cells(runner: Runner, cells: Sequence[Cell], *, progress: bool = True,
              on_result: Callable[[CellResult], None] | None = None,
              done: Mapping[str, Mapping[str, Any]] | None = None) -> list[CellResult]:
    """Run ``cells`` in order with a progress bar (done/total, current cell).

    :param done: finished cell records by id (a resumed audit): reused, not run again.
    """
    from tqdm.auto import tqdm

    done = done or {}
    results = []
    # A terminal gets a live bar; a log file or CI gets one plain line per cell.
    live = progress and sys.stderr.isatty()
    with tqdm(total=len(cells), unit="cell", desc="audit", disable=not live,
              dynamic_ncols=True) as bar:
        for i, cell in enumerate(cells, 1):
            bar.set_postfix_str(cell.label, refresh=True)
            if progress and not live:
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
