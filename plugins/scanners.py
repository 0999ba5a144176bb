"""Intake scans of PyTorch model files: what a file is and would do, without running it.

The format is sniffed from the file's bytes, never from its name. Per format:

- TorchScript archives: every operator of every method of every class in the archive's
  serialized code, checked against the operator allow-list, and the globals of its
  pickles (:mod:`gauntlet.plugins._torchscript`), before ``torch.jit.load`` ever runs.
- ``torch.export`` programs (``.pt2``): the graph's operators against the same allow-list,
  plus the archive checks of :mod:`gauntlet.plugins._torch_export`.
- ``torch.save`` files and plain pickles: the globals the pickle would import, listed by
  picklescan (a maintained scanner, also used by the Hugging Face Hub; chosen over
  fickling because Gauntlet needs the import list and a safety level per global, not a
  decompilation). The file is safe only if torch's ``weights_only`` unpickler, which
  builds tensors and containers and nothing else, reads it as a mapping of tensors.
- safetensors: the header (JSON) lists tensor names, dtypes and shapes; no code at all.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from gauntlet import ScanReport, hookimpl

READER = "gauntlet.plugins.scanners"
_RESAVE = ("re-save the model as weights plus an architecture, torch.save(model.state_dict(), "
           "'model.pt') or safetensors.torch.save_file(model.state_dict(), "
           "'model.safetensors') with arch = 'package.module:factory' under [model], or as a "
           "program, torch.export.save(torch.export.export(model.eval(), (example_batch,)), "
           "'model.pt2')")


def sniff(data: bytes) -> str | None:
    """The format of a PyTorch model file, from its bytes (None: not one of ours)."""
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, ValueError):
            return None
        inner = {n.split("/", 1)[1] for n in names if "/" in n}
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            return "torchscript"
        if "archive_format" in inner:
            return "torch.export"
        if "data.pkl" in inner:
            return "torch.save"
        return None
    if len(data) > 9 and data[8:9] == b"{":
        n = int.from_bytes(data[:8], "little")
        if 0 < n <= len(data) - 8:
            return "safetensors"
    if data[:1] == b"\x80":  # pickle protocol 2+: a legacy torch.save, or any pickle
        return "pickle"
    return None


@hookimpl(trylast=True)
def scan_model(path: Path, data: bytes) -> ScanReport | None:
    fmt = sniff(data)
    if fmt is None:
        return None
    report, _ = scan_torch(path, data, fmt)
    return report


def scan_torch(path: Path | str, data: bytes, fmt: str) -> tuple[ScanReport, Any]:
    """The scan of a file of format ``fmt`` (from :func:`sniff`), and for weights files the
    tensors read by the weights-only unpickler (None when refused), so a loader reads
    them once."""
    report = ScanReport.of(path, data, fmt, READER)
    if fmt in ("torchscript", "torch.export"):
        _scan_graph(report, data, fmt)
        return report, None
    if fmt == "safetensors":
        _scan_safetensors(report, data)
        return report, None
    return report, _scan_pickle(report, data, fmt)


def _scan_graph(report: ScanReport, data: bytes, fmt: str) -> None:
    if fmt == "torchscript":
        from gauntlet.plugins._torchscript import check_torchscript as check
    else:
        from gauntlet.plugins._torch_export import check_export_program as check
    result = check(data)
    report.inventory["operators"] = dict(sorted(result.operators.items()))
    for problem in result.problems:
        report.refuse(problem)
    from gauntlet.plugins._operators import why_refused

    for what, where in result.refused:
        # Say what the operator would do: "aten::from_file in ...: maps a file on disk ...".
        why = why_refused(what) if "::" in what or what.startswith("torch.") else ""
        report.refuse(what, where, why)


def _scan_safetensors(report: ScanReport, data: bytes) -> None:
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        tensors = []
        end = 0
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(v) for v in meta["data_offsets"])
            end = max(end, stop)
            tensors.append({"name": str(name), "dtype": str(meta["dtype"]),
                            "shape": [int(d) for d in meta["shape"]]})
    except (ValueError, KeyError, TypeError) as exc:
        report.refuse(f"malformed safetensors header ({type(exc).__name__}: {exc})")
        return
    if 8 + n + end > len(data):
        report.refuse(f"truncated: tensors need {8 + n + end} bytes, the file has {len(data)}")
    report.inventory["tensors"] = tensors
    if isinstance(header.get("__metadata__"), dict):
        report.inventory["metadata"] = {str(k): str(v)[:200]
                                        for k, v in header["__metadata__"].items()}


# Globals a torch.save state_dict may name besides picklescan's innocuous ones: the tensor
# rebuilders torch's weights_only unpickler itself accepts.
_TENSOR_GLOBALS = {("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_tensor"),
                   ("torch._utils", "_rebuild_parameter_with_state"), ("torch", "Size"),
                   ("torch", "device"), ("builtins", "set"), ("__builtin__", "set")}


def _scan_pickle(report: ScanReport, data: bytes, fmt: str) -> Any:
    """List the globals with picklescan; refuse at once, without unpickling anything, if one
    is not a tensor rebuilder; otherwise read the tensors with torch's weights_only
    unpickler (containers and tensors only) and refuse anything but a state_dict."""
    import logging
    import warnings

    import torch
    from picklescan.scanner import SafetyLevel, scan_bytes

    quiet = logging.getLogger("picklescan")
    level, quiet.level = quiet.level, logging.CRITICAL  # its findings are ours to report
    try:
        found = scan_bytes(io.BytesIO(data), report.path, ".pt")
    except Exception as exc:  # noqa: BLE001 - what cannot be listed is not loaded
        found = None
        error = f"{type(exc).__name__}: {exc}"
    finally:
        quiet.level = level
    if found is None or found.scan_err:
        why = error if found is None else "picklescan could not parse it"
        report.refuse(f"a pickle whose imports cannot be listed ({why}); {_RESAVE}")
        return None
    report.inventory["globals"] = [{"module": g.module, "name": g.name,
                                    "safety": g.safety.value} for g in found.globals]
    risky = [g for g in found.globals if g.safety is not SafetyLevel.Innocuous
             and (g.module, g.name) not in _TENSOR_GLOBALS]
    if risky:
        risky.sort(key=lambda g: g.safety is not SafetyLevel.Dangerous)
        report.refuse(f"{risky[0].module}.{risky[0].name}",
                      f"the pickle's imports ({risky[0].safety.value}, per picklescan)",
                      f"loading it means unpickling, which can run arbitrary code, so "
                      f"Gauntlet refuses; {_RESAVE}")
        return None
    try:
        with warnings.catch_warnings():  # protocol notices are not the user's concern here
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything weights_only rejects, we refuse
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]
        report.refuse(f"not a readable PyTorch weights file ({type(exc).__name__}: {first})",
                      "", _RESAVE if fmt == "pickle" else "")
        return None
    weights = state_dict_of(obj)
    if weights is None:
        report.refuse(f"not a state_dict (a mapping of names to tensors); it holds "
                      f"{type(obj).__name__}", "", _RESAVE)
        return None
    report.inventory["tensors"] = [{"name": str(k), "dtype": str(v.dtype).removeprefix("torch."),
                                    "shape": list(v.shape)} for k, v in weights.items()]
    return weights


def state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The tensor mapping in ``obj`` (a state_dict, or a checkpoint holding one), else None."""
    from collections.abc import Mapping

    import torch

    def all_tensors(m: Any) -> bool:
        return isinstance(m, Mapping) and bool(m) and \
            all(isinstance(v, torch.Tensor) for v in m.values())

    if all_tensors(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
            if all_tensors(obj.get(key)):
                return dict(obj[key])
    return None
