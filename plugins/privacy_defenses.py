"""Privacy defenses: less in each answer (rounded, top-k or label-only scores), noisier
answers (clipping and noise together), or a model trained with differential privacy.

Each row's utility cost is its clean cell (``clean_accuracy`` beside the undefended
row's); the DP-SGD row also states its privacy budget there (``dp_epsilon`` at
``dp_delta``), carried from the training to the clean cell as facts of the trained
module (``Model.with_module(..., facts=...)``).

The output defenses post-process probabilities and return ``log(p)``, as the defenses of
:mod:`gauntlet.plugins.defenses` do: the Model's softmax turns ``log p`` back into ``p``.
Every probability is floored at :data:`~gauntlet.plugins.defenses.PROBABILITY_FLOOR`
so ``log p`` stays finite, and the undefended model's top class gets one floor's worth
more before renormalising, so a tie that rounding or flooring makes (a row rounded to
all zeros included) is broken in its favour: rounding and top-k never change a label.
``combined`` adds noise to the inputs and the scores, as the study did, and so may.

Measured on the embedded demo unless said otherwise: the study's MLP (two hidden ReLU
layers of 200) trained 100 epochs on 200 digits rows, tested on 450 (93.8% clean accuracy;
membership advantage 0.16 for mia-threshold, 0.18 for mia-loss), seed 0, on 2 shared
cores; "the digits CNN" is the built-in CNN on all 1,347 training rows, which barely leaks
(advantage 0.04). Each row's cost is its audit with every default attack, the undefended
row (26.6 s) having already trained the shadow and poisoned models it shares.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from gauntlet import (
    Access,
    Dataset,
    Defense,
    Fact,
    MetricValue,
    Model,
    Stage,
    hookimpl,
    param,
)
from gauntlet.plugins.defenses import (
    PROBABILITY_FLOOR,
    ClippedLogits,
    NoisyScores,
    UniformInputNoise,
)

if TYPE_CHECKING:
    from gauntlet import Metric

#: Opacus warns at every ``PrivacyEngine()`` that its default generator is not
#: cryptographically secure. The warning is about deploying DP-SGD, not evaluating it:
#: a secure generator (``secure_mode``, torchcsprng) cannot be seeded, and an audit must
#: give the same numbers for the same seed. The privacy budget reported is the
#: accountant's, which assumes ideal noise either way. Silenced, and said here.
#: torch warns, at every step, that the full backward hooks opacus puts on the first
#: layer fire on its outputs only, as no input of it requires a gradient: the data needs
#: none, and opacus reads only the outputs' gradients there. Silenced too.
_OPACUS_NOISE = ("Secure RNG turned off", "Full backward hook is firing")

_SCORES_ONLY = (
    "exposes scores only, so gradient attacks on it are not applicable. Score- and "
    "decision-based evasion, membership, poisoning and probe attacks run against the "
    "served scores; none of them models the post-processing, so the numbers are an upper "
    "bound on what it protects."
)


def _served(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``q`` (probabilities changed by a defense) floored at PROBABILITY_FLOOR, the top
    class of ``p`` (the undefended ones) one floor higher so any tie is broken in its
    favour, renormalised; their log, float32."""
    q = q.clamp_min(PROBABILITY_FLOOR)
    top = p.argmax(dim=1, keepdim=True)
    q = q.scatter_add(1, top, torch.full(top.shape, PROBABILITY_FLOOR, dtype=q.dtype,
                                         device=q.device))
    q = q / q.sum(dim=1, keepdim=True)
    return q.log().float()


class RoundedScores(nn.Module):
    """Probabilities rounded to ``decimals`` decimals, then floored and renormalised
    (:func:`_served`); returns their log."""

    def __init__(self, decimals: int) -> None:
        super().__init__()
        self.decimals = int(decimals)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(z.double(), dim=1)
        scale = 10.0 ** self.decimals
        return _served(torch.round(p * scale) / scale, p)


