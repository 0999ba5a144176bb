"""Extraction metrics, measured on a real (small) theft run through the runner: a
substitute trained on the victim's answers to test-split queries."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import plugin

import gauntlet
from gauntlet import ExtractionAttack, ExtractionOutcome
from gauntlet.plugins.extraction import Fidelity, SubstituteAccuracy
from gauntlet.registry import make_registry


class QueryTheft(ExtractionAttack):
    """Trains a copy of the architecture on the victim's labels for the attacker's inputs.

    Test attack: the simplest label-only extraction (Tramer et al., 2016).
    """

    name = "query-theft"
    needs_recipe = True

    def steal(self, model, pool, budget, rng):
        x = pool[:budget]
        return model.require_recipe().train(x, model.labels(x), seed=1)


def test_metrics_against_hand_counts():
    victim = np.eye(3)[[0, 1, 2, 2]]
    substitute = np.eye(3)[[0, 1, 1, 2]]
    outcome = ExtractionOutcome(y_true=np.array([0, 1, 2, 0]), proba_victim=victim,
                                proba_substitute=substitute, queries=10)
    assert Fidelity().evaluate(outcome).value == pytest.approx(3 / 4)
    assert SubstituteAccuracy().evaluate(outcome).value == pytest.approx(2 / 4)
    low, high = Fidelity().evaluate(outcome).low, Fidelity().evaluate(outcome).high
    assert low < 0.75 < high


@pytest.mark.slow
def test_extraction_family_runs_through_the_matrix(digits, digits_model):
    registry = make_registry(plugins={"query_theft": plugin("query_theft", QueryTheft)})
    result = gauntlet.audit(model=digits_model, data=digits,
                            attacks={"query-theft": {"budget": len(digits.x_train)}},
                            defenses=["none", "confidence-noise"], samples=150, registry=registry)
    for defense in ("none", "confidence-noise"):
        fidelity = result.value("fidelity", "query-theft", defense)
        clean = result.value("clean_accuracy", "clean", defense)
        # a copy trained on the victim's own answers agrees with it most of the time
        assert fidelity is not None and fidelity > 0.85
        assert result.value("substitute_accuracy", "query-theft", defense) <= clean + 0.05


class NotingTheft(QueryTheft):
    """Trains a copy of the architecture on the victim's labels and notes what it read.

    Test attack: ``self.notes`` reaches the outcome's artifacts, fresh for each run.
    """

    name = "noting-theft"

    def steal(self, model, pool, budget, rng):
        assert self.notes == {}  # reset by the base before each theft
        self.notes["answers"] = "labels"
        x = np.array(pool[:budget])  # a writable copy for torch
        return model.require_recipe().train(x, model.labels(x), seed=1)


def test_notes_reach_the_outcome(digits, digits_model):
    attack = NotingTheft(budget=50)
    for _ in range(2):
        outcome = attack.run(digits_model.deploy(), digits, np.random.default_rng(0))
        assert outcome.notes == {"answers": "labels"}
        assert outcome.artifacts() == {"notes": {"answers": "labels"}}
        assert outcome.queries == 50
    plain = ExtractionOutcome(y_true=np.array([0]), proba_victim=np.eye(3)[[0]],
                              proba_substitute=np.eye(3)[[0]], queries=1)
    assert plain.artifacts() == {}
