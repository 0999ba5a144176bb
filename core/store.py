"""Cell results persisted as they finish, so a crash or Ctrl-C loses nothing done.

``cells.jsonl`` in the output folder starts with a header line holding the audit's
fingerprint (config, model, data, plugin versions; :func:`gauntlet.provenance.fingerprint`),
then one line per finished cell, per-row results included (:mod:`gauntlet.rows`). A
crash can cut its last line short; :func:`read_records` keeps what came before it.
Finished cells are also kept in the content cache (:mod:`gauntlet.cache`), from which
an interrupted or repeated audit takes them.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gauntlet.errors import ConfigError
from gauntlet.results import CellResult

log = logging.getLogger(__name__)


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
    """Appends each cell's record to ``folder/cells.jsonl`` as soon as it is known: the
    audit's log, which a crash or Ctrl-C never loses. (Resuming is the content cache's
    work now, :mod:`gauntlet.cache`: an audit run again reuses every finished cell.)"""

    def __init__(self, folder: Path, fingerprint: str = "") -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output folder {self.folder}: {exc}") from None
        self.path = self.folder / "cells.jsonl"
        self.fingerprint = fingerprint
        with self.path.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"fingerprint": fingerprint}) + "\n")

    def append(self, cell: CellResult | Mapping[str, Any]) -> None:
        record = cell.to_dict() if isinstance(cell, CellResult) else cell
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
