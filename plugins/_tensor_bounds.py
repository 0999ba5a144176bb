"""Storage bounds of a TorchScript archive's tensors, checked before torch.jit.load.

``torch.jit.load`` trusts the sizes its pickles declare: a storage record shorter than
its declared size, or a tensor view past its storage, is read out of bounds when the
model runs (found by fuzzing: a segfault; a crafted file could leak the auditor's memory
into the model's outputs). :func:`tensor_bound_problems` reads ``data.pkl`` and
``constants.pkl`` with an unpickler whose every global is an inert stub, so nothing from
the file runs, and compares each storage record and tensor view with the bytes stored.
A helper of :mod:`gauntlet.plugins._torchscript`.
"""
from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any


def tensor_bound_problems(zf: zipfile.ZipFile) -> list[str]:
    """Why a tensor of the archive would reach past the bytes stored for it (empty: none)."""
    root = zf.namelist()[0].split("/")[0]
    sizes = {n.split("/", 1)[1]: zf.getinfo(n).file_size for n in zf.namelist() if "/" in n}
    problems: list[str] = []
    for pkl, folder in (("data.pkl", "data"), ("constants.pkl", "constants")):
        if pkl in sizes:
            reader = _BoundsReader(io.BytesIO(zf.read(f"{root}/{pkl}")), folder, sizes)
            try:
                reader.load()
            except Exception as exc:  # noqa: BLE001 - an unreadable pickle is refused
                reader.problems.append(f"{pkl} cannot be read ({type(exc).__name__}: {exc})")
            problems += [f"{p} (truncated or corrupt)" for p in reader.problems]
    return problems


class _Stub:
    """What every global of a checked pickle becomes: it takes anything and does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def __setstate__(self, state: Any) -> None: ...
    def __setitem__(self, key: Any, value: Any) -> None: ...
    def append(self, value: Any) -> None: ...
    def extend(self, values: Any) -> None: ...


class _BoundsReader(pickle.Unpickler):
    """Reads a TorchScript pickle for its tensors' sizes only: every global is an inert
    stub (nothing from the file runs), storages and tensor views are checked."""

    def __init__(self, blob: io.BytesIO, folder: str, sizes: Mapping[str, int]) -> None:
        super().__init__(blob)
        self.folder, self.sizes = folder, sizes
        self.problems: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild
        if module == "torch" and name.endswith("Storage") and name[:1].isupper():
            with warnings.catch_warnings():  # typed storages are deprecated; only read here
                warnings.simplefilter("ignore")
                return ("storage", getattr(torch, name).dtype.itemsize)
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        _, (_, itemsize), key, _, numel = pid
        need, have = int(numel) * itemsize, self.sizes.get(f"{self.folder}/{key}", 0)
        if have < need:
            self.problems.append(f"tensor record {self.folder}/{key} holds {have} bytes where "
                                 f"its pickle declares {need}")
        return int(numel)

    def rebuild(self, numel: int, offset: int, size: Any, stride: Any, *rest: Any) -> _Stub:
        dims = list(zip(size, stride))
        reach = offset + sum((s - 1) * st for s, st in dims) + 1
        if len(size) != len(stride) or offset < 0 or any(s < 0 or st < 0 for s, st in dims) \
                or (all(s > 0 for s in size) and reach > numel):
            self.problems.append(f"a tensor (size {tuple(size)}, stride {tuple(stride)}, "
                                 f"offset {offset}) reaches past its {numel}-element storage")
        return _Stub()
