"""Model loaders: built-in trainable networks, and model files loaded without running code.

``builtin:cnn`` is the default audit's model: a small CNN sized to the dataset's image
shape, trained on the fly on the training split, with a recipe so poisoning can re-train
it. ``builtin:mlp`` does the same for tabular data.

A model file must never be a way to run code on the auditor's machine. The format is
sniffed from the file's bytes (the extension only decides whether a missing or unknown
file is ours), the bytes are read once, hashed, and loaded from memory:

- weights: a ``torch.save`` state_dict (``weights_only=True``, never anything else) or a
  ``.safetensors`` file, plus ``arch = "package.module:factory"`` from the config, never
  from the file. The factory gets ``input_shape`` and/or ``n_classes`` as keyword
  arguments when its signature names them (or takes ``**kwargs``), nothing otherwise.
  These models carry a training recipe, so poisoning can re-train them.
- ``torch.export`` programs (``.pt2``). ``torch.export.load`` is not safe on untrusted
  files (it unpickles, evals symbolic-shape strings with sympy and execs guard code), so
  the archive is first checked against an allow-list, its graph's operators against the
  same operator allow-list as TorchScript's
  (:func:`gauntlet.plugins._torch_export.check_export_program`). Export the model in eval mode: the
  program keeps the train/eval behaviour it was exported with.
- TorchScript archives. ``torch.jit.load`` runs code: it compiles the archive's
  serialized code, unpickles ``data.pkl`` and ``constants.pkl`` with TorchScript's
  restricted unpickler, runs the scripted ``__setstate__`` of every object whose class
  defines one and evaluates default arguments, and trusts the storage sizes its pickles
  declare; the loaded program can then call any registered operator (e.g.
  ``aten::from_file``, which reads or overwrites files). So the archive's code and pickles
  are first read without loading them: every operator any of its code can reach must be
  on Gauntlet's allow-list, and every tensor must fit in the bytes stored for it
  (:func:`gauntlet.plugins._torchscript.check_torchscript`).
- Anything that needs unpickling (``torch.save(model)``) is refused, with how to re-save.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import io
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gauntlet import (
    ConfigError,
    DataError,
    Dataset,
    Model,
    ModelLoadError,
    Recipe,
    ScanReport,
    hookimpl,
    read_model_file,
    train_classifier,
)

_SUFFIXES = {".pt", ".pth", ".pt2", ".ts", ".torchscript", ".bin", ".ckpt", ".safetensors"}

def build_cnn(input_shape: tuple[int, ...], n_classes: int) -> Any:
    """Two 3x3 conv layers, a 2x2 max-pool, one hidden dense layer."""
    import torch.nn as nn

    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 2) * (w // 2), 64), nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def build_mlp(input_shape: tuple[int, ...], n_classes: int,
              hidden: tuple[int, ...] = (64,)) -> Any:
    """Fully connected ReLU layers of ``hidden`` units (one of 64 by default)."""
    import math

    import torch.nn as nn

    widths = [math.prod(input_shape), *hidden]
    layers: list[Any] = [nn.Flatten()]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], n_classes))


def _hidden(options: Mapping[str, Any]) -> tuple[int, ...]:
    """``[model] hidden`` (builtin:mlp's layer widths), checked."""
    value = options.get("hidden", [64])
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ConfigError(f"[model] hidden must be a list of layer widths (positive "
                          f"integers), e.g. [200, 200]; got {value!r}")
    return tuple(value)


def _builtin(kind: str, options: Mapping[str, Any]) -> Model:
    import torch

    dataset = options.get("dataset")
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"builtin:{kind} trains on the audit's data, and none was given")
    shape, n = dataset.input_shape, dataset.n_classes
    if kind == "cnn" and len(shape) != 3:
        raise ConfigError(f"builtin:cnn needs image data shaped (C, H, W), got {shape}; "
                          "use builtin:mlp for tabular data")
    if kind == "cnn":
        if "hidden" in options:
            raise ConfigError("[model] hidden sets builtin:mlp's layers; builtin:cnn has "
                              "fixed ones")
        build: Callable[[tuple[int, ...], int], Any] = build_cnn
        what = "cnn"
    else:
        hidden = _hidden(options)
        build = functools.partial(build_mlp, hidden=hidden)
        what = f"mlp {'-'.join(map(str, hidden))}"
    epochs, lr, seed = _training(options)
    # Minibatches of 128 train the digits CNN 2.5x faster than 64 (per-step overhead
    # dominates a model this small) to the same test accuracy; tabular sets of a few
    # hundred rows keep 64, or an epoch would be a step or two.
    batch = 128 if kind == "cnn" else 64

    def make() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build(shape, n)

    def fit(module: torch.nn.Module, x: Any, y: Any, fit_seed: int) -> None:
        train_classifier(module, x, y, fit_seed, epochs=epochs, lr=lr, batch_size=batch)

    recipe = Recipe(make, fit, f"{what} trained {epochs} epochs, Adam lr={lr}, batch {batch}",
                    options={"epochs": epochs, "lr": lr, "batch_size": batch})
    module = recipe.train(dataset.x_train, dataset.y_train, seed)
    return Model(module, input_shape=shape, n_classes=n, clip_values=dataset.clip_values,
                 recipe=recipe, name=f"builtin:{kind}",
                 source={"spec": f"builtin:{kind}", "format": "built-in, trained on the fly",
                         "recipe": recipe.description})


