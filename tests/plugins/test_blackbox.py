"""Score- and decision-based evasion attacks on the real digits CNN, as deployed behind the
output defenses they exist for (``confidence-clip``, ``confidence-noise``): each beats the
noise baseline on the same rows, keeps to its constraint and its query budget, and is
checked against a reference (ART's SquareAttack and HopSkipJump called directly, a
one-pixel fitness computed by hand, PGD's white-box robust accuracy)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gauntlet import (
    Access,
    AccessDenied,
    Dataset,
    EvasionAttack,
    EvasionOutcome,
    Family,
    Model,
    NotApplicable,
)
from gauntlet.plugins import blackbox, evasion
from gauntlet.plugins.defenses import ConfidenceClip, ConfidenceNoise
from gauntlet.registry import make_registry

ATTACKS = (blackbox.Square, blackbox.HopSkipJump, blackbox.OnePixel)


def robust_accuracy(outcome: EvasionOutcome) -> float:
    return float(outcome.correct_after.mean())


def robust_within(outcome: EvasionOutcome, budget: float) -> float:
    """A minimal attack's robust accuracy at an L2 budget: a row counts as robust unless
    the attack flipped it with an L2 distance of at most ``budget``."""
    flipped = ~outcome.correct_after & (outcome.l2 <= budget)
    return float((~flipped).mean())


@pytest.fixture(scope="module")
def defended(digits: Dataset, digits_model: Model) -> dict[str, Model]:
    rng = np.random.default_rng(0)
    return {"confidence-clip": ConfidenceClip().apply(digits_model, digits, rng),
            "confidence-noise": ConfidenceNoise().apply(digits_model, digits, rng)}


# -- contract ----------------------------------------------------------------------------


def test_registered_through_the_hook() -> None:
    registry = make_registry(entrypoints=False, plugins={"blackbox": blackbox})
    assert not registry.broken
    assert {"square", "hopskipjump", "one-pixel"} <= set(registry.attacks)
    assert registry.attacks["square"] is blackbox.Square


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_metadata_docstring_and_declared_parameters(cls: type[EvasionAttack]) -> None:
    cls.validate_class()
    assert cls.family is Family.EVASION and cls.outcome is EvasionOutcome
    summary, blank, reference = (cls.__doc__ or "").strip().splitlines()[:3]
    assert summary.strip() and not blank.strip() and reference.strip()
    assert ", 20" in reference  # "Authors, year, title": the paper comes first
    params = {name: p.describe() for name, p in cls.parameters().items()}
    assert params["rows"]["default"] > 0  # black-box attacks pay in queries: rows limited
    assert all(p["help"] for p in params.values())


def test_access_budgets_and_sweeps() -> None:
    assert blackbox.Square.needs is Access.SCORES and blackbox.Square.norm == "linf"
    assert [p["eps"] for p, _ in blackbox.Square.grid()] == list(evasion.EPS_SWEEP[1:])
    assert blackbox.HopSkipJump.needs is Access.LABELS
    assert blackbox.HopSkipJump.minimal and blackbox.HopSkipJump.norm == ""
    assert len(blackbox.HopSkipJump.grid()) == 1  # minimal: no budget to sweep
    assert blackbox.OnePixel.needs is Access.SCORES and blackbox.OnePixel.norm == ""
    assert not blackbox.OnePixel.minimal
    assert [p["pixels"] for p, _ in blackbox.OnePixel.grid()] == [1, 3, 5]
    assert not any(c.uses_numpy_global for c in ATTACKS)


# -- Square ------------------------------------------------------------------------------


@pytest.mark.parametrize("defense", ["confidence-clip", "confidence-noise"])
def test_square_beats_noise_behind_output_defenses(defense: str, digits: Dataset,
                                                   defended: dict[str, Model]) -> None:
    model, eps = defended[defense], 0.3
    torch.manual_seed(0)  # confidence-noise draws from torch's generator
    square = blackbox.Square(eps=eps, max_queries=100, rows=50)
    outcome = square.run(model, digits, np.random.default_rng(0))
    noise = evasion.UniformNoise(eps=eps, rows=square.rows).run(model, digits,
                                                                np.random.default_rng(0))
    np.testing.assert_array_equal(outcome.rows, noise.rows)
    assert robust_accuracy(noise) > 0.85
    # Measured 0.03 (clip) and 0.14 (noise) against the noise baseline's 0.92.
    assert robust_accuracy(outcome) < robust_accuracy(noise) - 0.5
    assert (outcome.linf <= eps + 1e-6).all()
    assert 0 < outcome.queries <= square.rows * square.max_queries


def test_square_comes_close_to_pgd_on_the_undefended_model(digits: Dataset,
                                                           digits_model: Model) -> None:
    """At eps 0.2 PGD-20 leaves 0 of these 100 rows right and Square (200 queries a row)
    measured 0 too. The margin of 5 rows allows for a query-limited random search being
    weaker than a white-box attack; the noise baseline leaves over 90% right."""
    eps = 0.2
    square = blackbox.Square(eps=eps)
    outcome = square.run(digits_model, digits, np.random.default_rng(0))
    pgd = evasion.PGD(eps=eps, rows=square.rows).run(digits_model, digits,
                                                     np.random.default_rng(0))
    noise = evasion.UniformNoise(eps=eps, rows=square.rows).run(digits_model, digits,
                                                                np.random.default_rng(0))
    assert robust_accuracy(outcome) <= robust_accuracy(pgd) + 0.05
    assert robust_accuracy(noise) > 0.9
    assert (outcome.linf <= eps + 1e-6).all()
    # Rows flipped early stop asking: far fewer queries than the budget.
    assert 0 < outcome.queries < square.rows * square.max_queries / 2


@pytest.mark.slow
def test_square_matches_arts_square_attack(digits: Dataset, digits_model: Model) -> None:
    """ART's SquareAttack (100 iterations, p_init 0.8) on the same 60 rows, over ART's
    black-box estimator on the same scores: measured 0.77 (ART) and 0.70 (here, 100
    queries a row) robust accuracy at eps 0.1 on 100 rows. Ours must not be weaker than
    ART's beyond sampling noise, nor implausibly stronger."""
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    eps, n = 0.1, 60
    x, y = digits.x_test[:n].astype(np.float32), digits.y_test[:n]
    art = BlackBoxClassifierNeuralNetwork(digits_model.predict, digits_model.input_shape,
                                          digits_model.n_classes,
                                          clip_values=digits_model.clip_values)
    state = np.random.get_state()
    np.random.seed(0)
    try:
        adv = SquareAttack(art, norm=np.inf, eps=eps, max_iter=100, p_init=0.8,
                           nb_restarts=1, verbose=False).generate(x, y=y)
    finally:
        np.random.set_state(state)
    theirs = float((digits_model.labels(adv) == y).mean())
    ours = robust_accuracy(blackbox.Square(eps=eps, max_queries=100, rows=n).run(
        digits_model, digits, np.random.default_rng(0)))
    assert ours <= theirs + 0.1
    assert ours >= theirs - 0.25


