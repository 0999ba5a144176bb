"""Audit configuration: parse TOML, merge CLI overrides, validate with clear errors.

An audit file looks like::

    title = "Digits audit"
    seed = 0
    out = "gauntlet-report"
    samples = 0              # test rows evaluated per cell (0 = all)
    timeout = 0              # seconds a cell may run before it is an error (0 = no limit)
    resamples = 0            # K: each metric's spread over K bootstrap resamples of its rows
    executor = "serial"      # or "process" (a pool of worker processes) or "ray"
    workers = 0              # process/ray workers (0 = one per core)
    cache = true             # the content cache (true: the user cache folder; or a folder)
    device = "auto"          # "cpu", "cuda", or "auto" (CUDA when torch sees it)

    [model]
    spec = "builtin:cnn"     # or a file: cnn.pt (+ arch = "pkg.mod:factory"), net.pt2 ...

    [data]
    spec = "sklearn:digits"  # or idx:DIR, npz:FILE

    [attacks.fgsm]           # one table per attack; a list value is a sweep
    eps = [0.05, 0.1, 0.2]

    [[attacks.backdoor]]     # [[...]]: several sweeps of one attack, run as their union
    kind = "noisy"
    patch = [1, 3, 6]
    [[attacks.backdoor]]
    kind = "mixture"
    fraction = [0.1, 0.5]

    [defenses.none]
    [defenses.input-noise]
    r = 0.1

    [gate]                   # checks a CI job fails on (gauntlet.gate): exit 1 if one fails
    checks = ['robust_accuracy.fgsm["eps=0.1"] >= 0.5', "clean_accuracy.clean >= 90%"]

``attacks`` and ``defenses`` may also be plain lists of names; left out, every
registered attack (or defense) runs with its defaults.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gauntlet import gate as gate_mod
from gauntlet.errors import ConfigError
from gauntlet.plan import Selection

log = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "builtin:cnn"
DEFAULT_DATA = "sklearn:digits"
DEFAULT_OUT = "gauntlet-report"
_TOP_KEYS = ("title", "seed", "out", "samples", "timeout", "resamples", "model", "data", "attacks",
             "defenses", "executor", "workers", "ray_address", "worker_memory", "cache",
             "device", "gate")
#: The keys of the ``[gate]`` table.
GATE_KEYS = ("checks",)
#: Where cells may run (:mod:`gauntlet.executor`).
EXECUTORS = ("serial", "process", "ray")
DEVICES = ("auto", "cpu", "cuda")
#: Config keys that say how and where an audit runs, never what it finds: left out of
#: what identifies an audit.
RUN_KEYS = ("executor", "workers", "ray_address", "worker_memory", "cache")
_FILE_SCHEMES = ("idx", "npz", "csv")
# Seeds feed numpy's SeedSequence (which refuses negatives) and torch.manual_seed; TOML
# integers stop at 2**63 - 1, so the CLI and the Python API stop there too.
MAX_SEED = 2**63 - 1
#: More resamples than this add run time, not precision, to a percentile interval.
MAX_RESAMPLES = 10_000


#: The embedded demo's model: the study's network (two hidden ReLU layers of 200) trained
#: 100 epochs on 200 digits, overfit the way deployed models are (92.7% test accuracy, every
#: training row fitted), so membership attacks and their defenses have something to find.
#: The digits CNN on all 1,347 training rows generalises too well for that (membership AUC
#: 0.52 against this model's 0.63 for the loss attack).
DEMO_MODEL_OPTIONS: dict[str, Any] = {"hidden": [200, 200], "epochs": 100}
DEMO_DATA_OPTIONS: dict[str, Any] = {"limit_train": 200}


def demo() -> AuditConfig:
    """``gauntlet audit`` with no config, model or data: the embedded demo (see
    :data:`DEMO_MODEL_OPTIONS`)."""
    return AuditConfig(model="builtin:mlp", model_options=dict(DEMO_MODEL_OPTIONS),
                       data=DEFAULT_DATA, data_options=dict(DEMO_DATA_OPTIONS),
                       title="Gauntlet demo: an overfit MLP on 200 digits")


@dataclasses.dataclass
class AuditConfig:
    """A validated audit description. ``attacks``/``defenses`` of None mean "all"."""

    model: str = DEFAULT_MODEL
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: str = DEFAULT_DATA
    data_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    attacks: list[Selection] | None = None
    defenses: list[Selection] | None = None
    seed: int = 0
    samples: int = 0
    timeout: float = 0.0
    #: K > 0: each metric is also computed on K bootstrap resamples of each cell's rows,
    #: for its spread (and for ``gauntlet diff``'s paired comparison); 0: not.
    resamples: int = 0
    out: str = DEFAULT_OUT
    title: str = "Gauntlet audit"
    source: str | None = None  # the config file, when there was one
    #: Where cells run: ``serial`` (here, one after another), ``process`` (a pool of
    #: worker processes: crash isolation, a timeout that stops native code) or ``ray``.
    executor: str = "serial"
    #: Workers of the process pool or Ray (0: one per core).
    workers: int = 0
    #: A Ray cluster's address ("": start a local one).
    ray_address: str = ""
    #: MiB of memory each process worker may allocate beyond what it starts with (0: no
    #: limit but the machine's).
    worker_memory: int = 0
    #: The content cache: True (the user cache folder), False (none) or a folder.
    cache: bool | str = True
    #: Where the model computes: ``auto`` (CUDA when torch sees it), ``cpu`` or ``cuda``.
    device: str = "auto"
    #: Gate checks (:mod:`gauntlet.gate`): they judge the results and never change them,
    #: so :meth:`to_dict` (what identifies an audit, its cache and replay keys) leaves them
    #: out; results.json records them, with their verdicts, under ``gate``.
    gate: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def sel(items: list[Selection] | None) -> Any:
            if items is None:
                return None
            out: dict[str, Any] = {}
            for s in items:  # a plugin selected several times: a list of its tables
                if s.name not in out:
                    out[s.name] = dict(s.params)
                elif isinstance(out[s.name], list):
                    out[s.name].append(dict(s.params))
                else:
                    out[s.name] = [out[s.name], dict(s.params)]
            return out

        return {"title": self.title, "seed": self.seed, "samples": self.samples,
                "timeout": self.timeout, "resamples": self.resamples, "out": self.out,
                "model": {"spec": self.model, **self.model_options},
                "data": {"spec": self.data, **self.data_options},
                "attacks": sel(self.attacks), "defenses": sel(self.defenses),
                "source": self.source, "executor": self.executor, "workers": self.workers,
                "ray_address": self.ray_address, "worker_memory": self.worker_memory,
                "cache": self.cache, "device": self.device}


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and kind is int:
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where} must be {name}, got {value!r}")
    return value


def _selections(value: Any, where: str) -> list[Selection]:
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.split(",")) if v]
    if isinstance(value, list):
        for v in value:
            _expect(v, str, f"each entry of {where}")
        return [Selection(v) for v in value]
    if isinstance(value, Mapping):
        out = []
        for name, params in value.items():
            # [[attacks.NAME]] tables (a list): several sweeps of one plugin, planned as
            # the union of their points.
            for each in params if isinstance(params, list) else [params]:
                _expect(each, Mapping, f"[{where}.{name}]")
                out.append(Selection(name, dict(each)))
        return out
    raise ConfigError(f"{where} must be a list of names or tables of parameters, got {value!r}")


def _resolve_spec(spec: str, base: Path | None) -> str:
    """Make a relative file path in a spec relative to the config file's folder."""
    if base is None:
        return spec
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in _FILE_SCHEMES:
        path = Path(rest)
        return f"{scheme}:{base / path}" if not path.is_absolute() and (base / path).exists() \
            else spec
    if sep and len(scheme) > 1:  # builtin:..., sklearn:...
        return spec
    path = Path(spec)
    return str(base / path) if not path.is_absolute() and (base / path).exists() else spec


