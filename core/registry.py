"""Load plugins (built-in and third-party alike), isolate the broken, register classes.

One function, :func:`make_registry`, builds a :class:`Registry`: it loads every module in
the ``gauntlet`` entry-point group (built-ins are listed there too), records a module that
fails to import or uses an unknown hook as broken, and calls each plugin's register hooks
one plugin at a time so an error names its plugin. Every hook is called through the
plugin manager, so ``GAUNTLET_TRACE_PLUGINS=1`` traces each call on stderr.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata as md
import inspect
import logging
import os
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from gauntlet import hookspecs
from gauntlet.attack import Attack
from gauntlet.defense import Defense
from gauntlet.errors import ConfigError, PluginError
from gauntlet.metric import Metric
from gauntlet.params import summary

log = logging.getLogger(__name__)

GROUP = "gauntlet"
#: Set to 1 to trace every hook call on stderr (see :func:`trace_hookcalls`).
TRACE_ENV = "GAUNTLET_TRACE_PLUGINS"
_REGISTER_HOOKS = {"attack": "register_attacks", "defense": "register_defenses",
                   "metric": "register_metrics"}
_BASES: dict[str, type] = {"attack": Attack, "defense": Defense, "metric": Metric}
_OTHER_HOOKS = ("load_model", "load_dataset", "scan_model", "report_sections")


@dataclasses.dataclass
class PluginInfo:
    """A loaded (or broken) plugin module and where it came from."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    # (kind, name) of every class the plugin tried to register before it broke, so a
    # request for one of them can say which broken plugin has it.
    provides: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def label(self) -> str:
        """``'name' (distribution version)``, for messages."""
        return f"{self.name!r} ({f'{self.distribution} {self.version}'.strip()})"

    def to_dict(self) -> dict[str, Any]:
        """What results.json records of a broken plugin."""
        return {"name": self.name, "distribution": self.distribution,
                "version": self.version, "error": self.error}


@dataclasses.dataclass
class Entry:
    """One registered class, with the plugin that registered it."""

    kind: str  # attack | defense | metric
    name: str
    cls: Any  # an Attack, Defense or Metric subclass, by kind
    plugin: PluginInfo

    @property
    def group(self) -> str:
        """Family (attacks), stage (defenses) or direction (metrics)."""
        if self.kind == "attack":
            return str(self.cls.family.value)
        if self.kind == "defense":
            return str(self.cls.stage.value)
        return "higher is better" if self.cls.higher_is_better else "lower is better"

    def describe(self) -> dict[str, Any]:
        """One row of ``gauntlet plugins --json`` (attacks and defenses list parameters)."""
        row = {
            "kind": self.kind,
            "name": self.name,
            "group": self.group,
            "plugin": self.plugin.name,
            "distribution": self.plugin.distribution,
            "version": self.plugin.version,
            "description": self.cls.description(),
        }
        if self.kind in ("attack", "defense"):
            row["parameters"] = [p.describe() for p in self.cls.parameters().values()]
            row["unavailable"] = self.cls.unavailable()
            row["in_default_audit"] = bool(self.cls.in_default_audit)
        row.update(budget(self.cls) if self.kind == "attack" else {})
        return row

    def details(self) -> dict[str, Any]:
        """Everything ``gauntlet describe`` shows of this class, as plain data."""
        cls, out = self.cls, self.describe()
        out.pop("group")
        out["doc"] = inspect.getdoc(cls) or ""
        out["class"] = f"{cls.__module__}.{cls.__qualname__}"
        out["module"] = self.plugin.module
        if self.kind == "attack":
            out.update(family=cls.family.value, needs=cls.needs.name.lower(),
                       needs_recipe=bool(cls.needs_recipe),
                       outcome=getattr(cls.outcome, "__name__", str(cls.outcome)))
        elif self.kind == "defense":
            out.update(stage=cls.stage.value, adaptive=cls.adaptive, evaluation=cls.evaluation)
        else:
            out.update(title=cls.title, applies_to=[t.__name__ for t in cls.applies_to],
                       higher_is_better=cls.higher_is_better,
                       bounds=list(cls.bounds) if cls.bounds is not None else None,
                       format=cls.format)
        return out