def test_square_runs_on_flat_inputs(digits: Dataset, digits_model: Model) -> None:
    flat = flat_model(digits_model)
    data = flat_data(digits)
    outcome = blackbox.Square(eps=0.3, rows=20, max_queries=50).run(
        flat, data, np.random.default_rng(0))
    assert (outcome.linf <= 0.3 + 1e-6).all()
    assert robust_accuracy(outcome) < 0.5


def test_square_margin_is_the_logit_margin(digits: Dataset, digits_model: Model) -> None:
    x, y = digits.x_test[:20], digits.y_test[:20]
    logits = digits_model.logits(x).astype(np.float64)
    others = np.where(np.eye(10, dtype=bool)[y], -np.inf, logits)
    expected = logits[np.arange(20), y] - others.max(axis=1)
    np.testing.assert_allclose(blackbox.margin(digits_model.predict(x), y), expected,
                               rtol=1e-3, atol=1e-3)


# -- HopSkipJump -------------------------------------------------------------------------


@pytest.mark.parametrize("defense", ["confidence-clip", "confidence-noise"])
def test_hopskipjump_beats_noise_behind_output_defenses(defense: str, digits: Dataset,
                                                        defended: dict[str, Model]) -> None:
    """Noise of L-infinity 0.3 moves no row by more than an L2 distance ``b`` and leaves
    most rows right; HopSkipJump flips most rows within ``b``."""
    model = defended[defense]
    torch.manual_seed(0)
    hsj = blackbox.HopSkipJump(max_queries=400, rows=40)
    outcome = hsj.run(model, digits, np.random.default_rng(0))
    noise = evasion.UniformNoise(eps=0.3, rows=hsj.rows).run(model, digits,
                                                             np.random.default_rng(0))
    budget = float(noise.l2.max())
    assert robust_accuracy(noise) > 0.8
    # Measured 0.925 (noise) against 0.0 (clip) and 0.4 (noise: its answers are random
    # near the boundary, so the attack needs more distance there) at b = 1.28.
    assert robust_within(outcome, budget) < robust_accuracy(noise) - 0.4
    assert 0 < outcome.queries <= hsj.rows * hsj.max_queries
    flipped = outcome.correct_before & ~outcome.correct_after
    assert (outcome.l2[flipped] > 0).all()


