"""The hook specs are the plugin author's reference: each one documented in full."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from gauntlet import hookspecs

SPECS = [(n, f) for n, f in vars(hookspecs).items()
         if callable(f) and hasattr(f, "gauntlet_spec")]
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_hook_is_declared_with_the_marker():
    assert {n for n, _ in SPECS} == {"load_model", "load_dataset", "register_attacks",
                                     "register_defenses", "register_metrics",
                                     "report_sections", "scan_model"}


@pytest.mark.parametrize("name, spec", SPECS, ids=[n for n, _ in SPECS])
def test_hook_documents_every_argument_and_its_return(name, spec):
    doc = inspect.getdoc(spec) or ""
    for arg in inspect.signature(spec).parameters:
        assert f":param {arg}:" in doc, f"{name} does not document {arg}"
    assert any(word in doc for word in ("Stops at the first", "return values are ignored",
                                        "appended")), f"{name}: what happens to the result?"
    assert inspect.signature(spec).return_annotation != inspect.Signature.empty
    assert f"`{name}(" in README, f"README's hook table lacks {name}"
