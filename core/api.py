"""The Python API: ``gauntlet.audit(...)`` runs an audit and returns an AuditResult."""
from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet import config as config_mod
from gauntlet.dataset import Dataset
from gauntlet.errors import ConfigError, DataError, ModelLoadError
from gauntlet.files import sha256_file
from gauntlet.matrix import Clean, Runner, Selection, plan, run_cells
from gauntlet.model import Model
from gauntlet.registry import Registry, make_registry
from gauntlet.results import SCHEMA, CellResult, tidy_rows
from gauntlet.store import Store, fingerprint

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
# More classes than any classifier Gauntlet audits; past it a corrupt label is the likely
# cause, and a model sized to it would not fit in memory.
MAX_CLASSES = 100_000
_LIBRARIES = ("torch", "torchvision", "adversarial-robustness-toolbox", "numpy", "pandas",
              "scikit-learn", "pluggy", "jinja2", "matplotlib")


class AuditResult:
    """The outcome of an audit: results as plain data, a tidy table, and the report."""

    def __init__(self, result: dict[str, Any], registry: Registry | None = None) -> None:
        self.result = result
        self._registry = registry

    @property
    def cells(self) -> list[dict[str, Any]]:
        return self.result["cells"]

    @property
    def table(self) -> pd.DataFrame:
        """One row per cell x metric (see gauntlet.results.TABLE_COLUMNS)."""
        import pandas as pd

        from gauntlet.results import TABLE_COLUMNS

        return pd.DataFrame(tidy_rows(self.result), columns=list(TABLE_COLUMNS))

    def value(self, metric: str, attack: str, defense: str = "none",
              attack_point: str = "", defense_point: str = "") -> float | None:
        """One number from the matrix, or None if that cell has no such metric."""
        for c in self.cells:
            if (c["attack"], c["defense"], c["attack_point"], c["defense_point"]) == \
                    (attack, defense, attack_point, defense_point):
                return c["metrics"].get(metric, {}).get("value")
        return None

    def sections(self) -> list[dict[str, str]]:
        """Extra report sections from plugins; a plugin that raises is skipped."""
        if self._registry is None:
            return []
        sections: list[dict[str, str]] = []
        for impl in self._registry.pm.hook.report_sections.get_hookimpls():
            try:
                got = impl.function(result=self.result) or []
                sections += [{"title": str(s["title"]), "text": str(s["text"])} for s in got]
            except Exception:  # noqa: BLE001 - a report section never breaks the report
                log.warning("report section of plugin %s failed", impl.plugin_name,
                            exc_info=True)
        return sections

    def write_report(self, path: str | Path) -> Path:
        """Write report.html and, beside it, results.json and results.csv.

        :param path: the HTML file, or a folder to write report.html into.
        """
        from gauntlet.reports.html import write_report

        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            path = path / "report.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "results.json").write_text(
            json.dumps(self.result, indent=1, default=str), encoding="utf-8")
        self.table.to_csv(path.parent / "results.csv", index=False)
        return write_report(self.result, path, self.sections())


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_dataset(registry: Registry, spec: str, options: Mapping[str, Any]) -> Dataset:
    dataset = registry.pm.hook.load_dataset(spec=spec, options=dict(options))
    if dataset is None:
        raise DataError(f"no dataset loader understands {spec!r} "
                        "(try sklearn:digits, idx:DIR or npz:FILE)")
    if not isinstance(dataset, Dataset):
        raise DataError(f"the dataset loader for {spec!r} returned "
                        f"{type(dataset).__name__}, not a gauntlet.Dataset")
    check_values(dataset)
    return dataset


def check_values(dataset: Dataset) -> None:
    """Raise DataError if the inputs hold NaN or inf, the clip range is not finite, or
    the labels claim more than MAX_CLASSES classes: every attack and metric downstream
    would turn such data into plausible-looking numbers, or run out of memory."""
    import numpy as np

    for split in ("x_train", "x_test"):
        x = getattr(dataset, split)
        if not np.isfinite(x).all():
            bad = int(x.size - np.isfinite(x).sum())
            raise DataError(f"data {dataset.name!r}: {split} holds {bad} non-finite values "
                            "(NaN or inf)")
    if dataset.n_classes > MAX_CLASSES:
        raise DataError(f"data {dataset.name!r} has labels up to {dataset.n_classes - 1}; "
                        f"Gauntlet takes at most {MAX_CLASSES} classes")
    low, high = dataset.clip_values
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise DataError(f"data {dataset.name!r}: clip_values must be finite with low < high, "
                        f"got {dataset.clip_values}")