def _section(raw: Mapping[str, Any], key: str, default: str,
             base: Path | None) -> tuple[str, dict[str, Any]]:
    table = raw.get(key, {})
    if isinstance(table, str):
        table = {"spec": table}
    _expect(table, Mapping, f"[{key}]")
    options = dict(table)
    spec = _expect(options.pop("spec", default), str, f"{key}.spec")
    if not spec.strip():  # before resolving: "" joined to the config's folder is the folder
        raise ConfigError(f"{key}.spec must not be empty")
    return _resolve_spec(spec, base), options


# The [model] and [data] options the built-in loaders read. A third-party loader may read
# others, so an unknown key is a warning naming it (a typo must not pass silently), not an
# error that would lock such loaders out.
MODEL_OPTIONS = ("arch", "epochs", "lr", "seed", "hidden", "input_shape", "n_classes",
                 "clip_values", "output", "output_name")
DATA_OPTIONS = ("split_seed", "test_size", "limit_train", "limit_test", "label", "categorical",
                "drop", "split")


def _warn_unread(options: Mapping[str, Any], known: Sequence[str], table: str) -> None:
    for key in options:
        if key not in known:
            log.warning("[%s] option %r is not read by any built-in loader (they read: %s); "
                        "a typo?", table, key, ", ".join(known))


