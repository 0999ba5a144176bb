"""The Metric interface, and the intervals that sampled numbers carry."""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

from gauntlet.errors import PluginError
from gauntlet.outcome import CleanOutcome
from gauntlet.params import summary

if TYPE_CHECKING:
    from gauntlet.outcome import Outcome


@dataclasses.dataclass(frozen=True)
class MetricValue:
    """A number with the sample size it rests on and, where sampling makes one
    meaningful, a 95% interval ``[low, high]``."""

    value: float
    n: int
    low: float | None = None
    high: float | None = None


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; float rounding would leave 1e-17.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def proportion(successes: float, n: int) -> MetricValue:
    """A proportion with its Wilson interval."""
    low, high = wilson(successes, n)
    return MetricValue(successes / n if n else math.nan, n, low, high)


#: How the report prints a metric's values.
FORMATS = ("percent", "number")


class Metric:
    """Base class of metrics.

    Subclasses set ``name``, ``title`` (for the report), ``applies_to`` (Outcome types),
    ``higher_is_better`` (for the defender), ``bounds`` (the value range, for colouring;
    None if unbounded), ``format`` (how the report prints a value) and implement
    :meth:`compute`.

    ``format`` is ``"percent"`` for a proportion in [0, 1] (0.88 prints as 88.0%),
    ``"number"`` for anything else (a distance, a count, bits): a number is never printed
    as a percentage unless the metric says it is one.
    """

    kind: ClassVar[str] = "metric"
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    applies_to: ClassVar[tuple[type, ...]] = ()
    higher_is_better: ClassVar[bool] = True
    bounds: ClassVar[tuple[float, float] | None] = None
    format: ClassVar[str] = "number"

    def compute(self, outcome: Outcome) -> MetricValue | float:
        """Return the metric for ``outcome`` (a bare float is taken with n = outcome.n)."""
        raise NotImplementedError

    def applies(self, outcome: Outcome) -> bool:
        return isinstance(outcome, self.applies_to)

    def evaluate(self, outcome: Outcome) -> MetricValue:
        result = self.compute(outcome)
        if isinstance(result, MetricValue):
            return result
        return MetricValue(float(result), outcome.n)

    @classmethod
    def description(cls) -> str:
        return summary(cls)

    @classmethod
    def validate_class(cls) -> None:
        if not cls.name:
            raise PluginError(f"{cls.__qualname__} has no name")
        if not cls.description():
            raise PluginError(f"metric {cls.name!r} ({cls.__qualname__}) has no docstring")
        if not cls.applies_to:
            raise PluginError(f"metric {cls.name!r}: applies_to names no outcome type")
        if cls.format not in FORMATS:
            raise PluginError(f"metric {cls.name!r}: format must be one of "
                              f"{', '.join(FORMATS)}, got {cls.format!r}")
        if cls.format == "percent" and cls.bounds is not None and (
                cls.bounds[0] < -1 or cls.bounds[1] > 1):
            raise PluginError(f"metric {cls.name!r}: a percent metric lies in [-1, 1], "
                              f"but its bounds are {cls.bounds}")


class Fact(Metric):
    """A measurement a serving wrapper makes of itself (latency, bytes, agreement),
    reported in its defense's clean cell. Subclasses set ``name``, ``title`` (with the
    unit), ``format``, ``higher_is_better`` and ``bounds``; the value is the one the
    wrapper's :meth:`gauntlet.serving.Served.facts` returned under ``name``."""

    applies_to = (CleanOutcome,)

    def applies(self, outcome: Outcome) -> bool:
        return self.name in getattr(outcome, "facts", {})

    def compute(self, outcome: Outcome) -> MetricValue:
        assert isinstance(outcome, CleanOutcome)
        value = outcome.facts[self.name]
        return value if isinstance(value, MetricValue) else MetricValue(float(value), 1)