def load_model(registry: Registry, spec: str, options: Mapping[str, Any],
               dataset: Dataset, seed: int) -> Model:
    opts = {"seed": seed, **options, "dataset": dataset}
    model = registry.pm.hook.load_model(spec=spec, options=opts)
    if model is None:
        if ":" not in spec and not Path(spec).exists():
            raise ModelLoadError(f"model file not found: {spec}")
        raise ModelLoadError(
            f"no model loader understands {spec!r} (built-ins: builtin:cnn, builtin:mlp; "
            "files: TorchScript, torch.export .pt2, state_dict .pt or .safetensors + arch)")
    if not isinstance(model, Model):
        raise ModelLoadError(f"the model loader for {spec!r} returned "
                             f"{type(model).__name__}, not a gauntlet.Model")
    return model


def wrap_module(module: Any, dataset: Dataset, name: str = "in-memory module") -> Model:
    """A Model around an in-memory ``torch.nn.Module`` (no training recipe)."""
    import torch

    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.as_tensor(dataset.x_test[:2]))
    except Exception as exc:  # noqa: BLE001 - whatever a user's model raises, the data misfits
        raise DataError(f"data {dataset.name!r} shaped {dataset.input_shape} does not fit "
                        f"the model: {type(exc).__name__}: {exc}") from None
    return Model(module, input_shape=dataset.input_shape, n_classes=int(out.shape[-1]),
                 clip_values=dataset.clip_values, name=name,
                 source={"format": "in-memory torch.nn.Module"})


def check_fit(model: Model, dataset: Dataset) -> None:
    """Raise DataError unless the model accepts the data and outputs enough classes."""
    model.check_data(dataset)
    try:
        out = model.logits(dataset.x_test[:2])
    except Exception as exc:  # noqa: BLE001 - whatever a user's model raises, the data misfits
        raise DataError(f"data {dataset.name!r} shaped {dataset.input_shape} does not fit "
                        f"model {model.name!r}: {type(exc).__name__}: {exc}") from None
    if out.ndim != 2 or out.shape[1] != model.n_classes:
        raise DataError(f"model {model.name!r} returned shape {tuple(out.shape)} on 2 rows; "
                        f"expected (2, {model.n_classes})")


def _catalogue(registry: Registry) -> dict[str, Any]:
    def plug(e: Any) -> dict[str, str]:
        return {"plugin": e.plugin.name, "distribution": e.plugin.distribution,
                "version": e.plugin.version}

    attacks = {"clean": {"family": "baseline", "needs": "labels", "plugin": "core",
                         "distribution": "gauntlet", "version": "",
                         "description": Clean.description()}}
    attacks |= {n: {"family": e.cls.family.value, "needs": e.cls.needs.name.lower(),
                    "description": e.cls.description(), **plug(e)}
                for n, e in registry.entries["attack"].items()}
    defenses = {n: {"stage": e.cls.stage.value, "description": e.cls.description(),
                    "evaluation": e.cls.evaluation, "adaptive": bool(e.cls.adaptive),
                    **plug(e)}
                for n, e in registry.entries["defense"].items()}
    metrics = {n: {"title": e.cls.title or n, "higher_is_better": e.cls.higher_is_better,
                   "bounds": list(e.cls.bounds) if e.cls.bounds else None,
                   "description": e.cls.description(), **plug(e)}
               for n, e in registry.entries["metric"].items()}
    return {"attacks": attacks, "defenses": defenses, "metrics": metrics}


