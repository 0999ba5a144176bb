"""The report's "Intake" section: what the audited model file is and would do.

Built from ``result["intake"]`` (a :class:`gauntlet.ScanReport` as data) and the plugins
that could not be loaded (``provenance.broken_plugins``), as plain display strings.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class IntakeView:
    status: str  # safe | refused | not-scanned (a CSS class and data attribute)
    verdict: str
    facts: list[tuple[str, str]]
    findings: list[tuple[str, str, str, str]]  # (REFUSED | note, what, where, why)
    inventory_title: str
    inventory: list[tuple[str, str]]  # (name, detail)
    broken_plugins: list[tuple[str, str, str]]  # (name, from, error)


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return ""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return ""


def _inventory(inv: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    if isinstance(inv.get("operators"), Mapping):
        ops = inv["operators"]
        sites = sum(v for v in ops.values() if isinstance(v, int))
        return (f"Operators ({len(ops)} distinct, {sites} call sites)",
                [(str(k), f"× {v}") for k, v in ops.items()])
    if isinstance(inv.get("globals"), list):
        return (f"Pickle globals ({len(inv['globals'])})",
                [(f"{g.get('module', '')}.{g.get('name', '')}", str(g.get("safety", "")))
                 for g in inv["globals"] if isinstance(g, Mapping)])
    if isinstance(inv.get("types"), list):
        return (f"Types ({len(inv['types'])})", [(str(t), "") for t in inv["types"]])
    if isinstance(inv.get("tensors"), list):
        return (f"Tensors ({len(inv['tensors'])})",
                [(str(t.get("name", "")),
                  f"{t.get('dtype', '')} {' × '.join(str(d) for d in t.get('shape', []))}")
                 for t in inv["tensors"] if isinstance(t, Mapping)])
    return "", []


def intake_view(result: Mapping[str, Any]) -> IntakeView:
    intake = result.get("intake") or {}
    safe = intake.get("safe")
    status = "safe" if safe is True else "refused" if safe is False else "not-scanned"
    facts = [(k, str(v)) for k, v in (("Format", intake.get("format")),
                                      ("File", intake.get("path")),
                                      ("Size", _size(intake.get("size"))),
                                      ("SHA-256", intake.get("sha256")),
                                      ("Read by", intake.get("reader"))) if v]
    findings = [("REFUSED" if f.get("refused") else "note", str(f.get("what", "")),
                 str(f.get("where", "")), str(f.get("why", "")))
                for f in intake.get("findings", []) if isinstance(f, Mapping)]
    title, inventory = _inventory(intake.get("inventory") or {})
    broken = [(str(p.get("name", "")),
               f"{p.get('distribution', '')} {p.get('version', '')}".strip(),
               str(p.get("error", "")))
              for p in (result.get("provenance") or {}).get("broken_plugins", [])
              if isinstance(p, Mapping)]
    return IntakeView(status, str(intake.get("verdict") or "no intake record"), facts, findings,
                      title, inventory, broken)
