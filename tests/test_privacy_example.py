"""examples/fashion-mnist-privacy.toml reproduces the membership-inference study's setting
(its network, its attack, its three defenses alone and combined at the same values), and
examples/privacy_table.py prints its table from results.json (tests/test_examples.py
checks that every example plans; this file checks what is specific to this one)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gauntlet.config import load
from gauntlet.plan import plan
from gauntlet.plugins.privacy_defenses import Combined
from gauntlet.registry import make_registry

EXAMPLES = Path(__file__).parent.parent / "examples"
CONFIG = EXAMPLES / "fashion-mnist-privacy.toml"
TABLE = EXAMPLES / "privacy_table.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")
SETTINGS = ["none", "confidence-clip", "input-noise", "confidence-noise", "combined"]


def _table_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("privacy_table", TABLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _combined_defaults() -> dict[str, Any]:
    return {name: p.default for name, p in Combined.parameters().items()}


# -- the config ------------------------------------------------------------------------


def test_it_names_the_study_s_network_data_and_attack() -> None:
    cfg = load(CONFIG)
    assert cfg.model == "builtin:mlp"
    assert cfg.model_options["hidden"] == [200, 200]  # 784-200-200-10
    assert cfg.model_options["epochs"] == 5
    assert cfg.data == "idx:/usr/share/datasets/fashion-mnist"
    assert [s.name for s in cfg.attacks or []][0] == "mia-threshold"
    # Shadow-model attacks train models of their own: left out of this example.
    assert not {"lira", "mia-shadow"} & {s.name for s in cfg.attacks or []}


def test_it_plans_the_five_settings_each_against_the_global_threshold() -> None:
    cfg = load(CONFIG)
    cells = plan(make_registry(), cfg.defenses or [], cfg.attacks or [])
    defenses = list(dict.fromkeys(c.defense.name for c in cells))
    assert defenses == SETTINGS
    for name in SETTINGS:
        attacked = {c.attack.name for c in cells if c.defense.name == name}
        assert {"clean", "mia-threshold"} <= attacked, name


def test_the_alone_rows_use_the_combined_row_s_values() -> None:
    """Each defense alone runs at exactly the value `combined` gives it, and `combined`
    runs at its defaults (the study's numbers, mapped in its docstring): change one and
    this fails, so the rows cannot drift apart."""
    defaults = _combined_defaults()
    assert set(defaults) == {"clip_r", "input_r", "noise_r"}
    cfg = load(CONFIG)
    cells = plan(make_registry(), cfg.defenses or [], cfg.attacks or [])
    params = {c.defense.name: dict(c.defense_params) for c in cells}
    assert params["combined"] == defaults
    assert params["confidence-clip"]["r"] == defaults["clip_r"]
    assert params["input-noise"]["r"] == defaults["input_r"]
    assert params["confidence-noise"]["r"] == defaults["noise_r"]
    assert params["none"] == {}


# -- the table -------------------------------------------------------------------------


def _metric(value: float, n: int = 100, low: float | None = None,
            high: float | None = None) -> dict[str, Any]:
    return {"value": value, "n": n, "low": low, "high": high}


def _cell(defense: str, attack: str, metrics: dict[str, float], *,
          status: str = "ok", reason: str | None = None) -> dict[str, Any]:
    return {"id": f"{defense}|{attack}", "defense": defense, "defense_params": {},
            "defense_point": "", "attack": attack, "attack_params": {}, "attack_point": "",
            "status": status, "reason": reason,
            "metrics": {k: _metric(v) for k, v in metrics.items()}}


def _membership(accuracy: float, advantage: float, auc: float, tpr: float) -> dict[str, float]:
    return {"membership_accuracy": accuracy, "membership_advantage": advantage,
            "membership_auc": auc, "tpr_at_1pct_fpr": tpr}


def _results() -> dict[str, Any]:
    undefended = _cell("none", "mia-threshold", _membership(0.523, 0.046, 0.512, 0.011))
    undefended["metrics"]["membership_accuracy"] = _metric(0.523, 1000, 0.4921, 0.5537)
    cells = [
        _cell("none", "clean", {"clean_accuracy": 0.871}),
        undefended,
        _cell("none", "mia-loss", _membership(0.9, 0.8, 0.9, 0.5)),  # not the table's attack
        _cell("confidence-clip", "clean", {"clean_accuracy": 0.8705}),
        _cell("confidence-clip", "mia-threshold", _membership(0.511, 0.022, 0.506, 0.0)),
        _cell("combined", "clean", {"clean_accuracy": 0.862}),
        _cell("combined", "mia-threshold", {}, status="error", reason="boom"),
    ]
    return {"schema": 1, "cells": cells}


def _row(out: str, setting: str) -> list[str]:
    lines = [line for line in out.splitlines() if f"(`{setting}`)" in line]
    assert len(lines) == 1, out
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_the_table_puts_each_number_in_its_row(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results()))
    done = subprocess.run([sys.executable, str(TABLE), str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0].startswith("| setting | target accuracy | mia-threshold")
    assert _row(out, "none") == ["no defense (`none`)", "87.10%", "52.30% [49.2, 55.4]",
                                 "0.046", "0.512", "1.10%", "93.57%", "60.50%"]
    assert _row(out, "confidence-clip") == ["confidence clipping (`confidence-clip`)",
                                            "87.05%", "51.10%", "0.022", "0.506", "0.00%",
                                            "—", "—"]
    # An attack cell that failed leaves its numbers blank and says why under the table;
    # the study's figures for the setting still show.
    assert _row(out, "combined") == ["all three combined (`combined`)", "86.20%", "—", "—",
                                     "—", "—", "92.65%", "56.00%"]
    assert "- combined: mia-threshold error: boom" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "`" in line]
    assert [r.split("`")[1] for r in rows] == ["none", "confidence-clip", "combined"]


def test_the_table_can_show_another_membership_attack() -> None:
    table = _table_module()
    rows = table.rows(_results(), "mia-loss")
    assert rows[0]["setting"] == "none" and rows[0]["accuracy"] == pytest.approx(0.9)
    text = table.markdown(rows, "mia-loss")
    assert "study" not in text  # the study's figures are the global threshold's only
    assert "- confidence-clip: no mia-loss cell in these results" in text


@pytest.mark.parametrize("content", [None, "not json", "[1, 2]", '{"cells": 3}'])
def test_a_missing_or_invalid_file_exits_2_in_one_line(tmp_path: Path,
                                                       content: str | None) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    done = subprocess.run([sys.executable, str(TABLE), str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and str(path) in done.stderr


# -- the example, run small ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_example_runs_small_and_its_table_has_the_five_rows(tmp_path: Path) -> None:
    import gauntlet

    cfg = load(CONFIG)
    cfg.data_options.update(limit_train=400, limit_test=200)
    gauntlet.audit(config=cfg, out=tmp_path)
    done = subprocess.run([sys.executable, str(TABLE), str(tmp_path / "results.json")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    table = _table_module()
    rows = table.rows(json.loads((tmp_path / "results.json").read_text()))
    assert [r["setting"] for r in rows] == SETTINGS
    for row in rows:
        assert row["status"] == "ok" and row["clean"] is not None, row
        assert 0.0 <= row["accuracy"] <= 1.0
        assert f"(`{row['setting']}`)" in done.stdout