def test_hopskipjump_asks_labels_only(digits: Dataset, digits_model: Model) -> None:
    labels_only = digits_model.deploy(access=Access.LABELS)
    with pytest.raises(AccessDenied):
        labels_only.predict(digits.x_test[:1])
    hsj = blackbox.HopSkipJump(max_queries=200, rows=10)
    outcome = hsj.run(labels_only, digits, np.random.default_rng(0))
    assert (~outcome.correct_after).mean() >= 0.9
    assert 0 < outcome.queries <= hsj.rows * hsj.max_queries


def test_hopskipjump_distances_shrink_with_the_budget(digits: Dataset,
                                                      digits_model: Model) -> None:
    outcomes = [blackbox.HopSkipJump(max_queries=q, rows=10).run(
        digits_model, digits, np.random.default_rng(0)) for q in (100, 600)]
    few, many = (np.median(o.l2[~o.correct_after]) for o in outcomes)
    assert many < few


@pytest.mark.slow
def test_hopskipjump_is_at_least_as_close_as_arts(digits: Dataset,
                                                  digits_model: Model) -> None:
    """ART's HopSkipJump (10 iterations, up to 1,000 evaluations, over a black box that
    answers one-hot labels) on 10 rows, and ours with no more queries: measured median L2
    0.77 (ART, about 2,400 queries a row) and 0.58 (here)."""
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import BlackBoxClassifier

    n = 10
    x, y = digits.x_test[:n].astype(np.float32), digits.y_test[:n]

    def onehot(a: np.ndarray) -> np.ndarray:
        return np.eye(digits_model.n_classes, dtype=np.float32)[
            digits_model.labels(a.astype(np.float32))]

    art = BlackBoxClassifier(onehot, digits_model.input_shape, digits_model.n_classes,
                             clip_values=digits_model.clip_values)
    state = np.random.get_state()
    np.random.seed(0)
    before = digits_model.queries
    try:
        adv = HopSkipJump(art, targeted=False, norm=2, max_iter=10, max_eval=1000,
                          init_eval=100, init_size=100, verbose=False).generate(x)
    finally:
        np.random.set_state(state)
    spent = digits_model.queries - before
    fooled = digits_model.labels(adv) != y
    theirs = float(np.median(np.linalg.norm((adv - x).reshape(n, -1), axis=1)[fooled]))
    outcome = blackbox.HopSkipJump(max_queries=spent // n, rows=n).run(
        digits_model, digits, np.random.default_rng(0))
    assert outcome.queries <= spent
    assert (~outcome.correct_after).sum() >= fooled.sum()
    assert float(np.median(outcome.l2[~outcome.correct_after])) <= 1.1 * theirs


# -- one-pixel ---------------------------------------------------------------------------


def test_one_pixel_more_pixels_flip_more_rows(digits: Dataset, digits_model: Model) -> None:
    flipped, l0 = [], []
    for pixels in (1, 3, 5):
        attack = blackbox.OnePixel(pixels=pixels)
        outcome = attack.run(digits_model, digits, np.random.default_rng(0))
        flipped.append(int((outcome.correct_before & ~outcome.correct_after).sum()))
        l0.append(outcome.l0.max())
        channels = digits_model.input_shape[0]
        assert (outcome.l0 <= pixels * channels).all()
        assert outcome.linf.max() > 0.3  # any value in range, not an eps-ball
        budget = 1 + attack.popsize * (attack.max_iter + 1)
        assert 0 < outcome.queries <= attack.rows * budget
    # Measured 8, 19 and 30 of 40 rows.
    assert flipped[0] <= flipped[1] <= flipped[2] and flipped[2] > flipped[0]
    assert flipped[0] > 0


@pytest.mark.parametrize("defense", ["confidence-clip", "confidence-noise"])
def test_one_pixel_runs_behind_output_defenses(defense: str, digits: Dataset,
                                               defended: dict[str, Model]) -> None:
    torch.manual_seed(0)
    outcome = blackbox.OnePixel(pixels=5).run(defended[defense], digits,
                                              np.random.default_rng(0))
    assert (outcome.l0 <= 5).all()
    assert robust_accuracy(outcome) < 0.6  # measured 0.30 and 0.38


