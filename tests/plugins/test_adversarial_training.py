"""PGD adversarial training on the real digits CNN: it re-trains through the model's
recipe (and is not applicable without one), keeps the deployment, crafts its training
examples with the same PGD as the pgd attack, and raises PGD robust accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gauntlet import Access, Dataset, Model, NotApplicable, Stage
from gauntlet.plugins import adversarial_training
from gauntlet.plugins.adversarial_training import AdversarialTraining
from gauntlet.plugins.defenses import ConfidenceClip
from gauntlet.plugins.evasion import PGD, signed_steps
from gauntlet.registry import make_registry
from gauntlet.training import AdversarialFit, pgd_linf


def pgd_robust(model: Model, digits: Dataset, eps: float, rows: int = 0) -> float:
    out = PGD(eps=eps, rows=rows).run(model, digits, np.random.default_rng(0))
    return float((out.proba.argmax(axis=1) == out.y_true).mean())


def clean(model: Model, digits: Dataset) -> float:
    return float((model.labels(digits.x_test) == digits.y_test).mean())


def test_registered_as_an_adaptive_training_defense():
    registry = make_registry(entrypoints=False,
                             plugins={"adversarial_training": adversarial_training})
    assert not registry.broken and set(registry.defenses) == {"adv-training"}
    cls = registry.defenses["adv-training"]
    assert cls.stage is Stage.TRAINING and cls.adaptive is True and cls.evaluation
    assert (cls().eps, cls().steps, cls().epochs, cls().train_seed) == (0.1, 5, 10, 0)


def test_not_applicable_without_a_recipe(digits, digits_model, rng):
    no_recipe = Model(digits_model._base, input_shape=digits_model.input_shape,
                      n_classes=digits_model.n_classes)
    with pytest.raises(NotApplicable, match="no training recipe"):
        AdversarialTraining().apply(no_recipe, digits, rng)


def test_training_pgd_is_the_pgd_attacks_steps(digits, digits_model):
    """The inner maximisation is the pgd attack's loop: from the same start, the same
    steps (step, clip to the valid range, project on the ball)."""
    x, y = digits.x_test[:64], digits.y_test[:64]
    eps, alpha, steps = 0.1, 0.05, 5
    gen = torch.Generator().manual_seed(3)
    ours = pgd_linf(digits_model._base, torch.as_tensor(x), torch.as_tensor(y), eps, alpha,
                    steps, (0.0, 1.0), gen).numpy()
    start_gen = torch.Generator().manual_seed(3)
    start = (torch.as_tensor(x) + (torch.rand(x.shape, generator=start_gen) * 2 - 1) * eps)
    start = start.clamp(0.0, 1.0).numpy()
    reference = signed_steps(digits_model, x, y, start, eps, alpha, steps)
    assert np.mean(np.isclose(ours, reference, atol=1e-6)) > 0.999
    assert np.abs(ours - x).max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_recipe_caches_each_fit_apart(digits, digits_model):
    recipe = digits_model.require_recipe()
    x, y = digits.x_train[:128], digits.y_train[:128]
    fit = AdversarialFit(eps=0.1, steps=1, epochs=1)
    adversarial = recipe.train(x, y, 0, fit=fit)
    assert recipe.train(x, y, 0, fit=AdversarialFit(eps=0.1, steps=1, epochs=1)) \
        is adversarial  # equal settings: the cached module
    assert recipe.train(x, y, 0, fit=AdversarialFit(eps=0.2, steps=1, epochs=1)) \
        is not adversarial
    assert recipe.train(x, y, 0) is not adversarial  # the recipe's own fit, cached apart
    assert "eps=0.1" in repr(fit) and "epochs=1" in repr(fit)


def test_keeps_the_deployment(digits, digits_model, rng):
    """Stacked on an output defense, the re-trained model is served behind it."""
    clipped = ConfidenceClip().apply(digits_model, digits, rng)
    trained = AdversarialTraining(steps=1, epochs=1).apply(clipped, digits, rng)
    assert trained.access is Access.SCORES
    cap = 1.0 / (1.0 + 9 * np.exp(-2 * 2.0))  # confidence-clip's cap at r = 2
    assert trained.predict(digits.x_test[:20]).max() <= cap + 1e-6
    assert not np.allclose(trained.predict(digits.x_test[:50]),
                           clipped.predict(digits.x_test[:50]))


def test_the_defended_model_re_trains_adversarially(digits, digits_model, rng):
    """A poisoning attack re-trains the defended model through its recipe: that recipe
    must train adversarially too, or the poisoning row of adv-training would measure the
    undefended model (it did, until this test)."""
    defense = AdversarialTraining(steps=1, epochs=1)
    trained = defense.apply(digits_model, digits, rng)
    x, y = digits.x_train[:128], digits.y_train[:128]
    fit = AdversarialFit(eps=defense.eps, steps=1, epochs=1, lr=3e-3)
    plain = digits_model.require_recipe().train(x, y, 5)
    adversarial = digits_model.require_recipe().train(x, y, 5, fit=fit)
    again = trained.retrain(x, y, 5)
    assert again._base is adversarial and again._base is not plain  # the same cached fit
    assert trained.require_recipe().train(x, y, 5, fit=None) is adversarial
    assert digits_model.require_recipe().train(x, y, 5) is plain  # the original unchanged
    assert "AdversarialFit" in trained.require_recipe().description
    # The clean reference of a poisoning cell (train_seed 0 on the training split) is
    # the defended model itself: trained once, not again.
    assert trained.retrain(digits.x_train, digits.y_train, 0)._base is trained._base
    other = AdversarialTraining(steps=1, epochs=1, train_seed=1).apply(digits_model, digits,
                                                                        rng)
    assert other._base is not trained._base


def test_a_short_adversarial_training_raises_pgd_robust_accuracy(digits, digits_model, rng):
    """Madry et al. 2018, cut short (4 epochs of 2-step PGD): PGD at eps 0.1 already
    leaves far more rows correct than on the undefended model."""
    trained = AdversarialTraining(steps=2, epochs=4).apply(digits_model, digits, rng)
    before = pgd_robust(digits_model, digits, 0.1, rows=200)
    after = pgd_robust(trained, digits, 0.1, rows=200)
    assert after > before + 0.1, (before, after)
    assert clean(trained, digits) > 0.9


@pytest.mark.slow
def test_default_adversarial_training_on_the_digits_cnn(digits, digits_model, rng):
    """The defaults, as the demo runs them: PGD robust accuracy at eps 0.1 well above the
    undefended model's (measured: 48% to 80%), at a small clean-accuracy cost."""
    trained = AdversarialTraining().apply(digits_model, digits, rng)
    before, after = pgd_robust(digits_model, digits, 0.1), pgd_robust(trained, digits, 0.1)
    assert after > before + 0.2, (before, after)
    assert clean(trained, digits) > clean(digits_model, digits) - 0.03


