"""An unchanged audit is replayed whole from the cache (gauntlet.memo): the same results
without importing torch, and never when anything it depends on has changed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gauntlet import memo
from gauntlet.cache import Cache
from gauntlet.config import load
from gauntlet.results import AuditResult

VOLATILE = ("started", "duration_s", "run")


@pytest.fixture
def project(tmp_path: Path, digits) -> Path:
    """A config on a data file of its own: a small MLP, two attacks, two defenses."""
    np.savez(tmp_path / "data.npz", x_train=digits.x_train[:200],
             y_train=digits.y_train[:200], x_test=digits.x_test[:60],
             y_test=digits.y_test[:60])
    (tmp_path / "audit.toml").write_text(
        '[model]\nspec = "builtin:mlp"\nhidden = [16]\nepochs = 3\n'
        '[data]\nspec = "npz:data.npz"\n'
        '[attacks.fgsm]\neps = [0.1, 0.2]\n[attacks.noise]\neps = 0.1\n'
        '[defenses.none]\n[defenses.feature-squeezing]\n')
    return tmp_path


def audit(project: Path, *extra: str) -> tuple[dict, bool]:
    """Run ``gauntlet audit`` in a fresh interpreter; its results.json, and whether torch
    was imported."""
    script = ("import sys; from gauntlet.cli import main; rc = main(sys.argv[1:]); "
              "print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", script, "audit", str(project / "audit.toml"),
                           "--out", str(project / "out"), "--no-progress", *extra],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((project / "out" / "results.json").read_text())
    return result, "TORCH True" in proc.stdout


def stable(result: dict) -> dict:
    return {**result, "provenance": {k: v for k, v in result["provenance"].items()
                                     if k not in VOLATILE}}


def test_an_unchanged_audit_is_replayed_without_torch_and_gives_the_same_results(project):
    first, first_torch = audit(project)
    assert first_torch and first["provenance"]["run"]["executor"] == "serial"
    csv = (project / "out" / "results.csv").read_bytes()
    log_lines = (project / "out" / "cells.jsonl").read_text().splitlines()

    second, second_torch = audit(project)
    assert not second_torch  # nothing was loaded: no model, no plugin, no data
    run = second["provenance"]["run"]
    assert run["executor"] == "replayed" and run["cells_run"] == 0
    assert run["cells_reused"] == sum(not c.get("derived") for c in first["cells"])
    assert stable(second) == stable(first)
    assert (project / "out" / "results.csv").read_bytes() == csv
    # The run's log holds every cell with its per-row results, as a run that ran them.
    replayed = (project / "out" / "cells.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in replayed] == [json.loads(line) for line in log_lines]
    html = (project / "out" / "report.html").read_text()
    assert "replayed" in html and "feature-squeezing" in html
    # The run time shown is what computing the audit took, not the replay's instant.
    assert run["computed_duration_s"] == first["provenance"]["duration_s"]
    assert "replayed from the cache in" in html


def test_a_changed_data_file_or_parameter_is_not_replayed(project):
    first, _ = audit(project)
    with np.load(project / "data.npz") as data:
        arrays = dict(data)
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][0] = (arrays["y_test"][0] + 1) % 10  # one label of the evaluated rows
    np.savez(project / "data.npz", **arrays)
    changed, torch_imported = audit(project)
    assert torch_imported and changed["provenance"]["run"]["executor"] == "serial"
    clean = next(c for c in changed["cells"] if c["attack"] == "clean"
                 and c["defense"] == "none")
    before = next(c for c in first["cells"] if c["id"] == clean["id"])
    assert clean["metrics"] != before["metrics"]  # its numbers are those of the new data

    # A parameter, on the command line this time: its cells run, the others are reused.
    again, _ = audit(project, "--seed", "1")
    assert again["provenance"]["run"]["executor"] == "serial"
    assert again["provenance"]["run"]["cells_run"] > 0


def test_the_key_follows_every_input_it_names(project, tmp_path, monkeypatch):
    cfg = load(project / "audit.toml")
    key = memo.audit_key(cfg)
    assert key is not None and memo.audit_key(load(project / "audit.toml")) == key
    cfg.samples = 10
    assert memo.audit_key(cfg) != key
    cfg.samples = load(project / "audit.toml").samples
    cfg.out = str(tmp_path / "elsewhere")  # where it is written decides nothing
    cfg.workers = 3
    assert memo.audit_key(cfg) == key
    # An architecture module, found without importing it: its text is part of the key.
    module = tmp_path / "mods" / "myarch.py"
    module.parent.mkdir()
    module.write_text("def net():\n    return None\n")
    monkeypatch.syspath_prepend(str(module.parent))
    cfg.model_options["arch"] = "myarch:net"
    with_arch = memo.audit_key(cfg)
    module.write_text("def net():\n    return 1\n")
    memo._module_digest.cache_clear()
    assert with_arch is not None and memo.audit_key(cfg) not in (with_arch, key)
    assert "myarch" not in sys.modules
    # One that cannot be found: no key, the audit takes the ordinary path.
    cfg.model_options["arch"] = "no_such_module_here:net"
    assert memo.audit_key(cfg) is None
    cfg.model_options.pop("arch")
    cfg.device = "cuda"  # only torch can say whether that works: no key
    assert memo.audit_key(cfg) is None


def test_an_audit_with_an_error_or_a_broken_plugin_is_not_remembered(tmp_path):
    cache = Cache(tmp_path)
    cells = [{"id": "a", "status": "ok"}, {"id": "b", "status": "error"}]
    result = AuditResult({"cells": cells, "provenance": {"broken_plugins": []}})
    assert not memo.remember(cache, "k", result, {"a": "ka", "b": "kb"}, [])
    cells[1]["status"] = "not_applicable"
    result.result["provenance"]["broken_plugins"] = [{"name": "x"}]
    assert not memo.remember(cache, "k", result, {"a": "ka", "b": "kb"}, [])
    result.result["provenance"]["broken_plugins"] = []
    assert memo.remember(cache, "k", result, {"a": "ka", "b": "kb"}, [])
    # A remembered audit whose cell has left the cache is not replayed.
    assert memo.replay(cache, "k") is None
    cache.put_cell("ka", {"id": "a", "status": "ok"})
    cache.put_cell("kb", {"id": "b", "status": "not_applicable"})
    found = memo.replay(cache, "k")
    assert found is not None and set(found[1]) == {"a", "b"}


def test_an_in_memory_model_is_never_replayed(digits):
    import torch
    from torch import nn

    import gauntlet

    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    kwargs = dict(attacks=["noise"], defenses=["none"], samples=20)
    gauntlet.audit(module, digits, **kwargs)
    again = gauntlet.audit(module, digits, **kwargs)
    assert again.result["provenance"]["run"]["executor"] == "serial"
    assert again.result["provenance"]["run"]["cells_reused"] > 0