def audit(model: str | Model | Any = None, data: str | Dataset | None = None, *,
          attacks: Sequence[str | Selection] | Mapping[str, Mapping[str, Any]] | None = None,
          defenses: Sequence[str | Selection] | Mapping[str, Mapping[str, Any]] | None = None,
          seed: int | None = None, samples: int | None = None, timeout: float | None = None,
          out: str | Path | None = None,
          config: str | Path | config_mod.AuditConfig | None = None,
          registry: Registry | None = None, progress: bool = False, resume: bool = False,
          on_cell: Callable[[CellResult], None] | None = None) -> AuditResult:
    """Run an audit and return its result (the report is written only if ``out`` is set).

    :param model: a spec (``builtin:cnn``, a model file), a :class:`Model`, or an
        in-memory ``torch.nn.Module``.
    :param data: a spec (``sklearn:digits``, ``idx:DIR``, ``npz:FILE``) or a Dataset.
    :param attacks: names, or a mapping of name to parameter overrides; None = all.
    :param defenses: as ``attacks``; None = all.
    :param config: an audit TOML file or AuditConfig; explicit arguments override it.
    :param registry: the plugins to use (default: every installed plugin).
    :param timeout: seconds one cell may run before it becomes an error cell (0: none).
    :param out: if given, write report.html, results.json and results.csv there.
    :param resume: reuse the finished cells in ``out/cells.jsonl`` of an interrupted
        audit with the same config, model, data and plugin versions.
    """
    model = _check_arguments(model, data, config)
    cfg = config if isinstance(config, config_mod.AuditConfig) else (
        config_mod.load(config) if config is not None else config_mod.AuditConfig())
    cfg = config_mod.override(
        cfg, model=model if isinstance(model, str) else None,
        data=data if isinstance(data, str) else None, seed=seed, samples=samples,
        timeout=timeout, out=str(out) if out is not None else None)
    if attacks is not None:
        cfg.attacks = _as_selections(attacks)
    if defenses is not None:
        cfg.defenses = _as_selections(defenses)
    registry = registry or make_registry()
    registry.check_conflicts()
    if registry.broken:
        log.warning("broken plugins are installed; whatever they provide is missing from "
                    "this audit: %s", "; ".join(f"{p.label()}: {p.error}"
                                                for p in registry.broken))
    attack_sel = cfg.attacks if cfg.attacks is not None else \
        [Selection(n) for n in registry.entries["attack"]]
    defense_sel = cfg.defenses if cfg.defenses is not None else \
        [Selection(n) for n in registry.entries["defense"]]
    if not defense_sel:
        defense_sel = [Selection("none")]
    cells = plan(registry, defense_sel, attack_sel)  # validates names and parameters

    log.info("loading data %s", cfg.data if not isinstance(data, Dataset) else data.name)
    dataset = data if isinstance(data, Dataset) else \
        load_dataset(registry, cfg.data, cfg.data_options)
    log.info("loading model %s%s", cfg.model,
             " (trains now)" if str(cfg.model).startswith("builtin:") else "")
    if isinstance(model, Model):
        the_model = model
    elif model is not None and not isinstance(model, str):
        the_model = wrap_module(model, dataset)
    else:
        the_model = load_model(registry, cfg.model, cfg.model_options, dataset, cfg.seed)
    if isinstance(data, Dataset):
        check_values(data)
    check_fit(the_model, dataset)
    evaluated = dataset.subsample_test(cfg.samples, cfg.seed)

    result = _skeleton(cfg, registry, the_model, dataset, evaluated,
                       passed_model=model is not None and not isinstance(model, str),
                       passed_data=isinstance(data, Dataset))
    store = None
    if out is not None or config is not None:
        store = Store(Path(cfg.out), fingerprint(_identity(result)), resume=resume)
    runner = Runner(the_model, evaluated, registry.metrics.values(), cfg.seed, cfg.timeout)
    started = time.perf_counter()

    def record(cell: CellResult) -> None:
        if store is not None:
            store.append(cell)
        if on_cell is not None:
            on_cell(cell)

    log.info("running %d cells on %d test rows", len(cells), len(evaluated.x_test))
    cell_results = run_cells(runner, cells, progress=progress, on_result=record,
                             done=store.done if store is not None else None)
    result["cells"] = [c.to_dict() for c in cell_results]
    result["provenance"]["duration_s"] = round(time.perf_counter() - started, 2)
    audit_result = AuditResult(result, registry)
    if store is not None:
        audit_result.write_report(store.folder / "report.html")
    return audit_result


