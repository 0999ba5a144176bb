"""An unchanged audit, replayed: the whole result of an audit remembered under what
decides it, so running it again loads no model, no data and no plugin.

The per-cell cache (:mod:`gauntlet.cache`) already runs no cell twice, but finding the
cells' keys needs the model's weights hash, the data's hash and every plugin's class,
which means importing torch, the plugins and the data loaders: 5 of the demo's 8 s
re-run. This module keys the *audit* on what can be read without importing any of that:

- Gauntlet's version and every file of its packages (core, plugins, report templates);
- each installed plugin: its entry point, distribution, version and the files of its
  package, found without importing it;
- the versions of the libraries that decide numbers (and the optional ones that decide
  whether a plugin applies: TenSEAL, ONNX Runtime, skops, opacus);
- the audit's config (less where it is written and how it is executed) and the device;
- the content of every file or folder the config names (the model file, the data, an
  architecture module), and ``GAUNTLET_*`` variables.

When anything cannot be hashed that way (an in-memory model or dataset, a plugin that a
custom import hook provides, a data folder over :data:`MAX_BYTES`, a machine that may have
a GPU under ``device = "auto"``), there is no key and the audit takes the ordinary path,
which still reuses every cell. A remembered audit points at its cells in the cell cache
(their per-row results stay there) and is kept only when every cell finished ``ok`` or
``not_applicable`` and no plugin was broken.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.cache import LAYOUT, Cache, digest

if TYPE_CHECKING:
    from gauntlet.config import AuditConfig
    from gauntlet.results import AuditResult

#: The cache folder's sub-folder for remembered audits.
KIND = "audits"
#: A file or folder the config names is hashed only up to this size (else: no key).
MAX_BYTES = 1 << 30
#: Optional libraries whose presence decides whether a built-in plugin applies.
OPTIONAL = ("tenseal", "onnx", "onnxruntime", "skops", "opacus", "ray", "threadpoolctl")
#: Suffixes of a package's files that can change what it does.
SOURCE_SUFFIXES = (".py", ".html", ".css", ".js", ".j2", ".json", ".toml", ".txt", ".svg")


class NoKey(Exception):
    """Something the audit depends on cannot be hashed without importing it."""


def _tree_digest(path: Path, suffixes: tuple[str, ...] | None = None) -> str:
    """SHA-256 over a file, or a folder's files (relative names and bytes, sorted)."""
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
        root = path.parent
    else:
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and "__pycache__" not in p.parts
                       and (suffixes is None or p.suffix in suffixes))
    total = 0
    for f in files:
        total += f.stat().st_size
        if total > MAX_BYTES:
            raise NoKey(f"{path} holds more than {MAX_BYTES >> 20} MiB")
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _module_origin(name: str) -> Path:
    """The file or package folder of module ``name``, found without running any of it
    (``importlib.util.find_spec`` would import its parent packages)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None):
        origin = Path(sys.modules[name].__file__)  # type: ignore[arg-type]
        return origin.parent if origin.name == "__init__.py" else origin
    path = None
    spec = None
    parts = name.split(".")
    for i in range(len(parts)):
        full = ".".join(parts[:i + 1])
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            try:
                spec = find(full, path)
            except Exception:  # noqa: BLE001 - a finder that fails: treat as not found
                spec = None
            if spec is not None:
                break
        if spec is None:
            raise NoKey(f"module {full} cannot be located without importing it")
        path = spec.submodule_search_locations
    assert spec is not None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if not spec.origin or not Path(spec.origin).is_file():
        raise NoKey(f"module {name} has no source file")
    return Path(spec.origin)


@functools.lru_cache(maxsize=None)
def _module_digest(name: str) -> str:
    """The digest of the top-level package (or lone module) that holds module ``name``."""
    origin = _module_origin(name.split(".")[0])
    return _tree_digest(origin, SOURCE_SUFFIXES)


def _own_digest() -> str:
    """Every file of Gauntlet's packages: the core, the built-in plugins, the report."""
    import gauntlet
    import gauntlet.plugins
    import gauntlet.reports

    h = hashlib.sha256()
    for package in (gauntlet, gauntlet.plugins, gauntlet.reports):
        for folder in package.__path__:
            h.update(_tree_digest(Path(folder), SOURCE_SUFFIXES).encode())
    return h.hexdigest()


