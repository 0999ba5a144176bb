"""Intake as a user meets it: `gauntlet scan` verdicts and exit codes, the scan an audit
records, and the report's Intake section."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import gauntlet
from gauntlet import ModelLoadError
from gauntlet.cli import main
from gauntlet.config import from_mapping
from gauntlet.intake import ScanReport, scan
from gauntlet.registry import make_registry
from gauntlet.reports.html import render_report

ARCH = "gauntlet.plugins.torch_models:build_cnn"


def gauntlet_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gauntlet", *args], capture_output=True,
                          text=True, timeout=300, env=os.environ.copy())


class WritesMarker:
    """A pickle payload that, if ever unpickled, creates a marker file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, digits_model: gauntlet.Model) -> dict:
    folder = tmp_path_factory.mktemp("scan")
    module = digits_model._base
    out = {"state_dict": folder / "cnn.pt", "safetensors": folder / "cnn.safetensors",
           "full": folder / "full.pt", "torchscript": folder / "cnn.ts",
           "evil": folder / "evil.pkl", "marker": folder / "PWNED", "text": folder / "x.pt"}
    torch.save(module.state_dict(), out["state_dict"])
    save_file(module.state_dict(), str(out["safetensors"]))
    torch.save(module, out["full"])
    torch.jit.script(module).save(str(out["torchscript"]))
    out["evil"].write_bytes(pickle.dumps({"w": WritesMarker(out["marker"])}))
    out["text"].write_text("not a model")
    return out


def test_scan_report_verdict_follows_refused_findings():
    report = ScanReport.of("m.pt", b"abc", "torchscript")
    assert report.safe and report.verdict == "safe to load"
    assert report.sha256 == hashlib.sha256(b"abc").hexdigest() and report.size == 3
    report.note("an unusual but harmless member")
    assert report.safe
    report.refuse("aten::from_file", "forward of net.block1")
    report.refuse("prim::Print", "forward")
    assert not report.safe
    assert report.verdict == "refused: aten::from_file in forward of net.block1 (and 1 more)"
    assert "m.pt is a torchscript file that Gauntlet will not load: aten::from_file" in \
        str(report.error())


@pytest.mark.parametrize("kind, fmt, safe, listed", [
    ("state_dict", "torch.save", True, "tensors"),
    ("safetensors", "safetensors", True, "tensors"),
    ("torchscript", "torchscript", True, "operators"),
    ("full", "torch.save", False, "globals"),
    ("evil", "pickle", False, "globals"),
])
def test_scan_knows_each_format_without_running_it(files, kind, fmt, safe, listed):
    report = scan(make_registry(), files[kind])
    assert (report.format, report.safe) == (fmt, safe)
    assert report.inventory[listed], report.inventory
    assert report.sha256 == hashlib.sha256(files[kind].read_bytes()).hexdigest()
    assert not files["marker"].exists()


def test_scan_lists_what_a_pickle_would_import(files):
    report = scan(make_registry(), files["full"])
    imported = {f"{g['module']}.{g['name']}" for g in report.inventory["globals"]}
    assert "torch.nn.modules.conv.Conv2d" in imported
    assert "unpickling" in report.verdict and "state_dict" in report.verdict
    evil = scan(make_registry(), files["evil"])
    assert {(g["module"], g["name"]) for g in evil.inventory["globals"]} & \
        {("builtins", "open"), ("io", "open"), ("__builtin__", "open")}
    assert not files["marker"].exists()


def test_scan_of_safetensors_lists_names_dtypes_and_shapes(files, digits_model):
    report = scan(make_registry(), files["safetensors"])
    tensors = {t["name"]: (t["dtype"], tuple(t["shape"])) for t in report.inventory["tensors"]}
    expected = {k: tuple(v.shape) for k, v in digits_model._base.state_dict().items()}
    assert {k: shape for k, (_, shape) in tensors.items()} == expected
    assert {dtype for dtype, _ in tensors.values()} == {"F32"}


def test_truncated_safetensors_is_refused(files, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(files["safetensors"].read_bytes()[:-100])
    report = scan(make_registry(), cut)
    assert not report.safe and "truncated" in report.verdict


def test_unreadable_files_raise_model_load_error(files, tmp_path):
    with pytest.raises(ModelLoadError, match="not a model format Gauntlet reads"):
        scan(make_registry(), files["text"])
    with pytest.raises(ModelLoadError, match="model file not found"):
        scan(make_registry(), tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match="is a folder"):
        scan(make_registry(), tmp_path)


@pytest.mark.parametrize("kind, code", [("state_dict", 0), ("torchscript", 0), ("full", 1),
                                        ("evil", 1), ("text", 2)])
def test_scan_exit_codes(files, kind, code, capsys):
    assert main(["scan", str(files[kind])]) == code
    out, err = capsys.readouterr()
    if code == 2:
        assert err.startswith("gauntlet: error:") and "x.pt" in err
    else:
        assert ("verdict: safe to load" in out) == (code == 0)
    assert not files["marker"].exists()


def test_scan_from_the_shell_refuses_with_exit_1(files):
    proc = gauntlet_cli("scan", str(files["evil"]))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "REFUSED" in proc.stdout and "unpickling" in proc.stdout
    assert not files["marker"].exists()


def test_scan_json_is_the_report_as_data(files, capsys):
    assert main(["scan", "--json", str(files["torchscript"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["safe"] is True and data["format"] == "torchscript"
    assert data["inventory"]["operators"].get("aten::conv2d", 0) >= 2
    assert data["sha256"] == hashlib.sha256(files["torchscript"].read_bytes()).hexdigest()


def test_audit_records_the_scan_and_the_report_shows_it(files, digits):
    result = gauntlet.audit(model=str(files["state_dict"]), data=digits, attacks=[],
                            defenses=["none"], samples=20,
                            config=from_mapping({"model": {"arch": ARCH}}))
    intake = result.result["intake"]
    assert intake["safe"] is True and intake["format"] == "torch.save"
    assert intake["sha256"] == result.result["provenance"]["model"]["sha256"]
    html = render_report(result.result)
    assert 'data-status="safe"' in html and intake["sha256"] in html


def test_builtin_model_says_why_it_was_not_scanned(digits):
    result = gauntlet.audit(model="builtin:mlp", data=digits, attacks=[], defenses=["none"],
                            samples=20)
    assert result.result["intake"]["safe"] is None
    assert "built-in" in result.result["intake"]["verdict"]
    assert 'data-status="not-scanned"' in render_report(result.result)


def test_report_escapes_a_hostile_file_name_and_findings(files):
    result = {"intake": {"safe": False, "format": "torchscript", "path": "<script>x</script>",
                         "verdict": "refused: <img src=x onerror=alert(1)>",
                         "findings": [{"what": "<b>op</b>", "where": "<i>w</i>",
                                       "refused": True}],
                         "inventory": {"operators": {"<svg onload=1>": 1}}}}
    html = render_report(result)
    assert "<script>x</script>" not in html and "onerror=alert" not in html.replace(
        "onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "&lt;svg onload=1&gt;" in html
    assert 'data-status="refused"' in html


def test_a_risky_pickle_is_refused_from_its_import_list_alone(files, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load ran on a pickle the import list already refused")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for kind in ("evil", "full"):
        report = scan(make_registry(), files[kind])
        assert not report.safe and "in the pickle's imports" in report.verdict
    assert not files["marker"].exists()
