"""The content cache: finished cells and models trained on the fly, stored by what
decides them, so an unchanged re-run computes nothing twice.

A cell is stored under a key (:func:`cell_key`) made of the audit's *base* (Gauntlet's
version and the hash of its core's source, the libraries that decide numbers, the
model's identity and weights hash, the hash of the evaluated data, the seed, the device,
and every metric's plugin, version and source hash) and the cell's own points: the
attack's and the defense's name, parameters, plugin distribution, version and the hash
of the module that defines each. Adding an attack to a finished audit therefore runs only
its cells, and changing one plugin's version, code or one parameter re-runs exactly the
cells that plugin takes part in. Only ``ok`` and ``not_applicable`` cells are stored: an
error or a timeout may be passing (a busy machine, a flaky driver) and is always run
again.

Modules trained by a :class:`gauntlet.Recipe` (the built-in model, poisoned, shadow,
adversarially trained and DP-SGD models) are stored as a ``state_dict`` under a key made
of the recipe's description, options and fit, the architecture (its parameter names and
shapes), the training data's hash and the seed (:func:`train_cached`), and read back
with ``torch.load(weights_only=True)``: the cache is a folder of data, never of code.

Every file is written to a temporary name and renamed into place (atomic on POSIX), so
two workers or two audits writing the same entry never leave a torn one; a training is
done under an exclusive lock on its key, so the second worker that wants the same shadow
model waits for it instead of training it again.

The folder is ``$GAUNTLET_CACHE_DIR``, else ``$XDG_CACHE_HOME/gauntlet``, else
``~/.cache/gauntlet``; ``gauntlet audit --cache DIR`` picks another and ``--no-cache``
none. Deleting the folder clears it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from gauntlet.dataset import Dataset
    from gauntlet.plan import Cell
    from gauntlet.registry import Registry

log = logging.getLogger(__name__)

#: Bumped when what is stored changes shape; part of every key.
LAYOUT = 1
#: Cell statuses worth keeping: an error or a timeout is always run again.
REUSABLE = ("ok", "not_applicable")


def default_dir() -> Path:
    """Where the cache lives unless told otherwise (see the module docstring)."""
    explicit = os.environ.get("GAUNTLET_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gauntlet"


def digest(value: Any) -> str:
    """A SHA-256 of ``value`` as canonical JSON."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    """A SHA-256 of arrays' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.data)
    return h.hexdigest()


def dataset_digest(dataset: Dataset) -> str:
    """What a cell's numbers read of the data: both splits, the classes and the range."""
    return digest({"arrays": array_digest(dataset.x_train, dataset.y_train, dataset.x_test,
                                          dataset.y_test),
                   "n_classes": dataset.n_classes, "clip": list(dataset.clip_values),
                   "shape": list(dataset.input_shape)})


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def source_digest(obj: Any) -> str:
    """The SHA-256 of the file that defines ``obj`` (a class or module): a plugin edited
    without a version bump still invalidates its cells. "" when it has no file."""
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return ""
    return _file_digest(path) if path else ""


@functools.lru_cache(maxsize=1)
def core_digest() -> str:
    """The hash of Gauntlet's core sources (``gauntlet/*.py``): a change to how cells are
    run or measured invalidates every stored cell, even within one version."""
    folder = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def base_identity(result: Mapping[str, Any], registry: Registry, evaluated: Dataset,
                  device: str) -> dict[str, Any]:
    """What every cell of an audit depends on (a results.json skeleton gives the model,
    libraries and version): see the module docstring."""
    prov = result["provenance"]
    model = {k: v for k, v in prov["model"].items() if k not in ("spec", "path")}
    metrics = sorted((n, e.plugin.distribution, e.plugin.version, source_digest(e.cls))
                     for n, e in registry.entries["metric"].items())
    return {"layout": LAYOUT, "gauntlet": prov["gauntlet"], "core": core_digest(),
            "libraries": prov["libraries"], "model": model,
            "model_options": result["config"]["model"],
            "data": dataset_digest(evaluated), "seed": prov["seed"], "device": device,
            "metrics": metrics,
            # Resampled values are part of a cell's record; none keeps the keys of before.
            **({"resamples": k} if (k := result["config"].get("resamples")) else {})}


