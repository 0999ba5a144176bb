"""Plugin loading and registration: isolation of broken plugins, duplicate names, hook
order (built-in loaders last), report sections and hook-call tracing."""
from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from gauntlet import (
    Access,
    Attack,
    ConfigError,
    Dataset,
    Family,
    PluginError,
    ProbeOutcome,
    hookimpl,
    param,
)
from gauntlet import registry as registry_mod
from gauntlet.registry import make_registry


class Probe(Attack):
    """A test probe.

    For the registry tests only.
    """

    name = "test-probe"
    family = Family.PROBE
    needs = Access.SCORES
    outcome = ProbeOutcome
    probes: int = param(8, "inputs sent", ge=1)


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
    assert row["parameters"] == [{"name": "probes", "type": "int", "default": 8,
                                  "sweep": False, "bounds": ">= 1", "help": "inputs sent"}]


def test_legacy_params_dict_marks_the_plugin_broken_with_the_migration():
    class Legacy(Attack):
        """An attack written for the old parameter dict."""

        name = "legacy"
        params = {"eps": 0.1}

    reg = make_registry(entrypoints=False, plugins={"old": registers(Legacy)})
    assert not reg.attacks
    assert "`params` dict" in reg.broken[0].error
    assert "gauntlet.param(" in reg.broken[0].error


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
    # Published as ml-gauntlet: the name `gauntlet` on the package index is someone else's.
    assert {p.distribution for p in reg.plugins} == {"ml-gauntlet"}
    assert {p.version for p in reg.plugins} == {md.version("ml-gauntlet")}


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


# -- hook order: built-in loaders are the fallback -------------------------------------------
def tiny_dataset(name: str) -> Dataset:
    x = np.zeros((4, 1, 2, 2), np.float32)
    y = np.array([0, 1, 0, 1])
    return Dataset(name, x, y, x, y, n_classes=2)


THIRD_PARTY_LOADER = types.SimpleNamespace(__name__="third_party_loader")
THIRD_PARTY_LOADER.load_dataset = hookimpl(
    lambda spec, options: tiny_dataset("third-party") if spec == "sklearn:digits" else None)


@pytest.mark.parametrize("ep_name", ["aaa_loader", "zzz_loader"])
def test_third_party_loader_is_asked_before_the_builtins_whatever_its_name(
        ep_name, monkeypatch):
    # The loader is installed as a real entry point would be; its name sorts before or after
    # every built-in (registration order decides pluggy's order, except for trylast).
    ours = md.EntryPoint(ep_name, "test_registry:THIRD_PARTY_LOADER", "gauntlet")
    installed = types.SimpleNamespace(
        entry_points=lambda group: [*md.entry_points(group=group), ours])
    monkeypatch.setattr(registry_mod, "md", installed)
    reg = make_registry()
    assert not reg.broken and ep_name in [p.name for p in reg.plugins]
    got = reg.pm.hook.load_dataset(spec="sklearn:digits", options={})
    assert got.name == "third-party"
    # A spec it declines still reaches the built-in loader.
    assert reg.pm.hook.load_dataset(spec="sklearn:iris", options={}).name == "sklearn:iris"


def test_builtin_loaders_are_trylast_and_asked_in_a_fixed_order():
    reg = make_registry()
    for hook in ("load_model", "load_dataset"):
        impls = getattr(reg.pm.hook, hook).get_hookimpls()
        assert impls and all(i.trylast for i in impls), hook
    # pluggy asks trylast implementations earliest-registered first. scikit-learn's loader
    # must come before PyTorch's, so a pickled estimator gets the skops advice.
    order = [i.plugin_name for i in reversed(reg.pm.hook.load_model.get_hookimpls())]
    assert order == ["onnx_models", "sklearn_models", "torch_models"]
    # Scanners: scikit-learn's is tryfirst (it claims skops files and scikit-learn pickles
    # only), so a pickled estimator is refused with the skops advice, not PyTorch's.
    order = [i.plugin_name for i in reversed(reg.pm.hook.scan_model.get_hookimpls())]
    assert order == ["sklearn_models", "onnx_models", "scanners"]


# -- every hook goes through the plugin manager -------------------------------------------
def sections(*got):
    return plugin(report_sections=lambda result: list(got))


