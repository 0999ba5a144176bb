"""What an audit records about itself: library versions, the model and data it examined,
the plugins it ran (the catalogue), and the fingerprint that says whether two runs are
the same audit (for resuming)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.files import sha256_file
from gauntlet.model import weights_sha256
from gauntlet.plan import Clean
from gauntlet.results import SCHEMA

if TYPE_CHECKING:
    from gauntlet.config import AuditConfig
    from gauntlet.dataset import Dataset
    from gauntlet.model import Model
    from gauntlet.registry import Registry

LIBRARIES = ("torch", "torchvision", "adversarial-robustness-toolbox", "numpy", "pandas",
             "scikit-learn", "pluggy", "jinja2", "matplotlib")


def now_iso() -> str:
    """This moment in UTC, to the second (provenance's ``started``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """The installed version of each library whose behaviour decides an audit's numbers."""
    import importlib.metadata as md

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _parameters(cls: Any) -> list[dict[str, Any]]:
    return [p.describe() for p in cls.parameters().values()]


def catalogue(registry: Registry) -> dict[str, Any]:
    """Every attack (the clean baseline included), defense and metric the registry holds,
    with its metadata and the plugin that registered it."""
    def plug(e: Any) -> dict[str, str]:
        return {"plugin": e.plugin.name, "distribution": e.plugin.distribution,
                "version": e.plugin.version}

    attacks = {"clean": {"family": "baseline", "needs": "labels",
                         "description": Clean.description(), "parameters": [],
                         "plugin": "core", "distribution": "gauntlet", "version": ""}}
    attacks |= {n: {"family": e.cls.family.value, "needs": e.cls.needs.name.lower(),
                    "description": e.cls.description(), "parameters": _parameters(e.cls),
                    **plug(e)}
                for n, e in registry.entries["attack"].items()}
    defenses = {n: {"stage": e.cls.stage.value, "description": e.cls.description(),
                    "evaluation": e.cls.evaluation, "adaptive": bool(e.cls.adaptive),
                    "parameters": _parameters(e.cls), **plug(e)}
                for n, e in registry.entries["defense"].items()}
    metrics = {n: {"title": e.cls.title or n, "higher_is_better": e.cls.higher_is_better,
                   "bounds": list(e.cls.bounds) if e.cls.bounds else None,
                   "format": e.cls.format, "description": e.cls.description(), **plug(e)}
               for n, e in registry.entries["metric"].items()}
    return {"attacks": attacks, "defenses": defenses, "metrics": metrics}


def _model_info(cfg: AuditConfig, model: Model, passed: bool) -> dict[str, Any]:
    # A spec only when the audit loaded from it; an object passed in brings its own.
    spec = model.source.get("spec", "(in-memory)") if passed else cfg.model
    info = {"name": model.name, "spec": spec, "input_shape": list(model.input_shape),
            "n_classes": model.n_classes, "access": model.access.name.lower(),
            "recipe": model.recipe.description if model.recipe else None,
            **{k: v for k, v in model.source.items() if isinstance(v, (str, int, float))}}
    path = model.source.get("path")
    if path and "sha256" not in info and Path(path).is_file():
        info["sha256"] = sha256_file(path)
    # A black box (ONNX, skops) has no weights Gauntlet can see: its file's sha256 says it.
    info["weights_sha256"] = weights_sha256(model)
    return info


def skeleton(cfg: AuditConfig, registry: Registry, model: Model, dataset: Dataset,
             evaluated: Dataset, *, passed_model: bool, passed_data: bool) -> dict[str, Any]:
    """A results.json object with everything but the cells (and the duration)."""
    import gauntlet

    model_info = _model_info(cfg, model, passed_model)
    data_spec = dataset.source.get("spec", dataset.name) if passed_data else cfg.data
    intake = model.source.get("intake")
    if not isinstance(intake, dict):  # nothing was taken in from a file: say why
        intake = {"safe": None, "format": model_info.get("format", ""),
                  "verdict": "not scanned: built-in model trained on the fly"
                  if str(model_info["spec"]).startswith("builtin:") else
                  "not scanned: an in-memory object passed through the Python API"}
    return {
        "schema": SCHEMA,
        "title": cfg.title,
        "provenance": {
            "gauntlet": gauntlet.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": versions(), "seed": cfg.seed,
            "started": now_iso(),
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
        **catalogue(registry),
        "cells": [],
    }


def identity(result: dict[str, Any]) -> dict[str, Any]:
    """What decides an audit's numbers: config (less where it is written), model, data,
    and the plugins with their versions."""
    prov = result["provenance"]
    from gauntlet.config import RUN_KEYS

    skip = ("out", "source", "title", *RUN_KEYS)
    config = {k: v for k, v in result["config"].items() if k not in skip}
    return {"config": config, "model": prov["model"], "data": prov["data"],
            "gauntlet": prov["gauntlet"], "libraries": prov["libraries"],
            "plugins": [(p["kind"], p["name"], p["distribution"], p["version"])
                        for p in prov["plugins"]]}


def fingerprint(result: dict[str, Any]) -> str:
    """A stable digest of :func:`identity`: equal for two runs of the same audit."""
    text = json.dumps(identity(result), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
