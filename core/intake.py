"""Model intake: what a supplied model file is and what it would do, found without running it.

A model file is someone else's program. Before an audit loads one, and whenever a user
runs ``gauntlet scan FILE``, the plugin that reads the file's format inspects its bytes
and returns a :class:`ScanReport`: format, SHA-256, size, the verdict, and what the file
would do (the operators of a TorchScript or torch.export graph, the globals a pickle
would import, the tensors of a safetensors file). Loaders refuse a file whose report is
not ``safe``; the report's "Intake" section shows the same result.

Plugins add formats through the ``scan_model`` hook (see :mod:`gauntlet.hookspecs`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.errors import ModelLoadError

if TYPE_CHECKING:
    from gauntlet.registry import Registry

MAX_BYTES = 8 << 30  # refuse to read more than this into memory for a scan


@dataclasses.dataclass
class Finding:
    """One thing a scan found.

    :param what: the operator, global or member, e.g. ``aten::from_file``.
    :param where: where in the file, in the user's words, e.g. ``forward of net.block1``.
    :param refused: True if this finding alone makes the file unsafe to load.
    :param why: what the operator or global would do, e.g. ``writes a file``.
    """

    what: str
    where: str = ""
    refused: bool = True
    why: str = ""

    def __str__(self) -> str:
        text = f"{self.what} in {self.where}" if self.where else self.what
        return f"{text}: {self.why}" if self.why else text


@dataclasses.dataclass
class ScanReport:
    """What a model file is and would do, found without running anything from it.

    :param path: the file as the user named it.
    :param format: e.g. ``torchscript``, ``torch.export``, ``state_dict``, ``safetensors``,
        ``pickle``, ``onnx``, ``skops``.
    :param sha256: of the file's bytes.
    :param size: in bytes.
    :param findings: what the scan found; any ``refused`` finding makes the file unsafe.
    :param inventory: format-specific contents: ``operators`` (name to call sites),
        ``globals`` (a pickle's imports with picklescan's safety level), ``tensors``
        (name, dtype, shape), ...
    :param reader: the plugin (and library) that read the file.
    """

    path: str
    format: str
    sha256: str
    size: int
    findings: list[Finding] = dataclasses.field(default_factory=list)
    inventory: dict[str, Any] = dataclasses.field(default_factory=dict)
    reader: str = ""

    @property
    def safe(self) -> bool:
        """True if Gauntlet may load the file: nothing in it was refused."""
        return not any(f.refused for f in self.findings)

    @property
    def verdict(self) -> str:
        """One line: safe to load, or the first reason it is not."""
        refused = [f for f in self.findings if f.refused]
        if not refused:
            return "safe to load"
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        return f"refused: {refused[0]}{more}"

    def refuse(self, what: str, where: str = "", why: str = "") -> None:
        self.findings.append(Finding(what, where, True, why))

    def note(self, what: str, where: str = "") -> None:
        self.findings.append(Finding(what, where, False))

    def error(self) -> ModelLoadError:
        """The error a loader raises for an unsafe file: one line naming the first reason."""
        return ModelLoadError(f"{self.path} is a {self.format} file that Gauntlet will not "
                              f"load: {self.verdict.removeprefix('refused: ')}")

    def require_passed(self, data: bytes) -> None:
        """Raise unless this report passed ``data`` (the same bytes): a loader's guard that
        it never loads what no scan, or a refusing one, has read."""
        if not self.safe:
            raise self.error()
        if self.size != len(data) or self.sha256 != hashlib.sha256(data).hexdigest():
            raise ModelLoadError(f"{self.path}: the bytes to load are not the bytes scanned")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "sha256": self.sha256,
                "size": self.size, "safe": self.safe, "verdict": self.verdict,
                "reader": self.reader,
                "findings": [dataclasses.asdict(f) for f in self.findings],
                "inventory": self.inventory}

    @classmethod
    def of(cls, path: str | Path, data: bytes, fmt: str, reader: str = "") -> ScanReport:
        """An empty report for ``data`` read from ``path``: hash and size filled in."""
        return cls(str(path), fmt, hashlib.sha256(data).hexdigest(), len(data), reader=reader)


def read_model_file(path: str | Path) -> bytes:
    """The bytes of a model file, or ModelLoadError saying why they cannot be read."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ModelLoadError(f"{path} is larger than {MAX_BYTES >> 30} GiB")
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a folder, not a model file") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None


def scan(registry: Registry, path: str | Path, data: bytes | None = None) -> ScanReport:
    """Scan a model file with the plugin that reads its format.

    Raises ModelLoadError if the file cannot be read or no plugin reads its format.
    """
    data = read_model_file(path) if data is None else data
    report = registry.pm.hook.scan_model(path=Path(path), data=data)
    if report is None:
        raise ModelLoadError(f"{path} is not a model format Gauntlet reads (TorchScript, "
                             "torch.export .pt2, state_dict .pt, .safetensors, and with "
                             "extras ONNX and skops)")
    return report  # type: ignore[no-any-return]
