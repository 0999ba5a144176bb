"""Run one cell: build (once) its defended model, seed, attack, check, measure.

Each cell runs in isolation (pytest's CallInfo pattern): an exception becomes an
``error`` cell, a :class:`NotApplicable` a ``not_applicable`` cell, and the audit goes
on. Which cells run, in what order and where, is the executor's business
(:mod:`gauntlet.executor`); a :class:`Runner` holds only what every cell shares.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.attack import Family
from gauntlet.contract import ContractError, check_outcome, what
from gauntlet.dataset import Dataset
from gauntlet.defense import Stage
from gauntlet.errors import NotApplicable
from gauntlet.evasion import EvasionAttack
from gauntlet.metric import Fact
from gauntlet.model import Model
from gauntlet.outcome import EvasionOutcome, Outcome
from gauntlet.plan import Cell, derive_seed
from gauntlet.poisoning import PoisonFilter, PoisoningAttack, Refit, Refitted
from gauntlet.results import CellResult, metric_record, short_paths, spread_record
from gauntlet.rows import pack

if TYPE_CHECKING:
    from gauntlet.attack import Attack
    from gauntlet.config import AuditConfig
    from gauntlet.metric import Metric
    from gauntlet.registry import Registry

log = logging.getLogger(__name__)


#: Defenses whose evasion cells also report the naive robust accuracy: those that
#: transform or screen the inputs, where ignoring the defense overstates it most.
NAIVE_STAGES = (Stage.INPUT, Stage.DETECTOR)
#: Memory the runner may spend keeping the naive adversarial inputs, made once per attack
#: point and measured on every such defense.
NAIVE_BYTES = 256 * 2**20


class CellTimeout(Exception):
    """A cell ran past the audit's per-cell time limit."""


class DefenseFailed(RuntimeError):
    """A defended model could not be built; logged once, not once per cell."""


def seed_everything(seed: int) -> np.random.Generator:
    """Seed numpy's and torch's global generators (ART and randomised defenses draw from
    them) and return a fresh Generator for the plugin."""
    import torch

    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


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


