"""Every bad input ends with exit code 2 and one `gauntlet: error:` line naming the problem,
never a traceback: config files, flags, model and data files, and the Python API.

Most cases call the CLI's ``main`` in-process (an exception escaping it fails the test
just as a traceback would); the cases new users actually hit also run the real command.
tests/test_cli.py holds the earlier cases (missing files, unknown names, malformed TOML).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gauntlet
from gauntlet import ConfigError
from gauntlet.cli import main
from gauntlet.config import AuditConfig


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    return code, capsys.readouterr().err


def assert_bad_input(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("gauntlet: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- config files --------------------------------------------------------------------------
CONFIG_CASES = {
    "negative seed": ("seed = -1\n", ["seed must be an integer from 0", "-1"]),
    "boolean seed": ("seed = true\n", ["seed must be an integer", "True"]),
    "negative samples": ("samples = -3\n", ["samples must be an integer >= 0", "-3"]),
    "samples as text": ('samples = "all"\n', ["samples must be", "'all'"]),
    "NaN timeout": ("timeout = nan\n", ["timeout must be a number of seconds", "nan"]),
    "infinite timeout": ("timeout = inf\n", ["timeout must be", "inf"]),
    "title not text": ("title = 5\n", ["title must be str", "5"]),
    "empty out": ('out = ""\n', ["out must not be empty"]),
    "model not a table": ("model = 3\n", ["[model] must be Mapping", "3"]),
    "empty model spec": ('[model]\nspec = ""\n', ["model.spec must not be empty"]),
    "attacks not a list": ("attacks = 5\n", ["attacks must be a list of names", "5"]),
    "attack names not text": ("attacks = [1, 2]\n", ["each entry of attacks must be str"]),
    "attack parameters not a table": ("attacks = {fgsm = 3}\n",
                                      ["[attacks.fgsm] must be Mapping"]),
    "empty sweep": ("[attacks.fgsm]\neps = []\n", ["fgsm", "'eps' has an empty sweep"]),
    "nested sweep": ("[attacks.fgsm]\neps = [[0.1]]\n", ["parameter 'eps' must be float"]),
    "NaN parameter": ("[attacks.pgd]\nstep_ratio = nan\n", ["pgd", "'step_ratio' is NaN"]),
    "attack named twice": ('attacks = ["noise", "noise"]\n',
                           ["attack 'noise' is selected more than once"]),
    "negative split seed": ('[data]\nspec = "sklearn:iris"\nsplit_seed = -1\n',
                            ["split_seed must be an integer from 0", "-1"]),
    "test size as text": ('[data]\nspec = "sklearn:iris"\ntest_size = "x"\n',
                          ["test_size must be a fraction", "'x'"]),
    "test size past 1": ('[data]\nspec = "sklearn:iris"\ntest_size = 1.5\n',
                         ["test_size must be a fraction", "1.5"]),
    "IDX folder missing": ('[data]\nspec = "idx:no-such-folder"\n',
                           ["IDX data directory not found", "no-such-folder"]),
    "unknown executor": ('executor = "threads"\n', ["executor must be one of", "'threads'"]),
    "negative workers": ("workers = -2\n", ["workers must be an integer >= 0", "-2"]),
    "workers as text": ('workers = "many"\n', ["workers must be an integer", "'many'"]),
    "worker memory as a float": ("worker_memory = 1.5\n", ["worker_memory must be"]),
    "unknown device": ('device = "tpu"\n', ["device must be one of", "'tpu'"]),
    "cache of no usable type": ("cache = 3\n", ["cache must be true, false or a folder"]),
    "ray address not text": ("ray_address = 5\n", ["ray_address must be str"]),
    "built-in model option of the wrong type": (
        '[model]\nspec = "builtin:mlp"\nepochs = "many"\n[data]\nspec = "sklearn:iris"\n',
        ["epochs", "'many'"]),
}


@pytest.mark.parametrize("text, fragments", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_bad_config_file(text, fragments, tmp_path, capsys):
    cfg = tmp_path / "audit.toml"
    cfg.write_text(text)
    assert_bad_input(*run(capsys, "audit", str(cfg), "--out", str(tmp_path / "o")), *fragments)
    assert not (tmp_path / "o" / "cells.jsonl").exists()


def test_config_that_is_not_text(tmp_path, capsys):
    cfg = tmp_path / "audit.toml"
    cfg.write_bytes(b"seed = 1\n\xff\xfe\x00")
    assert_bad_input(*run(capsys, "audit", str(cfg)), "not a UTF-8 text file")


def test_config_that_is_a_folder(tmp_path, capsys):
    assert_bad_input(*run(capsys, "audit", str(tmp_path)), "is a folder, not an audit TOML")


# -- flags -----------------------------------------------------------------------------------
FLAG_CASES = {
    "negative seed": (["--seed", "-1", "--samples", "10"], ["seed must be", "-1"]),
    "seed past 2**63": (["--seed", str(2**64)], ["seed must be", str(2**64)]),
    "seed not a number": (["--seed", "abc"], ["argument --seed: invalid int value: 'abc'"]),
    "negative samples": (["--samples", "-5"], ["samples must be", "-5"]),
    "infinite timeout": (["--timeout", "inf"], ["timeout must be", "inf"]),
    "attacks naming nothing": (["--attacks", ",,"], ["--attacks names nothing"]),
    "defense named twice": (["--defenses", "none,none"],
                            ["defense 'none' is selected more than once"]),
    "unknown built-in model": (["--model", "builtin:resnet"],
                               ["no model loader understands 'builtin:resnet'"]),
    "negative workers": (["--workers", "-1"], ["workers must be an integer >= 0"]),
    "unknown executor": (["--executor", "threads"], ["invalid choice: 'threads'"]),
    "cluster without ray": (["--ray-address", "10.0.0.1:6379", "--samples", "5"],
                            ["--ray-address", "names a Ray cluster", "--executor ray"]),
    "cache both ways": (["--cache", "x", "--no-cache", "--samples", "5"],
                        ["--cache and --no-cache contradict each other"]),
    "unknown scikit-learn set": (["--data", "sklearn:mnist"],
                                 ["unknown scikit-learn dataset 'mnist'"]),
}


@pytest.mark.parametrize("args, fragments", FLAG_CASES.values(), ids=FLAG_CASES.keys())
def test_bad_flag(args, fragments, tmp_path, capsys):
    code, err = run(capsys, "audit", *args, "--out", str(tmp_path / "o"))
    assert_bad_input(code, err, *fragments)


def test_cache_folder_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    code, err = run(capsys, "audit", "--cache", str(tmp_path / "a-file"), "--samples", "5",
                    "--out", str(tmp_path / "o"))
    assert_bad_input(code, err, "the cache folder", "a-file", "is a file")
    code, err = run(capsys, "audit", "--cache", str(tmp_path / "a-file" / "below"),
                    "--samples", "5", "--out", str(tmp_path / "o"))
    assert_bad_input(code, err, "cannot make the cache folder", "below")


def test_unknown_command(capsys):
    assert_bad_input(*run(capsys, "frobnicate"), "invalid choice: 'frobnicate'")


def test_unknown_flag_is_one_line(capsys):
    assert_bad_input(*run(capsys, "audit", "--frobnicate"), "unrecognized arguments")


@pytest.mark.parametrize("args", [["--executor", "foo"], ["--device", "foo"],
                                  ["--workers", "abc"], ["--frobnicate"]])
def test_a_usage_error_is_one_line_with_no_usage_block(args, capsys):
    code, err = run(capsys, "audit", *args)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]  # not argparse's usage block first
    assert err.startswith("gauntlet: error: ") and " --help)" in err


# -- model and data files --------------------------------------------------------------------
@pytest.fixture
def weights(tmp_path):
    import torch

    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    return path


def test_model_file_of_no_known_format(tmp_path, capsys):
    path = tmp_path / "model.pt"
    path.write_bytes(b"certainly not a model")
    assert_bad_input(*run(capsys, "audit", "--model", str(path)), str(path),
                     "not a model format Gauntlet reads")


def test_weights_without_an_architecture(weights, capsys):
    assert_bad_input(*run(capsys, "audit", "--model", str(weights), "--data", "sklearn:iris"),
                     "holds weights only", "arch =")


def test_architecture_that_cannot_be_imported(weights, capsys):
    assert_bad_input(*run(capsys, "audit", "--model", str(weights), "--data", "sklearn:iris",
                          "--arch", "no_such_module_xyz:net"),
                     "cannot import arch 'no_such_module_xyz:net'")


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def small_arrays(**changes: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((20, 4), dtype=np.float32),
              "y_train": np.arange(20) % 3,
              "x_test": rng.random((10, 4), dtype=np.float32),
              "y_test": np.arange(10) % 3}
    return arrays | changes


def test_data_file_that_is_not_npz(tmp_path, capsys):
    path = tmp_path / "data.npz"
    path.write_text("x,y\n1,2\n")
    assert_bad_input(*run(capsys, "audit", "--data", f"npz:{path}"),
                     "is not an .npz archive")


def test_npz_missing_arrays(tmp_path, capsys):
    path = npz(tmp_path / "d.npz", x_train=np.zeros((2, 4)))
    assert_bad_input(*run(capsys, "audit", "--data", f"npz:{path}"),
                     "lacks y_train, x_test, y_test")


def test_npz_with_nan_inputs(tmp_path, capsys):
    x = small_arrays()["x_test"]
    x[3, 1] = np.nan
    path = npz(tmp_path / "d.npz", **small_arrays(x_test=x))
    assert_bad_input(*run(capsys, "audit", "--data", f"npz:{path}", "--model", "builtin:mlp"),
                     "x_test holds 1 non-finite values")


def test_npz_data_option_out_of_range(tmp_path, capsys):
    path = npz(tmp_path / "d.npz", **small_arrays())
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[data]\nspec = "npz:{path}"\nlimit_train = 0\n')
    assert_bad_input(*run(capsys, "audit", str(cfg)), "limit_train must be a positive integer")


def test_output_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    code, err = run(capsys, "audit", "--model", "builtin:mlp", "--data", "sklearn:iris",
                    "--attacks", "noise", "--defenses", "none", "--samples", "5",
                    "--out", str(tmp_path / "taken"), "--no-progress")
    assert_bad_input(code, err, "cannot create output folder", "taken")


def test_report_of_json_that_is_not_results(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("[1, 2, 3]")
    assert_bad_input(*run(capsys, "report", str(path)), "is not a results.json written by")


def test_scan_of_a_missing_file(tmp_path, capsys):
    assert_bad_input(*run(capsys, "scan", str(tmp_path / "gone.pt")), "model file not found")


def test_scan_of_a_file_of_no_known_format(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert_bad_input(*run(capsys, "scan", str(path)), "not a model format Gauntlet reads")


# -- the Python API: the same errors as ConfigError ------------------------------------------
API_CASES = {
    "model of no usable type": ({"model": object()},
                                "model must be a spec string ('builtin:cnn' or a model file), "
                                "a gauntlet.Model or a torch.nn.Module, got object"),
    "data of no usable type": ({"data": 5}, "data must be a spec string"),
    "config of no usable type": ({"config": 3.5}, "config must be a TOML file path"),
    "negative seed": ({"seed": -1}, "seed must be an integer from 0"),
    "negative seed in a config object": ({"config": AuditConfig(seed=-7)}, "got -7"),
    "attacks of no usable type": ({"attacks": 5}, "attacks/defenses must be a list"),
    "attack parameters not a mapping": ({"attacks": {"fgsm": 3}}, "parameter mappings"),
    "attack names not text": ({"defenses": [None]}, "list names (strings)"),
    "unknown executor": ({"executor": "gpu"}, "executor must be one of serial, process, ray"),
    "resume without the cache": ({"resume": True, "cache": False},
                                 "resume reuses finished cells from the content cache"),
}


@pytest.mark.parametrize("kwargs, message", API_CASES.values(), ids=API_CASES.keys())
def test_bad_python_api_argument(kwargs, message):
    with pytest.raises(ConfigError) as err:
        gauntlet.audit(**kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# -- the real command, for the cases users hit ------------------------------------------------
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gauntlet", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_negative_seed_through_the_real_command(tmp_path):
    proc = cli("audit", "--seed", "-1", "--samples", "10", "--out", str(tmp_path))
    assert_bad_input(proc.returncode, proc.stderr, "seed must be an integer from 0", "-1")


@pytest.mark.parametrize("flags", [["audit", "-v"], ["-v", "audit"], ["audit", "--verbose"]])
def test_verbose_before_or_after_the_command(flags, tmp_path):
    proc = cli(*flags, "--attacks", "no-such-attack", "--out", str(tmp_path))
    # -v is accepted wherever it is; the one error is about the attack
    assert_bad_input(proc.returncode, proc.stderr, "unknown attack 'no-such-attack'")


@pytest.mark.parametrize("table, key", [("model", "ouput"), ("model", "arhc"),
                                        ("data", "sampels")])
def test_an_option_no_loader_reads_is_named_not_dropped_silently(table, key, caplog):
    from gauntlet.config import from_mapping

    with caplog.at_level("WARNING", logger="gauntlet"):
        from_mapping({table: {key: 1}})
    assert f"[{table}] option {key!r} is not read by any built-in loader" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gauntlet"):
        from_mapping({"model": {"arch": "m:f", "epochs": 3}, "data": {"test_size": 0.3}})
    assert "is not read" not in caplog.text