def weights_sha256(model: Model) -> str:
    """The SHA-256 of the model's parameters and buffers, in state_dict order."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in model.module.state_dict().items():
        t = tensor.detach().cpu().contiguous().flatten()
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        # Bytes via uint8, so dtypes numpy lacks (bfloat16) hash too.
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _identity(result: dict[str, Any]) -> dict[str, Any]:
    """What decides an audit's numbers: config (less where it is written), model, data,
    and the plugins with their versions."""
    prov = result["provenance"]
    config = {k: v for k, v in result["config"].items() if k not in ("out", "source", "title")}
    return {"config": config, "model": prov["model"], "data": prov["data"],
            "gauntlet": prov["gauntlet"], "libraries": prov["libraries"],
            "plugins": [(p["kind"], p["name"], p["distribution"], p["version"])
                        for p in prov["plugins"]]}


def _check_arguments(model: Any, data: Any, config: Any) -> Any:
    """Raise ConfigError for an argument of a type audit() cannot use; return ``model``
    with a path turned into a spec string."""
    import os

    import torch

    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if model is not None and not isinstance(model, (str, Model, torch.nn.Module)):
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


def _as_selections(value: Any) -> list[Selection]:
    if isinstance(value, str):
        raise ConfigError("attacks/defenses must be a list of names, not a string")
    if isinstance(value, Mapping):
        for name, params in value.items():
            if not isinstance(name, str) or not isinstance(params, (Mapping, type(None))):
                raise ConfigError(f"attacks/defenses as a mapping take names to parameter "
                                  f"mappings, got {name!r}: {params!r}")
        return [Selection(k, dict(v or {})) for k, v in value.items()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"attacks/defenses must be a list of names or a mapping of names to "
                          f"parameters, got {type(value).__name__}")
    for v in value:
        if not isinstance(v, (str, Selection)):
            raise ConfigError(f"attacks/defenses list names (strings), got {v!r}")
    return [v if isinstance(v, Selection) else Selection(v) for v in value]


def _skeleton(cfg: config_mod.AuditConfig, registry: Registry, model: Model,
              dataset: Dataset, evaluated: Dataset, *, passed_model: bool,
              passed_data: bool) -> dict[str, Any]:
    import gauntlet

    # A spec only when the audit loaded from it; an object passed in brings its own.
    model_spec = model.source.get("spec", "(in-memory)") if passed_model else cfg.model
    data_spec = dataset.source.get("spec", dataset.name) if passed_data else cfg.data
    model_info = {"name": model.name, "spec": model_spec, "input_shape": list(model.input_shape),
                  "n_classes": model.n_classes, "access": model.access.name.lower(),
                  "recipe": model.recipe.description if model.recipe else None,
                  **{k: v for k, v in model.source.items() if isinstance(v, (str, int, float))}}
    path = model.source.get("path")
    if path and "sha256" not in model_info and Path(path).is_file():
        model_info["sha256"] = sha256_file(path)
    # A black box (ONNX, skops) has no weights Gauntlet can see: its file's sha256 says it.
    model_info["weights_sha256"] = weights_sha256(model) if model.module.state_dict() \
        else None
    intake = model.source.get("intake")
    if not isinstance(intake, dict):  # nothing was taken in from a file: say why
        intake = {"safe": None, "format": model_info.get("format", ""),
                  "verdict": "not scanned: built-in model trained on the fly"
                  if str(model_spec).startswith("builtin:") else
                  "not scanned: an in-memory object passed through the Python API"}
    return {
        "schema": SCHEMA,
        "title": cfg.title,
        "provenance": {
            "gauntlet": gauntlet.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": _versions(), "seed": cfg.seed,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model_info,
            "data": {"name": dataset.name, "spec": data_spec, "n_train": len(dataset.x_train),
                     "n_test": len(dataset.x_test), "n_eval": len(evaluated.x_test),
                     "input_shape": list(dataset.input_shape), "n_classes": dataset.n_classes,
                     **{k: v for k, v in dataset.source.items() if isinstance(v, str)}},
            "plugins": registry.describe(),
            "broken_plugins": [p.to_dict() for p in registry.broken],
        },
        "intake": intake,
        "config": cfg.to_dict(),
        **_catalogue(registry),
        "cells": [],
    }