def test_poisoning_sweeps_run_their_middle_point_unless_asked_for_all(digits, digits_model):
    from gauntlet.executor import SerialExecutor
    from gauntlet.plan import Selection, plan
    from gauntlet.plugins import defenses, evasion, poisoning
    from gauntlet.run import Runner

    registry = make_registry(entrypoints=False, plugins={
        "a": adversarial_training, "p": poisoning, "e": evasion, "d": defenses})
    attacks = [Selection("label-flip"), Selection("fgsm", {"eps": [0.1, 0.2, 0.3]})]
    cells = plan(registry, [Selection("none"), Selection("adv-training")], attacks)
    skipped = {(c.defense.name, c.attack.name, c.attack_point): c.skipped for c in cells}
    ran = sorted(k for k, why in skipped.items() if not why)
    # Under adv-training only the middle fraction; every other cell (evasion sweeps too,
    # and every poisoning point under the other defense) runs.
    assert [k for k in skipped if k not in ran] == [
        ("adv-training", "label-flip", "fraction=0.1"),
        ("adv-training", "label-flip", "fraction=0.5")]
    assert all('poisoning = "all"' in skipped[k] for k in skipped if k not in ran)
    everything = plan(registry, [Selection("adv-training", {"poisoning": "all"})], attacks)
    assert not any(c.skipped for c in everything)

    # A skipped cell is reported as not applicable, with the reason, and trains nothing.
    runner = Runner(digits_model, digits.subsample_test(40, 0), registry.metrics.values(), 0)
    results = SerialExecutor(progress=False).run(runner, [c for c in cells if c.skipped])
    assert [r.status for r in results] == ["not_applicable"] * 2
    assert results[0].reason == [c for c in cells if c.skipped][0].skipped
    assert not runner._defended  # the adversarial training never ran
