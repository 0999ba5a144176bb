"""The backdoor attack on the real digits data and the built-in CNN: what each kind does to
the training set, where the patch goes, and the founding study's findings (a mixture
backdoor is near-perfect yet invisible on clean data; wrong labels hurt, patches alone
do not), with its two metrics checked against a count by hand."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import plugin

from gauntlet import Dataset, Defense, Model, NotApplicable, PoisoningOutcome, Stage
from gauntlet.plugins.metrics import AccuracyDrop, BackdoorSuccess, TriggeredAccuracy
from gauntlet.plugins.poisoning import Backdoor, patch_pattern, stamp
from gauntlet.registry import make_registry


def poisoned(digits: Dataset, seed: int = 0, **params):
    return Backdoor(**params).poison(digits, np.random.default_rng(seed))


def patched_area(position: str, size: int, h: int = 8, w: int = 8) -> np.ndarray:
    top, left = {"bottom-right": (h - size, w - size), "top-left": (0, 0),
                 "center": ((h - size) // 2, (w - size) // 2)}[position]
    mask = np.zeros((h, w), dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_registered_with_the_study_s_kinds_and_a_cheap_default() -> None:
    from gauntlet.plugins import metrics, poisoning

    registry = make_registry(entrypoints=False, plugins={"p": poisoning, "m": metrics})
    assert registry.attacks["backdoor"] is Backdoor and not registry.broken
    assert {"backdoor_success", "triggered_accuracy"} <= set(registry.metrics)
    assert [p["kind"] for p, _ in Backdoor.grid({"kind": ["wrong-label", "noisy", "mixture"]})] \
        == ["wrong-label", "noisy", "mixture"]
    # One point by default (one re-training in the demo); sweeps are the user's to ask for.
    assert len(Backdoor.grid()) == 1
    assert [p["patch"] for p, _ in Backdoor.grid({"patch": [1, 2, 3, 4, 5, 6]})] == \
        [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("kind", ["wrong-label", "noisy", "mixture"])
def test_each_kind_changes_what_the_study_says_and_nothing_else(digits: Dataset,
                                                                kind: str) -> None:
    p = poisoned(digits, kind=kind, fraction=0.2, patch=3, target=7)
    n = round(0.2 * len(digits.y_train))
    assert p.n_poisoned == n and len(p.x) == len(digits.x_train)
    changed_x = (p.x != digits.x_train).reshape(len(p.x), -1).any(axis=1)
    changed_y = p.y != digits.y_train
    if kind == "noisy":
        assert not changed_y.any() and p.target is None
        assert 0 < changed_x.sum() <= n
    else:
        assert p.target == 7
        # Drawn from the other classes only, so every chosen row is now mislabelled.
        assert changed_y.sum() == n and (p.y[changed_y] == 7).all()
        assert (digits.y_train[changed_y] != 7).all()
    if kind == "wrong-label":
        assert not changed_x.any()
    if kind == "mixture":
        assert not (changed_x & ~changed_y).any()  # patched rows are the relabelled ones
    # Outside the patch nothing moves; inside, every patched row carries the same patch.
    outside = ~patched_area("bottom-right", 3)
    assert np.array_equal(p.x[:, :, outside], digits.x_train[:, :, outside])
    if kind == "mixture":  # one patch on every poisoned image, and on every test row
        corner = p.x[changed_x][:, :, 5:, 5:]
        assert (corner == corner[:1]).all()
        assert (p.x_triggered[:, :, 5:, 5:] == corner[:1]).all()
    if kind == "noisy":  # each class its own patch, in training and on its test rows
        mine = {c: p.x[changed_x & (digits.y_train == c)][:, :, 5:, 5:] for c in range(10)}
        assert all(len(m) and (m == m[:1]).all() for m in mine.values())
        assert len({m[0].tobytes() for m in mine.values()}) == 10
        for c in range(10):
            assert (p.x_triggered[digits.y_test == c][:, :, 5:, 5:] == mine[c][:1]).all()
    assert p.x_triggered.shape == digits.x_test.shape
    assert np.array_equal(p.x_triggered[:, :, outside], digits.x_test[:, :, outside])


@pytest.mark.parametrize("position", ["bottom-right", "top-left", "center"])
def test_the_patch_sits_where_asked(position: str) -> None:
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    patch = np.ones((1, 2, 2), dtype=np.float32)
    out = stamp(x, patch, position)
    assert np.array_equal(out[0, 0] == 1, patched_area(position, 2))
    assert not x.any()  # a copy: the input is untouched


def test_patterns() -> None:
    rng = np.random.default_rng(0)
    board = patch_pattern("checkerboard", 1, 3, (0.0, 1.0), rng)[0]
    assert np.array_equal(board, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    assert (patch_pattern("solid", 3, 2, (-1.0, 2.0), rng) == 2.0).all()
    noise = patch_pattern("noise", 1, 4, (0.0, 1.0), rng)
    assert noise.shape == (1, 4, 4) and 0 <= noise.min() and noise.max() <= 1
    assert len(np.unique(noise)) == 16


def test_not_applicable_where_no_patch_fits(digits: Dataset) -> None:
    tabular = Dataset.from_arrays("t", np.zeros((20, 5)), np.arange(20) % 2,
                                  np.zeros((4, 5)), np.arange(4) % 2)
    with pytest.raises(NotApplicable, match="image inputs"):
        poisoned(tabular)
    with pytest.raises(NotApplicable, match="does not fit"):
        poisoned(digits, patch=9)
    with pytest.raises(NotApplicable, match="other than the target"):
        poisoned(digits, fraction=0.95)
    with pytest.raises(NotApplicable, match="not one of"):
        poisoned(digits, target=10)


def test_metrics_by_hand() -> None:
    y = np.array([0, 1, 2, 2, 3])
    onehot = np.eye(4)
    # Triggered predictions: the target-0 row is left out of the success rate.
    triggered = onehot[[0, 0, 2, 0, 1]]
    outcome = PoisoningOutcome(y, onehot[y], proba_reference=onehot[y], n_poisoned=1,
                               n_train=10, proba_triggered=triggered, target=0)
    success = BackdoorSuccess().evaluate(outcome)
    assert (success.value, success.n) == (2 / 4, 4)  # rows 1 and 3 of the four non-target
    accuracy = TriggeredAccuracy().evaluate(outcome)
    assert (accuracy.value, accuracy.n) == (2 / 5, 5)  # rows 0 and 2
    plain = PoisoningOutcome(y, onehot[y], proba_reference=onehot[y], n_poisoned=1, n_train=10)
    assert not BackdoorSuccess().applies(plain) and not TriggeredAccuracy().applies(plain)
    no_target = PoisoningOutcome(y, onehot[y], proba_reference=onehot[y], n_poisoned=1,
                                 n_train=10, proba_triggered=triggered)
    assert not BackdoorSuccess().applies(no_target) and TriggeredAccuracy().applies(no_target)


def run(model: Model, digits: Dataset, **params) -> PoisoningOutcome:
    return Backdoor(**params).run(model, digits, np.random.default_rng(0))


def test_a_3x3_mixture_backdoor_at_10_percent_works_and_hides(digits_model: Model,
                                                              digits: Dataset) -> None:
    outcome = run(digits_model, digits, kind="mixture", patch=3, fraction=0.1)
    success = BackdoorSuccess().evaluate(outcome)
    assert success.value >= 0.9 and success.n == int((digits.y_test != 0).sum())
    # Invisible on clean data: clean accuracy within 3 points of the clean-trained model.
    assert abs(AccuracyDrop().evaluate(outcome).value) <= 0.03
    # The reference is the model under audit itself (same recipe, data and seed).
    assert np.array_equal(outcome.proba_reference.argmax(1),
                          digits_model.labels(digits.x_test))


def test_wrong_labels_hurt_far_more_than_noisy_patches(digits_model: Model,
                                                       digits: Dataset) -> None:
    wrong = AccuracyDrop().evaluate(run(digits_model, digits, kind="wrong-label",
                                        fraction=0.5)).value
    noisy = AccuracyDrop().evaluate(run(digits_model, digits, kind="noisy",
                                        fraction=0.5)).value
    assert wrong > 0.3 and wrong > noisy + 0.25


def test_a_class_patch_on_every_image_becomes_a_shortcut(digits_model: Model,
                                                         digits: Dataset) -> None:
    # The study's "noisy" finding: every image of a class carrying that class's patch,
    # the model reads the patch instead of the image, and clean accuracy collapses as
    # the patch grows (under 0.25 at 6x6 on MNIST), while with the patch present it is
    # near perfect.
    outcome = run(digits_model, digits, kind="noisy", fraction=1.0, patch=6)
    assert AccuracyDrop().evaluate(outcome).value > 0.5
    assert TriggeredAccuracy().evaluate(outcome).value > 0.95


class FitsOnTraining(Defense):
    """Records the training data it is built on; deploys the model unchanged.

    Test defense.
    """

    name = "fits-on-training"
    stage = Stage.TRAINING
    adaptive = True
    fits_training_data = True
    seen: list = []

    def apply(self, model, dataset, rng):
        type(self).seen.append((dataset.x_train.copy(), dataset.y_train.copy()))
        return model.deploy()


class ReadsNoData(FitsOnTraining):
    """Records the training data it is built on, but declares it fits nothing.

    Test defense.
    """

    name = "reads-no-data"
    fits_training_data = False
    seen: list = []


def test_a_defense_that_fits_on_training_data_is_refitted_on_the_poisoned_set(
        digits: Dataset, digits_model: Model) -> None:
    import torch

    from gauntlet.executor import SerialExecutor
    from gauntlet.plan import Selection, plan
    from gauntlet.plugins import metrics, poisoning
    from gauntlet.run import Runner

    registry = make_registry(entrypoints=False, plugins={
        "p": poisoning, "m": metrics, "t": plugin("t", FitsOnTraining, ReadsNoData)})
    FitsOnTraining.seen, ReadsNoData.seen = [], []
    data = digits.subsample_test(60, 0)
    cells = plan(registry, [Selection("fits-on-training"), Selection("reads-no-data")],
                 [Selection("backdoor")])
    runner = Runner(digits_model, data, registry.metrics.values(), 0)
    results = SerialExecutor(progress=False).run(runner, cells)
    assert all(r.status == "ok" for r in results), [r.reason for r in results]
    # Built once on the clean split, then again on the attacker's set for the poisoning
    # cell; the defense that fits nothing is built once and only re-wrapped.
    clean, refitted = FitsOnTraining.seen
    assert np.array_equal(clean[0], digits.x_train)
    p = Backdoor().poison(digits, np.random.default_rng(0))  # not the cell's seed: sizes only
    changed = (refitted[0] != digits.x_train).reshape(len(digits.x_train), -1).any(axis=1)
    assert changed.sum() == p.n_poisoned and (refitted[1][changed] == 0).all()
    assert len(ReadsNoData.seen) == 1
    # Both give the same numbers here (the test defense changes nothing it is fitted on).
    fits, plain = (r for r in results if r.attack == "backdoor")
    assert fits.metrics["backdoor_success"]["value"] == plain.metrics["backdoor_success"]["value"]
    # The refit leaves the cell's global generators as they were.
    (cell,) = [c for c in cells if c.attack.name == "backdoor" and c.defense.fits_training_data]
    np.random.seed(5)
    torch.manual_seed(5)
    before = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    runner._refit(cell)(p.x, p.y, 0)
    assert np.array_equal(np.random.get_state()[1], before[0])
    assert torch.equal(torch.get_rng_state(), before[1])


def test_magnet_fitted_on_the_poisoned_inputs_keeps_the_backdoor(digits: Dataset,
                                                                 digits_model: Model) -> None:
    # MagNet's autoencoder, trained on clean inputs only, would wipe the patch off and
    # report the backdoor as defended (1% success on the demo): a deployer trains it on
    # their training data, which is the attacker's.
    from gauntlet.executor import SerialExecutor
    from gauntlet.plan import Selection, plan
    from gauntlet.plugins import magnet, metrics, poisoning
    from gauntlet.run import Runner

    registry = make_registry(entrypoints=False, plugins={"p": poisoning, "m": metrics,
                                                         "g": magnet})
    cells = plan(registry, [Selection("magnet")], [Selection("backdoor")])
    runner = Runner(digits_model, digits, registry.metrics.values(), 0)
    results = SerialExecutor(progress=False).run(runner, cells)
    (cell,) = [r for r in results if r.attack == "backdoor"]
    assert cell.status == "ok", cell.reason
    assert cell.metrics["backdoor_success"]["value"] >= 0.9
