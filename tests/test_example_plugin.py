"""The example plugin package, really installed with pip, audits with all three of its
classes (attack, defense, metric) beside the built-ins, as a user would run it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gauntlet-example-plugin"
PROVIDES = {("attack", "box-blur"), ("defense", "bit-depth"), ("metric", "mean_l2")}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The package installed by pip into a folder of its own (put on PYTHONPATH), so the
    environment is never changed and nothing is left to uninstall."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return target


def gauntlet(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "gauntlet", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)


def test_installed_plugin_lists_its_attack_defense_and_metric(site):
    proc = gauntlet(site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    ours = {(r["kind"], r["name"]) for r in rows
            if r["distribution"] == "gauntlet-example-plugin"}
    assert ours == PROVIDES
    assert not [r for r in rows if r["kind"] == "broken"]


def test_describe_shows_the_declared_parameters(site):
    proc = gauntlet(site, "describe", "box-blur")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "gauntlet-example-plugin" in out and "labels" in out
    assert "alpha" in out and "> 0 and <= 1" in out and "k " in out


def test_bad_parameter_is_refused_before_anything_runs(site, tmp_path):
    config = tmp_path / "audit.toml"
    config.write_text("[attacks.box-blur]\nk = 4\n[defenses.bit-depth]\n")
    proc = gauntlet(site, "audit", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'k' must be odd, got 4" in proc.stderr


@pytest.mark.slow
def test_audit_with_the_example_attack_defense_and_metric(site, tmp_path):
    out = tmp_path / "out"
    proc = gauntlet(site, "audit", "--attacks", "box-blur,fgsm", "--defenses",
                    "none,bit-depth", "--samples", "40", "--seed", "0", "--out", str(out),
                    "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    cells = {(c["defense"], c["attack"], c["attack_point"]): c for c in result["cells"]}
    evasion = [c for c in result["cells"] if c["attack"] in ("box-blur", "fgsm")]
    assert len(evasion) == 2 * (2 + 4)  # two defenses x (alpha sweep + eps sweep)
    for cell in evasion:
        assert cell["status"] == "ok", cell.get("reason")
        assert "robust_accuracy" in cell["metrics"] and "mean_l2" in cell["metrics"]
    assert result["metrics"]["mean_l2"]["format"] == "number"
    assert result["metrics"]["mean_l2"]["bounds"] is None

    # The blur is the same image change under any defense (the defense acts inside the
    # model), so its distance is the same in both rows; a stronger blur moves further.
    blur = {(d, a): cells[(d, "box-blur", f"alpha={a}")]["metrics"]["mean_l2"]
            for d in ("none", "bit-depth") for a in ("0.5", "1")}
    assert blur[("none", "0.5")]["value"] == blur[("bit-depth", "0.5")]["value"]
    assert 0 < blur[("none", "0.5")]["value"] < blur[("none", "1")]["value"]
    assert blur[("none", "1")]["low"] <= blur[("none", "1")]["value"] <= \
        blur[("none", "1")]["high"]

    # The BPDA stand-in keeps FGSM adaptive: it still breaks the squeezed model.
    clean = cells[("bit-depth", "clean", "")]["metrics"]["clean_accuracy"]["value"]
    fgsm = cells[("bit-depth", "fgsm", "eps=0.3")]["metrics"]["robust_accuracy"]["value"]
    assert clean > 0.8 and fgsm < clean - 0.3

    # In the report the distance prints as a number (e.g. 1.73), never as a percentage.
    html = (out / "report.html").read_text()
    shown = f"{blur[('none', '1')]['value']:.3g}"
    assert shown in html and f"{blur[('none', '1')]['value'] * 100:.1f}%" not in html
