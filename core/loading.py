"""Load what an audit examines: the dataset and the model, through the loader hooks, and
check that they fit each other before any cell runs."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.dataset import Dataset
from gauntlet.errors import DataError, ModelLoadError
from gauntlet.model import Model

if TYPE_CHECKING:
    from gauntlet.config import AuditConfig
    from gauntlet.registry import Registry

log = logging.getLogger(__name__)
# More classes than any classifier Gauntlet audits; past it a corrupt label is the likely
# cause, and a model sized to it would not fit in memory.
MAX_CLASSES = 100_000


def load_dataset(registry: Registry, spec: str, options: Mapping[str, Any]) -> Dataset:
    """The Dataset the first loader that understands ``spec`` returns, checked."""
    dataset = registry.pm.hook.load_dataset(spec=spec, options=dict(options))
    if dataset is None:
        raise DataError(f"no dataset loader understands {spec!r} "
                        "(try sklearn:digits, idx:DIR, npz:FILE or csv:FILE)")
    if not isinstance(dataset, Dataset):
        raise DataError(f"the dataset loader for {spec!r} returned "
                        f"{type(dataset).__name__}, not a gauntlet.Dataset")
    check_values(dataset)
    return dataset


def check_values(dataset: Dataset) -> None:
    """Raise DataError if the inputs hold NaN or inf, the clip range is not finite, or
    the labels claim more than MAX_CLASSES classes: every attack and metric downstream
    would turn such data into plausible-looking numbers, or run out of memory."""
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
    """The Model the first loader that understands ``spec`` returns."""
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
    from gauntlet.model import measure

    model.check_data(dataset)
    try:
        # The core's own look at the model, under any access level, and not a query.
        out = measure(model, dataset.x_test[:2])
    except Exception as exc:  # noqa: BLE001 - whatever a user's model raises, the data misfits
        raise DataError(f"data {dataset.name!r} shaped {dataset.input_shape} does not fit "
                        f"model {model.name!r}: {type(exc).__name__}: {exc}") from None
    if out.ndim != 2 or out.shape[1] != model.n_classes:
        raise DataError(f"model {model.name!r} returned shape {tuple(out.shape)} on 2 rows; "
                        f"expected (2, {model.n_classes})")


@dataclasses.dataclass
class Inputs:
    """What an audit examines: the model, the dataset, and the test rows evaluated."""

    model: Model
    dataset: Dataset
    evaluated: Dataset


def load_inputs(registry: Registry, cfg: AuditConfig, *, model: Any = None,
                data: Dataset | None = None) -> Inputs:
    """Load (or take) the data and the model, check them, and pick the evaluated rows.

    :param model: a Model or torch module to use instead of ``cfg.model``.
    :param data: a Dataset to use instead of ``cfg.data``.
    """
    log.info("loading data %s", cfg.data if data is None else data.name)
    if data is None:
        dataset = load_dataset(registry, cfg.data, cfg.data_options)
    else:
        check_values(data)
        dataset = data
    if isinstance(model, Model):
        the_model = model
    elif model is not None:
        the_model = wrap_module(model, dataset)
    else:
        log.info("loading model %s%s", cfg.model,
                 " (trained now unless the content cache holds it)"
                 if cfg.model.startswith("builtin:") else "")
        the_model = load_model(registry, cfg.model, cfg.model_options, dataset, cfg.seed)
    check_fit(the_model, dataset)
    return Inputs(the_model, dataset, dataset.subsample_test(cfg.samples, cfg.seed))
