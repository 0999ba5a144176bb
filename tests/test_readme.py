"""The README's "Write a plugin" example works as written."""
from __future__ import annotations

import re
import textwrap
import types
from pathlib import Path

import gauntlet
from gauntlet.registry import make_registry

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_plugin() -> types.ModuleType:
    section = README.split("## Write a plugin", 1)[1]
    code = textwrap.dedent(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    module = types.ModuleType("readme_plugin")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    return module


def test_write_a_plugin_example_runs_in_an_audit(digits, digits_model):
    registry = make_registry(plugins={"brighten": readme_plugin()})
    assert "brighten" in registry.attacks and not registry.broken
    result = gauntlet.audit(model=digits_model, data=digits, attacks=["brighten"],
                            defenses=["none"], samples=60, registry=registry)
    cells = [c for c in result.cells if c["attack"] == "brighten"]
    assert [c["attack_point"] for c in cells] == ["shift=0.1", "shift=0.2"]
    assert all(c["status"] == "ok" and "robust_accuracy" in c["metrics"] for c in cells)


def test_readme_names_the_test_command_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "<!-- test-command -->" in README
