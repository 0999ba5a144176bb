"""Declared parameters: each one written once, with its default, type, help and bounds.

A plugin class declares a parameter as an annotated class attribute::

    class FGSM(EvasionAttack):
        eps: float = param((0.05, 0.1, 0.2, 0.3), "L-infinity budget per input", ge=0)
        backend: str = param("torch", "which implementation runs", choices=("torch", "art"))

The annotation is the type (``bool``, ``int``, ``float`` or ``str``, optionally
``| None``); mypy reads it, so ``self.eps`` is a ``float`` in the plugin's code. A tuple
default is a sweep: the audit runs one cell per value. A user may override any declared
parameter with one value or a list (a sweep); an unknown name, a wrong type or a value
outside the bounds is a :class:`gauntlet.ConfigError` (exit 2) before anything runs,
naming the parameter and the bound. A subclass may re-declare a parameter to change its
default.
"""
from __future__ import annotations

import itertools
import json
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from gauntlet.errors import ConfigError, PluginError

Params = dict[str, Any]
_SCALARS: tuple[type, ...] = (bool, int, float, str)


class Param:
    """One declared parameter (made by :func:`param`; read by the registry and the CLI)."""

    def __init__(self, default: Any, help: str, *, ge: float | None = None,
                 gt: float | None = None, le: float | None = None, lt: float | None = None,
                 choices: Sequence[Any] | None = None) -> None:
        self.default = tuple(default) if isinstance(default, (list, tuple)) else default
        self.help = help
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.choices = tuple(choices) if choices is not None else None
        self.name = ""
        self.kind: type = object
        self.optional = False

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"param({self.default!r}, {self.help!r})"

    # -- what the parameter is -------------------------------------------------------
    @property
    def sweep(self) -> bool:
        return isinstance(self.default, tuple)

    @property
    def defaults(self) -> tuple[Any, ...]:
        """The default values: one, or the sweep."""
        return self.default if isinstance(self.default, tuple) else (self.default,)

    def type_name(self) -> str:
        return self.kind.__name__ + (" | None" if self.optional else "")

    def bounds_text(self) -> str:
        """The bounds as a person reads them: ``>= 0``, ``> 0 and <= 1``, ``one of a, b``."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt),
                                               ("<=", self.le), ("<", self.lt)) if v is not None]
        return " and ".join(parts)

    def describe(self) -> dict[str, Any]:
        """Plain data for ``gauntlet describe`` and ``gauntlet plugins --json``."""
        return {"name": self.name, "type": self.type_name(),
                "default": list(self.default) if self.sweep else self.default,
                "sweep": self.sweep, "bounds": self.bounds_text(), "help": self.help}

    # -- checking values -------------------------------------------------------------
    def check(self, owner: str, value: Any) -> Any:
        """Return ``value`` (an int cast to float where the type is float), or raise
        ConfigError naming ``owner``, the parameter and what it must be."""
        if value is None and self.optional:
            return None
        kind = self.kind
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{owner}: parameter {self.name!r} must be {self.type_name()}, "
                              f"got {value!r} ({type(value).__name__})")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{owner}: parameter {self.name!r} must be {self.bounds_text()}, "
                              f"got {value!r}")
        if kind in (int, float):
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{owner}: parameter {self.name!r} is NaN")
            for op, bound, fine in ((">=", self.ge, lambda v, b: v >= b),
                                    (">", self.gt, lambda v, b: v > b),
                                    ("<=", self.le, lambda v, b: v <= b),
                                    ("<", self.lt, lambda v, b: v < b)):
                if bound is not None and not fine(value, bound):
                    raise ConfigError(f"{owner}: parameter {self.name!r} must be {op} {bound:g}, "
                                      f"got {value!r}")
        return value

    def settle(self, owner: type, hints: Mapping[str, Any]) -> None:
        """Fix the type from the class annotation (else from the default) and check the
        declaration itself; raise PluginError if it is malformed."""
        where = f"{getattr(owner, 'kind', 'plugin')} {getattr(owner, 'name', '')!r}"
        hint = hints.get(self.name)
        kind, optional = _scalar_type(hint)
        if kind is None:
            if hint is not None:
                raise PluginError(f"{where}: parameter {self.name!r} is annotated {hint!r}; "
                                  "a parameter is bool, int, float or str (optionally | None)")
            first = next((v for v in self.defaults if v is not None), None)
            kind, optional = type(first) if first is not None else str, None in self.defaults
        if kind not in _SCALARS:
            raise PluginError(f"{where}: parameter {self.name!r} has a default of type "
                              f"{kind.__name__}; a parameter is bool, int, float or str")
        self.kind, self.optional = kind, optional
        if not self.help or not isinstance(self.help, str):
            raise PluginError(f"{where}: parameter {self.name!r} has no help text")
        if self.sweep and not self.default:
            raise PluginError(f"{where}: parameter {self.name!r} has an empty sweep")
        for value in self.defaults:
            try:
                self.check(where, value)
            except ConfigError as exc:
                raise PluginError(f"its own default breaks its declaration: {exc}") from None


def _scalar_type(hint: Any) -> tuple[type | None, bool]:
    """(bool|int|float|str, optional) for an annotation, or (None, False)."""
    if hint in _SCALARS:
        return hint, False
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _SCALARS:
            return rest[0], True
    return None, False


def param(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None,
          choices: Sequence[Any] | None = None) -> Any:
    """Declare a parameter of an attack or defense (see the module docstring).

    :param default: the default value; a tuple is a sweep (one cell per value).
    :param help: one line for ``gauntlet describe``.
    :param ge, gt, le, lt: numeric bounds (>=, >, <=, <), checked before anything runs.
    :param choices: the allowed values, for a parameter that picks one of a few.
    """
    return Param(default, help, ge=ge, gt=gt, le=le, lt=lt, choices=choices)


def declared(cls: type) -> dict[str, Param]:
    """The parameters of ``cls`` and its bases, in declaration order (a re-declaration in a
    subclass replaces the base's, keeping its place)."""
    found: dict[str, Param] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Param):
                found[name] = value
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to defaults
        hints = {}
    for p in found.values():
        if p.kind is object:
            p.settle(cls, hints)
    return found


