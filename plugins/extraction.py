"""Model-theft metrics: how faithfully a substitute copies the victim.

The substitute-training attack itself (Jacobian augmentation) comes with a later issue;
these metrics already measure any plugin that returns an ExtractionOutcome.
"""
from __future__ import annotations

from collections.abc import Callable

from gauntlet import ExtractionOutcome, Metric, MetricValue, hookimpl, proportion


class Fidelity(Metric):
    """Share of test rows where the substitute predicts the victim's class.

    Jagielski et al., 2020, "High Accuracy and High Fidelity Extraction of Neural
    Networks" (fidelity as label agreement); Wilson interval.
    """

    name = "fidelity"
    title = "Extraction fidelity"
    applies_to = (ExtractionOutcome,)
    higher_is_better = False  # a faithful copy is the attacker's success
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: ExtractionOutcome) -> MetricValue:  # type: ignore[override]
        agree = outcome.proba_victim.argmax(1) == outcome.proba_substitute.argmax(1)
        return proportion(int(agree.sum()), outcome.n)


class SubstituteAccuracy(Metric):
    """Accuracy of the stolen substitute on the true test labels.

    Papernot et al., 2017, "Practical Black-Box Attacks against Machine Learning";
    Wilson interval.
    """

    name = "substitute_accuracy"
    title = "Substitute accuracy"
    applies_to = (ExtractionOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: ExtractionOutcome) -> MetricValue:  # type: ignore[override]
        right = outcome.proba_substitute.argmax(1) == outcome.y_true
        return proportion(int(right.sum()), outcome.n)


@hookimpl
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    register(Fidelity)
    register(SubstituteAccuracy)
