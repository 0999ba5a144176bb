"""What attacks and defenses share: metadata on the class, parameters whitelisted.

A plugin class declares ``params``: a mapping of parameter name to default. A tuple or
list default is a sweep: the audit runs one cell per value. The user may override any
declared parameter (a scalar, or a list to sweep); anything else is rejected with the
list of known names, and a value of the wrong type is rejected with the expected type.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from gauntlet.errors import ConfigError, PluginError

Params = dict[str, Any]


def _is_sweep(value: Any) -> bool:
    return isinstance(value, (tuple, list))


def _check_type(owner: str, key: str, value: Any, default: Any) -> Any:
    """Return ``value`` cast to the type of ``default``, or raise ConfigError."""
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif default is None:
        ok = True
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(
            f"{owner}: parameter {key!r} must be {kind.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def describe_point(point: Mapping[str, Any], swept: tuple[str, ...]) -> str:
    """A short label for a parameter point, naming only the swept parameters."""
    return ", ".join(f"{k}={point[k]:g}" if isinstance(point[k], float) else f"{k}={point[k]}"
                     for k in swept)


class Component:
    """Base of Attack and Defense. Subclasses set the class attributes."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **values: Any) -> None:
        self.values: Params = self.resolve(values)
        self.validate()

    def validate(self) -> None:
        """Check parameter values beyond their types (ranges, combinations); raise
        ConfigError. Called on construction, so the planner reports a bad value before
        the audit starts."""

    def __getattr__(self, key: str) -> Any:
        # Parameters read as attributes: self.eps. Only reached when normal lookup fails.
        values = self.__dict__.get("values", {})
        if key in values:
            return values[key]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def owner(cls) -> str:
        return f"{cls.kind} {cls.name!r}"

    @classmethod
    def description(cls) -> str:
        """The first line of the class docstring."""
        return summary(cls)

    @classmethod
    def validate_class(cls) -> None:
        """Raise PluginError if the class metadata is malformed."""
        if not cls.name or not isinstance(cls.name, str):
            raise PluginError(f"{cls.__qualname__} has no name")
        if not cls.description():
            raise PluginError(f"{cls.owner()} ({cls.__qualname__}) has no docstring")
        for key, default in cls.params.items():
            if _is_sweep(default) and not default:
                raise PluginError(f"{cls.owner()}: parameter {key!r} has an empty sweep")

    @classmethod
    def _unknown(cls, keys: Any) -> None:
        unknown = sorted(set(keys) - set(cls.params))
        if unknown:
            known = ", ".join(sorted(cls.params)) or "none"
            raise ConfigError(
                f"{cls.owner()}: unknown parameter {unknown[0]!r}; known parameters: {known}"
            )

    @classmethod
    def resolve(cls, values: Mapping[str, Any]) -> Params:
        """One full parameter point: defaults overridden by ``values`` (no sweeps)."""
        cls._unknown(values)
        point: Params = {}
        for key, default in cls.params.items():
            scalar_default = default[0] if _is_sweep(default) else default
            if key in values:
                if _is_sweep(values[key]):
                    raise ConfigError(f"{cls.owner()}: parameter {key!r} takes one value here")
                point[key] = _check_type(cls.owner(), key, values[key], scalar_default)
            else:
                point[key] = scalar_default
        return point

    @classmethod
    def grid(cls, overrides: Mapping[str, Any] | None = None) -> list[tuple[Params, str]]:
        """Every parameter point of the sweep, with its label: defaults, then overrides."""
        overrides = dict(overrides or {})
        cls._unknown(overrides)
        axes: dict[str, tuple[Any, ...]] = {}
        for key, default in cls.params.items():
            value = overrides.get(key, default)
            values = tuple(value) if _is_sweep(value) else (value,)
            if not values:
                raise ConfigError(f"{cls.owner()}: parameter {key!r} has an empty sweep")
            scalar_default = default[0] if _is_sweep(default) else default
            axes[key] = tuple(_check_type(cls.owner(), key, v, scalar_default) for v in values)
        swept = tuple(k for k, v in axes.items() if len(v) > 1)
        points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
        return [(p, describe_point(p, swept)) for p in points]


def summary(obj: object) -> str:
    """The first line of an object's docstring ("" if it has none)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def params_key(point: Mapping[str, Any]) -> str:
    """A canonical, JSON string of a parameter point (for cell ids and tables)."""
    return json.dumps(dict(point), sort_keys=True, default=str)
