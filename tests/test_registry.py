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


# -- a name that a broken plugin would have provided -----------------------------------------
def half_registers(register):
    register(Probe)
    raise RuntimeError("needs a GPU driver\nthat is missing")


def test_asking_for_a_class_of_a_broken_plugin_says_it_is_broken_and_why():
    from gauntlet import ConfigError
    reg = make_registry(entrypoints=False,
                        plugins={"probes-plus": plugin(register_attacks=half_registers)})
    assert not reg.attacks and reg.broken[0].provides == [("attack", "test-probe")]
    with pytest.raises(ConfigError) as err:
        reg.get("attack", "test-probe")
    message = str(err.value)
    assert message.startswith("attack 'test-probe' comes from plugin 'probes-plus' "
                              "((in-process)), which is broken: register_attacks raised "
                              "RuntimeError: needs a GPU driver that is missing")
    assert "unknown" not in message and "\n" not in message


def test_unknown_name_with_a_broken_plugin_installed_names_that_plugin():
    from gauntlet import ConfigError
    from gauntlet.registry import PluginInfo
    reg = make_registry(entrypoints=False, plugins={"mine": registers(Probe)})
    reg.plugins.append(PluginInfo("brighten", "brighten_pkg.attacks:plugin", "brighten", "0.2",
                                  error="failed to import: ModuleNotFoundError: No module "
                                        "named 'cv2'"))
    reg.plugins.append(PluginInfo("other", "other_pkg", "other", "1.0", error="boom"))
    with pytest.raises(ConfigError) as err:
        reg.get("attack", "brighten")
    assert str(err.value) == (
        "unknown attack 'brighten', and a broken plugin that may provide it is installed: "
        "plugin 'brighten' (brighten 0.2): failed to import: ModuleNotFoundError: No module "
        "named 'cv2' (known attacks: test-probe)")
    with pytest.raises(ConfigError) as err:  # no name matches: every broken plugin may
        reg.get("defense", "armour")
    assert "broken plugins that may provide it are installed" in str(err.value)
    assert "'brighten' (brighten 0.2)" in str(err.value) and "'other' (other 1.0): boom" \
        in str(err.value)
    assert [p.to_dict() for p in reg.broken][1] == {
        "name": "other", "distribution": "other", "version": "1.0", "error": "boom"}


def test_unknown_name_without_broken_plugins_lists_the_known_ones():
    from gauntlet import ConfigError
    reg = make_registry(entrypoints=False, plugins={"mine": registers(Probe)})
    with pytest.raises(ConfigError, match=r"^unknown attack 'nope'; known attacks: test-probe$"):
        reg.get("attack", "nope")
