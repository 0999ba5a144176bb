"""The extraction base: a real (small) theft of a digits CNN, held to its query budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import plugin

from gauntlet import (
    Access,
    ConfigError,
    Dataset,
    ExtractionAttack,
    ExtractionOutcome,
    Family,
    Model,
    NotApplicable,
    train_classifier,
)
from gauntlet.extraction import BudgetExceeded, SubstituteError
from gauntlet.plugins.extraction import Fidelity, SubstituteAccuracy
from gauntlet.plugins.torch_models import build_cnn
from gauntlet.registry import make_registry


class LabelCopy(ExtractionAttack):
    """Test theft: label part of the pool through the victim, fit a logistic regression.

    Tramer et al., 2016, "Stealing Machine Learning Models via Prediction APIs" (the
    label-only retraining attack, on a linear substitute).
    """

    name = "label-copy"

    def steal(self, model: Model, pool: np.ndarray, budget: int,
              rng: np.random.Generator) -> torch.nn.Module:
        chosen = rng.choice(len(pool), min(budget, len(pool)), replace=False)
        x = pool[chosen]
        y = model.labels(x)
        torch.manual_seed(0)
        substitute = torch.nn.Sequential(torch.nn.Flatten(),
                                         torch.nn.Linear(int(np.prod(x.shape[1:])),
                                                         model.n_classes))
        # Full-batch steps: a linear model needs no more, and they are quick.
        train_classifier(substitute, x, y, seed=0, epochs=100, lr=0.1, batch_size=len(x))
        return substitute


@pytest.fixture(scope="module")
def victim(digits: Dataset) -> Model:
    """A small CNN (3 epochs, ~93% accurate) trained on the digits training split."""
    torch.manual_seed(0)
    module = build_cnn(digits.input_shape, digits.n_classes)
    train_classifier(module, digits.x_train, digits.y_train, seed=0, epochs=3)
    return Model(module, input_shape=digits.input_shape, n_classes=digits.n_classes)


def fresh(victim: Model) -> Model:
    """The same victim with its query counter at zero."""
    return victim.deploy()


def test_registers_as_an_extraction_attack() -> None:
    registry = make_registry(entrypoints=False, plugins={"theft": plugin("theft", LabelCopy)})
    assert registry.broken == []
    cls = registry.attacks["label-copy"]
    assert cls.family is Family.EXTRACTION
    assert cls.needs is Access.LABELS
    assert cls.outcome is ExtractionOutcome
    assert cls.parameters()["budget"].describe()["bounds"] == ">= 1"


def test_theft_within_budget_copies_the_victim(victim: Model, digits: Dataset) -> None:
    model = fresh(victim)
    outcome = LabelCopy(budget=800).run(model, digits, np.random.default_rng(0))

    # The queries are the rows the theft asked for, counted by the Model; the base's own
    # measurements of victim and substitute are not the attacker's and are not counted.
    assert outcome.queries == model.queries == 800
    np.testing.assert_array_equal(outcome.proba_victim, victim.predict(digits.x_test))
    assert np.array_equal(outcome.y_true, digits.y_test)

    fidelity = Fidelity().evaluate(outcome).value
    assert fidelity > 0.85
    assert SubstituteAccuracy().evaluate(outcome).value > 0.8
    rows = outcome.per_row()
    assert np.array_equal(rows["row"], np.arange(len(digits.y_test)))
    assert rows["agree"].mean() == pytest.approx(fidelity)
    assert rows["substitute_correct"].mean() == pytest.approx(
        SubstituteAccuracy().evaluate(outcome).value)
    assert np.array_equal(rows["agree"], outcome.proba_substitute.argmax(1)
                          == victim.labels(digits.x_test))


def test_a_budget_beyond_the_pool_is_not_spent(victim: Model, digits: Dataset) -> None:
    model = fresh(victim)
    outcome = LabelCopy(budget=10_000).run(model, digits, np.random.default_rng(0))
    assert outcome.queries == len(digits.x_train)


def test_spending_over_the_budget_is_an_error_naming_the_attack(victim: Model,
                                                                digits: Dataset) -> None:
    class Greedy(LabelCopy):
        """Test theft: labels the whole pool whatever its budget.

        No paper: a budget overrun on purpose.
        """

        name = "greedy"

        def steal(self, model, pool, budget, rng):  # type: ignore[no-untyped-def]
            return super().steal(model, pool, len(pool), rng)

    with pytest.raises(BudgetExceeded, match=f"attack 'greedy': sent {len(digits.x_train)} "
                                             "rows to the victim, over its budget of 100"):
        Greedy(budget=100).run(fresh(victim), digits, np.random.default_rng(0))


def test_labels_only_victim_is_measured_as_deployed(victim: Model, digits: Dataset) -> None:
    labels_only = victim.deploy(access=Access.LABELS)
    outcome = LabelCopy(budget=300).run(labels_only, digits, np.random.default_rng(1))
    assert set(np.unique(outcome.proba_victim)) == {0.0, 1.0}
    assert np.array_equal(outcome.proba_victim.argmax(1), victim.labels(digits.x_test))

    class ScoreCopy(LabelCopy):
        """Test theft that would read probabilities.

        Tramer et al., 2016 (confidence-based extraction).
        """

        name = "score-copy"
        needs = Access.SCORES

    with pytest.raises(NotApplicable, match="scores"):
        ScoreCopy().run(labels_only, digits, np.random.default_rng(1))


def test_the_pool_is_read_only(victim: Model, digits: Dataset) -> None:
    before = digits.x_train.copy()

    class Scribbler(LabelCopy):
        """Test theft that tries to write into the dataset.

        No paper: a bug on purpose.
        """

        name = "scribbler"

        def steal(self, model, pool, budget, rng):  # type: ignore[no-untyped-def]
            pool[0] = 0.0
            return super().steal(model, pool, budget, rng)

    with pytest.raises(ValueError, match="read-only"):
        Scribbler().run(fresh(victim), digits, np.random.default_rng(0))
    assert np.array_equal(digits.x_train, before)


@pytest.mark.parametrize(("substitute", "fault"), [
    (np.zeros((450, 10)), "returned ndarray, not a torch.nn.Module"),
    (torch.nn.Flatten(), r"returned shape \(450, 64\) for 450 inputs"),
])
def test_an_unusable_substitute_names_the_attack(victim: Model, digits: Dataset,
                                                 substitute: object, fault: str) -> None:
    class Broken(ExtractionAttack):
        """Test theft that returns no usable substitute.

        No paper: a bug on purpose.
        """

        name = "broken-theft"

        def steal(self, model, pool, budget, rng):  # type: ignore[no-untyped-def]
            return substitute

    with pytest.raises(SubstituteError, match=f"attack 'broken-theft'.*{fault}"):
        Broken().run(fresh(victim), digits, np.random.default_rng(0))


@pytest.mark.parametrize("budget", [0, -3])
def test_a_budget_below_one_names_the_bound(budget: int) -> None:
    with pytest.raises(ConfigError, match="'budget' must be >= 1"):
        LabelCopy(budget=budget)