def from_mapping(raw: Mapping[str, Any], base: Path | None = None,
                 source: str | None = None) -> AuditConfig:
    """Validate a parsed config mapping."""
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; known keys: "
                          + ", ".join(_TOP_KEYS))
    model, model_options = _section(raw, "model", DEFAULT_MODEL, base)
    data, data_options = _section(raw, "data", DEFAULT_DATA, base)
    _warn_unread(model_options, MODEL_OPTIONS, "model")
    _warn_unread(data_options, DATA_OPTIONS, "data")
    cfg = AuditConfig(
        model=model, model_options=model_options, data=data, data_options=data_options,
        attacks=_selections(raw["attacks"], "attacks") if "attacks" in raw else None,
        defenses=_selections(raw["defenses"], "defenses") if "defenses" in raw else None,
        seed=raw.get("seed", 0), samples=raw.get("samples", 0),
        timeout=raw.get("timeout", 0), resamples=raw.get("resamples", 0),
        out=raw.get("out", DEFAULT_OUT),
        title=raw.get("title", "Gauntlet audit"), source=source,
        executor=raw.get("executor", "serial"), workers=raw.get("workers", 0),
        ray_address=raw.get("ray_address", ""), worker_memory=raw.get("worker_memory", 0),
        cache=raw.get("cache", True), device=raw.get("device", "auto"),
        gate=_gate(raw.get("gate", {})),
    )
    return check(cfg)


