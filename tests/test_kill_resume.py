"""A real ``gauntlet audit`` killed with SIGKILL mid-run, then run again, loses nothing.

SIGKILL is the hard case: no KeyboardInterrupt handler, no ``finally``, no flush; the
process is simply gone. Whatever survives is what the content cache and the log wrote
before each cell's record returned. The audit run again must reproduce an uninterrupted
run cell for cell, and must not run again any cell that had finished.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gauntlet.store import read_records

pytestmark = pytest.mark.slow

# Two defenses x (clean + 4 fgsm + 4 noise + 1 trash-bucket) = 20 cells of ~0.1-0.7 s.
AUDIT_FLAGS = ["--attacks", "fgsm,noise,trash-bucket", "--defenses", "none,input-noise",
               "--samples", "60", "--no-progress"]
N_CELLS = 20
KILL_AFTER = 5  # finished cells on disk before the kill
DEADLINE_S = 240.0  # generous: the built-in CNN trains first, and CI boxes are slow


def _command(out: Path, config: Path, *extra: str) -> list[str]:
    # -v: the second run logs how many cells it reused.
    return [sys.executable, "-m", "gauntlet", "-v", "audit", str(config), "--out", str(out),
            *AUDIT_FLAGS, *extra]


def _run(out: Path, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(_command(out, config, *extra), capture_output=True, text=True,
                          timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    return done


def _finished_lines(raw: bytes) -> list[bytes]:
    """The whole lines (newline included) of a cells.jsonl, without a torn tail."""
    lines = raw.splitlines(keepends=True)
    return [line for line in lines if line.endswith(b"\n")]


def _without_timing(cell: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cell.items() if k != "duration_s"}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # This file runs the audit three times; fewer epochs keep each run's training short
    # (the model is as deterministic, only less accurate).
    path = tmp_path_factory.mktemp("config") / "audit.toml"
    path.write_text('title = "kill -9 test"\n\n[model]\nepochs = 3\n', encoding="utf-8")
    return path


def _kill_after_some_cells(out: Path, config: Path) -> bytes:
    """Start the audit, SIGKILL it once KILL_AFTER cells are on disk; cells.jsonl's bytes."""
    log = out.with_suffix(".stderr")
    with log.open("w") as stderr:
        proc = subprocess.Popen(_command(out, config), stdout=subprocess.DEVNULL,
                                stderr=stderr)
    cells = out / "cells.jsonl"
    deadline = time.monotonic() + DEADLINE_S
    try:
        while True:
            finished = _finished_lines(cells.read_bytes()) if cells.exists() else []
            if len(finished) - 1 >= KILL_AFTER:  # minus the header line
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert proc.poll() is None, f"audit ended before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, "no cells finished in time"
            time.sleep(0.01)
    finally:
        proc.kill()  # a no-op after the SIGKILL; stops a stray run if an assert fired
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return cells.read_bytes()


def test_sigkill_then_a_rerun_matches_an_uninterrupted_run(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "killed"
    raw = _kill_after_some_cells(out, config)
    lines = _finished_lines(raw)
    before = [json.loads(line) for line in lines[1:]]
    # The kill landed mid-audit: some cells on disk, not all, and no report written.
    assert KILL_AFTER <= len(before) < N_CELLS, len(before)
    assert not (out / "report.html").exists()

    # Run again, as is: the content cache (this test's own folder, tests/conftest.py)
    # holds every cell that finished before the kill.
    rerun = _run(out, config)
    resumed = json.loads((out / "results.json").read_text())["cells"]
    # The uninterrupted run goes last, so nothing separates the killed and resumed runs.
    _run(tmp_path / "ref", config, "--no-cache")
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())["cells"]
    # results.json adds the derived worst-case cells (fgsm and noise at each of 4 eps).
    stored = [c for c in reference if not c.get("derived")]
    assert len(stored) == N_CELLS and all(c["status"] == "ok" for c in reference)
    assert len(reference) == N_CELLS + 2 * 4

    # (a) Cell for cell the same as the uninterrupted run: status, every metric's value,
    # n and interval, artifacts. Only the wall-clock duration may differ.
    assert [c["id"] for c in resumed] == [c["id"] for c in reference]
    for got, want in zip(resumed, reference):
        assert _without_timing(got) == _without_timing(want), got["id"]

    # (b) Cells finished before the kill were reused, not recomputed: their records come
    # back byte-for-byte, measured durations included (results.json leaves out the
    # per-row results, which stay in cells.jsonl).
    for record in before:
        assert record["rows"]  # per-row results were on disk too
        shown = {k: v for k, v in record.items() if k != "rows"}
        assert resumed[[c["id"] for c in resumed].index(record["id"])] == shown
    # The cache is written before the log, so it holds at least what the log held (and
    # one more if the kill fell between the two writes).
    reused = int(re.search(r"\((\d+) more from the cache", rerun.stderr).group(1))
    assert len(before) <= reused <= len(before) + 1, rerun.stderr
    # The re-run's log holds every cell once, each a whole line.
    header, records, whole = read_records(out / "cells.jsonl")
    assert whole == (out / "cells.jsonl").stat().st_size
    assert sorted(r["id"] for r in records) == sorted(c["id"] for c in stored)
