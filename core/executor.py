"""Executors decide where and in what order an audit's cells run.

An :class:`Executor` takes the :class:`~gauntlet.run.Runner` and the planned cells and
returns one :class:`~gauntlet.results.CellResult` per cell, in plan order. It calls
``on_result`` with each cell it computes (the store appends it to ``cells.jsonl`` and the
content cache keeps it), and reuses the records in ``done`` (cells the content cache
already holds) instead of running them.

- :class:`SerialExecutor` runs them one after another in this process.
- :class:`ProcessExecutor` runs them in a pool of worker processes forked from this one
  once the model and data are loaded (so nothing is pickled or loaded again), each on
  one torch thread. A worker that segfaults, aborts, runs out of memory or hangs in
  native code is an error cell; the parent enforces the per-cell timeout by killing the
  worker, and starts another. POSIX only (it forks).
- :class:`RayExecutor` runs them in Ray actors, on a cluster or a local one; the runner
  (model and evaluated data) goes into the object store once.

A cell's seeds depend on its points only, never on which cells ran before it or where,
so every executor and worker count gives the numbers of a serial run on as many torch
threads. Both pools schedule cells so a worker keeps to one defense (each defended model
is built once per worker that needs it); a deployment that rehearses (packs many cells'
queries into one call, e.g. encrypted inference) has its cells split into one group per
worker, each rehearsed and run by the worker that claimed it (:class:`_Plan`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import gc
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gauntlet.defense import Stage
from gauntlet.errors import ConfigError, GauntletError
from gauntlet.plan import Cell
from gauntlet.results import CellResult
from gauntlet.run import Runner

log = logging.getLogger(__name__)

OnResult = Callable[[CellResult], None]
#: Seconds a worker gets past the per-cell timeout before the parent kills it: the
#: worker's own timer stops Python code first, with a traceback.
GRACE_S = 5.0


class Executor(Protocol):
    """Runs an audit's cells (see the module docstring)."""

    def run(self, runner: Runner, cells: Sequence[Cell], *, on_result: OnResult | None,
            done: Mapping[str, Mapping[str, Any]]) -> list[CellResult]:
        """One result per cell of ``cells``, in their order.

        :param runner: runs one cell (``runner.run_cell(cell)``).
        :param cells: the planned cells.
        :param on_result: called once with each newly computed result, as it arrives.
        :param done: finished records by cell id (from the content cache): reused, not run.
        """
        ...


class _Progress:
    """The progress bar on a terminal, one log line per cell elsewhere (a log file, CI);
    the same under every executor."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.live = enabled and sys.stderr.isatty()
        self.started = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Progress:
        from tqdm.auto import tqdm

        if self.live:
            # Warnings logged while the bar is up go through tqdm, so they do not tear it.
            from tqdm.contrib.logging import logging_redirect_tqdm
            self._stack.enter_context(logging_redirect_tqdm())
        self.bar = self._stack.enter_context(tqdm(
            total=self.total, unit="cell", desc="audit", disable=not self.live,
            dynamic_ncols=True))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start(self, cell: Cell) -> None:
        self.started += 1
        self.bar.set_postfix_str(cell.label, refresh=True)
        if self.enabled and not self.live:
            log.info("cell %d/%d: %s", self.started, self.total, cell.label)

    def finish(self, n: int = 1) -> None:
        self.bar.update(n)


class SerialExecutor:
    """Runs cells one after another in this process, with a progress bar.

    :param progress: a live bar on a terminal; one log line per cell elsewhere (a log
        file, CI); nothing when False.
    """

    kind = "serial"

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, runner: Runner, cells: Sequence[Cell], *, on_result: OnResult | None = None,
            done: Mapping[str, Mapping[str, Any]] | None = None) -> list[CellResult]:
        done = done or {}
        runner.expect([cell for cell in cells if cell.id not in done])
        results = []
        with _Progress(len(cells), self.progress) as progress:
            for cell in cells:
                progress.start(cell)
                if cell.id in done:
                    results.append(CellResult(**done[cell.id]))
                else:
                    result = runner.run_cell(cell)
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
                progress.finish()
        return results


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


# -- what runs in a worker ----------------------------------------------------------------
class _Captured(logging.Handler):
    """Keeps a worker's log records, flattened to plain data, for the parent to emit."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append({"name": record.name, "levelno": record.levelno,
                             "levelname": record.levelname, "msg": message,
                             "pathname": record.pathname, "lineno": record.lineno,
                             "funcName": record.funcName})

    def take(self) -> list[dict[str, Any]]:
        out, self.records = self.records, []
        return out