class Runner:
    """Runs cells against one model and evaluated dataset, building each defended model
    once (per process).

    :param model: the model under audit, as loaded.
    :param dataset: the evaluated rows (already subsampled).
    :param metrics: the Metric classes to measure every outcome with.
    :param seed: the audit seed; each cell's seeds derive from it and the cell's points.
    :param timeout: seconds one cell may run (0: no limit).
    :param resamples: K > 0: every metric is also computed on K bootstrap resamples of
        each cell's rows (:meth:`gauntlet.Outcome.resample`), for its spread; 0: not.

    A worker of a parallel executor builds its own with :meth:`from_config` from the
    audit's config (plain data); as seeds never depend on which cells ran before, its
    cells give the numbers a serial run gives.
    """

    def __init__(self, model: Model, dataset: Dataset, metrics: Iterable[type[Metric]],
                 seed: int, timeout: float = 0.0, resamples: int = 0) -> None:
        self.model = model
        self.dataset = dataset
        self.metrics = [m() for m in metrics]
        self.seed = seed
        self.timeout = timeout
        self.resamples = resamples
        self._defended: dict[str, Model | BaseException] = {}
        self._naive: dict[str, dict[int, np.ndarray]] = {}
        # Cells still to run, by defense, for deployments that rehearse (see expect()).
        self._expected: dict[str, list[Cell]] = {}

    @classmethod
    def from_config(cls, cfg: AuditConfig, registry: Registry | None = None) -> Runner:
        """Load the model and data a config names and build the runner, as a worker does."""
        from gauntlet.loading import load_inputs
        from gauntlet.registry import make_registry

        registry = registry or make_registry()
        inputs = load_inputs(registry, cfg)
        return cls(inputs.model, inputs.evaluated, registry.metrics.values(), cfg.seed,
                   cfg.timeout, cfg.resamples)

    def defended(self, cell: Cell) -> Model:
        """The model behind ``cell``'s defense, built on first use; a failed build is
        remembered and re-raised for every cell that needs it."""
        key = cell.defense_key
        if key not in self._defended:
            rng = seed_everything(derive_seed(self.seed, cell.defense_seed_key))
            try:
                built = cell.defense(**cell.defense_params).apply(
                    self.model, self.dataset, rng)
                if not isinstance(built, Model):
                    raise ContractError(f"defense {cell.defense.name!r} returned "
                                        f"{what(built)} from apply(), not a gauntlet.Model "
                                        "(build it with model.deploy(...))")
                self._defended[key] = built
            except NotApplicable as exc:
                self._defended[key] = exc
                log.info("defense %r does not apply to this model: %s", cell.defense.name, exc)
            except Exception as exc:  # noqa: BLE001 - recorded in every cell it affects
                self._defended[key] = exc
                where = f" ({cell.defense_point})" if cell.defense_point else ""
                log.warning("defense %r%s failed to build; its cells are errors: %s: %s",
                            cell.defense.name, where, type(exc).__name__, exc)
        built = self._defended[key]
        if isinstance(built, NotApplicable):  # e.g. a model the defense cannot serve
            raise NotApplicable(f"defense {cell.defense.name!r}: {built}")
        if isinstance(built, ContractError):
            raise DefenseFailed(str(built)) from built
        if isinstance(built, BaseException):
            raise DefenseFailed(f"defense {cell.defense.name!r} failed to build: "
                                f"{type(built).__name__}: {built}") from built
        return built

    def expect(self, cells: Sequence[Cell]) -> None:
        """Say which cells this runner will be asked to run (an executor does, before the
        first). For a deployment that answers many rows per call for the price of one
        (:attr:`gauntlet.serving.Served.pack`, e.g. encrypted inference), the first of
        its cells rehearses them all and has their queries answered together."""
        self._expected = {}
        for cell in cells:
            self._expected.setdefault(cell.defense_key, []).append(cell)

    def prepare(self, cell: Cell, expected: Sequence[Cell] | None = None) -> int:
        """Rehearse ``cell``'s defense if this runner expects cells of it and its
        deployment packs (see :meth:`expect`); return how many cells were rehearsed (0:
        nothing to do). ``expected``: the cells of that defense to rehearse instead of
        those :meth:`expect` named (a worker that joins a defense late rehearses only what
        is left of it). :meth:`run_cell` does this itself; a parallel executor calls it
        first, to time the rehearsal apart from the cell."""
        if expected is not None:
            self._expected[cell.defense_key] = [c for c in expected
                                                if c.defense_key == cell.defense_key]
        if cell.defense_key not in self._expected:
            return 0
        return self._rehearse(cell)

    def _rehearse(self, cell: Cell) -> int:
        """Run the expected cells of ``cell``'s defense once against a deployment that
        records what they ask, then have it answer all of that in packed calls. The
        outcomes are thrown away and nothing here can fail a cell: the cells then run as
        usual, and a batch the rehearsal did not foresee is answered on its own."""
        # A poisoning cell re-trains the model, which a new module then serves.
        cells = [c for c in self._expected.pop(cell.defense_key, None) or []
                 if c.attack.family is not Family.POISONING and not c.skipped
                 and not c.attack.unavailable()]
        if not cells:
            return 0
        try:
            model = self.defended(cell)
        except Exception:  # noqa: BLE001 - the cell itself reports it
            return 0
        served = model.served
        if served is None or served.pack <= 1:
            return 0
        start = time.perf_counter()
        with served.rehearsing() as batches:
            for each in cells:
                try:
                    with deadline(self.timeout):
                        self._outcome(each, model)
                except Exception as exc:  # noqa: BLE001 - a rehearsal is best effort
                    log.debug("rehearsal of %s stopped: %s: %s", each.label,
                              type(exc).__name__, exc)
        rows = sum(len(b) for b in batches)
        served.answer_many(batches)
        log.info("defense %r: rehearsed %d cells, answered %d rows in %d batches together "
                 "(%.1f s)", cell.defense.name, len(cells), rows, len(batches),
                 time.perf_counter() - start)
        return len(cells)

    def _outcome(self, cell: Cell, model: Model) -> tuple[Attack, Dataset, Outcome]:
        attack = cell.attack(**cell.attack_params)
        attack.check(model)
        dataset = self.limited(model)
        # Seeded by the attack point alone: common random numbers across defenses.
        rng = seed_everything(derive_seed(self.seed, cell.attack_seed_key))
        if isinstance(attack, EvasionAttack) and cell.defense.stage in NAIVE_STAGES:
            # Also the naive number: the attack made against the undefended model.
            cache = self._naive.setdefault(cell.attack_seed_key, {})
            if sum(a.nbytes for c in self._naive.values() for a in c.values()) > NAIVE_BYTES:
                cache = {}  # past the budget: made again for each defense
            return attack, dataset, attack.run(model, dataset, rng, naive=self.model,
                                               naive_cache=cache)
        if isinstance(attack, PoisoningAttack) and cell.defense.fits_training_data:
            return attack, dataset, attack.run(model, dataset, rng, refit=self._refit(cell))
        return attack, dataset, attack.run(model, dataset, rng)

    def _refit(self, cell: Cell) -> Refit:
        """For a poisoning cell under a defense that fits on the training split: the
        deployment built on a poisoned training set, as :meth:`defended` builds it on the
        clean one (same defense point and seed), around the base re-trained on that set.
        The global generators are left as the cell had them."""
        import torch

        def refit(x: np.ndarray, y: np.ndarray, seed: int) -> Refitted:
            base = self.model.retrain(x, y, seed)
            data = dataclasses.replace(self.dataset, x_train=x, y_train=y)
            state = np.random.get_state()
            flagged = None
            with torch.random.fork_rng():
                try:
                    rng = seed_everything(derive_seed(self.seed, cell.defense_seed_key))
                    defense = cell.defense(**cell.defense_params)
                    if isinstance(defense, PoisonFilter):  # re-trains with the attack's seed
                        done = defense.filtered(base, data, rng, seed)
                        built, flagged = done.model, done.flagged
                    else:
                        built = defense.apply(base, data, rng)
                finally:
                    np.random.set_state(state)
            if not isinstance(built, Model):
                raise ContractError(f"defense {cell.defense.name!r} returned {what(built)} "
                                    "from apply() on the poisoned training set")
            return Refitted(built, flagged)

        return refit

    def run_cell(self, cell: Cell) -> CellResult:
        """Run one cell; whatever happens, return its record (never raise)."""
        result = CellResult(
            id=cell.id, defense=cell.defense.name, defense_params=cell.defense_params,
            defense_point=cell.defense_point, attack=cell.attack.name,
            family=cell.attack.family.value, attack_params=cell.attack_params,
            attack_point=cell.attack_point,
        )
        self.prepare(cell)
        start = time.perf_counter()
        try:
            with deadline(self.timeout):
                if cell.skipped:
                    raise NotApplicable(cell.skipped)
                for cls in (cell.defense, cell.attack):
                    why = cls.unavailable()
                    if why:
                        raise NotApplicable(why)
                model = self.defended(cell)
                attack, dataset, outcome = self._outcome(cell, model)
                self._measure(attack, model, outcome, result, cell.label, len(dataset.x_test))
        except NotApplicable as exc:
            result.status, result.reason = "not_applicable", str(exc)
        except Exception as exc:  # noqa: BLE001 - a crashing plugin never ends the audit
            result.status = "error"
            result.reason = f"{type(exc).__name__}: {exc}".strip()
            result.traceback = short_paths("".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)))
            if isinstance(exc, DefenseFailed):
                log.debug("cell %s failed: %s", cell.label, result.reason)  # logged once
            else:
                log.warning("cell %s failed: %s", cell.label, result.reason)
        result.duration_s = round(time.perf_counter() - start, 4)
        return result

    def _resample(self, outcome: Outcome, result: CellResult, label: str) -> None:
        """Each measured metric on :attr:`resamples` bootstrap resamples of the outcome's
        rows: the values go to ``result.resampled``, their spread to the metric's record.
        Only metrics are recomputed; the attack is not run again.

        Resample k draws from a generator seeded by the audit seed and k alone, so the
        same rows are drawn in every cell of that size, and in an audit of another
        version of the model: ``gauntlet diff`` pairs the two audits' values."""
        measured = [m for m in self.metrics
                    if m.name in result.metrics and not isinstance(m, Fact)]
        if not measured:
            return
        values: dict[str, list[float | None]] = {m.name: [] for m in measured}
        for k in range(self.resamples):
            drawn = outcome.resample(np.random.default_rng([self.seed, k]))
            if drawn is None:
                return
            for metric in measured:
                try:
                    v: float | None = float(metric.evaluate(drawn).value)
                except Exception as exc:  # noqa: BLE001 - a resample the metric cannot take
                    log.debug("cell %s: metric %r on resample %d: %s", label, metric.name, k,
                              exc)
                    v = None
                values[metric.name].append(v if v is None or math.isfinite(v) else None)
        for name, vs in values.items():
            spread = spread_record([v for v in vs if v is not None])
            if spread is not None:
                result.metrics[name]["spread"] = spread
                result.resampled[name] = [None if v is None else round(v, 6) for v in vs]

    def limited(self, model: Model) -> Dataset:
        """The evaluated data as a cell against ``model`` sees it: the first
        ``model.row_limit`` test rows when its deployment declares a limit (encrypted
        inference does), so every such cell evaluates a subset of every other cell's rows."""
        limit = model.row_limit
        if limit is None or limit >= len(self.dataset.x_test):
            return self.dataset
        return dataclasses.replace(self.dataset, x_test=self.dataset.x_test[:limit],
                                   y_test=self.dataset.y_test[:limit])

    def _measure(self, attack: Attack, model: Model, outcome: Outcome, result: CellResult,
                 label: str, n_test: int) -> None:
        owner = f"attack {attack.name!r}"
        expected = attack.outcome
        if not isinstance(outcome, Outcome) or (
                isinstance(expected, type) and expected is not object and
                not isinstance(outcome, expected)):
            declared = expected.__name__ if isinstance(expected, type) else "an Outcome"
            raise ContractError(f"{owner} declares outcome {declared} but returned "
                                f"{what(outcome)}")
        check_outcome(owner, outcome, n_test, model.n_classes)
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
        if self.resamples:
            self._resample(outcome, result, label)
        result.artifacts = outcome.artifacts()
        if getattr(attack, "minimal", False) and isinstance(outcome, EvasionOutcome):
            # The distances a minimal-perturbation attack found, for the report's
            # accuracy-against-L2 chart (results.json carries artifacts, not rows).
            kept = outcome.per_row()
            result.artifacts["rows"] = pack({k: kept[k] for k in
                                             ("correct_before", "correct_after", "l2")})
        result.rows = pack(outcome.per_row())
