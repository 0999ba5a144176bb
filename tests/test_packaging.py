"""The installed names: gauntlet, gauntlet.plugins, gauntlet.reports (never a bare core),
in an editable install and in a wheel."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gauntlet

ROOT = Path(__file__).resolve().parents[1]


def source_modules() -> set[str]:
    names = set()
    for folder, package in (("core", "gauntlet"), ("plugins", "gauntlet/plugins"),
                            ("reports", "gauntlet/reports")):
        names |= {f"{package}/{p.name}" for p in (ROOT / folder).glob("*.py")}
    return names


def test_every_module_imports():
    plugins = importlib.import_module("gauntlet.plugins")
    reports = importlib.import_module("gauntlet.reports")
    imported = set()
    for package in (gauntlet, plugins, reports):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if info.name != "gauntlet.__main__":
                importlib.import_module(info.name)
                imported.add(info.name)
    assert {"gauntlet.registry", "gauntlet.plugins.metrics", "gauntlet.reports.html"} <= imported
    expected = {n[:-3].replace("/", ".") for n in source_modules()
                if not n.endswith(("__init__.py", "__main__.py"))}
    assert imported == expected
    assert Path(plugins.__file__).parent.name == "plugins"
    assert Path(reports.__file__).parent.name == "reports"


def test_wheel_holds_every_module_and_template(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # Published as ml-gauntlet (the name gauntlet is another project's); imported as gauntlet.
    (wheel,) = tmp_path.glob("ml_gauntlet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert source_modules() <= names
    templates = {f"gauntlet/reports/templates/{p.name}"
                 for p in (ROOT / "reports" / "templates").iterdir() if p.is_file()}
    assert templates and templates <= names
    assert not any(n.startswith("core/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[gauntlet]" in text and "evasion = gauntlet.plugins.evasion" in text
    assert "gauntlet = gauntlet.cli:main" in text  # the command keeps its name
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    headers = zipfile.ZipFile(wheel).read(metadata).decode().split("\n\n")[0].splitlines()
    assert "Name: ml-gauntlet" in headers
    # The extras name this distribution, not the unrelated `gauntlet` on the index.
    requires = [h for h in headers if h.startswith("Requires-Dist:") and "gauntlet" in h]
    assert requires and all("ml-gauntlet[" in h for h in requires)
