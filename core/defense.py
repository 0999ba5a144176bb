"""The Defense interface: a transformation of a model that returns a model."""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

from gauntlet.errors import PluginError
from gauntlet.params import Parameterised

if TYPE_CHECKING:
    import numpy as np

    from gauntlet.dataset import Dataset
    from gauntlet.model import Model


class Stage(str, enum.Enum):
    """Where a defense acts."""

    NONE = "none"
    INPUT = "input"  # pre-processing
    OUTPUT = "output"  # post-processing of scores
    TRAINING = "training"  # re-training
    WRAPPER = "wrapper"  # e.g. encrypted inference
    DETECTOR = "detector"


class Defense(Parameterised):
    """Base class of defenses.

    Subclasses set ``name``, ``stage``, ``evaluation`` (one sentence: how attacks are run
    against this defense, e.g. whether gradients pass through it) and ``adaptive``, declare
    parameters with :func:`gauntlet.param`, and implement :meth:`apply`, which builds the
    deployed model with :meth:`gauntlet.Model.deploy` (or re-trains it).

    ``adaptive`` has no default, because the safe answer differs per defense: True only if
    attacks account for the defense (gradients pass through it, or through the gradient
    stand-in it deploys); False makes the report flag its robustness numbers as an upper
    bound. A defense that does not declare it is listed as broken.
    """

    kind: ClassVar[str] = "defense"
    stage: ClassVar[Stage] = Stage.INPUT
    evaluation: ClassVar[str] = ""
    adaptive: ClassVar[bool]
    #: True for a defense that fits anything on the training split (an autoencoder, a
    #: distilled twin, a poison filter): a poisoning cell then builds it again on the
    #: attacker's training set, around the base re-trained on that set, as a deployer
    #: fitting it on their (poisoned) data would. Otherwise the cell re-trains the base
    #: under the defense as built on clean data, which is the same for a defense that
    #: reads no training data.
    fits_training_data: ClassVar[bool] = False

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        """Return the defended model, built with ``model.deploy(...)``; never modify
        ``model``. Draw any randomness from ``rng``."""
        raise NotImplementedError

    def skips_poisoning(self, index: int, points: int) -> str | None:
        """Why point ``index`` (from 0) of a poisoning attack's sweep of ``points`` points
        is not run under this defense, or None (the default: every point runs).

        A defense that makes every poisoning point dear (each re-trains it, e.g.
        adversarially) may run only part of a sweep; the planner asks before anything
        runs, and a skipped cell is reported as not applicable with this reason."""
        return None

    @classmethod
    def validate_class(cls) -> None:
        super().validate_class()
        if not isinstance(cls.stage, Stage):
            raise PluginError(f"{cls.owner()}: stage must be a gauntlet.Stage")
        if not isinstance(getattr(cls, "adaptive", None), bool):
            raise PluginError(
                f"{cls.owner()} does not declare adaptive = True or False: say whether "
                "attacks account for this defense (docs/plugins.md, 'Defenses')")