def test_report_sections_come_per_plugin_and_a_failing_one_loses_only_its_own(caplog):
    def boom(result):
        raise RuntimeError("no sections today")

    reg = make_registry(entrypoints=False, plugins={
        "first": sections({"title": "A", "text": f"{1 + 1}"}),
        "raises": plugin(report_sections=boom),
        "malformed": sections({"title": "no text"}),
        "silent": plugin(report_sections=lambda result: None),
        "last": sections({"title": "B", "text": "<b>kept as text</b>"}, {"title": 3, "text": 4}),
    })
    got = reg.report_sections({"cells": []})
    assert got == [{"title": "A", "text": "2"}, {"title": "B", "text": "<b>kept as text</b>"},
                   {"title": "3", "text": "4"}]
    failed = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert failed == ["report section of plugin raises failed",
                      "report section of plugin malformed failed"]


def test_report_sections_receive_the_result():
    seen = []
    reg = make_registry(entrypoints=False, plugins={
        "reader": plugin(report_sections=lambda result: seen.append(result))})
    assert reg.report_sections({"cells": [1]}) == [] and seen == [{"cells": [1]}]


def test_register_hooks_run_through_the_plugin_manager_one_plugin_at_a_time(capsys):
    undo = []
    seen = []

    def register_attacks(register):
        seen.append("first")
        register(Probe)

    class Other(Probe):
        """A second probe."""

        name = "other-probe"

    def register_other(register):
        seen.append("second")
        register(Other)

    import pluggy

    from gauntlet import hookspecs
    pm = pluggy.PluginManager("gauntlet")
    pm.add_hookspecs(hookspecs)
    undo.append(registry_mod.trace_hookcalls(pm))
    reg = registry_mod.Registry(pm)
    reg.add_plugin(plugin(register_attacks=register_attacks), "first")
    reg.add_plugin(plugin(register_attacks=register_other), "second")
    undo.pop()()
    # Each plugin's hook was called once, alone, and traced as a pluggy hook call.
    assert seen == ["first", "second"] and set(reg.attacks) == {"test-probe", "other-probe"}
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" [")[1].split("]")[0] for line in lines] == ["first", "second"]


def test_trace_env_var_prints_one_line_per_hook_call():
    env = {**os.environ, "GAUNTLET_TRACE_PLUGINS": "1"}
    code = ("from gauntlet.registry import make_registry\n"
            "r = make_registry()\n"
            "r.pm.hook.load_dataset(spec='nope:x', options={})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gauntlet trace: ")]
    (load,) = [ln for ln in lines if "load_dataset(" in ln]
    assert load.startswith("gauntlet trace: load_dataset(spec='nope:x', options=dict) "
                           "[datasets] ")
    assert load.endswith(" ms -> NoneType")
    assert any(ln.startswith("gauntlet trace: register_attacks(register=function) [evasion]")
               for ln in lines)
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, "GAUNTLET_TRACE_PLUGINS": "0"}, timeout=120)
    assert "gauntlet trace" not in quiet.stderr


def test_a_hook_that_raises_is_traced_as_raising(capsys):
    def load_dataset(spec, options):
        raise ValueError("bad")

    reg = make_registry(entrypoints=False, plugins={"bad": plugin(load_dataset=load_dataset)})
    undo = registry_mod.trace_hookcalls(reg.pm)
    with pytest.raises(ValueError):
        reg.pm.hook.load_dataset(spec="x", options={})
    undo()
    assert capsys.readouterr().err.rstrip().endswith("ms raised ValueError")


# -- details for gauntlet describe ----------------------------------------------------------
def test_details_of_an_unknown_name_suggests_close_ones():
    reg = make_registry(entrypoints=False, plugins={"mine": registers(Probe)})
    with pytest.raises(ConfigError) as err:
        reg.details("test-prob")
    assert "did you mean test-probe?" in str(err.value)
    assert "attacks: test-probe" in str(err.value) and "plugins: mine" in str(err.value)
    with pytest.raises(ConfigError, match="^no metric is called 'test-probe'"):
        reg.details("test-probe", "metric")


def test_details_of_a_name_two_kinds_share_asks_which():
    reg = make_registry(entrypoints=False, plugins={"test-probe": registers(Probe)})
    with pytest.raises(ConfigError, match="names an attack and a plugin; say which with --kind"):
        reg.details("test-probe")
    assert reg.details("test-probe", "plugin")["hooks"] == ["register_attacks"]
    assert reg.details("test-probe", "attack")["needs"] == "scores"


def test_a_plugin_named_like_another_is_broken_with_a_one_line_reason():
    from conftest import plugin

    registry = make_registry(plugins={"theft": plugin("theft")})  # a built-in's name
    broken = [p for p in registry.broken if p.name == "theft"]
    assert len(broken) == 1
    error = broken[0].error
    assert "already registered as 'theft'" in error and "ml-gauntlet" in error
    assert "\n" not in error and "<module" not in error  # not pluggy's dict of modules
    assert "jacobian-substitute" in registry.entries["attack"]  # the built-in still works
