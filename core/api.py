"""The Python API: ``gauntlet.audit(...)`` runs an audit and returns an AuditResult.

It strings the stages together: config -> plan (:mod:`gauntlet.plan`) -> load the
inputs (:mod:`gauntlet.loading`) -> run the cells (:mod:`gauntlet.executor`,
:mod:`gauntlet.run`) -> store them as they finish (:mod:`gauntlet.store`) -> the derived
worst-case cells (:mod:`gauntlet.rows`) and the evaluation checklist
(:mod:`gauntlet.checklist`) -> results and report (:mod:`gauntlet.results`,
:mod:`gauntlet.provenance`) -> the gate's verdicts on them (:mod:`gauntlet.gate`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gauntlet import config as config_mod
from gauntlet import device as device_mod
from gauntlet import gate as gate_mod
from gauntlet import memo
from gauntlet.cache import Cache, base_identity, cell_key, default_dir, digest, using
from gauntlet.checklist import as_json, checklist
from gauntlet.dataset import Dataset
from gauntlet.errors import ConfigError
from gauntlet.executor import Executor, make_executor
from gauntlet.loading import load_inputs
from gauntlet.model import Model
from gauntlet.plan import Cell, Selection, plan
from gauntlet.provenance import fingerprint, now_iso, skeleton
from gauntlet.registry import Registry, budget, make_registry
from gauntlet.results import AuditResult, CellResult, display_path
from gauntlet.rows import WORST_CASE, worst_case_cells
from gauntlet.run import Runner
from gauntlet.store import Store

log = logging.getLogger(__name__)

#: The catalogue entry of the derived worst-case column (:func:`gauntlet.rows.worst_case_cells`).
WORST_CASE_ENTRY = {
    "family": "evasion", "needs": "none", "derived": True, "parameters": [],
    "description": "Per row, the worst case over every evasion attack run at the same "
                   "budget (AutoAttack's rule): a row is robust only if it survived them "
                   "all. Computed from the cells' per-row results; no extra queries. It "
                   "rests on the rows every one of them attacked: where a row-limited "
                   "attack (square: 100 rows) runs, on those rows only, so compare it with "
                   "the other attacks on the same rows, not with their full-row numbers.",
    "plugin": "core", "distribution": "gauntlet", "version": ""}


def audit(model: str | Model | Any = None, data: str | Dataset | None = None, *,
          attacks: Sequence[str | Selection] | Mapping[str, Mapping[str, Any]] | None = None,
          defenses: Sequence[str | Selection] | Mapping[str, Mapping[str, Any]] | None = None,
          seed: int | None = None, samples: int | None = None, timeout: float | None = None,
          out: str | Path | None = None,
          config: str | Path | config_mod.AuditConfig | None = None,
          registry: Registry | None = None, progress: bool = False, resume: bool = False,
          on_cell: Callable[[CellResult], None] | None = None,
          executor: Executor | str | None = None, workers: int | None = None,
          cache: bool | str | Path | None = None, device: str | None = None,
          resamples: int | None = None, gate: Sequence[str] | None = None) -> AuditResult:
    """Run an audit and return its result (the report is written only if ``out`` is set).

    :param model: a spec (``builtin:cnn``, a model file), a :class:`Model`, or an
        in-memory ``torch.nn.Module``.
    :param data: a spec (``sklearn:digits``, ``idx:DIR``, ``npz:FILE``) or a Dataset.
    :param attacks: names, or a mapping of name to parameter overrides; None = every one
        that is not opt-in (``in_default_audit = False``).
    :param defenses: as ``attacks``.
    :param config: an audit TOML file or AuditConfig; explicit arguments override it.
    :param registry: the plugins to use (default: every installed plugin).
    :param timeout: seconds one cell may run before it becomes an error cell (0: none).
    :param out: if given, write report.html, results.json and results.csv there.
    :param resume: kept for compatibility: finished cells are always reused from the
        content cache (``cache``), which is how an interrupted audit resumes now.
    :param on_cell: called with each cell's record as it finishes.
    :param executor: ``serial``, ``process`` or ``ray`` (:mod:`gauntlet.executor`), or an
        Executor; default the config's (serial).
    :param workers: workers of a process or Ray executor (0: one per core).
    :param cache: the content cache (:mod:`gauntlet.cache`): True (the user cache
        folder), False (none) or a folder; default the config's (True).
    :param device: ``auto``, ``cpu`` or ``cuda`` (:mod:`gauntlet.device`).
    :param resamples: K > 0: each metric's spread over K bootstrap resamples of its
        cell's rows (no attack runs again); default the config's (0).
    :param gate: checks such as ``'robust_accuracy.fgsm["eps=0.1"] >= 0.5'``
        (:mod:`gauntlet.gate`), added to the config's: one naming a metric, attack or
        defense the audit lacks is a ConfigError before anything runs; their verdicts go
        to results.json's ``gate`` (``gauntlet.gate.verdicts_of(result.result)``).
    """
    model = _check_arguments(model, data, config)
    cfg = config if isinstance(config, config_mod.AuditConfig) else (
        config_mod.load(config) if config is not None else config_mod.AuditConfig())
    cfg = config_mod.override(
        cfg, model=model if isinstance(model, str) else None,
        data=data if isinstance(data, str) else None, seed=seed, samples=samples,
        timeout=timeout, resamples=resamples, out=str(out) if out is not None else None,
        executor=executor if isinstance(executor, str) else None, workers=workers,
        cache=str(cache) if isinstance(cache, Path) else cache, device=device, gate=gate)
    checks = gate_mod.parse_all(cfg.gate)
    if attacks is not None:
        cfg.attacks = _as_selections(attacks)
    if defenses is not None:
        cfg.defenses = _as_selections(defenses)
    store_cache = None if cfg.cache is False else \
        _usable(Cache(default_dir() if cfg.cache is True else cfg.cache))
    if resume and store_cache is None:
        raise ConfigError("resume reuses finished cells from the content cache, which "
                          "this audit turns off (--no-cache)")
    memo_key = None
    if store_cache is not None and registry is None and on_cell is None and \
            _replayable(model, data, executor, cfg):
        memo_key = memo.audit_key(cfg)
        with using(store_cache):  # the report's charts are in it too
            replayed = None if memo_key is None else _replay(cfg, store_cache, memo_key,
                                                              out, config, checks)
        if replayed is not None:
            with using(store_cache):
                return _judged(replayed, checks, cfg, out, config)
    registry = registry or make_registry()
    registry.check_conflicts()
    if registry.broken:
        log.warning("broken plugins are installed; whatever they provide is missing from "
                    "this audit: %s", "; ".join(f"{p.label()}: {p.error}"
                                                for p in registry.broken))
    attack_sel = cfg.attacks if cfg.attacks is not None else default_selections(registry,
                                                                                "attack")
    defense_sel = cfg.defenses if cfg.defenses is not None else \
        default_selections(registry, "defense")
    if not defense_sel:
        defense_sel = [Selection("none")]
    cells = plan(registry, defense_sel, attack_sel)  # validates names and parameters
    gate_mod.validate(checks, metrics={n: m.bounds for n, m in registry.metrics.items()},
                      attacks={c.attack.name for c in cells} | {WORST_CASE},
                      defenses={c.defense.name for c in cells},
                      points=_points(cells), measures=_measures(cells, registry))

    chosen_device = device_mod.select(cfg.device)
    if cfg.worker_memory and getattr(executor, "kind", cfg.executor) != "process":
        log.warning("worker_memory (--worker-memory) caps process-pool workers only; "
                    "this audit runs on executor %r, which ignores it",
                    getattr(executor, "kind", cfg.executor))
    run_on = executor if executor is not None and not isinstance(executor, str) else \
        make_executor(cfg.executor, workers=cfg.workers, progress=progress,
                      memory_mb=cfg.worker_memory, address=cfg.ray_address,
                      gpus=1.0 if chosen_device == "cuda" else 0.0)
    with using(store_cache):
        audit_result = _run(cfg, registry, cells, model, data, out, config, on_cell, run_on,
                            store_cache, chosen_device, memo_key)
        return _judged(audit_result, checks, cfg, out, config)


def _run(cfg: config_mod.AuditConfig, registry: Registry, cells: list[Cell], model: Any,
         data: Any, out: Any, config: Any, on_cell: Callable[[CellResult], None] | None,
         executor: Executor, store_cache: Cache | None, chosen_device: str,
         memo_key: str | None = None) -> AuditResult:
    """Load the inputs, run the cells the cache does not hold, write the results."""
    passed_model = model is not None and not isinstance(model, str)
    inputs = load_inputs(registry, cfg, model=model if passed_model else None,
                         data=data if isinstance(data, Dataset) else None)
    checked: set[str] = set()
    for cell in cells:  # parameters that name things in the data: a usage error, exit 2
        if cell.attack_key not in checked:
            checked.add(cell.attack_key)
            cell.attack(**cell.attack_params).check_data(inputs.evaluated)
    result = skeleton(cfg, registry, inputs.model, inputs.dataset, inputs.evaluated,
                      passed_model=passed_model, passed_data=isinstance(data, Dataset))
    store = None
    if out is not None or config is not None:
        store = Store(Path(cfg.out), fingerprint(result))
    runner = Runner(inputs.model, inputs.evaluated, registry.metrics.values(), cfg.seed,
                    cfg.timeout, cfg.resamples)
    started = time.perf_counter()
    keys: dict[str, str] = {}
    done: dict[str, dict[str, Any]] = {}
    if store_cache is not None:
        base = digest(base_identity(result, registry, inputs.evaluated, chosen_device))
        keys = {cell.id: cell_key(base, cell, registry) for cell in cells}
        for cell in cells:
            hit = store_cache.get_cell(keys[cell.id])
            if hit is not None and hit.get("id") == cell.id:
                # A point's label names the parameters its sweep varies: this audit's.
                done[cell.id] = {**hit, "defense_point": cell.defense_point,
                                 "attack_point": cell.attack_point}

    def record(cell: CellResult) -> None:
        entry = cell.to_dict()
        if store_cache is not None:  # first: a kill between the two loses no cell
            store_cache.put_cell(keys[cell.id], entry)
        if store is not None:
            store.append(entry)
        if on_cell is not None:
            on_cell(cell)

    log.info("running %d cells on %d test rows%s", len(cells) - len(done),
             len(inputs.evaluated.x_test),
             f" ({len(done)} more from the cache at {store_cache.root})"
             if done and store_cache is not None else "")
    cell_results = executor.run(runner, cells, on_result=record, done=done)
    if store is not None:
        for cell in cell_results:  # the log of this run holds every cell, reused or not
            if cell.id in done:
                store.append(done[cell.id])
    for name, entry in result["attacks"].items():
        if name in registry.attacks:  # how each evasion attack's budget is measured
            entry.update(budget(registry.attacks[name]))
    records = [c.to_dict() for c in cell_results]
    # Derived from the per-row results, never stored in cells.jsonl: recomputed on resume.
    derived = worst_case_cells(result, records)
    if derived:
        result["attacks"][WORST_CASE] = dict(WORST_CASE_ENTRY)
    result["cells"] = [c.to_dict(rows=False) for c in cell_results] + derived
    result["checklist"] = as_json(checklist(result, records))
    result["provenance"]["duration_s"] = round(time.perf_counter() - started, 2)
    result["provenance"]["run"] = {
        "executor": getattr(executor, "kind", type(executor).__name__),
        "workers": getattr(executor, "workers", 1), "device": chosen_device,
        "cache": display_path(str(store_cache.root)) if store_cache is not None else None,
        "cells_reused": len(done), "cells_run": len(cells) - len(done)}
    audit_result = AuditResult(result, registry, rows={c.id: c.rows for c in cell_results})
    if store is not None:
        audit_result.write_report(store.folder / "report.html")
    if memo_key is not None and store_cache is not None:
        memo.remember(store_cache, memo_key, audit_result, keys, audit_result.sections())
    return audit_result


def _usable(cache: Cache) -> Cache:
    """``cache``, once its folder exists and can be written; else a ConfigError (a file
    given as the folder, a read-only place), not a warning on every entry."""
    import os

    root = cache.root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"the cache folder {root} is a file; give a folder (--cache DIR) "
                          "or turn the cache off (--no-cache)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the cache folder {root}: {exc.strerror or exc}; "
                          "give another (--cache DIR) or turn it off (--no-cache)") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"the cache folder {root} cannot be written; give another "
                          "(--cache DIR) or turn it off (--no-cache)")
    return cache


def _points(cells: Sequence[Cell]) -> dict[str, set[str]]:
    """Per attack, the points its planned cells run."""
    out: dict[str, set[str]] = {}
    for cell in cells:
        out.setdefault(cell.attack.name, set()).add(cell.attack_point)
    return out


def _measures(cells: Sequence[Cell], registry: Registry) -> dict[str, set[str]]:
    """Per attack whose outcome type is declared, the metrics that can apply to it (a
    serving wrapper's facts apply to the clean row of its defense, so ``clean`` is left
    out: its metrics depend on the deployment)."""
    from gauntlet.metric import Fact

    out: dict[str, set[str]] = {}
    for cell in cells:
        outcome = getattr(cell.attack, "outcome", None)
        if cell.attack.name == "clean" or not isinstance(outcome, type) or \
                outcome is object:
            continue
        out[cell.attack.name] = {name for name, m in registry.metrics.items()
                                 if not issubclass(m, Fact) and
                                 issubclass(outcome, tuple(m.applies_to))}
    return out


def _replayable(model: Any, data: Any, executor: Any, cfg: config_mod.AuditConfig) -> bool:
    """Whether this audit's inputs are all named (specs, files), so that it can be
    replayed whole (:mod:`gauntlet.memo`); an executor that would fail to start is left to
    fail as it would."""
    import importlib.util

    if not isinstance(model, (str, type(None))) or not isinstance(data, (str, type(None))):
        return False
    if executor is not None and not isinstance(executor, str):
        return False
    if cfg.executor not in ("serial", "process", "ray"):
        return False
    return cfg.executor != "ray" or importlib.util.find_spec("ray") is not None


def _replay(cfg: config_mod.AuditConfig, store_cache: Cache, key: str, out: Any,
            config: Any, checks: Sequence[gate_mod.Check] = ()) -> AuditResult | None:
    """The remembered audit under ``key``, written out as this run's; None if there is
    none (or a cell of it has left the cache). ``checks`` are validated against it first,
    as the registry would (it remembers the catalogue and the plan)."""
    started = time.perf_counter()
    found = memo.replay(store_cache, key)
    if found is None:
        return None
    result, records, sections = found
    names = gate_mod.known_names(result)
    names["attacks"] |= {WORST_CASE}
    gate_mod.validate(checks, **names)
    log.info("all %d cells of this unchanged audit come from the cache at %s",
             len(records), store_cache.root)
    prov = result["provenance"]
    prov["started"] = now_iso()
    result["config"] = cfg.to_dict()
    if out is not None or config is not None:
        store = Store(Path(cfg.out), fingerprint(result))
        for cell in result["cells"]:
            if cell["id"] in records:
                store.append(records[cell["id"]])
    # What the audit took when it was computed, beside what replaying it took.
    computed = prov["run"].get("computed_duration_s", prov.get("duration_s"))
    prov["duration_s"] = round(time.perf_counter() - started, 2)
    prov["run"] = {"executor": "replayed", "workers": None, "device": prov["run"]["device"],
                   "cache": display_path(str(store_cache.root)),
                   "cells_reused": len(records), "cells_run": 0,
                   "computed_duration_s": computed}
    audit_result = AuditResult(result, rows={i: r.get("rows") or {} for i, r in records.items()},
                               sections=sections)
    if out is not None or config is not None:
        audit_result.write_report(Path(cfg.out) / "report.html")
    return audit_result


def _judged(audit_result: AuditResult, checks: Sequence[gate_mod.Check],
            cfg: config_mod.AuditConfig, out: Any, config: Any) -> AuditResult:
    """``audit_result`` with the gate's verdicts in its results (``gate``), and in its
    results.json and report when they were written. After the audit is remembered
    (:mod:`gauntlet.memo`): a gate judges an audit, it is not part of it. The report is
    written again with the verdicts (its charts come from the cache: they do not depend
    on the gate)."""
    if checks:
        verdicts = gate_mod.evaluate(audit_result.result, checks)
        audit_result.result["gate"] = [v.to_dict() for v in verdicts]
        if out is not None or config is not None:
            audit_result.write_report(Path(cfg.out) / "report.html")
    return audit_result


def _check_arguments(model: Any, data: Any, config: Any) -> Any:
    """Raise ConfigError for an argument of a type audit() cannot use; return ``model``
    with a path turned into a spec string."""
    import os
    import sys

    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    # A torch module can only exist once torch is imported: no need to import it here.
    torch = sys.modules.get("torch")
    module_type = (torch.nn.Module,) if torch is not None else ()
    if model is not None and not isinstance(model, (str, Model, *module_type)):
        raise ConfigError(f"model must be a spec string ('builtin:cnn' or a model file), a "
                          f"gauntlet.Model or a torch.nn.Module, got {type(model).__name__}")
    if data is not None and not isinstance(data, (str, Dataset)):
        raise ConfigError(f"data must be a spec string ('sklearn:digits', 'idx:DIR', "
                          f"'npz:FILE') or a gauntlet.Dataset, got {type(data).__name__}")
    if config is not None and not isinstance(config, (str, os.PathLike,
                                                      config_mod.AuditConfig)):
        raise ConfigError(f"config must be a TOML file path or a gauntlet.config.AuditConfig, "
                          f"got {type(config).__name__}")
    return model


def default_selections(registry: Registry, kind: str) -> list[Selection]:
    """What an audit that lists no attacks (``kind="attack"``) or defenses runs: every
    registered one with its default parameters, except the opt-in studies
    (``in_default_audit = False``)."""
    return [Selection(n) for n, e in registry.entries[kind].items() if e.cls.in_default_audit]


def _as_selections(value: Any) -> list[Selection]:
    if isinstance(value, str):
        raise ConfigError("attacks/defenses must be a list of names, not a string")
    if isinstance(value, Mapping):
        out = []
        for name, params in value.items():
            # A list of mappings: several sweeps of one plugin, planned as their union.
            for each in params if isinstance(params, list) else [params]:
                if not isinstance(name, str) or not isinstance(each, (Mapping, type(None))):
                    raise ConfigError(f"attacks/defenses as a mapping take names to "
                                      f"parameter mappings (or lists of them), got "
                                      f"{name!r}: {params!r}")
                out.append(Selection(name, dict(each or {})))
        return out
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"attacks/defenses must be a list of names or a mapping of names to "
                          f"parameters, got {type(value).__name__}")
    for v in value:
        if not isinstance(v, (str, Selection)):
            raise ConfigError(f"attacks/defenses list names (strings), got {v!r}")
    return [v if isinstance(v, Selection) else Selection(v) for v in value]