def budget(cls: type) -> dict[str, Any]:
    """How an evasion attack's budget is measured, for the worst-case column and the
    evaluation checklist: ``{"norm": "linf" | "l2" | "", "minimal": bool}`` (see
    :class:`gauntlet.EvasionAttack`); empty for attacks of other families."""
    from gauntlet.evasion import EvasionAttack

    if not (isinstance(cls, type) and issubclass(cls, EvasionAttack)):
        return {}
    attack: type[EvasionAttack] = cls
    return {"norm": str(attack.norm), "minimal": bool(attack.minimal)}


class Registry:
    """Every attack, defense and metric class, the plugin manager, and what broke."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.plugins: list[PluginInfo] = []
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in _BASES}
        self.conflicts: list[str] = []

    # -- lookup ----------------------------------------------------------------------
    @property
    def attacks(self) -> dict[str, type[Attack]]:
        return {n: e.cls for n, e in self.entries["attack"].items()}

    @property
    def defenses(self) -> dict[str, type[Defense]]:
        return {n: e.cls for n, e in self.entries["defense"].items()}

    @property
    def metrics(self) -> dict[str, type[Metric]]:
        return {n: e.cls for n, e in self.entries["metric"].items()}

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def get(self, kind: str, name: str) -> type:
        """The class registered as ``name``, or ConfigError saying why there is none:
        unknown, or (when plugins are broken) which broken plugin may provide it."""
        entry = self.entries[kind].get(name)
        if entry is not None:
            return entry.cls  # type: ignore[no-any-return]
        known = ", ".join(sorted(self.entries[kind])) or "none"
        owners = [p for p in self.broken if (kind, name) in p.provides]
        if owners:
            p = owners[0]
            raise ConfigError(f"{kind} {name!r} comes from plugin {p.label()}, which is "
                              f"broken: {_one_line(p.error)}")
        suspects = self._suspects(name)
        if not suspects:
            raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {known}")
        which = "; ".join(f"plugin {p.label()}: {_one_line(p.error)}" for p in suspects)
        some = "a broken plugin that may provide it is" if len(suspects) == 1 else \
            "broken plugins that may provide it are"
        raise ConfigError(f"unknown {kind} {name!r}, and {some} installed: {which} "
                          f"(known {kind}s: {known})")

    def _suspects(self, name: str) -> list[PluginInfo]:
        """Broken plugins that may provide ``name``: those whose entry-point or module name
        matches it, else every broken plugin (an import failure hides what it holds)."""
        def norm(text: str) -> str:
            return text.lower().replace("-", "_")

        def module(p: PluginInfo) -> str:  # "pkg.mod:attr" -> "mod"
            return p.module.split(":")[0].rpartition(".")[2]

        broken = self.broken
        close = [p for p in broken if norm(name) in (norm(p.name), norm(module(p)))]
        return close or broken

    def details(self, name: str, kind: str | None = None) -> dict[str, Any]:
        """What ``gauntlet describe NAME`` shows: the attack, defense, metric or plugin
        called ``name`` (of ``kind``, if given), as plain data. ConfigError if none is, with
        close names; or if two kinds share the name and ``kind`` does not say which."""
        found = [table[name].details() for k, table in self.entries.items()
                 if kind in (None, k) and name in table]
        if kind in (None, "plugin"):
            found += [self._plugin_details(p) for p in self.plugins if p.name == name]
        if len(found) == 1:
            return found[0]
        if found:
            kinds = " and ".join(("an " if d["kind"][0] in "aeiou" else "a ") + d["kind"]
                                 for d in found)
            raise ConfigError(f"{name!r} names {kinds}; say which with --kind")
        for k in _BASES:  # a class a broken plugin would have provided: say why it is gone
            if kind in (None, k) and any((k, name) in p.provides for p in self.broken):
                self.get(k, name)
        known = {k: sorted(t) for k, t in self.entries.items() if kind in (None, k)}
        if kind in (None, "plugin"):
            known["plugin"] = sorted(p.name for p in self.plugins)
        close = difflib.get_close_matches(name, [n for ns in known.values() for n in ns], 3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        listed = "; ".join(f"{k}s: {', '.join(ns) or 'none'}" for k, ns in known.items())
        what = kind or "attack, defense, metric or plugin"
        raise ConfigError(f"no {what} is called {name!r}{hint} (known {listed})")

    def _plugin_details(self, info: PluginInfo) -> dict[str, Any]:
        plugin = self.pm.get_plugin(info.name)  # None if it never loaded
        return {"kind": "plugin", "name": info.name, "plugin": info.name,
                "distribution": info.distribution, "version": info.version,
                "description": summary(plugin) if plugin is not None else "",
                "doc": (inspect.getdoc(plugin) or "") if plugin is not None else "",
                "module": info.module, "hooks": info.hooks, "error": info.error,
                "provides": [f"{k} {n}" for k, n in info.provides]}

    def check_conflicts(self) -> None:
        """Raise PluginError if two plugins registered one name."""
        if self.conflicts:
            raise PluginError("; ".join(self.conflicts))

    def describe(self) -> list[dict[str, Any]]:
        """Every plugin class, every loader or report-section plugin, and every broken
        plugin, for `gauntlet plugins`."""
        rows = [e.describe() for kind in self.entries.values() for e in kind.values()]
        for p in self.plugins:
            hooks = [h for h in p.hooks if h in _OTHER_HOOKS]
            if p.error or not hooks:
                continue
            rows.append({"kind": "hooks", "name": p.name, "group": ", ".join(hooks),
                         "plugin": p.name, "distribution": p.distribution,
                         "version": p.version,
                         "description": summary(self.pm.get_plugin(p.name))})
        for p in self.broken:
            rows.append({"kind": "broken", "name": p.name, "group": "", "plugin": p.name,
                         "distribution": p.distribution, "version": p.version,
                         "description": p.error})
        return rows

    # -- loading ---------------------------------------------------------------------
    def add_plugin(self, plugin: object, name: str, distribution: str = "(in-process)",
                   version: str = "") -> PluginInfo:
        """Register one plugin object and its classes; a failure marks it broken."""
        info = PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__),
                          distribution, version)
        self.plugins.append(info)
        plugin = _hashable(plugin)
        taken = self.pm.get_plugin(name)
        if taken is not None:
            # pluggy's own message prints a dict of every registered module.
            owner = next((p for p in self.plugins if p.name == name and p is not info), None)
            where = f" ({owner.label()})" if owner is not None else ""
            info.error = (f"could not register: another plugin is already registered as "
                          f"{name!r}{where}; give this one another name")
            return info
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - isolate any plugin failure
            info.error = f"could not register: {exc}"
            return info
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or ())
        unknown = [h for h in info.hooks if not getattr(self.pm.hook, h).has_spec()]
        if unknown:
            self.pm.unregister(plugin)
            info.error = f"implements unknown hook {unknown[0]!r} (misspelt?)"
            return info
        self._collect(plugin, info)
        return info

    def _only(self, hook: str, plugin: object) -> Any:
        """A caller of ``hook`` that reaches ``plugin``'s implementation alone (so an error
        names its plugin), still through the plugin manager (so tracing sees it)."""
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    def _collect(self, plugin: object, info: PluginInfo) -> None:
        staged: list[Entry] = []
        for kind, hook in _REGISTER_HOOKS.items():
            if hook not in info.hooks:
                continue
            try:
                self._only(hook, plugin)(register=self._register_into(kind, info, staged))
            except Exception as exc:  # noqa: BLE001 - a broken plugin never stops the tool
                log.debug("plugin %s failed in %s", info.name, hook, exc_info=True)
                info.error = f"{hook} raised {type(exc).__name__}: {exc}"
                self.pm.unregister(plugin)
                return
        for entry in staged:
            table = self.entries[entry.kind]
            if entry.name in table:
                other = table[entry.name].plugin
                self.conflicts.append(
                    f"{entry.kind} name {entry.name!r} is registered by both plugin "
                    f"{other.name!r} ({other.distribution} {other.version}) and plugin "
                    f"{info.name!r} ({info.distribution} {info.version})"
                )
                continue
            table[entry.name] = entry

    def _register_into(self, kind: str, info: PluginInfo,
                       staged: list[Entry]) -> Callable[[type], None]:
        base = _BASES[kind]

        def register(cls: type) -> None:
            name = getattr(cls, "name", None)
            if isinstance(name, str) and name:
                info.provides.append((kind, name))
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise PluginError(f"register_{kind}s got {cls!r}, not a {base.__name__} class")
            cls.validate_class()  # type: ignore[attr-defined]
            staged.append(Entry(kind, cls.name, cls, info))  # type: ignore[attr-defined]

        return register

    def report_sections(self, result: Mapping[str, Any]) -> list[dict[str, str]]:
        """Every plugin's extra report sections for ``result`` (plain results.json data),
        in plugin order, each as ``{"title", "text"}`` strings (plus ``"place"`` when the
        plugin gave one). A plugin that raises or
        returns something malformed loses only its own sections (logged as a warning)."""
        sections: list[dict[str, str]] = []
        for info in self.plugins:
            plugin = self.pm.get_plugin(info.name)
            if info.error or plugin is None or "report_sections" not in info.hooks:
                continue
            try:
                got = self._only("report_sections", plugin)(result=result) or []
                sections += [{"title": str(s["title"]), "text": str(s["text"]),
                              **({"place": str(s["place"])} if s.get("place") else {})}
                             for got_one in got for s in (got_one or [])]
            except Exception:  # noqa: BLE001 - a report section never breaks the report
                log.warning("report section of plugin %s failed", info.name, exc_info=True)
        return sections

    def load_entrypoints(self, skip: Iterable[str] = ()) -> None:
        """Load every module of the ``gauntlet`` entry-point group, isolating failures."""
        seen: set[str] = set()
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in skip or ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else "(unknown)"
            version = ep.dist.version if ep.dist else ""
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin never stops the tool
                log.debug("plugin %s failed to import", ep.name, exc_info=True)
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                self.plugins.append(PluginInfo(ep.name, ep.value, dist, version,
                                               error=f"failed to import: {last}"))
                continue
            self.add_plugin(module, ep.name, dist, version)


def _hashable(plugin: object) -> object:
    """``plugin``, or a module holding its attributes if it cannot be hashed (a
    SimpleNamespace, a dataclass instance): pluggy's subset_hook_caller, which calls one
    plugin's hook alone, keeps the other plugins in a set."""
    try:
        hash(plugin)
        return plugin
    except TypeError:
        module = types.ModuleType(str(getattr(plugin, "__name__", type(plugin).__name__)))
        module.__doc__ = getattr(plugin, "__doc__", None)
        for attr in dir(plugin):
            if not attr.startswith("__"):
                setattr(module, attr, getattr(plugin, attr))
        return module