def _plugins() -> list[tuple[str, str, str, str, str]]:
    """Each entry point of the ``gauntlet`` group: name, module, distribution, version
    and (for a plugin outside Gauntlet, whose files :func:`_own_digest` does not cover)
    the digest of its package."""
    from gauntlet.registry import GROUP

    out = []
    for ep in md.entry_points(group=GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
        version = ep.dist.version if ep.dist is not None else ""
        module = ep.value.split(":")[0].strip()
        own = module == "gauntlet" or module.startswith("gauntlet.")
        out.append((ep.name, ep.value, dist, version, "" if own else _module_digest(module)))
    return sorted(out)


def _libraries() -> dict[str, str]:
    from gauntlet.provenance import LIBRARIES

    out = {}
    for name in (*LIBRARIES, *OPTIONAL):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = ""
    return out


def _named_inputs(values: Mapping[str, Any]) -> dict[str, str]:
    """The digest of every file or folder, and every module (``pkg.mod:factory``), that a
    config section's strings name; other strings are part of the config already."""
    out = {}
    for key, value in values.items():
        if not isinstance(value, str) or not value:
            continue
        candidates = [value]
        if ":" in value:
            candidates.append(value.split(":", 1)[1])
        for candidate in candidates:
            path = Path(candidate).expanduser()
            try:
                exists = path.exists()
            except OSError:
                exists = False
            if exists:
                out[key] = _tree_digest(path.resolve())
                break
        else:
            head = value.split(":", 1)[0]
            # An architecture factory ("pkg.mod:factory"); "builtin:cnn" is a scheme.
            if key == "arch" or (":" in value and "." in head and
                                 head.replace(".", "").replace("_", "").isalnum()):
                out[key] = _module_digest(head)
    return out


def _device(name: str | None) -> str:
    """The device without importing torch: ``cpu``, or NoKey where only torch can say."""
    name = name or "auto"
    if name == "cpu":
        return "cpu"
    if name == "auto" and not any(Path("/dev").glob("nvidia*")) \
            and not os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return "cpu"
    raise NoKey("the device is decided by torch")


def audit_key(cfg: AuditConfig) -> str | None:
    """The key of this audit (see the module docstring), or None where it has none."""
    import gauntlet
    from gauntlet.config import RUN_KEYS

    try:
        config = {k: v for k, v in cfg.to_dict().items()
                  if k not in ("out", "device", *RUN_KEYS)}
        inputs = {"model": _named_inputs(config["model"]),
                  "data": _named_inputs(config["data"])}
        environment = sorted((k, v) for k, v in os.environ.items()
                             if k.startswith("GAUNTLET_") and k != "GAUNTLET_CACHE_DIR")
        return digest({"layout": LAYOUT, "gauntlet": gauntlet.__version__,
                       "python": platform.python_version(), "machine": platform.machine(),
                       "own": _own_digest(), "plugins": _plugins(),
                       "libraries": _libraries(), "config": config, "inputs": inputs,
                       "device": _device(cfg.device), "environment": environment})
    except (NoKey, OSError) as exc:
        import logging

        logging.getLogger(__name__).debug("no replay key for this audit: %s", exc)
        return None


def remember(cache: Cache, key: str, result: AuditResult, cell_keys: Mapping[str, str],
             sections: list[dict[str, str]]) -> bool:
    """Keep a finished audit under ``key`` when it can be replayed: every cell stored
    (``ok`` or ``not_applicable``) and no plugin broken. True when kept."""
    from gauntlet.cache import REUSABLE

    cells = result.result["cells"]
    stored = [c for c in cells if not c.get("derived")]
    if result.result["provenance"].get("broken_plugins") or \
            any(c["status"] not in REUSABLE or c["id"] not in cell_keys for c in stored):
        return False
    return cache.put_json(KIND, key, {"result": result.result, "sections": sections,
                                      "cells": {c["id"]: cell_keys[c["id"]] for c in stored}})


def replay(cache: Cache, key: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]],
                                              list[dict[str, str]]] | None:
    """The remembered audit under ``key``: its results.json object, its cells' full
    records (rows included) by id, and its plugins' report sections; None when it is
    not there or one of its cells has left the cache."""
    memo = cache.get_json(KIND, key)
    if not isinstance(memo, dict) or not isinstance(memo.get("cells"), dict):
        return None
    records = {}
    for cell_id, cell_key in memo["cells"].items():
        record = cache.get_cell(cell_key)
        if record is None or record.get("id") != cell_id:
            return None
        records[cell_id] = record
    return memo["result"], records, list(memo.get("sections") or [])