def cell_key(base: str, cell: Cell, registry: Registry) -> str:
    """The key of one cell in an audit whose :func:`base_identity` digests to ``base``."""
    def part(kind: str, cls: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        entry = registry.entries[kind].get(cls.name)
        plugin = entry.plugin if entry is not None and entry.cls is cls else None
        return {"name": cls.name, "params": dict(params),
                "distribution": plugin.distribution if plugin else "gauntlet",
                "version": plugin.version if plugin else "",
                "source": source_digest(cls)}

    return digest({"base": base, "defense": part("defense", cell.defense, cell.defense_params),
                   "attack": part("attack", cell.attack, cell.attack_params),
                   "skipped": cell.skipped})


class Cache:
    """A cache folder: ``cells/`` (one JSON record per cell key), ``models/`` (one
    ``state_dict`` per training key) and ``charts/`` (the report's rendered charts, by
    the results they draw), each entry written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def _write(self, path: Path, write: Callable[[Any], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- plain data: cells, rendered charts -----------------------------------------------
    def get_json(self, kind: str, key: str) -> Any:
        """The value stored under ``kind/key``, or None (absent or unreadable)."""
        path = self._path(kind, key, ".json")
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cache entry %s is unreadable (%s); computing it again", path, exc)
            return None

    def put_json(self, kind: str, key: str, value: Any) -> bool:
        """Store ``value`` (plain data) under ``kind/key``; True when stored."""
        data = json.dumps(value, default=str).encode()
        try:
            self._write(self._path(kind, key, ".json"), lambda f: f.write(data))
        except OSError as exc:
            log.warning("cannot write the cache at %s: %s", self.root, exc)
            return False
        return True

    def get_cell(self, key: str) -> dict[str, Any] | None:
        """The stored record of a cell, or None (absent or unreadable)."""
        record = self.get_json("cells", key)
        return record if isinstance(record, dict) and record.get("status") in REUSABLE \
            else None

    def put_cell(self, key: str, record: Mapping[str, Any]) -> bool:
        """Store a cell's record; an error or timeout is not stored. True when stored."""
        if record.get("status") not in REUSABLE:
            return False
        return self.put_json("cells", key, record)

    # -- trained modules ---------------------------------------------------------------
    def load_module(self, key: str, module: torch.nn.Module) -> bool:
        """Load the stored weights of ``key`` into ``module``; False when there are none
        (or they do not fit it: then it is trained again)."""
        import torch

        path = self._path("models", key, ".pt")
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - a bad entry is a miss, never a failure
            log.warning("cached model %s does not load (%s); training it again", path, exc)
            return False
        return True

    def save_module(self, key: str, module: torch.nn.Module) -> None:
        import torch

        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        try:
            self._write(self._path("models", key, ".pt"), lambda f: torch.save(state, f))
        except OSError as exc:
            log.warning("cannot write the cache at %s: %s", self.root, exc)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` (POSIX ``flock``; no lock elsewhere)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: duplicate work, never corruption
            yield
            return
        path = self._path("locks", key, ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = path.open("a")
        except OSError:
            yield
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


_active: Cache | None = None


def active() -> Cache | None:
    """The cache the running audit uses (None: none). Workers forked from the audit's
    process inherit it; a Ray worker is handed it."""
    return _active


@contextlib.contextmanager
def using(cache: Cache | None) -> Iterator[Cache | None]:
    """Make ``cache`` the active one for the block."""
    global _active
    previous, _active = _active, cache
    try:
        yield cache
    finally:
        _active = previous


def training_key(description: str, options: Mapping[str, Any], fit_key: str,
                 module: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> str:
    """The key of one recipe training (see the module docstring)."""
    from gauntlet import device

    shapes = [(k, list(v.shape), str(v.dtype)) for k, v in module.state_dict().items()]
    # The device too: CUDA kernels differ from the CPU's in the last bits.
    return digest({"layout": LAYOUT, "core": core_digest(), "device": device.current(),
                   "recipe": description,
                   "options": dict(options), "fit": fit_key,
                   "module": f"{type(module).__module__}.{type(module).__qualname__}",
                   "state": shapes, "data": array_digest(x, y), "seed": int(seed)})


def train_cached(build: Callable[[], torch.nn.Module],
                 fit: Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], None],
                 description: str, options: Mapping[str, Any], fit_key: str,
                 x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
    """``build()`` trained by ``fit`` on ``(x, y)``, read from the active cache when it
    holds this training, else trained (under the key's lock) and stored. The global
    random generators are left as they were either way, so a cell's later draws do not
    depend on whether its model came from the cache."""
    import torch

    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            module = build()
            cache = active()
            if cache is None:
                fit(module, x, y, seed)
                return module
            key = training_key(description, options, fit_key, module, x, y, seed)
            if cache.load_module(key, module):
                return module
            with cache.lock(key):
                if not cache.load_module(key, module):  # another worker may have done it
                    fit(module, x, y, seed)
                    cache.save_module(key, module)
            return module
        finally:
            np.random.set_state(state)
