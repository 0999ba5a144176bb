"""Cell results persisted as they finish, so a crash or Ctrl-C loses nothing done.

``cells.jsonl`` in the output folder starts with a header line holding the audit's
fingerprint (config, model, data, plugin versions; :func:`gauntlet.provenance.fingerprint`),
then one line per finished cell, per-row results included (:mod:`gauntlet.rows`).
With ``resume``, an audit whose fingerprint matches reuses the finished cells (``ok`` and
``not_applicable``; error cells run again: an error may be passing, a timeout on a busy
machine, and a resumed audit should not keep it) and appends the rest.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gauntlet.errors import ConfigError
from gauntlet.results import CellResult

log = logging.getLogger(__name__)
_REUSABLE = ("ok", "not_applicable")


def read_records(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The header and the cell records of a ``cells.jsonl``, and how many bytes of it are
    whole lines (a crash can cut the last line short: what came before it is kept)."""
    records: list[dict[str, Any]] = []
    raw = Path(path).read_bytes()
    whole = 0
    for line in raw.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no newline")
            records.append(json.loads(line))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError included
            break
        whole += len(line)
    return (records[0] if records else {}), records[1:], whole


class Store:
    """Appends each cell's record to ``folder/cells.jsonl`` as soon as it is known."""

    def __init__(self, folder: Path, fingerprint: str = "", resume: bool = False) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output folder {self.folder}: {exc}") from None
        self.path = self.folder / "cells.jsonl"
        self.fingerprint = fingerprint
        self.done: dict[str, dict[str, Any]] = self._previous() if resume else {}
        if self.done:
            log.info("resuming: %d finished cells reused from %s", len(self.done), self.path)
            return
        with self.path.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"fingerprint": fingerprint}) + "\n")

    def _previous(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        header, records, whole = read_records(self.path)
        if header.get("fingerprint") != self.fingerprint:
            log.warning("not resuming: %s belongs to an audit with another config, model, "
                        "data or plugin versions; starting afresh", self.path)
            return {}
        if whole < self.path.stat().st_size:
            # Drop the torn tail, or the next append would be glued onto it and lost, with
            # every cell after it, to the next resume.
            with self.path.open("r+b") as f:
                f.truncate(whole)
        return {c["id"]: c for c in records if c.get("status") in _REUSABLE}

    def append(self, cell: CellResult) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(cell.to_dict(), default=str) + "\n")
