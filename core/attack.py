"""The Attack interface: one threat, one parameter point, one outcome."""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

from gauntlet.errors import PluginError
from gauntlet.model import Access
from gauntlet.params import Parameterised

if TYPE_CHECKING:
    import numpy as np

    from gauntlet.dataset import Dataset
    from gauntlet.model import Model
    from gauntlet.outcome import Outcome


class Family(str, enum.Enum):
    """Threat families. ``baseline`` is the clean column every audit carries."""

    BASELINE = "baseline"
    EVASION = "evasion"
    POISONING = "poisoning"
    INFERENCE = "inference"
    EXTRACTION = "extraction"
    PROBE = "probe"
    CONFIDENTIALITY = "confidentiality"  # what the serving side learns or changes


class Attack(Parameterised):
    """Base class of attacks.

    Most attacks subclass a family's base instead (:class:`gauntlet.EvasionAttack`,
    :class:`gauntlet.PoisoningAttack`, :class:`gauntlet.MembershipAttack`,
    :class:`gauntlet.ExtractionAttack`, :class:`gauntlet.ProbeAttack`), which owns
    :meth:`run` and asks the plugin only for its idea. Subclassing Attack directly is for
    a threat no family covers: set ``name``, ``family``, ``needs`` (the access an attacker
    must have), ``needs_recipe`` (True if the attack re-trains the model), ``outcome``
    (the Outcome type ``run`` returns), declare parameters with :func:`gauntlet.param`,
    and implement :meth:`run`. An attack that finds it cannot run against a model raises
    :class:`gauntlet.NotApplicable` with the reason.
    """

    kind: ClassVar[str] = "attack"
    family: ClassVar[Family] = Family.EVASION
    needs: ClassVar[Access] = Access.LABELS
    needs_recipe: ClassVar[bool] = False
    outcome: ClassVar[type] = object

    def check(self, model: Model) -> None:
        """Raise NotApplicable if this attack cannot run against ``model``."""
        model.require(self.needs)
        if self.needs_recipe:
            model.require_recipe()

    def check_data(self, dataset: Dataset) -> None:
        """Raise ConfigError if a parameter names something ``dataset`` lacks (a column
        value, a class): called once per attack point after the data is loaded and
        before any cell runs, so a typo exits with a usage error instead of failing
        cells. The default checks nothing."""

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Outcome:
        """Attack ``model`` using ``dataset``; return the outcome. Draw randomness from
        ``rng`` (numpy and torch are also seeded per cell by the runner)."""
        raise NotImplementedError

    @classmethod
    def validate_class(cls) -> None:
        super().validate_class()
        if not isinstance(cls.family, Family):
            raise PluginError(f"{cls.owner()}: family must be a gauntlet.Family")
        if not isinstance(cls.needs, Access):
            raise PluginError(f"{cls.owner()}: needs must be a gauntlet.Access")
