"""docs/plugins.md works as written: every code block runs, and its plugins audit.

The ``python`` blocks are executed in order in one module namespace, the ``pycon``
blocks run as doctests in that namespace (their printed output must match), and the
module is then registered as an in-process plugin and audited. Any other block must say
it is not Python (``bash``, ``toml``, ``text``), so no example escapes the test.
"""
from __future__ import annotations

import doctest
import json
import re
import types
from pathlib import Path

import pytest

import gauntlet
from gauntlet import hookspecs
from gauntlet.registry import make_registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.S | re.M)
NOT_RUN = {"bash", "toml", "text"}


def blocks() -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block, in order."""
    text = DOC.read_text()
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 2)
            for m in FENCE.finditer(text)]


@pytest.fixture(scope="module")
def doc_module() -> types.ModuleType:
    """The doc's python blocks run in order in one module; its pycon blocks as doctests."""
    module = types.ModuleType("doc_plugins")
    module.__file__ = str(DOC)
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(verbose=False)
    failures: list[str] = []
    for lang, code, line in blocks():
        if lang == "python":
            exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), module.__dict__)
        elif lang == "pycon":
            test = parser.get_doctest(code, module.__dict__, f"plugins.md:{line}",
                                      str(DOC), line - 1)
            report: list[str] = []
            result = runner.run(test, out=report.append, clear_globs=False)
            if result.failed:
                failures.append("".join(report))
    module.doctest_failures = failures
    return module


@pytest.fixture(scope="module")
def registry(doc_module):
    return make_registry(entrypoints=True, plugins={"doc": doc_module})


def test_every_block_runs_or_says_it_is_not_python():
    found = blocks()
    assert sum(lang == "python" for lang, _, _ in found) >= 5
    assert {lang for lang, _, _ in found} <= {"python", "pycon"} | NOT_RUN


def test_pycon_blocks_print_what_the_doc_says(doc_module):
    assert not doc_module.doctest_failures, "\n".join(doc_module.doctest_failures)


def test_every_hook_has_a_tested_example(doc_module):
    specs = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name),
                                                       "gauntlet_spec")]
    assert len(specs) == 7
    missing = [name for name in specs if not callable(getattr(doc_module, name, None))]
    assert not missing, f"docs/plugins.md has no example of hook(s) {missing}"
    text = DOC.read_text()
    assert all(f"`{name}(" in text for name in specs)


def test_doc_plugins_register_cleanly(registry):
    assert not [p for p in registry.broken if p.name == "doc"], registry.broken
    entries = registry.entries
    for name in ("signed-step", "class-swap", "loss-threshold", "label-copy", "blank"):
        assert entries["attack"][name].plugin.name == "doc"
    assert {"median-smoothing", "rounded-scores"} <= set(entries["defense"])
    assert {"flip_rate", "queries_per_row"} <= set(entries["metric"])


def test_doc_plugins_audit_with_the_documented_metrics(registry, digits, digits_model,
                                                       tmp_path):
    result = gauntlet.audit(model=digits_model, data=digits, samples=40, seed=0,
                            attacks=["signed-step"],
                            defenses=["none", "median-smoothing", "rounded-scores"],
                            registry=registry, out=tmp_path)
    cells = {(c["defense"], c["attack"], c["attack_point"]): c for c in result.cells}
    for defense in ("none", "median-smoothing"):
        clean = cells[(defense, "clean", "")]
        assert clean["status"] == "ok", clean.get("reason")
        for eps in ("0.1", "0.3"):
            cell = cells[(defense, "signed-step", f"eps={eps}")]
            assert cell["status"] == "ok", cell.get("reason")
            metrics = cell["metrics"]
            assert not cell.get("metric_errors")
            # one loss_gradient pass per row; the core's measurements are not counted
            assert metrics["queries_per_row"]["value"] == 1.0
            assert metrics["queries_per_row"]["low"] is None
            flip = metrics["flip_rate"]
            assert 0 <= flip["low"] <= flip["value"] <= flip["high"] <= 1
        # the BPDA stand-in keeps the gradient attack effective through the median
        strong = cells[(defense, "signed-step", "eps=0.3")]["metrics"]
        assert strong["robust_accuracy"]["value"] < clean["metrics"]["clean_accuracy"][
            "value"] - 0.3
    # scores only: the gradient attack cannot run, and says why
    blocked = cells[("rounded-scores", "signed-step", "eps=0.1")]
    assert blocked["status"] == "not_applicable" and "gradients" in blocked["reason"]
    assert cells[("rounded-scores", "clean", "")]["status"] == "ok"

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["flip_rate"]["format"] == "percent"
    assert saved["metrics"]["queries_per_row"]["format"] == "number"
    html = (tmp_path / "report.html").read_text()
    assert "Error cells" in html and "0 of 9" in html  # the doc's report section


def test_doc_loaders_and_every_family_audit(registry):
    """The doc's data and model loaders are asked before the built-ins, and its attack of
    each family runs on their (fast, re-trainable) model."""
    attacks = {"signed-step": {}, "class-swap": {"fraction": 0.9}, "loss-threshold": {},
               "label-copy": {}, "blank": {}}
    result = gauntlet.audit(model="zoo:logistic", data="stripes:300", samples=0, seed=0,
                            attacks=attacks, defenses=["none"], registry=registry)
    cells = {(c["attack"], c["attack_point"]): c for c in result.cells}
    assert [c for c in cells.values() if c["status"] != "ok"] == []
    clean = cells[("clean", "")]
    assert clean["n"] == 100  # stripes:300 keeps a third for testing
    assert clean["metrics"]["clean_accuracy"]["value"] > 0.9
    swap = cells[("class-swap", "")]["metrics"]
    assert swap["accuracy_drop"]["value"] > 0.2  # most of class 0 now reads as 1
    assert {"membership_auc", "membership_advantage"} <= set(cells[("loss-threshold", "")][
        "metrics"])
    assert cells[("label-copy", "")]["metrics"]["fidelity"]["value"] > 0.8
    assert cells[("blank", "")]["n"] == 11
    assert "top_class_share" in cells[("blank", "")]["metrics"]


def test_trace_shows_the_doc_loader_asked_first(doc_module, monkeypatch, capsys):
    monkeypatch.setenv("GAUNTLET_TRACE_PLUGINS", "1")
    registry = make_registry(entrypoints=True, plugins={"doc": doc_module})
    capsys.readouterr()
    registry.pm.hook.load_dataset(spec="stripes:30", options={})
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "load_dataset(" in x]
    assert line.startswith("gauntlet trace: load_dataset(spec='stripes:30', options=dict) "
                           "[doc, ")
    assert line.endswith("-> Dataset")


def test_doc_scanner_refuses_what_it_should(registry):
    scan = registry.pm.hook.scan_model
    assert scan(path=Path("m.zoo"), data=b"ZOO1 weights").safe
    refused = scan(path=Path("m.zoo"), data=b"ZOO1 exec")
    assert not refused.safe and refused.format == "zoo"
    assert "runs code" in refused.verdict
    assert scan(path=Path("m.bin"), data=b"\x00 not a model") is None
