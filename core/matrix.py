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
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from gauntlet.attack import Attack, Family
from gauntlet.dataset import Dataset
from gauntlet.defense import Defense
from gauntlet.errors import ConfigError, NotApplicable
from gauntlet.metric import Metric
from gauntlet.model import Access, Model
from gauntlet.outcome import (
    CleanOutcome,
    EvasionOutcome,
    ExtractionOutcome,
    MembershipOutcome,
    Outcome,
    PoisoningOutcome,
    Predictions,
    ProbeOutcome,
)
from gauntlet.params import params_key
from gauntlet.registry import Registry
from gauntlet.results import CellResult, metric_record, short_paths

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
    for kind, chosen in (("defense", defenses), ("attack", attacks)):
        names = [s.name for s in chosen]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{kind} {twice[0]!r} is selected more than once")
    defense_grid = [(registry.get("defense", s.name), p, label)
                    for s in defenses
                    for p, label in registry.get("defense", s.name).grid(s.params)]
    attack_grid = [(Clean, {}, "")] + [
        (registry.get("attack", s.name), p, label)
        for s in attacks for p, label in registry.get("attack", s.name).grid(s.params)
    ]
    for cls, point, _ in defense_grid + attack_grid:
        for key, value in point.items():
            # NaN passes every range check written as `if x < 0: raise`, then turns the
            # attack's numbers into NaN; no plugin means it.
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{cls.owner()}: parameter {key!r} is NaN")
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
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return reason, short_paths(text)


class ContractError(Exception):
    """A plugin returned something its interface rules out (a defense that returns no
    Model, an outcome whose arrays disagree); the message names the plugin."""


class DefenseFailed(RuntimeError):
    """A defended model could not be built; logged once, not once per cell."""


def _what(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__} ({repr(value)[:60]})"


