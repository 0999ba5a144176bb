"""Plugin loading and registration: isolation of broken plugins, duplicate names."""
from __future__ import annotations

import types

import pytest

from gauntlet import Access, Attack, Family, PluginError, ProbeOutcome, hookimpl
from gauntlet.registry import make_registry


class Probe(Attack):
    """A test probe.

    For the registry tests only.
    """

    name = "test-probe"
    family = Family.PROBE
    needs = Access.SCORES
    outcome = ProbeOutcome
    params = {"samples": 8}


def plugin(**hooks):
    """A plugin object from hook functions (a module-like namespace)."""
    ns = types.SimpleNamespace(__name__="test_plugin")
    for name, fn in hooks.items():
        setattr(ns, name, hookimpl(fn))
    return ns


def registers(*classes):
    def register_attacks(register):
        for cls in classes:
            register(cls)
    return plugin(register_attacks=register_attacks)


def test_registered_class_is_listed_with_its_plugin():
    reg = make_registry(entrypoints=False, plugins={"mine": registers(Probe)})
    assert reg.attacks == {"test-probe": Probe}
    (row,) = reg.describe()
    assert row["kind"] == "attack" and row["name"] == "test-probe"
    assert row["group"] == "probe" and row["plugin"] == "mine"
    assert row["description"] == "A test probe."


def test_plugin_that_raises_in_register_is_broken_and_others_survive():
    def register_attacks(register):
        raise RuntimeError("boom")

    reg = make_registry(entrypoints=False, plugins={
        "bad": plugin(register_attacks=register_attacks), "good": registers(Probe)})
    assert list(reg.attacks) == ["test-probe"]
    (broken,) = reg.broken
    assert broken.name == "bad" and "RuntimeError: boom" in broken.error
    assert any(r["kind"] == "broken" and r["name"] == "bad" for r in reg.describe())


def test_misspelt_hook_marks_plugin_broken():
    def register_atacks(register):  # misspelt on purpose
        register(Probe)

    reg = make_registry(entrypoints=False,
                        plugins={"typo": plugin(register_atacks=register_atacks)})
    assert not reg.attacks
    assert "register_atacks" in reg.broken[0].error


def test_duplicate_name_is_an_error_naming_both_plugins():
    class Other(Probe):
        """Another probe with the same name."""

    reg = make_registry(entrypoints=False, plugins={"first": registers(Probe),
                                                     "second": registers(Other)})
    with pytest.raises(PluginError) as err:
        reg.check_conflicts()
    assert "'first'" in str(err.value) and "'second'" in str(err.value)
    assert "test-probe" in str(err.value)


def test_class_without_docstring_is_rejected():
    class NoDoc(Attack):
        name = "nodoc"

    NoDoc.__doc__ = None
    reg = make_registry(entrypoints=False, plugins={"p": registers(NoDoc)})
    assert not reg.attacks and "docstring" in reg.broken[0].error


def test_non_attack_registered_is_rejected():
    reg = make_registry(entrypoints=False, plugins={"p": registers(dict)})
    assert "not a Attack class" in reg.broken[0].error


def test_builtins_load_through_entry_points():
    reg = make_registry()
    assert not reg.broken, [(p.name, p.error) for p in reg.broken]
    names = {p.name for p in reg.plugins}
    assert {"evasion", "membership", "poisoning", "probes", "defenses", "metrics",
            "torch_models", "datasets"} <= names
    assert all(p.distribution == "gauntlet" for p in reg.plugins)
