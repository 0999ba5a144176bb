"""Load plugins (built-in and third-party alike), isolate the broken, register classes.

One function, :func:`load`, builds a :class:`Registry`: it loads every module in the
``gauntlet`` entry-point group (built-ins are listed there too), records a module that
fails to import or uses an unknown hook as broken, and calls each plugin's register
hooks one plugin at a time so an error names its plugin.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata as md
import logging
import traceback
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
        return {
            "kind": self.kind,
            "name": self.name,
            "group": self.group,
            "plugin": self.plugin.name,
            "distribution": self.plugin.distribution,
            "version": self.plugin.version,
            "description": self.cls.description(),
        }


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

    def _collect(self, plugin: object, info: PluginInfo) -> None:
        staged: list[Entry] = []
        for kind, hook in _REGISTER_HOOKS.items():
            impls = [i for i in getattr(self.pm.hook, hook).get_hookimpls() if i.plugin is plugin]
            for impl in impls:
                try:
                    impl.function(register=self._register_into(kind, info, staged))
                except Exception as exc:  # noqa: BLE001
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


def _one_line(text: str | None) -> str:
    """A plugin's error as one line (the CLI prints errors one line each)."""
    return " ".join((text or "").split())


def make_registry(*, entrypoints: bool = True,
                  plugins: Mapping[str, object] | None = None) -> Registry:
    """A fresh plugin manager and registry.

    :param entrypoints: load the ``gauntlet`` entry-point group (built-ins included).
    :param plugins: extra in-process plugins (modules or objects) by name.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm)
    if entrypoints:
        registry.load_entrypoints()
    for name, plugin in (plugins or {}).items():
        registry.add_plugin(plugin, name)
    return registry

