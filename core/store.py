"""Cell results persisted as they finish, so a crash or Ctrl-C loses nothing done.

``cells.jsonl`` in the output folder gets one line per finished cell; the final
results.json, results.csv and report.html are written when the audit ends.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gauntlet.errors import ConfigError
from gauntlet.results import CellResult


class Store:
    """Appends each cell's record to ``folder/cells.jsonl`` as soon as it is known."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output folder {self.folder}: {exc}") from None
        if not self.folder.is_dir():
            raise ConfigError(f"output path {self.folder} exists and is not a folder")
        self.path = self.folder / "cells.jsonl"
        self.path.write_text("", encoding="utf-8")  # a new audit starts a new log

    def append(self, cell: CellResult) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(cell.to_dict(), default=str) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