def _one_line(text: str | None) -> str:
    """A plugin's error as one line (the CLI prints errors one line each)."""
    return " ".join((text or "").split())


def trace_hookcalls(pm: pluggy.PluginManager) -> Callable[[], None]:
    """Write one line per hook call to stderr: the hook, the plugins it reached (in call
    order), how long it took and what it returned. Returns the undo function.

    For plugin authors: ``GAUNTLET_TRACE_PLUGINS=1 gauntlet audit ...`` shows whether a
    loader was consulted, and in which order (datasette's ``DATASETTE_TRACE_PLUGINS``).
    """
    started: list[float] = []  # a stack: a hook implementation may call another hook

    def before(hook: str, impls: Any, kwargs: Mapping[str, Any]) -> None:
        started.append(time.perf_counter())

    def after(outcome: Any, hook: str, impls: Any, kwargs: Mapping[str, Any]) -> None:
        ms = (time.perf_counter() - started.pop()) * 1000
        # pluggy calls implementations last-registered first (tryfirst/trylast aside).
        plugins = ", ".join(i.plugin_name for i in reversed(impls))
        if outcome.exception is not None:
            got = f"raised {type(outcome.exception).__name__}"
        else:
            got = f"-> {type(outcome.get_result()).__name__}"
        args = ", ".join(f"{k}={_brief(v)}" for k, v in kwargs.items())
        print(f"gauntlet trace: {hook}({args}) [{plugins}] {ms:.1f} ms {got}",
              file=sys.stderr, flush=True)

    return pm.add_hookcall_monitoring(before, after)


def _brief(value: Any) -> str:
    """A hook argument for a trace line: a short value as itself, anything else by type
    (a model file's bytes or a whole results dict would drown the trace)."""
    if isinstance(value, (str, int, float, bool, os.PathLike)) and len(str(value)) <= 80:
        return repr(str(value) if isinstance(value, os.PathLike) else value)
    return type(value).__name__


def make_registry(*, entrypoints: bool = True,
                  plugins: Mapping[str, object] | None = None) -> Registry:
    """A fresh plugin manager and registry.

    :param entrypoints: load the ``gauntlet`` entry-point group (built-ins included).
    :param plugins: extra in-process plugins (modules or objects) by name.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    if os.environ.get(TRACE_ENV, "").strip() not in ("", "0"):
        trace_hookcalls(pm)
    registry = Registry(pm)
    if entrypoints:
        registry.load_entrypoints()
    for name, plugin in (plugins or {}).items():
        registry.add_plugin(plugin, name)
    return registry

