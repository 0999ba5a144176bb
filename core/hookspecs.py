"""Gauntlet's hook specifications: the reference a plugin author reads.

A plugin is a module (or object) with functions decorated ``@gauntlet.hookimpl`` and
named after these specs. Register it under the ``gauntlet`` entry-point group::

    [project.entry-points.gauntlet]
    my_plugin = "my_package.my_module"

``GAUNTLET_TRACE_PLUGINS=1`` prints every hook call (plugins reached, time, result type)
on stderr.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from gauntlet.attack import Attack
    from gauntlet.dataset import Dataset
    from gauntlet.defense import Defense
    from gauntlet.intake import ScanReport
    from gauntlet.metric import Metric
    from gauntlet.model import Model

hookspec = pluggy.HookspecMarker("gauntlet")


@hookspec(firstresult=True)
def load_model(spec: str, options: Mapping[str, Any]) -> Model | None:
    """Return a Model for ``spec`` if this plugin understands it, else None.

    :param spec: what the user named as the model: a file path (``cnn.pt``,
        ``model.safetensors``, ``net.pt2``) or a scheme (``builtin:digits-cnn``).
    :param options: the ``[model]`` table of the audit config, less ``spec``:
        e.g. ``arch`` (``package.module:factory``), ``input_shape``, ``n_classes``,
        and ``dataset`` (the loaded :class:`gauntlet.Dataset`, for loaders that train).

    Stops at the first non-None result. The built-in loaders are ``trylast``, so every
    third-party loader is asked before them, whatever its name. Raise
    :class:`gauntlet.ModelLoadError` for a file this plugin recognises but refuses (e.g.
    one that needs unpickling).
    """


@hookspec(firstresult=True)
def scan_model(path: Path, data: bytes) -> ScanReport | None:
    """Return what the model file at ``path`` is and would do, if this plugin reads its
    format, else None. Nothing from the file may run while it is scanned.

    :param path: the file as the user named it (for messages; its bytes are ``data``).
    :param data: the file's bytes, read once by the caller.

    Stops at the first non-None result. ``gauntlet scan`` prints the report; an audit
    scans its model file the same way and refuses a report that is not ``safe``. A
    plugin whose ``load_model`` reads a format should scan that format here, and its
    loader should refuse what the scan refuses (see :mod:`gauntlet.intake`).
    """


@hookspec(firstresult=True)
def load_dataset(spec: str, options: Mapping[str, Any]) -> Dataset | None:
    """Return a Dataset for ``spec`` if this plugin understands it, else None.

    :param spec: what the user named as the data, e.g. ``sklearn:digits``,
        ``idx:/usr/share/datasets/fashion-mnist``, ``npz:data.npz``.
    :param options: the ``[data]`` table of the audit config, less ``spec``.

    Stops at the first non-None result. The built-in loaders are ``trylast``, so every
    third-party loader is asked before them. Raise :class:`gauntlet.DataError` for data
    this plugin recognises but cannot read.
    """


@hookspec
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    """Register Attack classes.

    :param register: call ``register(cls)`` once per Attack class; it validates the
        class, rejects a name another plugin already took and records this plugin as
        its source.

    Called once per plugin after every plugin is loaded; return values are ignored.
    """


@hookspec
def register_defenses(register: Callable[[type[Defense]], None]) -> None:
    """Register Defense classes.

    :param register: call ``register(cls)`` once per Defense class (validated and
        recorded as for attacks).

    Called once per plugin after every plugin is loaded; return values are ignored.
    """


@hookspec
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    """Register Metric classes.

    :param register: call ``register(cls)`` once per Metric class (validated and
        recorded as for attacks).

    Called once per plugin after every plugin is loaded; return values are ignored.
    """


@hookspec
def report_sections(result: Mapping[str, Any]) -> list[Mapping[str, str]] | None:
    """Return extra sections for the HTML report, or None.

    :param result: the audit's results as written to ``results.json`` (plain data:
        ``cells``, ``metrics``, ``provenance``, ``config``).

    Each section is a mapping with ``title`` and ``text``; both are rendered as escaped
    text (a plugin never injects markup into a report). An optional ``place`` of
    ``"summary"`` shows the section inside the report's Summary, under "From the plugins"
    (for a line or two a reader must not miss); any other section is appended after the
    built-in ones. A plugin that raises is skipped and logged.
    """
