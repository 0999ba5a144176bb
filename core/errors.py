"""Errors a user can act on, and the signal that a cell cannot run.

Anything derived from :class:`GauntletError` is shown by the CLI as one line and exit
code 2, without a traceback: it means the input was wrong, not the program.
"""
from __future__ import annotations


class GauntletError(Exception):
    """A problem with what the user supplied (config, files, names, parameters)."""


class ConfigError(GauntletError):
    """The audit configuration is malformed or names something that does not exist."""


class ModelLoadError(GauntletError):
    """A model file is missing, unreadable, unsafe to load, or does not fit the data."""


class DataError(GauntletError):
    """A dataset is missing, malformed, or does not fit the model."""


class PluginError(GauntletError):
    """A plugin is malformed: a duplicate name, a missing attribute, a bad parameter spec."""


class NotApplicable(Exception):
    """Raised by a plugin when a cell cannot run (e.g. gradients are hidden).

    The runner records the cell as ``not_applicable`` with this message as the reason.
    It is not an error: the report shows it as a deliberate gap.
    """


class AccessDenied(GauntletError):
    """A plugin asked a model for more than its deployment exposes (scores from a
    labels-only model, gradients or the torch module from a black box).

    Raised by :class:`gauntlet.Model`. An attack that declares the access it ``needs``
    never sees it: the cell is marked not applicable before the attack runs. Seeing it in
    a cell means the attack uses more than it declares.
    """