def test_one_pixel_fitness_is_the_true_class_probability(digits: Dataset,
                                                         digits_model: Model) -> None:
    x, y = digits.x_test[:3].astype(np.float32), digits.y_test[:3]
    rng = np.random.default_rng(0)
    candidates = np.concatenate([rng.integers(0, 8, (3, 4, 2, 2)).astype(np.float64),
                                 rng.random((3, 4, 2, 1))], axis=3)
    prob, fooled = blackbox.fitness(digits_model, x, y, candidates)
    for a in range(3):
        for p in range(4):
            img = x[a].copy()
            for row, col, value in candidates[a, p]:
                img[:, int(row), int(col)] = value
            scores = digits_model.predict(img[None])[0]
            assert prob[a, p] == pytest.approx(scores[y[a]], abs=1e-6)
            assert fooled[a, p] == (scores.argmax() != y[a])


def test_one_pixel_sets_every_channel_of_a_pixel() -> None:
    x = np.zeros((2, 3, 4, 5), np.float32)
    candidates = np.array([[[[1.7, 4.2, 0.1, 0.2, 0.3]]], [[[3.0, 0.0, 1.0, 1.0, 1.0]]]])
    out = blackbox.apply_pixels(x, candidates)
    assert out.shape == (2, 1, 3, 4, 5)
    np.testing.assert_allclose(out[0, 0, :, 1, 4], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(out[1, 0, :, 3, 0], [1.0, 1.0, 1.0])
    assert (out != 0).sum() == 6


def test_one_pixel_refuses_inputs_that_are_not_images(digits: Dataset,
                                                      digits_model: Model) -> None:
    with pytest.raises(NotApplicable, match=r"images shaped \(C, H, W\)"):
        blackbox.OnePixel(pixels=1).run(flat_model(digits_model), flat_data(digits),
                                        np.random.default_rng(0))


# -- every attack ------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "params"), [
    (blackbox.Square, {"eps": 0.1, "max_queries": 30}),
    (blackbox.HopSkipJump, {"max_queries": 100}),
    (blackbox.OnePixel, {"pixels": 3, "max_iter": 3}),
], ids=lambda v: getattr(v, "name", ""))
def test_randomness_comes_from_the_cells_generator(cls: type[EvasionAttack], params: dict,
                                                   digits: Dataset,
                                                   digits_model: Model) -> None:
    attack = cls(rows=10, **params)
    np.random.seed(1)
    first = attack.run(digits_model, digits, np.random.default_rng(7))
    np.random.seed(2)
    torch.manual_seed(2)
    again = attack.run(digits_model, digits, np.random.default_rng(7))
    other = attack.run(digits_model, digits, np.random.default_rng(8))
    np.testing.assert_array_equal(first.proba, again.proba)
    np.testing.assert_array_equal(first.l2, again.l2)
    assert first.queries == again.queries
    assert not np.array_equal(first.l2, other.l2)


# -- helpers -----------------------------------------------------------------------------


def flat_model(model: Model) -> Model:
    """The digits CNN behind a flat (64,) input: not an image to the attacks."""
    conv = model._base

    class Flat(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return conv(x.reshape(-1, 1, 8, 8))  # type: ignore[no-any-return]

    return Model(Flat(), input_shape=(64,), n_classes=model.n_classes,
                 clip_values=model.clip_values, access=Access.SCORES)


def flat_data(dataset: Dataset) -> Dataset:
    return dataclasses.replace(dataset, x_train=dataset.x_train.reshape(-1, 64),
                               x_test=dataset.x_test.reshape(-1, 64))


def test_query_attacks_are_not_applicable_behind_a_packing_deployment(digits_model) -> None:
    """Encrypted inference answers each round at the cost of a full pack: hundreds of
    dependent rounds would take an audit many minutes, so the cell says why it did not
    run instead of hanging; in the clear the same attacks apply."""
    import torch

    from gauntlet import NotApplicable
    from gauntlet.serving import Served

    class Packed(Served, torch.nn.Module):
        pack = 4096

        def __init__(self, inner):
            torch.nn.Module.__init__(self)
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    packed = digits_model.deploy(serve=Packed)
    for cls in (blackbox.Square, blackbox.HopSkipJump, blackbox.OnePixel):
        with pytest.raises(NotApplicable, match="dependent rounds"):
            cls().check(packed)
        cls().check(digits_model.deploy())
