"""Gauntlet: a plugin-based security evaluation of machine-learning models.

The public API. Plugins import only from here::

    from gauntlet import hookimpl, EvasionAttack, Access, param
"""
from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("gauntlet")

from gauntlet.attack import Attack, Family  # noqa: E402
from gauntlet.dataset import Dataset  # noqa: E402
from gauntlet.defense import Defense, Stage  # noqa: E402
from gauntlet.errors import (  # noqa: E402
    AccessDenied,
    ConfigError,
    DataError,
    GauntletError,
    ModelLoadError,
    NotApplicable,
    PluginError,
)
from gauntlet.evasion import EvasionAttack  # noqa: E402
from gauntlet.extraction import ExtractionAttack  # noqa: E402
from gauntlet.files import sha256_file  # noqa: E402
from gauntlet.intake import Finding, ScanReport, read_model_file  # noqa: E402
from gauntlet.membership import MembershipAttack, Shadows, train_shadows  # noqa: E402
from gauntlet.metric import Fact, Metric, MetricValue, proportion, wilson  # noqa: E402
from gauntlet.model import Access, Model, Recipe  # noqa: E402
from gauntlet.outcome import (  # noqa: E402
    CleanOutcome,
    EvasionOutcome,
    ExtractionOutcome,
    MembershipOutcome,
    Outcome,
    PoisoningOutcome,
    Predictions,
    ProbeOutcome,
    ServerViewOutcome,
    TamperOutcome,
    TrainingOrderOutcome,
    TriggerScanOutcome,
)
from gauntlet.params import Param, param  # noqa: E402
from gauntlet.poisoning import PoisonedSet, PoisonFilter, PoisoningAttack  # noqa: E402
from gauntlet.probe import ProbeAttack  # noqa: E402


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("ml-gauntlet")
    except md.PackageNotFoundError:  # run from a source tree without installing
        return "0.1.0"


__version__ = _version()


def audit(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Run an audit; see :func:`gauntlet.api.audit`."""
    from gauntlet.api import audit as _audit

    return _audit(*args, **kwargs)


__all__ = [
    "AccessDenied", "EvasionAttack", "ExtractionAttack", "MembershipAttack", "Param",
    "PoisonedSet", "PoisonFilter", "PoisoningAttack", "ProbeAttack", "param",
    "Access", "Attack", "CleanOutcome", "ConfigError", "DataError", "Dataset", "Defense",
    "EvasionOutcome", "ExtractionOutcome", "Fact", "Family", "Finding", "GauntletError",
    "MembershipOutcome", "Metric", "MetricValue", "Model", "ModelLoadError", "NotApplicable",
    "Outcome", "PluginError", "PoisoningOutcome", "Predictions", "ProbeOutcome", "Recipe",
    "ScanReport", "ServerViewOutcome", "Shadows", "Stage", "TamperOutcome",
    "TrainingOrderOutcome", "TriggerScanOutcome", "train_shadows",
    "__version__", "audit", "hookimpl", "proportion", "read_model_file", "sha256_file",
    "wilson",
]

from gauntlet.training import train_classifier  # noqa: E402

__all__ += ["train_classifier"]