def _array(owner: str, field: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is not an array
        raise ContractError(f"{owner} returned {field} = {_what(value)}, not an array: "
                            f"{exc}") from None
    if arr.dtype.kind not in "biuf":
        raise ContractError(f"{owner} returned {field} of dtype {arr.dtype}, not numbers")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ContractError(f"{owner} returned {field} with {bad} non-finite values (NaN or "
                            f"inf) among {arr.size}: its inputs or the model's outputs went "
                            "non-finite")
    return arr


def check_outcome(owner: str, outcome: Outcome, n_rows: int, n_classes: int) -> None:
    """Raise ContractError unless ``outcome`` is usable by metrics: every number finite;
    probabilities shaped ``(rows, n_classes)`` in [0, 1]; labels in ``[0, n_classes)``;
    per-row arrays of one length, at most the ``n_rows`` test rows the attack was given.

    Checked before any metric, so a wrong outcome is blamed on ``owner``, not on the
    first metric that trips over it. Array-likes are replaced by numpy arrays.
    """
    if dataclasses.is_dataclass(outcome):
        for f in dataclasses.fields(outcome):
            value = getattr(outcome, f.name)
            if isinstance(value, (float, np.floating)):
                if math.isnan(value) or (f.name == "linf" and math.isinf(value)):
                    raise ContractError(f"{owner} returned {f.name} = {value}: its inputs "
                                        "went non-finite")
            elif isinstance(value, (np.ndarray, list, tuple)) or (
                    hasattr(value, "__array__") and not isinstance(value, np.generic)):
                arr = _array(owner, f.name, value)
                if arr is not value:  # a list or tensor: metrics get numpy
                    setattr(outcome, f.name, arr)
    rows: dict[str, int] = {}

    def proba(name: str, same_rows: bool = True) -> None:
        a = getattr(outcome, name)
        if a is None and not same_rows:
            return
        if not isinstance(a, np.ndarray) or a.ndim != 2 or (len(a) and a.shape[1] != n_classes):
            shape = a.shape if isinstance(a, np.ndarray) else _what(a)
            raise ContractError(f"{owner} returned {name} shaped {shape}; expected "
                                f"probabilities shaped (rows, {n_classes})")
        if a.size and (a.min() < -1e-4 or a.max() > 1 + 1e-4):
            raise ContractError(f"{owner} returned {name} with values in [{a.min():g}, "
                                f"{a.max():g}]; probabilities lie in [0, 1]")
        if same_rows:
            rows[name] = len(a)

    def labels(name: str) -> None:
        a = getattr(outcome, name)
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "iu" or \
                (a.size and (a.min() < 0 or a.max() >= n_classes)):
            raise ContractError(f"{owner} returned {name} that is not a vector of class "
                                f"labels in [0, {n_classes})")
        rows[name] = len(a)

    if isinstance(outcome, Predictions):
        labels("y_true")
        proba("proba")
        if isinstance(outcome, EvasionOutcome):
            proba("proba_clean")
        if isinstance(outcome, PoisoningOutcome):
            proba("proba_reference")
            proba("proba_triggered", same_rows=False)
    elif isinstance(outcome, ExtractionOutcome):
        labels("y_true")
        proba("proba_victim")
        proba("proba_substitute")
    elif isinstance(outcome, ProbeOutcome):
        proba("proba", same_rows=False)
    elif isinstance(outcome, MembershipOutcome):
        for name in ("scores_members", "scores_nonmembers"):
            if getattr(outcome, name).ndim != 1:
                raise ContractError(f"{owner} returned {name} that is not a vector of scores")
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{k} {v}" for k, v in rows.items())
        raise ContractError(f"{owner} returned arrays with different numbers of rows ({counts}); "
                            "each needs one row per attacked test row")
    if rows and max(rows.values()) > n_rows:
        raise ContractError(f"{owner} returned {max(rows.values())} rows, but it was given "
                            f"{n_rows} test rows to attack")


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
                built = cell.defense(**cell.defense_params).apply(
                    self.model, self.dataset, rng)
                if not isinstance(built, Model):
                    raise ContractError(f"defense {cell.defense.name!r} returned "
                                        f"{_what(built)} from apply(), not a gauntlet.Model")
                self._defended[key] = built
            except Exception as exc:  # noqa: BLE001 - recorded in every cell it affects
                self._defended[key] = exc
                where = f" ({cell.defense_point})" if cell.defense_point else ""
                log.warning("defense %r%s failed to build; its cells are errors: %s: %s",
                            cell.defense.name, where, type(exc).__name__, exc)
        built = self._defended[key]
        if isinstance(built, ContractError):
            raise DefenseFailed(str(built)) from built
        if isinstance(built, BaseException):
            raise DefenseFailed(f"defense {cell.defense.name!r} failed to build: "
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
                self._measure(attack, model, outcome, result, cell.label)
        except NotApplicable as exc:
            result.status, result.reason = "not_applicable", str(exc)
        except Exception as exc:  # noqa: BLE001 - a crashing plugin never ends the audit
            result.status = "error"
            result.reason, result.traceback = _format_exception(exc)
            if isinstance(exc, DefenseFailed):
                log.debug("cell %s failed: %s", cell.label, result.reason)  # logged once
            else:
                log.warning("cell %s failed: %s", cell.label, result.reason)
        result.duration_s = round(time.perf_counter() - start, 4)
        return result

    def _measure(self, attack: Attack, model: Model, outcome: Outcome, result: CellResult,
                 label: str) -> None:
        owner = f"attack {attack.name!r}"
        expected = attack.outcome
        if not isinstance(outcome, Outcome) or (
                isinstance(expected, type) and expected is not object and
                not isinstance(outcome, expected)):
            declared = expected.__name__ if isinstance(expected, type) else "an Outcome"
            raise ContractError(f"{owner} declares outcome {declared} but returned "
                                f"{_what(outcome)}")
        check_outcome(owner, outcome, len(self.dataset.x_test), model.n_classes)
        result.n = outcome.n
        for metric in self.metrics:
            if metric.applies(outcome):
                # One failing metric loses its own number, not the cell's other numbers.
                try:
                    v = metric.evaluate(outcome)
                    result.metrics[metric.name] = metric_record(v.value, v.n, v.low, v.high)
                except Exception as exc:  # noqa: BLE001 - recorded in the cell, audit goes on
                    why = f"{type(exc).__name__}: {exc}".strip()
                    result.metric_errors[metric.name] = why
                    log.warning("cell %s: metric %r failed: %s", label, metric.name, why)
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
    # Warnings logged while the bar is up go through tqdm, so they do not tear it.
    redirect: Any = contextlib.nullcontext()
    if live:
        from tqdm.contrib.logging import logging_redirect_tqdm
        redirect = logging_redirect_tqdm()
    with redirect, tqdm(total=len(cells), unit="cell", desc="audit", disable=not live,
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
