"""The Defense interface: a transformation of a model that returns a model."""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

from gauntlet.component import Component
from gauntlet.errors import PluginError

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


class Defense(Component):
    """Base class of defenses.

    Subclasses set ``name``, ``stage``, ``params``, ``evaluation`` (one sentence: how
    attacks are run against this defense, e.g. whether gradients pass through it) and
    ``adaptive`` (False when attacks cannot account for the defense, so its robustness
    numbers are only an upper bound; the report flags it), and implement :meth:`apply`.
    """

    kind: ClassVar[str] = "defense"
    stage: ClassVar[Stage] = Stage.INPUT
    evaluation: ClassVar[str] = ""
    adaptive: ClassVar[bool] = True

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        """Return the defended model. Must not modify ``model``."""
        raise NotImplementedError

    @classmethod
    def validate_class(cls) -> None:
        super().validate_class()
        if not isinstance(cls.stage, Stage):
            raise PluginError(f"{cls.owner()}: stage must be a gauntlet.Stage")
