"""The CLI as a user runs it: exit codes and messages for bad input, plugin listing and
description."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gauntlet.cli import main


def gauntlet(*args: str, cwd: Path | None = None, env: dict | None = None,
             shell: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI: in a real subprocess when ``env`` changes what is installed (or
    ``shell``), else in-process through the same ``main`` the ``gauntlet`` script calls
    (a fresh interpreter per case would cost seconds of imports each)."""
    if env is not None or shell:
        return subprocess.run([sys.executable, "-m", "gauntlet", *args], capture_output=True,
                              text=True, cwd=cwd, env={**os.environ, **(env or {})},
                              timeout=600)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            contextlib.chdir(cwd or Path.cwd()):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's --help, --version and usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_bad_input(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gauntlet: error:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_config_file(tmp_path):
    assert_bad_input(gauntlet("audit", str(tmp_path / "nope.toml")), "config file not found",
                     "nope.toml")


def test_missing_model_file(tmp_path):
    assert_bad_input(gauntlet("audit", "--model", str(tmp_path / "missing.pt"),
                              "--out", str(tmp_path / "o")), "missing.pt")


def test_unknown_attack_name(tmp_path):
    assert_bad_input(gauntlet("audit", "--attacks", "fgsm,no-such-attack",
                              "--out", str(tmp_path)),
                     "unknown attack 'no-such-attack'", "known attacks:", "fgsm")


def test_unknown_defense_name(tmp_path):
    assert_bad_input(gauntlet("audit", "--defenses", "armour", "--out", str(tmp_path)),
                     "unknown defense 'armour'")


def test_malformed_toml(tmp_path):
    cfg = write(tmp_path / "bad.toml", "seed = = 3\n[model\n")
    assert_bad_input(gauntlet("audit", str(cfg)), "malformed TOML", "bad.toml")


def test_unknown_parameter(tmp_path):
    cfg = write(tmp_path / "a.toml", "[attacks.fgsm]\nepsilon = 0.1\n")
    assert_bad_input(gauntlet("audit", str(cfg)), "unknown parameter 'epsilon'",
                     "known parameters:", "eps")


def test_ill_typed_parameter(tmp_path):
    cfg = write(tmp_path / "a.toml", '[attacks.fgsm]\neps = "large"\n')
    assert_bad_input(gauntlet("audit", str(cfg)), "parameter 'eps' must be float")


def test_ill_typed_top_level_key(tmp_path):
    cfg = write(tmp_path / "a.toml", 'seed = "zero"\n')
    assert_bad_input(gauntlet("audit", str(cfg)), "seed must be")


def test_unknown_top_level_key(tmp_path):
    cfg = write(tmp_path / "a.toml", 'sead = 1\n')
    assert_bad_input(gauntlet("audit", str(cfg)), "unknown config key 'sead'")


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # a user's old file
def test_data_that_does_not_fit_the_model(tmp_path, digits_model):
    import torch

    path = tmp_path / "digits_cnn.pt"
    torch.jit.trace(digits_model._base, torch.zeros(1, 1, 8, 8)).save(str(path))
    assert_bad_input(gauntlet("audit", "--model", str(path), "--data", "sklearn:wine",
                              "--out", str(tmp_path / "o")), "does not fit", "sklearn:wine")


def test_model_file_that_needs_unpickling_is_refused(tmp_path, digits_model):
    import torch

    path = tmp_path / "pickled.pt"
    torch.save(digits_model._base, path)  # a whole pickled module, not weights
    proc = gauntlet("audit", "--model", str(path), "--out", str(tmp_path / "o"))
    assert_bad_input(proc, "unpickl")


def test_unknown_data_spec(tmp_path):
    assert_bad_input(gauntlet("audit", "--data", "s3://bucket/x", "--out", str(tmp_path)),
                     "no dataset loader understands")


