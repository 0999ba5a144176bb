"""The poison-filter base (gauntlet.PoisonFilter) through the runner: built on clean data
it costs clean rows only; in a poisoning cell it inspects the attacker's set with the
model trained on all of it, re-trains on what it keeps, and its removals are scored
against the rows the attacker poisoned."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import plugin

from gauntlet import Dataset, Model, PoisonedSet, PoisonFilter
from gauntlet.poisoning import PoisonedSetError
from gauntlet.registry import make_registry


class BottomRightFilter(PoisonFilter):
    """Flags every training image whose bottom-right pixel is unusually bright.

    Test defense: a crude patch finder (the noise patch sets it at random; clean digits
    keep that corner dark), so what it removes is known without it.
    """

    name = "corner-filter"
    seen: list = []

    def find_poison(self, model: Model, dataset: Dataset, rng: np.random.Generator):
        type(self).seen.append((model, dataset.x_train))
        return np.flatnonzero(dataset.x_train[:, 0, -1, -1] > 0.05)


def run(digits: Dataset, digits_model: Model, defenses, attacks):
    from gauntlet.executor import SerialExecutor
    from gauntlet.plan import Selection, plan
    from gauntlet.plugins import defenses as builtin_defenses
    from gauntlet.plugins import metrics, poisoning
    from gauntlet.run import Runner

    registry = make_registry(entrypoints=False, plugins={
        "p": poisoning, "m": metrics, "d": builtin_defenses, "t": plugin("t", BottomRightFilter)})
    assert not registry.broken
    cells = plan(registry, [Selection(d) for d in defenses], [Selection(a) for a in attacks])
    runner = Runner(digits_model, digits.subsample_test(150, 0), registry.metrics.values(), 0)
    return SerialExecutor(progress=False).run(runner, cells)


def test_a_filter_is_scored_against_the_attacker_s_rows(digits: Dataset,
                                                         digits_model: Model) -> None:
    BottomRightFilter.seen = []
    results = run(digits, digits_model, ["none", "corner-filter"], ["backdoor"])
    assert all(r.status == "ok" for r in results), [r.reason for r in results]
    by = {(r.defense, r.attack): r for r in results}
    # Built twice: once on the clean split (the clean cell), once on the attacker's set.
    (_, clean_rows), (_, poisoned_rows) = BottomRightFilter.seen
    assert np.array_equal(clean_rows, digits.x_train)
    assert not np.array_equal(poisoned_rows, digits.x_train)
    # The model it inspected was trained on the poisoned set: it reads the trigger.
    from gauntlet.plugins.poisoning import Backdoor

    # By hand: which rows the attacker poisoned, which the filter flags.
    changed = (poisoned_rows != digits.x_train).reshape(len(digits.x_train), -1).any(axis=1)
    flagged = poisoned_rows[:, 0, -1, -1] > 0.05
    cell = by[("corner-filter", "backdoor")]
    m = cell.metrics
    hits = int((flagged & changed).sum())
    assert m["detection_precision"]["value"] == pytest.approx(hits / flagged.sum())
    assert m["detection_recall"]["n"] == round(Backdoor().fraction * len(digits.x_train)) \
        == changed.sum()
    assert m["detection_recall"]["value"] == pytest.approx(hits / changed.sum())
    assert cell.artifacts["flagged"] == int(flagged.sum())
    # Removing most of the poison takes most of the backdoor with it.
    undefended = by[("none", "backdoor")].metrics["backdoor_success"]["value"]
    assert undefended > 0.9
    assert m["detection_recall"]["value"] > 0.9
    assert m["backdoor_success"]["value"] < undefended - 0.3
    assert "detection_precision" not in by[("none", "backdoor")].metrics
    # The clean cell's model was re-trained without the clean rows the filter flagged.
    assert by[("corner-filter", "clean")].status == "ok"


def test_find_poison_must_return_row_indices(digits: Dataset, digits_model: Model) -> None:
    class Bad(PoisonFilter):
        """Returns nonsense.

        Test defense.
        """

        name = "bad-filter"

        def find_poison(self, model, dataset, rng):
            return np.array([len(dataset.x_train) + 3])

    with pytest.raises(PoisonedSetError, match="indices of the"):
        Bad().apply(digits_model, digits, np.random.default_rng(0))

    class Everything(PoisonFilter):
        """Removes every row.

        Test defense.
        """

        name = "all-filter"

        def find_poison(self, model, dataset, rng):
            return np.ones(len(dataset.x_train), dtype=bool)

    with pytest.raises(PoisonedSetError, match="nothing is left"):
        Everything().apply(digits_model, digits, np.random.default_rng(0))


def test_poisoned_rows_are_checked(digits: Dataset) -> None:
    from gauntlet.plugins.poisoning import LabelFlip

    attack = LabelFlip(fraction=0.1)
    good = attack.poison(digits, np.random.default_rng(0))
    assert good.poisoned_rows is not None
    assert np.array_equal(np.flatnonzero(good.y != digits.y_train), good.poisoned_rows)
    bad = PoisonedSet(good.x, good.y, good.n_poisoned, poisoned_rows=good.poisoned_rows[:-1])
    with pytest.raises(PoisonedSetError, match="distinct row indices"):
        attack._checked(bad, digits)
    aimed = PoisonedSet(good.x, good.y, good.n_poisoned, aimed=np.zeros(3, dtype=np.int64))
    with pytest.raises(PoisonedSetError, match="one class"):
        attack._checked(aimed, digits)


def test_features_are_the_input_of_the_last_linear_layer(digits: Dataset,
                                                         digits_model: Model) -> None:
    import torch

    x = digits.x_test[:600]  # more than one batch of 512
    before = digits_model.queries
    features = digits_model.features(x)
    assert digits_model.queries == before + len(x)
    net = digits_model._base
    with torch.no_grad():  # by hand: everything up to the last layer of the Sequential
        expected = net[:-1](torch.as_tensor(x)).numpy()
    assert features.shape == (len(x), net[-1].in_features)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    # The last layer applied to them gives the logits.
    np.testing.assert_allclose(features @ net[-1].weight.numpy().T + net[-1].bias.numpy(),
                               digits_model.logits(x), rtol=1e-4, atol=1e-4)