class TopKScores(nn.Module):
    """The ``k`` highest probabilities kept, every other one floored, renormalised
    (:func:`_served`); returns their log."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(z.double(), dim=1)
        k = min(self.k, p.shape[1])
        kept = torch.zeros_like(p, dtype=torch.bool).scatter(
            1, p.topk(k, dim=1).indices, True)
        return _served(torch.where(kept, p, torch.zeros_like(p)), p)


# -- output defenses -------------------------------------------------------------------


class Rounding(Defense):
    """Served probabilities rounded to a few decimals (coarser confidence), scores only.

    Shokri, Stronati, Song & Shmatikov, 2017, "Membership Inference Attacks against
    Machine Learning Models" (coarsen the precision of the prediction vector);
    Choquette-Choo, Tramèr, Carlini & Papernot, 2021, "Label-Only Membership Inference
    Attacks" (which shows such masking leaves the label, and so a label-only attack).
    Each probability is rounded to ``decimals`` decimals, floored at 1e-6 and the row
    renormalised; the undefended top class wins any tie, so the labels, and the clean
    accuracy, are the undefended model's.
    Measured on the demo: one decimal leaves mia-threshold's and mia-loss's advantage
    where they were (0.18 and 0.19, against 0.16 and 0.18), two decimals too (0.26,
    0.24), but both take their true-positive rate at 1% false positives to 0 (0.05 and
    0.09 undefended): ties hide the most confident members, while the average leak stays.
    It does not stop the attacks that calibrate per row: lira (its shadows rounded alike)
    keeps 8% at 1% FPR (16% undefended), and a theft from its scores does as well as one
    from labels (the overfit model's rounded scores on its training rows are one-hot).
    Clean accuracy is unchanged (93.8%). One decimal is the default: it costs nothing,
    and two bought nothing more. Its row took 3.8 s.
    """

    name = "rounding"
    stage = Stage.OUTPUT
    adaptive = False
    evaluation = "The served model rounds its probabilities and " + _SCORES_ONLY
    # Cheap: a post-processing, no training; its row costs what the undefended row does.
    decimals: int = param(1, "decimals kept of each probability (1: tenths)", ge=1, le=5)

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        return model.deploy(post=RoundedScores(self.decimals), access=Access.SCORES)


class TopK(Defense):
    """Only the k highest probabilities served (the rest floored), scores only.

    Shokri, Stronati, Song & Shmatikov, 2017, "Membership Inference Attacks against
    Machine Learning Models" (restrict the prediction vector to the top k classes).
    The k highest probabilities are kept, every other one floored at 1e-6, the row
    renormalised; labels are unchanged.
    Measured on the demo: k = 3 leaves mia-threshold and mia-loss where they were (0.17
    and 0.20, against 0.16 and 0.18); k = 1, nearly label-only with a confidence of one,
    0.29 and 0.18; both take those two attacks' true-positive rate at 1% false positives
    to 0. lira, whose shadows are served the same top 3, reaches 20% there (16%
    undefended): masking the tail does not hide the top of the vector. Clean accuracy
    unchanged. Opt-in: its row is cheap (4.8 s) but adds a row of every attack
    to the demo's matrix while ``rounding`` and ``label-only``, which run by default,
    bracket it; name it to run it (``--defenses none,top-k``).
    """

    name = "top-k"
    stage = Stage.OUTPUT
    adaptive = False
    evaluation = "The served model keeps its k highest probabilities and " + _SCORES_ONLY
    in_default_audit = False  # opt-in: see the docstring
    k: int = param(3, "probabilities served per row, the highest ones", ge=1)

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        return model.deploy(post=TopKScores(self.k), access=Access.SCORES)


class LabelOnly(Defense):
    """The deployment answers with the predicted label only, never scores.

    Shokri, Stronati, Song & Shmatikov, 2017, "Membership Inference Attacks against
    Machine Learning Models" (the extreme of restricting the prediction vector);
    Choquette-Choo, Tramèr, Carlini & Papernot, 2021, "Label-Only Membership Inference
    Attacks" (an attacker with labels only still infers membership, from robustness to
    perturbations: this defense removes the score attacks here, not membership leakage).
    Labels are the model's own, so the clean accuracy is unchanged; every attack that
    reads scores or gradients (mia-threshold, mia-loss, square, FGSM, ...) is not
    applicable, with the reason.
    Measured on the demo: 93.8% clean accuracy, unchanged; mia-threshold, mia-loss,
    mia-shadow and lira are not applicable ("needs scores access; this model exposes
    labels only"), while the label-only membership attack (``mia-label-only``, where
    installed) keeps its undefended advantage (0.17). Its row took 3.8 s.
    """

    name = "label-only"
    stage = Stage.OUTPUT
    adaptive = False
    evaluation = (
        "The served model answers labels only, exactly the model's: attacks that need "
        "scores or gradients are not applicable, while decision-based evasion "
        "(hopskipjump), label-only membership (Choquette-Choo et al., 2021), poisoning and "
        "label probes run; fewer evasion attacks apply, so robustness is an upper bound."
    )

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        return model.deploy(access=Access.LABELS)


class Combined(Defense):
    """Confidence clipping, input perturbation and confidence perturbation together.

    The study's setting: "combining confidence clipping (range 1), input perturbation
    (0.5) and confidence perturbation (15) brought the attack to 56% at 92.65% accuracy"
    (a 784-200-200-10 MNIST MLP). Mapped onto the built-in defenses' parameters:
    confidence clipping "range 1" is ``clip_r = 1`` (confidence-clip's r: logits
    within [-1, 1], which caps the top-one probability at 0.45 for ten classes);
    confidence perturbation "15" is ``noise_r = 0.15``, reading 15 as percent of
    probability (confidence-noise's r is a half-width in probability, at most 1, so 15
    can only be a percentage); input perturbation "0.5" is ``input_r = 0.15``
    (input-noise's r, a half-width in the [0, 1] input range), not 0.5: the study's inputs
    were most likely standardised as MNIST usually is (std 0.3081), where 0.5 is 0.15 in
    [0, 1] units; on 64-pixel digits the same signal-to-noise ratio also gives about 0.14
    (0.5 x sqrt(64 / 784)). Taken literally, 0.5 cost the demo 16 points (77.8% clean
    accuracy) where the study lost about 5. On Fashion-MNIST
    (``examples/fashion-mnist-privacy.toml``) 0.15 costs 3 points, the three together 3.8.
    Each draw is fresh at every query (torch's global generator, seeded per cell).
    Measured on the demo (the study's network on digits): clean accuracy 92.2% against
    93.8% undefended, mia-loss's advantage 0.18 to 0.11 (a balanced attack accuracy of
    55.5%: the study's 56% at 92.65%), mia-threshold's 0.16 to 0.03. On the digits CNN,
    97.1% against 97.8%. Its row took 7.2 s.
    """

    name = "combined"
    stage = Stage.OUTPUT
    adaptive = False
    evaluation = ("The served model adds input noise, clips its logits and adds noise to "
                  "its probabilities, fresh at every query, and " + _SCORES_ONLY)
    clip_r: float = param(1.0, "confidence clipping: the top logit is set to clip_r and "
                          "all logits clipped to [-clip_r, clip_r] (confidence-clip's r)",
                          gt=0)
    input_r: float = param(0.15, "input perturbation: half-width of the uniform noise added "
                           "to each input value (input-noise's r)", gt=0)
    noise_r: float = param(0.15, "confidence perturbation: half-width of the uniform noise "
                           "added to each probability (confidence-noise's r)", gt=0, le=1)

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        post = nn.Sequential(ClippedLogits(self.clip_r), NoisyScores(self.noise_r))
        return model.deploy(pre=UniformInputNoise(self.input_r, model.clip_values),
                            post=post, access=Access.SCORES)


# -- DP-SGD ----------------------------------------------------------------------------


def train_private(module: nn.Module, x: np.ndarray, y: np.ndarray, seed: int, *,
                  noise_multiplier: float, max_grad_norm: float, epochs: int, lr: float,
                  batch_size: int, accountant: str = "rdp") -> float:
    """DP-SGD (Abadi et al., 2016) through opacus, in place; deterministic for a seed.

    Per-example gradients clipped to ``max_grad_norm`` in L2, Gaussian noise of standard
    deviation ``noise_multiplier * max_grad_norm`` added to their sum, Poisson-sampled
    minibatches of expected size ``batch_size`` (``ceil(n / batch_size)`` steps an
    epoch), Adam steps at ``lr``. Every draw comes from ``seed``; torch's global generator
    is left as it was. Trains on the audit's device
    (:func:`gauntlet.training.on_audit_device`). Returns the budget ε the engine's
    ``accountant`` spent at δ = 1e-5 (for checking :func:`privacy_budget`).
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from gauntlet.training import on_audit_device

    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    with torch.random.fork_rng(), warnings.catch_warnings(), \
            on_audit_device(module) as at:
        for message in _OPACUS_NOISE:
            warnings.filterwarnings("ignore", message=message)
        torch.manual_seed(int(seed))  # Poisson sampling draws from the global generator
        loader = DataLoader(TensorDataset(xt, yt), batch_size=batch_size)
        optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        engine = PrivacyEngine(accountant=accountant)
        # opacus draws the noise on the gradients' device with this generator, which must
        # be on that device too (the CPU's, as before, on the CPU). The loader's Poisson
        # sampling stays on the CPU's global generator, seeded above.
        private, optimizer, loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader,
            noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
            noise_generator=torch.Generator(device=at).manual_seed(int(seed)))
        loss_fn = nn.CrossEntropyLoss()
        private.train()
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=True)
                if len(xb):
                    loss_fn(private(xb.to(at)), yb.to(at)).backward()
                optimizer.step()
        spent = float(engine.get_epsilon(1e-5)) if epochs else 0.0
        private.to_standard_module()  # hooks and per-example gradients removed
    module.eval()
    return spent


def privacy_budget(noise_multiplier: float, n: int, batch_size: int, epochs: int,
                   delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of :func:`train_private` on ``n`` rows: ``epochs * ceil(n /
    batch_size)`` steps of the sampled Gaussian mechanism at sampling rate ``1 /
    ceil(n / batch_size)`` (what opacus's engine records), by the ``accountant``
    (``rdp``: Mironov's Rényi-DP form of Abadi et al.'s moments accountant; ``prv``:
    Gopi et al.'s tighter numerical one)."""
    from opacus.accountants import create_accountant

    steps = math.ceil(n / batch_size)
    if epochs == 0:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [(float(noise_multiplier), 1.0 / steps, epochs * steps)]
    return float(acc.get_epsilon(delta))


@dataclasses.dataclass(frozen=True)
class PrivateFit:
    """:func:`train_private` with its settings, as a recipe fit; its ``repr`` names every
    setting, so the recipe caches each setting's model apart."""

    noise_multiplier: float
    max_grad_norm: float
    epochs: int
    lr: float
    batch_size: int
    accountant: str = "rdp"

    def __call__(self, module: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        train_private(module, x, y, seed, noise_multiplier=self.noise_multiplier,
                      max_grad_norm=self.max_grad_norm, epochs=self.epochs, lr=self.lr,
                      batch_size=self.batch_size, accountant=self.accountant)


def unsupported(module: nn.Module) -> str | None:
    """Why opacus cannot compute ``module``'s per-example gradients, or None."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(module, strict=False)
    if not errors:
        return None
    return "; ".join(str(e) for e in errors[:3])


class DPSGD(Defense):
    """DP-SGD: the architecture re-trained with differential privacy; ε reported at δ.

    Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar & Zhang, 2016, "Deep Learning with
    Differential Privacy". The recipe's architecture is trained from scratch on the
    training split through opacus (Yousefpour et al., 2021): each example's gradient
    clipped to ``max_grad_norm``, Gaussian noise of ``noise_multiplier * max_grad_norm``
    added, Poisson-sampled minibatches, for the recipe's epochs, learning rate and batch
    size (Adam, as the recipe trains; ``epochs`` overrides). The clean cell reports the
    budget ``dp_epsilon`` at ``dp_delta``: δ is ``delta`` (1e-5), or 1/n_train when that
    is smaller, since a δ of 1/n or more allows releasing a training row outright. The
    accountant is RDP (Mironov, 2017: the Rényi form of Abadi et al.'s moments
    accountant); ``accountant = "prv"`` gives the tighter numerical one.
    A list of noise multipliers in the config is a sweep: one row per value, the
    privacy-utility curve. A model without a recipe is not applicable, and so is one
    whose layers opacus cannot handle (batch norm: use group norm).

    Measured on the demo (100 epochs, batch 64, Adam 3e-3, max_grad_norm 1, δ 1e-5;
    undefended: 93.8% clean accuracy, mia-loss advantage 0.18, mia-threshold 0.16), noise
    multiplier -> ε, clean accuracy, mia-loss, mia-threshold: 0.5 -> 192, 91.3%, 0.15,
    0.01; 1 -> 46.7, 88.4%, 0.13, 0.09; 2 -> 15.6, 69.6%, 0.12, 0.04; 4 -> 6.3, 51.1%,
    -0.01, -0.02 (100 members and 100 non-members scored: about 0.07 of noise). On the
    digits CNN (20 epochs, batch 128; 97.8% undefended): 0.5 -> 48.6, 92.2%; 1 -> 10.4,
    90.7%; 2 -> 3.5, 82.9%; 4 -> 1.5, 70.7%. One private training of the digits CNN took
    12 to 15 s (the plain one 8.6 s). Opt-in: its row of the demo took 122 s on 2
    shared cores, more than twice the rest of the demo, since every attack that re-trains
    trains privately too: mia-shadow's and lira's shadows (40 and 38 s), the three
    label-flip points and the backdoor (9 s each). Name it to run it, with one
    noise multiplier by default (``--defenses none,dp-sgd``) or a sweep in the config
    (``[defenses.dp-sgd]`` / ``noise_multiplier = [0.5, 1, 2, 4]``).
    """

    name = "dp-sgd"
    stage = Stage.TRAINING
    # Adaptive: attacks run against the re-trained model with its own gradients.
    adaptive = True
    evaluation = ("Adaptive: the model is re-trained with DP-SGD and every attack runs "
                  "against it as deployed, with its own gradients (nothing masked).")
    in_default_audit = False  # a row re-trains everything privately: see the docstring
    noise_multiplier: float = param(1.0, "Gaussian noise std over max_grad_norm (a list "
                                    "is a sweep: the privacy-utility curve)", gt=0)
    max_grad_norm: float = param(1.0, "L2 bound each example's gradient is clipped to",
                                 gt=0)
    delta: float = param(1e-5, "δ of the (ε, δ) budget; 1/n_train is used when smaller",
                         gt=0, lt=1)
    epochs: int = param(0, "passes over the training split (0: the recipe's)", ge=0)
    train_seed: int = param(0, "seed of the sampling and the noise (a poisoning attack's "
                            "train_seed, 0 by default, re-uses the model)", ge=0)
    accountant: str = param("rdp", "privacy accountant: rdp (Rényi DP, the moments "
                            "accountant) or prv (tighter)", choices=("rdp", "prv"))

    def apply(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> Model:
        from gauntlet import NotApplicable

        recipe = model.require_recipe()
        with torch.random.fork_rng():
            why = unsupported(recipe.build())
        if why:
            raise NotApplicable(f"opacus cannot train this architecture privately: {why}")
        options = recipe.options
        epochs = self.epochs or int(options.get("epochs", 20))
        batch_size = int(options.get("batch_size", 64))
        fit = PrivateFit(noise_multiplier=self.noise_multiplier,
                         max_grad_norm=self.max_grad_norm, epochs=epochs,
                         lr=float(options.get("lr", 3e-3)), batch_size=batch_size,
                         accountant=self.accountant)
        module = recipe.train(dataset.x_train, dataset.y_train, self.train_seed, fit=fit)
        n = len(dataset.x_train)
        delta = min(self.delta, 1.0 / n)
        epsilon = privacy_budget(self.noise_multiplier, n, batch_size, epochs, delta,
                                 self.accountant)
        facts = {"dp_epsilon": MetricValue(epsilon, n), "dp_delta": MetricValue(delta, n)}
        # Re-trained by a poisoning attack, the defended model trains privately too.
        return model.with_module(module, recipe=recipe.with_fit(fit), facts=facts)


class DPEpsilon(Fact):
    """The privacy budget ε of a DP-SGD-trained model at δ (dp_delta); lower is more private.

    n is the number of training rows."""

    name = "dp_epsilon"
    title = "DP budget ε"
    higher_is_better = False


class DPDelta(Fact):
    """The δ at which dp_epsilon is stated: the chance the ε bound may fail."""

    name = "dp_delta"
    title = "DP δ"
    higher_is_better = False
    bounds = (0.0, 1.0)


@hookimpl
def register_defenses(register: Callable[[type[Defense]], None]) -> None:
    for cls in (Rounding, TopK, LabelOnly, Combined, DPSGD):
        register(cls)


@hookimpl
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    register(DPEpsilon)
    register(DPDelta)