class Parameterised:
    """Base of Attack and Defense: declared parameters, resolved into attributes."""

    kind: typing.ClassVar[str] = "component"
    name: typing.ClassVar[str] = ""
    #: Modules the plugin needs beyond Gauntlet's own dependencies (import names), and
    #: the extra of its distribution that installs them: without them the plugin is
    #: listed as unavailable and its cells are "not applicable" with the install command.
    requires: typing.ClassVar[tuple[str, ...]] = ()
    extra: typing.ClassVar[str] = ""
    #: False for a study that runs only when an audit names it (several re-trainings a
    #: cell, e.g. the training-order probe, poison filters): an audit that lists no
    #: attacks (defenses) runs every one that leaves this True. ``gauntlet plugins``
    #: marks the others "opt-in".
    in_default_audit: typing.ClassVar[bool] = True

    def __init__(self, **values: Any) -> None:
        point = self.resolve(values)
        for key, value in point.items():
            setattr(self, key, value)
        self.values: Params = point
        self.validate()

    def validate(self) -> None:
        """Check combinations of parameters that bounds cannot express; raise ConfigError.
        Called on construction, so the planner reports a bad value before anything runs."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def parameters(cls) -> dict[str, Param]:
        """Every declared parameter by name."""
        return declared(cls)

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this plugin cannot run here (a module it requires is missing), or None."""
        import importlib.util

        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if not missing:
            return None
        how = (f'pip install "ml-gauntlet[{cls.extra}]"' if cls.extra
               else "pip install " + " ".join(missing))
        return (f"{cls.owner()} needs {', '.join(missing)}, which is not installed: {how}")

    @classmethod
    def owner(cls) -> str:
        return f"{cls.kind} {cls.name!r}"

    @classmethod
    def _unknown(cls, keys: Any) -> None:
        known_params = cls.parameters()
        unknown = sorted(set(keys) - set(known_params))
        if unknown:
            known = ", ".join(sorted(known_params)) or "none"
            raise ConfigError(
                f"{cls.owner()}: unknown parameter {unknown[0]!r}; known parameters: {known}")

    @classmethod
    def resolve(cls, values: Mapping[str, Any]) -> Params:
        """One full parameter point: defaults (first of a sweep) overridden by ``values``."""
        cls._unknown(values)
        point: Params = {}
        for key, p in cls.parameters().items():
            if key in values:
                if isinstance(values[key], (list, tuple)):
                    raise ConfigError(f"{cls.owner()}: parameter {key!r} takes one value here")
                point[key] = p.check(cls.owner(), values[key])
            else:
                point[key] = p.defaults[0]
        return point

    @classmethod
    def grid(cls, overrides: Mapping[str, Any] | None = None) -> list[tuple[Params, str]]:
        """Every parameter point of the sweep, with its label: defaults, then overrides."""
        overrides = dict(overrides or {})
        cls._unknown(overrides)
        axes: dict[str, tuple[Any, ...]] = {}
        for key, p in cls.parameters().items():
            value = overrides.get(key, p.default)
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if not values:
                raise ConfigError(f"{cls.owner()}: parameter {key!r} has an empty sweep")
            axes[key] = tuple(p.check(cls.owner(), v) for v in values)
        swept = tuple(k for k, v in axes.items() if len(v) > 1)
        points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
        return [(p, describe_point(p, swept)) for p in points]

    @classmethod
    def description(cls) -> str:
        """The first line of the class docstring."""
        return summary(cls)

    @classmethod
    def validate_class(cls) -> None:
        """Raise PluginError if the class metadata or a parameter declaration is malformed."""
        if not cls.name or not isinstance(cls.name, str):
            raise PluginError(f"{cls.__qualname__} has no name")
        if not cls.description():
            raise PluginError(f"{cls.owner()} ({cls.__qualname__}) has no docstring")
        legacy = getattr(cls, "params", None)
        if isinstance(legacy, Mapping) and legacy:
            raise PluginError(
                f"{cls.owner()} declares parameters in a `params` dict, which Gauntlet no "
                "longer reads: declare each as a class attribute, e.g. "
                "`eps: float = gauntlet.param(0.1, 'one line of help', ge=0)` "
                "(docs/plugins.md, 'Parameters')")
        cls.parameters()


def summary(obj: object) -> str:
    """The first line of an object's docstring ("" if it has none)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def describe_point(point: Mapping[str, Any], swept: tuple[str, ...]) -> str:
    """A short label for a parameter point, naming only the swept parameters."""
    return ", ".join(f"{k}={point[k]:g}" if isinstance(point[k], float) else f"{k}={point[k]}"
                     for k in swept)


def params_key(point: Mapping[str, Any]) -> str:
    """A canonical, JSON string of a parameter point (for cell ids and tables)."""
    return json.dumps(dict(point), sort_keys=True, default=str)