@hookimpl(trylast=True)
def load_model(spec: str, options: Mapping[str, Any]) -> Model | None:
    if spec in ("builtin:cnn", "builtin:mlp"):
        return _builtin(spec.split(":", 1)[1], options)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_file(spec, path, options)
    if path.suffix.lower() in _SUFFIXES:
        raise ModelLoadError(f"model file not found: {path}")
    return None


# -- model files ------------------------------------------------------------------------
def _load_file(spec: str, path: Path, options: Mapping[str, Any]) -> Model | None:
    from gauntlet.plugins.scanners import scan_torch, sniff

    data = read_model_file(path)
    fmt = sniff(data)
    if fmt is None:
        if path.suffix.lower() in _SUFFIXES:
            raise ModelLoadError(f"{path} is not a model format Gauntlet reads (TorchScript, "
                                 "torch.export .pt2, state_dict .pt, .safetensors)")
        return None  # not ours: another plugin may know it
    # The intake scan decides before anything from the file runs; the loaders below only
    # ever see files it passed.
    report, weights = scan_torch(path, data, fmt)
    if not report.safe:
        raise report.error()
    source = {"spec": spec, "path": str(path.resolve()), "format": fmt,
              "sha256": report.sha256, "intake": report.to_dict()}
    recipe = None
    if fmt == "torchscript":
        module = _load_torchscript(path, data, report)
    elif fmt == "torch.export":
        from gauntlet.plugins._torch_export import load_export

        module = load_export(path, data, report)
    else:
        if fmt == "safetensors":
            weights = _read_safetensors(path, data)
        else:
            fmt = source["format"] = "state_dict"
        arch = options.get("arch")
        if not arch:
            raise ModelLoadError(f"{path} holds weights only ({fmt}); give the architecture "
                                 "as arch = 'package.module:factory' under [model]")
        factory = _import_arch(str(arch))
        module, recipe = _from_weights(path, weights, str(arch), factory, options)
        source["arch"] = str(arch)
    return _wrap(module, options.get("dataset"), name=path.name, source=source, recipe=recipe,
                 options=options)


def _read_safetensors(path: Path, data: bytes) -> dict[str, Any]:
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from None