def _gate(table: Any) -> list[str]:
    """The ``[gate]`` table's checks (syntax is checked by :func:`check`)."""
    _expect(table, Mapping, "[gate]")
    unknown = sorted(set(table) - set(GATE_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in [gate]; known keys: "
                          + ", ".join(GATE_KEYS))
    checks = _expect(table.get("checks", []), list, "gate.checks")
    for value in checks:
        _expect(value, str, "each entry of gate.checks")
    return list(checks)


def check(cfg: AuditConfig) -> AuditConfig:
    """Raise ConfigError unless every field of ``cfg`` has a usable type and value; the
    config file, the CLI flags and the Python API all pass through here."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ConfigError(f"seed must be an integer from 0 to 2**63 - 1, got {cfg.seed!r}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to 2**63 - 1, got {cfg.seed}")
    if isinstance(cfg.samples, bool) or not isinstance(cfg.samples, int) or cfg.samples < 0:
        raise ConfigError(f"samples must be an integer >= 0 (0 = all test rows), "
                          f"got {cfg.samples!r}")
    timeout = cfg.timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout < 0:
        raise ConfigError(f"timeout must be a number of seconds >= 0 (0 = no limit), "
                          f"got {timeout!r}")
    cfg.timeout = float(timeout)
    if isinstance(cfg.resamples, bool) or not isinstance(cfg.resamples, int) \
            or not (cfg.resamples == 0 or 2 <= cfg.resamples <= MAX_RESAMPLES):
        raise ConfigError(f"resamples must be 0 (none) or an integer from 2 to "
                          f"{MAX_RESAMPLES} (a spread needs two values; the founding study "
                          f"used 10), got {cfg.resamples!r}")
    for key in ("workers", "worker_memory"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key} must be an integer >= 0, got {value!r}")
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, "
                          f"got {cfg.executor!r}")
    if cfg.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    if not isinstance(cfg.cache, (bool, str)) or cfg.cache == "":
        raise ConfigError(f"cache must be true, false or a folder, got {cfg.cache!r}")
    for key in ("model", "data", "out", "title", "ray_address"):
        _expect(getattr(cfg, key), str, key)
    if cfg.ray_address and cfg.executor != "ray":  # a cluster named, then run serially
        raise ConfigError(f"ray_address (--ray-address) names a Ray cluster, but the "
                          f"executor is {cfg.executor!r}: add --executor ray (executor = "
                          f"\"ray\")")
    for key in ("model", "data", "out"):
        if not getattr(cfg, key).strip():
            raise ConfigError(f"{key} must not be empty")
    if not isinstance(cfg.gate, list):
        raise ConfigError(f"gate checks must be a list of strings, got {cfg.gate!r}")
    gate_mod.parse_all(cfg.gate)  # a malformed check: exit 2 before anything runs
    return cfg


def load(path: str | Path) -> AuditConfig:
    """Read and validate an audit TOML file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not an audit TOML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(f"{path}: malformed TOML: nested too deeply") from None
    return from_mapping(raw, base=path.resolve().parent, source=str(path))


def override(cfg: AuditConfig, *, model: str | None = None, data: str | None = None,
             attacks: str | Sequence[str] | None = None,
             defenses: str | Sequence[str] | None = None, out: str | None = None,
             seed: int | None = None, samples: int | None = None,
             timeout: float | None = None, resamples: int | None = None,
             gate: Sequence[str] | None = None, **run: Any) -> AuditConfig:
    """Apply CLI flags over a config. A named attack keeps the file's parameters for it;
    ``gate`` checks are added to the file's. ``run``: the :data:`RUN_KEYS` and
    ``device``, where not None."""
    def pick(current: list[Selection] | None, names: Any, where: str) -> list[Selection]:
        chosen = _selections(list(names) if not isinstance(names, str) else names, where)
        if not chosen:
            raise ConfigError(f"--{where} names nothing")
        known = {s.name: s for s in current or []}
        return [known.get(s.name, s) for s in chosen]

    changes: dict[str, Any] = {}
    # The file's [model] / [data] options (arch, epochs, limits) stay with a new spec.
    if model is not None:
        changes["model"] = model
    if data is not None:
        changes["data"] = data
    if attacks is not None:
        changes["attacks"] = pick(cfg.attacks, attacks, "attacks")
    if defenses is not None:
        changes["defenses"] = pick(cfg.defenses, defenses, "defenses")
    if out is not None:
        changes["out"] = out
    if seed is not None:
        changes["seed"] = seed
    if samples is not None:
        changes["samples"] = samples
    if timeout is not None:
        changes["timeout"] = timeout
    if resamples is not None:
        changes["resamples"] = resamples
    if gate:
        if isinstance(gate, str):
            raise ConfigError("gate must be a list of checks, not a string")
        changes["gate"] = [*cfg.gate, *gate]
    for key, value in run.items():
        if key not in RUN_KEYS + ("device",):
            raise TypeError(f"override() got an unexpected keyword argument {key!r}")
        if value is not None:
            changes[key] = value
    return check(dataclasses.replace(cfg, **changes))