def test_plugins_lists_builtins_as_json():
    proc = gauntlet("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    keys = {"kind", "name", "distribution", "version", "description"}
    assert all(keys <= set(r) for r in rows)
    names = {(r["kind"], r["name"]) for r in rows}
    for expected in [("attack", "fgsm"), ("attack", "pgd"), ("attack", "noise"),
                     ("attack", "mia-threshold"), ("attack", "label-flip"),
                     ("attack", "trash-bucket"), ("defense", "none"),
                     ("defense", "confidence-clip"), ("defense", "input-noise"),
                     ("defense", "confidence-noise"), ("metric", "robust_accuracy")]:
        assert expected in names
    assert not [r for r in rows if r["kind"] == "broken"]
    assert {r["distribution"] for r in rows} == {"ml-gauntlet"}
    # attacks and defenses list their declared parameters
    by_name = {(r["kind"], r["name"]): r for r in rows}
    eps = next(p for p in by_name["attack", "fgsm"]["parameters"] if p["name"] == "eps")
    assert eps["type"] == "float" and eps["sweep"] and eps["bounds"] == ">= 0" and eps["help"]
    assert [p["name"] for p in by_name["attack", "trash-bucket"]["parameters"]] == ["probes"]
    assert by_name["defense", "none"]["parameters"] == []
    assert "parameters" not in by_name["metric", "robust_accuracy"]


def test_plugins_table_has_one_line_per_plugin():
    proc = gauntlet("plugins")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["KIND", "NAME"]
    assert any(ln.split()[:2] == ["attack", "fgsm"] and "ml-gauntlet 0.1.0" in ln
               for ln in lines)


def test_report_rerenders_from_results_json(tmp_path):
    out = tmp_path / "audit"
    proc = gauntlet("audit", "--attacks", "noise", "--defenses", "none", "--samples", "50",
                    "--out", str(out), shell=True)  # stage and progress lines go to stderr
    assert proc.returncode == 0, proc.stderr
    assert "running 5 cells" in proc.stderr  # stages shown
    assert "cell 5/5: none / noise (eps=0.3)" in proc.stderr  # progress, one line a cell
    first = (out / "report.html").read_text()
    proc = gauntlet("report", str(out / "results.json"), "--out", str(tmp_path / "again.html"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again.html").read_text() == first  # data first: same report


def test_report_refuses_what_is_not_results_json(tmp_path):
    bad = write(tmp_path / "results.json", "{not json")
    assert_bad_input(gauntlet("report", str(bad)), "is not a results.json")
    assert_bad_input(gauntlet("report", str(tmp_path / "none.json")), "not found")


def test_unknown_flag_exits_2():
    proc = gauntlet("audit", "--frobnicate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_negative_timeout_is_bad_input(tmp_path):
    cfg = write(tmp_path / "a.toml", "timeout = -1\n")
    assert_bad_input(gauntlet("audit", str(cfg)), "timeout must be")


@pytest.fixture
def broken_distribution(tmp_path):
    """A distribution whose `gauntlet` entry point fails to import (a missing dependency)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_plugin.py").write_text("import no_such_dependency_xyz\n")
    info = site / "gauntlet_broken-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gauntlet-broken\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[gauntlet]\nbroken = broken_plugin\n")
    return {"PYTHONPATH": str(site)}


def test_plugin_that_fails_to_import_is_listed_broken_and_the_rest_work(broken_distribution,
                                                                        tmp_path):
    proc = gauntlet("plugins", "--json", env=broken_distribution)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    (broken,) = [r for r in rows if r["kind"] == "broken"]
    assert broken["name"] == "broken" and broken["distribution"] == "gauntlet-broken"
    assert broken["version"] == "0.3" and "no_such_dependency_xyz" in broken["description"]
    assert ("attack", "fgsm") in {(r["kind"], r["name"]) for r in rows}
    proc = gauntlet("audit", "--attacks", "noise", "--defenses", "none", "--samples", "30",
                    "--out", str(tmp_path / "o"), "--no-progress", env=broken_distribution)
    assert proc.returncode == 0, proc.stderr
    # the audit warns once, and the results say which plugin is broken and why
    warnings = [ln for ln in proc.stderr.splitlines() if "broken plugins are installed" in ln]
    assert len(warnings) == 1 and "'broken' (gauntlet-broken 0.3)" in warnings[0]
    assert "no_such_dependency_xyz" in warnings[0]
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    (entry,) = data["provenance"]["broken_plugins"]
    assert entry["name"] == "broken" and entry["distribution"] == "gauntlet-broken"
    assert entry["version"] == "0.3" and "no_such_dependency_xyz" in entry["error"]


def test_asking_for_what_a_broken_plugin_may_provide_says_it_is_broken(broken_distribution,
                                                                       tmp_path):
    proc = gauntlet("audit", "--attacks", "broken", "--out", str(tmp_path),
                    env=broken_distribution)
    assert_bad_input(proc, "unknown attack 'broken', and a broken plugin that may provide it "
                           "is installed: plugin 'broken' (gauntlet-broken 0.3): failed to "
                           "import: ModuleNotFoundError: No module named "
                           "'no_such_dependency_xyz'")


def test_loader_plugins_are_listed_with_their_hooks():
    rows = json.loads(gauntlet("plugins", "--json").stdout)
    hooks = {r["name"]: r["group"] for r in rows if r["kind"] == "hooks"}
    assert hooks["torch_models"] == "load_model" and hooks["datasets"] == "load_dataset"
    assert hooks["scanners"] == "scan_model"
    known = {"load_model", "load_dataset", "scan_model", "report_sections"}
    assert all(set(group.split(", ")) <= known for group in hooks.values())


@pytest.mark.parametrize("table, message", [
    ("[attacks.fgsm]\neps = [0.1, -0.2]\n", "attack 'fgsm': parameter 'eps' must be >= 0, "
                                           "got -0.2"),
    ("[attacks.label-flip]\nfraction = 1.5\n", "parameter 'fraction' must be <= 1, got 1.5"),
    ("[attacks.trash-bucket]\nprobes = 0\n", "parameter 'probes' must be >= 1, got 0"),
    ("[defenses.input-noise]\nr = 0\n", "defense 'input-noise': parameter 'r' must be > 0"),
])
def test_out_of_range_value_is_bad_input_before_the_audit_starts(tmp_path, table, message):
    cfg = write(tmp_path / "a.toml", table)
    proc = gauntlet("audit", str(cfg), "--out", str(tmp_path / "o"))
    assert_bad_input(proc, message)
    assert not (tmp_path / "o" / "cells.jsonl").exists()  # nothing ran


def test_config_paths_are_relative_to_the_config_file(tmp_path, digits):
    import numpy as np

    project = tmp_path / "project"
    project.mkdir()
    np.savez(project / "digits.npz", x_train=digits.x_train[:300], y_train=digits.y_train[:300],
             x_test=digits.x_test[:60], y_test=digits.y_test[:60])
    cfg = write(project / "audit.toml", '[model]\nspec = "builtin:cnn"\nepochs = 2\n'
                '[data]\nspec = "npz:digits.npz"\n[attacks.noise]\neps = 0.1\n'
                '[defenses.none]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = gauntlet("audit", str(cfg), "--out", "out", "--no-progress", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((elsewhere / "out" / "results.json").read_text())
    assert data["provenance"]["data"]["n_train"] == 300
    assert data["provenance"]["data"]["sha256"]  # the file's hash is in the provenance
    assert {c["attack"] for c in data["cells"]} == {"clean", "noise"}


# -- gauntlet describe ---------------------------------------------------------------------
def test_describe_an_attack_shows_source_parameters_and_access():
    proc = gauntlet("describe", "fgsm")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.splitlines()
    assert lines[0] == "fgsm (attack, family evasion)"
    assert "Fast Gradient Sign Method" in lines[2]
    assert "Goodfellow" in out  # the whole docstring, the paper included
    assert "source:     plugin 'evasion' from ml-gauntlet 0.1.0, module " \
           "gauntlet.plugins.evasion" in lines
    assert "needs:      gradients (a white box)" in lines
    assert "outcome:    EvasionOutcome" in lines
    rows = {ln.split()[0]: ln.split() for ln in lines[lines.index("parameters:") + 2:]}
    assert set(rows) >= {"rows", "batch_size", "eps"}
    assert rows["eps"][:4] == ["eps", "float", "sweep", "0.05,"] and ">=" in rows["eps"]
    assert rows["rows"][1:5] == ["int", "0", ">=", "0"]


def test_describe_an_attack_that_retrains_says_it_needs_a_recipe():
    out = gauntlet("describe", "label-flip").stdout
    assert "needs a training recipe" in out and "outcome:    PoisoningOutcome" in out
    assert "needs a training recipe" not in gauntlet("describe", "noise").stdout


def test_describe_a_defense_shows_stage_adaptive_and_evaluation():
    proc = gauntlet("describe", "input-noise", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "defense" and info["stage"] == "input"
    assert info["adaptive"] is True and "gradient" in info["evaluation"]
    assert info["distribution"] == "ml-gauntlet" and info["plugin"] == "defenses"
    assert [p["name"] for p in info["parameters"]] == ["r", "eot"]
    assert info["parameters"][0]["bounds"] == "> 0"
    text = gauntlet("describe", "input-noise").stdout
    assert "(defense, stage input)" in text and "adaptive:   yes" in text
    assert "evaluation:" in text


def test_describe_a_metric_shows_direction_bounds_and_format():
    info = json.loads(gauntlet("describe", "robust_accuracy", "--json").stdout)
    assert info["applies_to"] == ["EvasionOutcome"] and info["higher_is_better"] is True
    assert info["bounds"] == [0.0, 1.0] and info["format"] == "percent"
    assert "parameters" not in info
    text = gauntlet("describe", "attack_success_rate").stdout
    assert text.startswith("attack_success_rate (metric, lower is better)")
    assert "format:     percent" in text and "bounds:     [0, 1]" in text


def test_describe_a_loader_plugin_shows_its_hooks():
    info = json.loads(gauntlet("describe", "torch_models", "--json").stdout)
    assert info["kind"] == "plugin" and info["hooks"] == ["load_model"]
    assert "weights_only" in info["doc"]


def test_describe_unknown_name_exits_2_with_suggestions_and_the_known_names():
    proc = gauntlet("describe", "fgms")
    assert_bad_input(proc, "no attack, defense, metric or plugin is called 'fgms'",
                     "did you mean fgsm?",
                     "known attacks: backdoor, bim, clean-label, cw-l2, deepfool, fgsm",
                     "metrics: ", "plugins: ")
    assert proc.stdout == ""
    assert_bad_input(gauntlet("describe", "fgsm", "--kind", "defense"),
                     "no defense is called 'fgsm'", "known defenses: ")


@pytest.mark.parametrize("argv", [["audit", "-v"], ["-v", "audit"], ["audit", "--verbose"],
                                  ["--verbose", "audit"], ["plugins", "-v"], ["scan", "x", "-v"]])
def test_verbose_is_accepted_before_and_after_the_command(argv):
    from gauntlet.cli import _parser
    assert _parser().parse_args(argv).verbose is True


def test_verbose_defaults_to_off():
    from gauntlet.cli import _parser
    assert _parser().parse_args(["audit"]).verbose is False


FAILING_PLUGIN = """
import gauntlet
from gauntlet import Access, Attack, CleanOutcome, Family, Metric


class Explodes(Attack):
    \"\"\"Raises mid-attack.\"\"\"
    name = "explodes"
    family = Family.EVASION
    needs = Access.LABELS

    def run(self, model, dataset, rng):
        raise RuntimeError("kaboom in plugin")


class Fragile(Metric):
    \"\"\"Raises on every clean outcome.\"\"\"
    name = "fragile"
    applies_to = (CleanOutcome,)

    def compute(self, outcome):
        raise ValueError("fragile metric gave up")


@gauntlet.hookimpl
def register_attacks(register):
    register(Explodes)


@gauntlet.hookimpl
def register_metrics(register):
    register(Fragile)
"""


@pytest.fixture
def failing_distribution(tmp_path):
    """An installed distribution with an attack that raises and a metric that raises."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "failing_plugin.py").write_text(FAILING_PLUGIN)
    info = site / "gauntlet_failing-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gauntlet-failing\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text("[gauntlet]\nfailing = failing_plugin\n")
    return {"PYTHONPATH": str(site)}


IRIS_AUDIT = ["--model", "builtin:mlp", "--data", "sklearn:iris", "--defenses", "none",
              "--samples", "20", "--no-progress"]


def test_fail_on_error_exits_1_after_the_report_and_each_error_is_printed_once(
        failing_distribution, tmp_path):
    out = tmp_path / "o"
    proc = gauntlet("audit", *IRIS_AUDIT, "--attacks", "explodes,noise", "--out", str(out),
                    "--fail-on-error", env=failing_distribution)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("kaboom in plugin") == 1, proc.stderr
    assert proc.stderr.count("fragile metric gave up") == 1, proc.stderr
    assert "failing (--fail-on-error): 1 error cells, 1 failed metric values" in proc.stderr
    assert "1 errors, 1 metric values lost" in proc.stdout
    data = json.loads((out / "results.json").read_text())  # the report was written first
    assert (out / "report.html").is_file()
    cells = {c["attack"]: c for c in data["cells"] if c["attack_point"] in ("", "eps=0.3")}
    assert cells["explodes"]["status"] == "error"
    clean = cells["clean"]
    assert clean["status"] == "ok" and "clean_accuracy" in clean["metrics"]
    assert clean["metric_errors"] == {"fragile": "ValueError: fragile metric gave up"}
    assert "fragile" not in clean["metrics"]


def test_without_fail_on_error_an_audit_with_error_cells_exits_0(monkeypatch, tmp_path,
                                                                   capsys):
    import types

    from gauntlet import Attack, Family, api, hookimpl
    from gauntlet.cli import main
    from gauntlet.registry import make_registry

    class Explodes(Attack):
        """Raises mid-attack.

        Test attack.
        """

        name = "explodes"
        family = Family.EVASION

        def run(self, model, dataset, rng):
            raise RuntimeError("kaboom in plugin")

    ns = types.SimpleNamespace(__name__="explodes_plugin",
                               register_attacks=hookimpl(lambda register: register(Explodes)))
    monkeypatch.setattr(api, "make_registry",
                        lambda: make_registry(plugins={"explodes": ns}))
    args = ["audit", *IRIS_AUDIT, "--attacks", "explodes"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "1 errors" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--fail-on-error"]) == 1
    assert (tmp_path / "b" / "report.html").is_file()