def _emit(records: Sequence[Mapping[str, Any]]) -> None:
    """Re-emit a worker's log records in this process, through the same loggers."""
    for r in records:
        logger = logging.getLogger(r["name"])
        if logger.isEnabledFor(r["levelno"]):
            logger.handle(logging.makeLogRecord(dict(r, args=None)))


class _Worker:
    """What a worker process or Ray actor holds: the runner and the planned cells."""

    def __init__(self, runner: Runner, cells: Sequence[Cell], threads: int, level: int,
                 cache_root: str | None = None, device: str | None = None) -> None:
        from gauntlet.device import limit_threads

        limit_threads(threads)
        self.runner, self.cells = runner, cells
        self.captured = _Captured()
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(self.captured)
        logging.getLogger("gauntlet").setLevel(level)
        # Python warnings too, so they reach the audit's stderr through its log, once
        # per worker, as a serial run prints them once.
        logging.captureWarnings(True)
        self.cache = None
        if cache_root is not None:  # a Ray worker: no state inherited from the parent
            from gauntlet.cache import Cache, using
            self.cache = using(Cache(cache_root))
            self.cache.__enter__()
        if device is not None:
            from gauntlet import device as device_mod
            device_mod.select(device)

    def prepare(self, i: int, expected: Sequence[int]) -> tuple[int, list[dict[str, Any]]]:
        n = self.runner.prepare(self.cells[i], [self.cells[j] for j in expected])
        return n, self.captured.take()

    def run(self, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.runner.run_cell(self.cells[i]).to_dict(), self.captured.take()


def _serve(conn: Any, runner: Runner, cells: Sequence[Cell], threads: int, level: int,
           memory_mb: int, crash_path: str) -> None:
    """A process worker's loop: ``(method, args)`` in, ``(method, result)`` out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the audit
    crash = open(crash_path, "w")  # noqa: SIM115 - open until the process ends
    faulthandler.enable(file=crash, all_threads=False)
    if memory_mb:
        _limit_memory(memory_mb)
    worker = _Worker(runner, cells, threads, level)
    while True:
        message = conn.recv()
        if message is None:
            return
        method, args = message
        conn.send((method, getattr(worker, method)(*args)))


def _limit_memory(mb: int) -> None:
    """Cap this process's address space at what it maps now plus ``mb`` MiB."""
    import resource

    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - no /proc
        mapped = 0
    limit = mapped + mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# -- the parent's side ------------------------------------------------------------------
class ExecutorError(GauntletError):
    """The executor cannot run cells at all (its workers cannot start)."""


class WorkerDied(Exception):
    """A worker ended while running a cell (signal, exit, out of memory)."""


@dataclasses.dataclass
class _Slot:
    """One worker as the scheduler sees it."""

    handle: Any = None
    cell: int | None = None  # the cell it is working on
    phase: str = ""  # "prepare" or "run"
    started: float = 0.0
    deadline: float = float("inf")
    defenses: set[str] = dataclasses.field(default_factory=set)
    last: str = ""
    backward: bool = False  # takes its defense's cells last first (see _loop)


class _PoolExecutor:
    """The scheduler shared by the process pool and Ray: hand cells to free workers
    (keeping each worker to one defense), enforce the per-cell timeout, turn a dead
    worker into an error cell and replace it."""

    kind = "pool"

    def __init__(self, workers: int = 0, progress: bool = True, threads: int = 1) -> None:
        self.workers = workers or default_workers()
        self.progress = progress
        self.threads = threads

    # Subclasses: start a worker, send it a call, wait for answers, stop it.
    def _start(self, runner: Runner, cells: Sequence[Cell]) -> Any:
        raise NotImplementedError

    def _send(self, handle: Any, method: str, args: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _wait(self, slots: Sequence[_Slot], timeout: float | None) -> list[tuple[_Slot, Any]]:
        """The busy slots that answered (their answer, or a WorkerDied) within timeout."""
        raise NotImplementedError

    def _stop(self, handle: Any, kill: bool) -> None:
        raise NotImplementedError

    def _crash_report(self, handle: Any) -> str:
        return ""

    def _setup(self, runner: Runner, cells: Sequence[Cell]) -> None:
        pass

    def _teardown(self) -> None:
        pass

    def run(self, runner: Runner, cells: Sequence[Cell], *, on_result: OnResult | None = None,
            done: Mapping[str, Mapping[str, Any]] | None = None) -> list[CellResult]:
        done = done or {}
        results: dict[int, CellResult] = {}
        pending = [i for i, c in enumerate(cells) if c.id not in done]
        with _Progress(len(cells), self.progress) as progress:
            for i, cell in enumerate(cells):
                if cell.id in done:
                    results[i] = CellResult(**done[cell.id])
                    progress.start(cell)
                    progress.finish()
            if pending:
                self._setup(runner, cells)
                try:
                    self._loop(runner, cells, pending, results, progress, on_result)
                finally:
                    self._teardown()
        return [results[i] for i in range(len(cells))]

    def _loop(self, runner: Runner, cells: Sequence[Cell], pending: list[int],
              results: dict[int, CellResult], progress: _Progress,
              on_result: OnResult | None) -> None:
        timeout = runner.timeout
        # Every other worker walks its defense's cells from the end: the workers then
        # meet a training that several defenses share (a poisoned model, shadow models)
        # at different times, so one trains it while the other runs cells instead of
        # waiting on its lock, and finds it in the cache when it gets there.
        slots = [_Slot(backward=k % 2 == 1) for k in range(min(self.workers, len(pending)))]
        # Serving wrappers first (encrypted inference: the costliest defense, and its
        # rehearsal is split between workers below), then re-trained models, so the
        # long work starts early and the short cells fill in around it.
        first = {Stage.WRAPPER: 0, Stage.TRAINING: 1}
        pending.sort(key=lambda i: first.get(cells[i].defense.stage, 2))
        plan = _Plan(cells, pending, len(slots))

        def finish(slot: _Slot, result: CellResult) -> None:
            assert slot.cell is not None
            results[slot.cell] = result
            slot.cell, slot.phase, slot.deadline = None, "", float("inf")
            if on_result is not None:
                on_result(result)
            progress.finish()

        def lose(slot: _Slot, why: str, traceback: str | None) -> None:
            """The worker is gone (crashed, or killed past the deadline)."""
            assert slot.cell is not None
            cell = cells[slot.cell]
            result = _record(cell)
            result.status, result.reason = "error", why
            result.traceback = traceback or None
            result.duration_s = round(time.perf_counter() - slot.started, 4)
            log.warning("cell %s failed: %s", cell.label, why)
            plan.release(slot)
            slot.handle, slot.defenses, slot.last = None, set(), ""
            finish(slot, result)

        try:
            while plan.pending or any(s.cell is not None for s in slots):
                for slot in slots:
                    if slot.cell is not None or not plan.pending:
                        continue
                    i = plan.pick(slot, slots)
                    if i is None:
                        continue
                    cell = cells[i]
                    if slot.handle is None:
                        slot.handle = self._start(runner, cells)
                    progress.start(cell)
                    slot.cell, slot.started = i, time.perf_counter()
                    group = plan.take(i, slot)
                    if group is not None:
                        # Build the defense, and rehearse the group if it packs.
                        slot.phase = "prepare"
                        slot.deadline = slot.started + (timeout * len(group) + GRACE_S
                                                        if timeout else float("inf"))
                        self._send(slot.handle, "prepare", (i, group))
                    else:
                        self._begin_run(slot, i, timeout)
                    slot.defenses.add(cell.defense_key)
                    slot.last = cell.defense_key
                busy = [s for s in slots if s.cell is not None]
                if not busy:
                    continue
                nearest = min(s.deadline for s in busy)
                wait = None if nearest == float("inf") else max(0.0, nearest - time.perf_counter())
                for slot, answer in self._wait(busy, wait):
                    if isinstance(answer, WorkerDied):
                        crash = self._crash_report(slot.handle)
                        self._stop(slot.handle, kill=True)
                        lose(slot, f"WorkerDied: the worker running this cell {answer}; the "
                             "audit went on with a new worker", crash)
                        continue
                    method, (value, records) = answer
                    _emit(records)
                    assert slot.cell is not None
                    if method == "prepare":
                        plan.prepared(slot, cells[slot.cell].defense_key, bool(value))
                        self._begin_run(slot, slot.cell, timeout)
                    else:
                        finish(slot, CellResult(**value))
                now = time.perf_counter()
                for slot in slots:
                    if slot.cell is not None and now >= slot.deadline:
                        self._stop(slot.handle, kill=True)
                        limit = f"{timeout:g} s (the audit's per-cell limit)"
                        what = "rehearsing its defense" if slot.phase == "prepare" else \
                            "running it"
                        lose(slot, f"CellTimeout: timed out after {limit}; the worker "
                             f"{what} was stopped", None)
        finally:
            for slot in slots:
                if slot.handle is not None:
                    self._stop(slot.handle, kill=slot.cell is not None)

    def _begin_run(self, slot: _Slot, i: int, timeout: float) -> None:
        slot.phase = "run"
        slot.started = time.perf_counter()
        slot.deadline = slot.started + (timeout + GRACE_S if timeout else float("inf"))
        self._send(slot.handle, "run", (i,))


def _record(cell: Cell) -> CellResult:
    return CellResult(id=cell.id, defense=cell.defense.name,
                      defense_params=cell.defense_params, defense_point=cell.defense_point,
                      attack=cell.attack.name, family=cell.attack.family.value,
                      attack_params=cell.attack_params, attack_point=cell.attack_point)


class _Plan:
    """Which pending cell a free worker takes next.

    A worker keeps to the defense it is on (each defended model is built once per
    worker), else takes a defense no other worker is on, or a serving wrapper's. The
    first time a worker meets a defense it prepares it (:meth:`Runner.prepare`) with a
    *group* of that defense's pending cells, claimed for it: a deployment that packs
    many cells' queries into one call (encrypted inference) rehearses the group, and the
    group's cells then stay with that worker. A defense's cells are split into one group
    per worker, so each rehearses its share in parallel (shares dealt round-robin). A
    defense that turns out not to pack frees its groups.
    """

    def __init__(self, cells: Sequence[Cell], pending: list[int], workers: int) -> None:
        self.cells, self.pending, self.workers = cells, pending, max(1, workers)
        self.claimed: dict[int, _Slot] = {}  # cell -> the worker whose group it is in
        self.packs: dict[str, bool] = {}  # defense key -> packs (known once prepared)
        self.groups: dict[str, list[list[int]]] = {}  # defense key -> its shares

    def pick(self, slot: _Slot, slots: Sequence[_Slot]) -> int | None:
        """The next cell for ``slot`` (None: only other workers' groups are left)."""
        cells = self.cells
        mine = [i for i in self.pending if self.claimed.get(i) is slot]
        if mine:
            return mine[0]
        free = [i for i in self.pending if i not in self.claimed]
        if not free:
            return None
        for i in reversed(free) if slot.backward else free:
            if cells[i].defense_key == slot.last:
                return i
        taken = {cells[s.cell].defense_key for s in slots if s.cell is not None}
        for i in free:
            key = cells[i].defense_key
            # A serving wrapper's cells are worth splitting: each worker rehearses a
            # share at once (the pending list has them first).
            if key not in taken or (cells[i].defense.stage is Stage.WRAPPER
                                    and self.packs.get(key) is not False):
                return i
        return free[0]

    def take(self, i: int, slot: _Slot) -> list[int] | None:
        """Dispatch cell ``i`` to ``slot``: the group to prepare it with, or None when the
        worker runs it at once (its group is rehearsed, or its defense does not pack and
        the worker has built it)."""
        self.pending.remove(i)
        key = self.cells[i].defense_key
        if self.claimed.pop(i, None) is slot:
            return None  # rehearsed with its group
        if self.packs.get(key) is False:
            return None if key in slot.defenses else [i]
        if key not in self.groups:
            # Dealt round-robin, so each share mixes cheap and costly cells: a sweep's
            # points, and the attacks that query most, land in every share.
            same = [i] + [j for j in self.pending if self.cells[j].defense_key == key
                          and j not in self.claimed]
            self.groups[key] = [same[k::self.workers] for k in range(self.workers)]
        group = next((g for g in self.groups[key] if i in g), [i])
        group = [i] + [j for j in group if j != i and j in self.pending
                       and j not in self.claimed]
        for j in group[1:]:
            self.claimed[j] = slot
        return group

    def prepared(self, slot: _Slot, key: str, packs: bool) -> None:
        """``slot`` prepared defense ``key``; it rehearsed (packs) or not."""
        self.packs[key] = packs
        if not packs:  # nothing was rehearsed: any worker may run the group's cells
            for j, owner in list(self.claimed.items()):
                if owner is slot and self.cells[j].defense_key == key:
                    del self.claimed[j]

    def release(self, slot: _Slot) -> None:
        """``slot``'s worker is gone: its claims go back to everyone."""
        for j, owner in list(self.claimed.items()):
            if owner is slot:
                del self.claimed[j]


def _signal_name(code: int) -> str:
    try:
        name = signal.Signals(code).name
    except ValueError:
        return f"signal {code}"
    hint = {"SIGSEGV": "segmentation fault", "SIGABRT": "aborted", "SIGBUS": "bus error",
            "SIGKILL": "killed: out of memory, or by hand", "SIGILL": "illegal instruction",
            "SIGFPE": "arithmetic error"}.get(name)
    return f"{name}, {hint}" if hint else name


class ProcessExecutor(_PoolExecutor):
    """Cells in a pool of worker processes forked after loading (see the module
    docstring).

    :param workers: worker processes (0: one per core).
    :param memory_mb: MiB each worker may allocate beyond what it maps when it starts
        (0: no limit but the machine's; past it an allocation fails with MemoryError, or a
        native one ends the worker, and the cell is an error).
    :param threads: torch threads per worker.
    """

    kind = "process"

    def __init__(self, workers: int = 0, progress: bool = True, memory_mb: int = 0,
                 threads: int = 1) -> None:
        super().__init__(workers, progress, threads)
        self.memory_mb = memory_mb
        import multiprocessing as mp

        if "fork" not in mp.get_all_start_methods():
            raise ConfigError("executor 'process' forks worker processes, which this "
                              "platform cannot; use executor 'ray' or 'serial'")
        self._ctx = mp.get_context("fork")
        self._crash_dir: tempfile.TemporaryDirectory[str] | None = None

    def _setup(self, runner: Runner, cells: Sequence[Cell]) -> None:
        from gauntlet import device

        if device.current() == "cuda":  # before any worker forks
            raise ConfigError("executor 'process' forks its workers, and CUDA does not "
                              "survive a fork; on a GPU use executor 'ray' (an actor per "
                              "GPU) or 'serial', or device 'cpu'")
        self._crash_dir = tempfile.TemporaryDirectory(prefix="gauntlet-workers-")
        self._count = 0

    def _teardown(self) -> None:
        if self._crash_dir is not None:
            self._crash_dir.cleanup()

    def _start(self, runner: Runner, cells: Sequence[Cell]) -> Any:
        import warnings

        assert self._crash_dir is not None
        self._count += 1
        crash = os.path.join(self._crash_dir.name, f"worker-{self._count}.txt")
        parent, child = self._ctx.Pipe()
        level = logging.getLogger("gauntlet").getEffectiveLevel()
        process = self._ctx.Process(
            target=_serve, args=(child, runner, cells, self.threads, level, self.memory_mb,
                                 crash), daemon=True, name=f"gauntlet-worker-{self._count}")
        with warnings.catch_warnings():
            # Python 3.12 warns that forking a process with threads (torch's pool) may
            # deadlock; the worker only computes on its own thread (set_num_threads(1)).
            warnings.simplefilter("ignore", DeprecationWarning)
            # The worker must never finalise the parent's garbage: a TenSEAL context left
            # over from an earlier audit in this process, freed in a child, joins
            # threads that only the parent had, and the worker hangs for ever (a serial
            # then a process audit in one session did). So the parent collects it first,
            # and what survives is frozen, out of the child's collections (this also
            # spares the copy-on-write of every object the collector would touch).
            gc.collect()
            gc.freeze()
            try:
                process.start()
            finally:
                gc.unfreeze()
        child.close()
        return _ProcessHandle(process, parent, crash)

    def _send(self, handle: Any, method: str, args: tuple[Any, ...]) -> None:
        try:
            handle.conn.send((method, args))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # the wait sees it dead

    def _wait(self, slots: Sequence[_Slot], timeout: float | None) -> list[tuple[_Slot, Any]]:
        from multiprocessing.connection import wait

        by_obj: dict[Any, _Slot] = {}
        for s in slots:
            by_obj[s.handle.conn] = s
            by_obj[s.handle.process.sentinel] = s
        ready = wait(list(by_obj), timeout)
        out: list[tuple[_Slot, Any]] = []
        seen: set[int] = set()
        for obj in ready:
            slot = by_obj[obj]
            if id(slot) in seen:
                continue
            seen.add(id(slot))
            handle = slot.handle
            try:
                if handle.conn.poll():
                    out.append((slot, handle.conn.recv()))
                    continue
            except (EOFError, OSError):
                pass
            handle.process.join(1.0)
            code = handle.process.exitcode
            how = f"was killed by {_signal_name(-code)}" if code is not None and code < 0 \
                else f"exited with code {code}"
            out.append((slot, WorkerDied(how)))
        return out

    def _stop(self, handle: Any, kill: bool) -> None:
        if kill:
            handle.process.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                handle.conn.send(None)
        handle.process.join(5.0)
        if handle.process.is_alive():
            handle.process.kill()
            handle.process.join()
        handle.conn.close()

    def _crash_report(self, handle: Any) -> str:
        try:
            with open(handle.crash, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
        except OSError:
            return ""
        from gauntlet.results import short_paths

        kept = []
        for line in text.splitlines():
            if line.startswith("Extension modules:"):  # a list of every native module
                continue
            kept.append(line)
            if line.rstrip().endswith(" in _serve"):
                break  # below it: the parent's frames the fork copied, not the worker's
        return short_paths("The worker's last Python stack (faulthandler):\n"
                           + "\n".join(kept).strip()) if text else ""


@dataclasses.dataclass
class _ProcessHandle:
    process: Any
    conn: Any
    crash: str


class RayExecutor(_PoolExecutor):
    """Cells in Ray actors (see the module docstring).

    :param address: a cluster's address (``ray start --head`` prints it); "" starts a
        local Ray for this audit and stops it after.
    :param workers: actors (0: one per CPU the cluster has).
    :param gpus: GPUs each actor asks Ray for (the audit's device is CUDA).
    """

    kind = "ray"

    def __init__(self, address: str = "", workers: int = 0, progress: bool = True,
                 threads: int = 1, gpus: float = 0.0) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("executor 'ray' needs Ray: pip install 'ml-gauntlet[ray]'") \
                from None
        super().__init__(workers, progress, threads)
        self._asked = workers
        self.address = address
        self.gpus = gpus
        self._started_ray = False

    def _setup(self, runner: Runner, cells: Sequence[Cell]) -> None:
        import ray

        from gauntlet import cache as cache_mod
        from gauntlet import device as device_mod

        if not ray.is_initialized():
            # Workers' logs and warnings come back with each cell (_Captured); Ray's own
            # chatter (its token notice for a local cluster) stays out of the audit's.
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.ERROR}
            if self.address:
                options["address"] = self.address
            else:
                options["num_cpus"] = self._asked or default_workers()
            log.info("%s", f"connecting to the Ray cluster at {self.address}" if self.address
                     else "starting a local Ray")
            logging.getLogger("ray").setLevel(logging.ERROR)
            try:
                ray.init(**options)
            except Exception as exc:  # noqa: BLE001 - an unreachable cluster is bad input
                text = f"{type(exc).__name__}: {exc}"
                hint = ("; the cluster wants an authentication token: set RAY_AUTH_TOKEN "
                        "to its token (ray get-auth-token on the head machine)"
                        if "auth" in text.lower() else "")
                raise ConfigError(f"cannot start or reach Ray"
                                  f"{' at ' + self.address if self.address else ''}: "
                                  f"{text}{hint}") from None
            self._started_ray = True
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if not self._asked:
            self.workers = cpus
        elif self.workers * self.threads > cpus:
            # An actor holds its CPUs while it lives: extra ones would wait for ever.
            log.warning("the Ray cluster has %d CPUs, fewer than the %d workers asked "
                        "for; running %d", cpus, self.workers, max(1, cpus // self.threads))
            self.workers = max(1, cpus // self.threads)
        _pickle_plugins_by_value(cells)
        self._runner_ref = ray.put(runner)
        self._cells_ref = ray.put(list(cells))
        active = cache_mod.active()
        self._cache_root = str(active.root) if active is not None else None
        self._device = device_mod.current()
        actor = ray.remote(_Worker)
        self._actor = actor.options(num_cpus=self.threads, num_gpus=self.gpus,
                                    max_restarts=0, max_task_retries=0)
        self._refs: dict[Any, Any] = {}

    def _teardown(self) -> None:
        import ray

        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def _start(self, runner: Runner, cells: Sequence[Cell]) -> Any:
        level = logging.getLogger("gauntlet").getEffectiveLevel()
        return _RayHandle(self._actor.remote(self._runner_ref, self._cells_ref, self.threads,
                                             level, self._cache_root, self._device))

    def _send(self, handle: Any, method: str, args: tuple[Any, ...]) -> None:
        handle.method = method
        handle.ref = getattr(handle.actor, method).remote(*args)

    def _wait(self, slots: Sequence[_Slot], timeout: float | None) -> list[tuple[_Slot, Any]]:
        import ray

        by_ref = {s.handle.ref: s for s in slots}
        ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        out: list[tuple[_Slot, Any]] = []
        for ref in ready:
            slot = by_ref[ref]
            try:
                out.append((slot, (slot.handle.method, ray.get(ref))))
            except ray.exceptions.RayActorError as exc:
                if "creation task" in str(exc):
                    # Every actor would fail alike (an input that does not unpickle there,
                    # a missing package): stop, saying why, rather than fail every cell.
                    last = str(exc).strip().splitlines()[-1]
                    raise ExecutorError(f"Ray workers cannot start: {last}") from None
                out.append((slot, WorkerDied(f"(a Ray actor) died: {_first_line(exc)}")))
            except ray.exceptions.RayError as exc:
                out.append((slot, WorkerDied(f"(a Ray actor) failed: {_first_line(exc)}")))
        return out

    def _stop(self, handle: Any, kill: bool) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(handle.actor, no_restart=True)


@dataclasses.dataclass
class _RayHandle:
    actor: Any
    ref: Any = None
    method: str = ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _pickle_plugins_by_value(cells: Sequence[Cell]) -> None:
    """Ship the code of plugin classes that a Ray worker may not be able to import (a
    module outside any installed package: a test file, a notebook) by value."""
    import importlib.util

    from ray import cloudpickle  # Ray's own copy: its registry is the one Ray reads

    for cell in cells:
        for cls in (cell.attack, cell.defense):
            module = sys.modules.get(cls.__module__)
            if module is None or cls.__module__.startswith("gauntlet.") or \
                    cls.__module__ == "__main__":
                continue
            spec = importlib.util.find_spec(cls.__module__.split(".")[0])
            origin = (spec.origin or "") if spec is not None else ""
            if "site-packages" in origin or "dist-packages" in origin:
                continue  # an installed plugin: every worker has it
            with contextlib.suppress(ValueError):
                cloudpickle.register_pickle_by_value(module)


def make_executor(name: str, *, workers: int = 0, progress: bool = True,
                  memory_mb: int = 0, address: str = "", gpus: float = 0.0) -> Executor:
    """The executor a config names (``serial``, ``process`` or ``ray``)."""
    if name == "serial":
        return SerialExecutor(progress=progress)
    if name == "process":
        return ProcessExecutor(workers, progress, memory_mb=memory_mb)
    if name == "ray":
        return RayExecutor(address, workers, progress, gpus=gpus)
    raise ConfigError(f"unknown executor {name!r} (serial, process or ray)")