def _import_arch(arch: str) -> Callable[..., Any]:
    mod_name, sep, attr = arch.partition(":")
    if not sep or not mod_name or not attr:
        raise ModelLoadError(f"arch must look like 'package.module:factory', got {arch!r}")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import arch {arch!r}: {exc}") from None
    if not callable(obj):
        raise ModelLoadError(f"arch {arch!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _factory_kwargs(factory: Callable[..., Any], label: str, shape: tuple[int, ...] | None,
                    n_classes: int | None) -> dict[str, Any]:
    """The keywords ``factory`` takes among input_shape / n_classes (and nothing else)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    for key, value in (("input_shape", shape), ("n_classes", n_classes)):
        param = params.get(key)
        if value is not None and (param is not None or var_kw):
            kwargs[key] = value
        elif value is None and param is not None and param.default is param.empty:
            raise ModelLoadError(f"arch {label} needs {key}; give {key} under [model]")
    required = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise ModelLoadError(f"arch {label} requires {', '.join(required)}; Gauntlet can only "
                             "pass input_shape and n_classes (as keywords)")
    return kwargs


def _build(factory: Callable[..., Any], label: str, kwargs: Mapping[str, Any]) -> Any:
    import torch

    try:
        module = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory; report, don't crash
        raise ModelLoadError(f"arch {label} failed to build the model: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"arch {label} returned {type(module).__name__}, not a "
                             "torch.nn.Module")
    return module


def _number(options: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    """``options[key]`` as ``kind``, or ConfigError (these come from the user's [model])."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)) \
            or not math.isfinite(value):
        what = "an integer" if kind is int else "a finite number"
        raise ConfigError(f"[model] {key} must be {what}, got {value!r}")
    return kind(value)


def _training(options: Mapping[str, Any]) -> tuple[int, float, int]:
    """Epochs, learning rate and seed of a training recipe, checked."""
    return (_number(options, "epochs", 20, int), _number(options, "lr", 3e-3, float),
            _number(options, "seed", 0, int))


def _shapes(options: Mapping[str, Any]) -> tuple[tuple[int, ...] | None, int | None]:
    dataset = options.get("dataset")
    shape = options.get("input_shape")
    n = options.get("n_classes")
    if shape is not None and (not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ConfigError(f"[model] input_shape must be a list of positive integers, "
                          f"got {shape!r}")
    if n is not None:
        n = _number(options, "n_classes", None, int)
    if shape is None and isinstance(dataset, Dataset):
        shape = dataset.input_shape
    if n is None and isinstance(dataset, Dataset):
        n = dataset.n_classes
    return (tuple(int(d) for d in shape) if shape is not None else None,
            int(n) if n is not None else None)


def _from_weights(path: Path, weights: dict[str, Any], arch: str, factory: Callable[..., Any],
                  options: Mapping[str, Any]) -> tuple[Any, Recipe]:
    shape, n = _shapes(options)
    kwargs = _factory_kwargs(factory, arch, shape, n)
    module = _build(factory, arch, kwargs)
    expected = module.state_dict()
    if all(k.startswith("module.") for k in weights) and not any(
            k.startswith("module.") for k in expected):  # saved from DataParallel
        weights = {k[len("module."):]: v for k, v in weights.items()}
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(items[:5])}" + (" ..." if len(items) > 5 else "")
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape file vs arch", wrong)) if items]
        raise ModelLoadError(f"weights in {path} do not match arch {arch}: {'; '.join(parts)}")
    module.load_state_dict(weights)

    epochs, lr, seed = _training(options)
    recipe = _recipe(factory, arch, kwargs, epochs=epochs, lr=lr, seed=seed)
    return module, recipe


def _recipe(factory: Callable[..., Any], label: str, kwargs: Mapping[str, Any], *,
            epochs: int, lr: float, seed: int) -> Recipe:
    import torch

    def make() -> torch.nn.Module:
        torch.manual_seed(seed)
        return _build(factory, label, kwargs)  # type: ignore[no-any-return]

    def fit(m: torch.nn.Module, x: Any, y: Any, fit_seed: int) -> None:
        train_classifier(m, x, y, fit_seed, epochs=epochs, lr=lr)

    # Re-training uses Gauntlet's loop, not the model's original one; the description says so.
    return Recipe(make, fit, f"{label} trained by Gauntlet: {epochs} epochs, Adam lr={lr}",
                  options={"epochs": epochs, "lr": lr})


def _load_torchscript(path: Path, data: bytes, report: ScanReport) -> Any:
    import torch

    # torch.jit.load itself runs the archive's __setstate__ code: only bytes that a passing
    # scan read are loaded (the scan is the check; it is not run twice).
    report.require_passed(data)
    with warnings.catch_warnings():
        # torch 2.15 deprecates TorchScript; loading existing archives is still the point.
        warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
        try:
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{path} is not a loadable TorchScript archive: {exc}") from None


# -- in-memory modules ------------------------------------------------------------------
def _wrap(module: Any, dataset: Any, *, name: str, source: dict[str, Any],
          recipe: Recipe | None, options: Mapping[str, Any]) -> Model:
    import torch

    dataset = dataset if isinstance(dataset, Dataset) else None
    shape, _ = _shapes({**options, "dataset": dataset})
    if shape is None:
        raise ModelLoadError(f"cannot tell what {name} takes as input: give input_shape under "
                             "[model], or data")
    if dataset is not None and shape != dataset.input_shape:
        raise DataError(f"data {dataset.name!r} shaped {dataset.input_shape} does not fit model "
                        f"{name!r}, which takes input_shape {shape}")
    x = (torch.as_tensor(dataset.x_test[:2] if len(dataset.x_test) else dataset.x_train[:2])
         if dataset is not None else torch.zeros((2, *shape)))
    module.eval()
    try:
        with torch.no_grad():
            out = module(x.float())
    except Exception as exc:  # noqa: BLE001 - any failure here means the shapes disagree
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = (f"data {dataset.name!r} shaped {tuple(x.shape[1:])}" if dataset is not None
                else f"input_shape {shape}")
        raise DataError(f"{what} does not fit model {name!r}: {first}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(f"model {name!r} returned {got} for 2 inputs; Gauntlet needs "
                             "logits shaped (N, n_classes)")
    n = int(out.shape[1])
    if options.get("n_classes") is not None and int(options["n_classes"]) != n:
        raise ModelLoadError(f"model {name!r} outputs {n} classes, but n_classes = "
                             f"{options['n_classes']} was given")
    clip = dataset.clip_values if dataset is not None else tuple(options.get("clip_values",
                                                                             (0.0, 1.0)))
    model = Model(module, input_shape=shape, n_classes=n, clip_values=clip, recipe=recipe,
                  name=name, source=source)
    if dataset is not None:
        model.check_data(dataset)
    return model


def model_from_module(module: Any, dataset: Dataset | None = None, *, name: str = "model",
                      factory: Callable[..., Any] | None = None,
                      input_shape: tuple[int, ...] | None = None, epochs: int = 20,
                      lr: float = 3e-3, seed: int = 0) -> Model:
    """Wrap an in-memory ``torch.nn.Module`` (the Python API's path) as a Model.

    ``n_classes`` comes from a forward pass on two rows of ``dataset`` (or zeros shaped
    ``input_shape``). ``factory`` builds a fresh, untrained copy of the architecture (same
    calling convention as ``arch``: ``input_shape`` / ``n_classes`` keywords if it names
    them); with it the Model gets a recipe, so poisoning can re-train it.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    options: dict[str, Any] = {"input_shape": input_shape} if input_shape else {}
    recipe = None
    if factory is not None:
        shape, n = _shapes({**options, "dataset": dataset})
        label = getattr(factory, "__qualname__", repr(factory))
        recipe = _recipe(factory, label, _factory_kwargs(factory, label, shape, n),
                         epochs=epochs, lr=lr, seed=seed)
    source = {"spec": name, "format": f"in-memory {type(module).__name__}"}
    return _wrap(module, dataset, name=name, source=source, recipe=recipe, options=options)
