"""Model theft: substitutes stolen through queries, and the black-box transfer attack
built on one.

- ``jacobian-substitute`` (Papernot et al., 2017): a small seed set labelled by the victim,
  grown round by round by Jacobian-based dataset augmentation on the substitute;
- ``knockoff`` (Orekondy et al., 2019): ``budget`` pool rows, drawn at random or by a
  gradient bandit over the pool's k-means clusters, labelled by the victim;
- ``transfer`` (evasion): steal a substitute with the Jacobian method, run PGD on the
  substitute's gradients only, send the adversarial inputs to the victim.

Both thefts read the victim's labels, or its probability vectors when ``answers`` says so
(``auto``: scores when the deployment serves them); with scores the substitute is trained
on the soft targets (cross-entropy to the victim's probabilities). The outcome's
``notes`` say which answers were used. The ``queries`` metric (rows sent to the victim,
as the Model counted them) is registered here; the transfer attack's success rate is the
evasion family's ``attack_success_rate``, which measures exactly that (rows the victim
got right whose adversarial version it gets wrong).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet import (
    Access,
    EvasionAttack,
    EvasionOutcome,
    ExtractionAttack,
    ExtractionOutcome,
    Metric,
    MetricValue,
    Model,
    NotApplicable,
    hookimpl,
    param,
    train_classifier,
)
from gauntlet.model import softmax
from gauntlet.training import on_audit_device

if TYPE_CHECKING:
    import torch

    from gauntlet import Dataset

ANSWERS = ("auto", "labels", "scores")
ANSWERS_HELP = ("what the theft reads from the victim: labels, scores (probability "
                "vectors; not applicable to a labels-only deployment) or auto (scores "
                "when the deployment serves them)")
ARCHITECTURES = ("same", "mlp", "cnn")
ARCH_HELP = ("the substitute: same (the victim's recipe architecture, else the built-in "
             "MLP), mlp (one hidden layer of 64) or cnn (the built-in image CNN)")
#: Rows per minibatch when a substitute is trained (the built-in CNN's recipe uses 128:
#: per-step overhead dominates a network this small).
BATCH = 128
#: The fewest optimiser steps a substitute gets, whatever its training set's size: with
#: a few dozen rows, ``epochs`` alone would be a handful of steps, and fidelity would
#: measure under-training rather than the theft.
MIN_STEPS = 100


# -- shared by the thefts -----------------------------------------------------------------


def answers_used(model: Model, answers: str) -> str:
    """``labels`` or ``scores``: what a theft asking for ``answers`` reads from ``model``.
    ``scores`` under a deployment without scores raises NotApplicable with the reason."""
    if answers == "scores":
        model.require(Access.SCORES)
        return "scores"
    if answers == "auto":
        return "scores" if model.access >= Access.SCORES else "labels"
    return "labels"


def ask(model: Model, x: np.ndarray, used: str) -> np.ndarray:
    """The victim's answers for ``x`` (counted by the Model): labels ``(N,)`` int64, or
    probabilities ``(N, C)`` float32."""
    if used == "scores":
        return model.predict(x).astype(np.float32)
    return model.labels(x)


def hard(targets: np.ndarray) -> np.ndarray:
    """Class labels from answers (labels, or the argmax of probability vectors)."""
    return targets if targets.ndim == 1 else targets.argmax(axis=1)


def build_substitute(model: Model, architecture: str, seed: int) -> torch.nn.Module:
    """A fresh, untrained substitute for ``model``'s inputs and classes."""
    import torch

    from gauntlet.plugins.torch_models import build_cnn, build_mlp

    if architecture == "same" and model.recipe is not None:
        module = model.recipe.build()
    else:
        torch.manual_seed(seed)
        if architecture == "cnn":
            if len(model.input_shape) != 3:
                raise NotApplicable(f"architecture='cnn' needs image inputs shaped (C, H, W),"
                                    f" and these are shaped {model.input_shape}")
            module = build_cnn(model.input_shape, model.n_classes)
        else:
            module = build_mlp(model.input_shape, model.n_classes)
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def fit(module: torch.nn.Module, x: np.ndarray, targets: np.ndarray, seed: int, *,
        epochs: int, lr: float = 3e-3, min_steps: int = MIN_STEPS) -> None:
    """Train ``module`` in place on the victim's answers: cross-entropy to labels
    (:func:`gauntlet.train_classifier`), or to probability vectors (soft targets, the same
    loop: Adam, shuffled minibatches of :data:`BATCH`). At least :data:`MIN_STEPS` steps."""
    import torch
    import torch.nn.functional as F

    steps_per_epoch = max(1, math.ceil(len(x) / BATCH))
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    if targets.ndim == 1:
        train_classifier(module, x, targets, seed, epochs=epochs, lr=lr, batch_size=BATCH)
        return
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    pt = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    with on_audit_device(module) as at:  # as train_classifier: there and back
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        module.train()
        for _ in range(epochs):
            rows = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), BATCH):
                idx = rows[start:start + BATCH]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(module(xt[idx].to(at)), pt[idx].to(at)).backward()
                opt.step()
        module.eval()


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


@dataclasses.dataclass
class Theft:
    """What a theft produced: the substitute, the rows it queried and facts for the report."""

    substitute: torch.nn.Module
    x: np.ndarray
    targets: np.ndarray
    notes: dict[str, Any]


def jacobian_theft(model: Model, pool: np.ndarray, budget: int, rng: np.random.Generator,
                   *, rounds: int, seed_size: int, lam: float, epochs: int,
                   architecture: str, answers: str) -> Theft:
    """Papernot et al.'s substitute training: ``seed_size`` pool rows answered by the
    victim, then ``rounds`` rounds of Jacobian-based dataset augmentation, each adding
    ``x + lam * sign(dF_c(x)/dx)`` for every row ``x`` held (``c`` its victim label, ``F``
    the substitute's logits), clipped to the valid range, answered by the victim, and the
    substitute trained on everything held (warm start). The victim never sees more
    than ``budget`` rows: a round that would exceed it answers a random subset of its new
    rows, and augmentation stops once the budget is spent."""
    import torch

    used = answers_used(model, answers)
    low, high = model.clip_values
    spent_before = model.queries
    first = rng.choice(len(pool), min(seed_size, budget, len(pool)), replace=False)
    x = np.ascontiguousarray(pool[np.sort(first)], dtype=np.float32)
    targets = ask(model, x, used)
    substitute = build_substitute(model, architecture, _seed(rng))
    fit(substitute, x, targets, _seed(rng), epochs=epochs)
    done = 0
    for _ in range(rounds):
        left = budget - (model.queries - spent_before)
        if left <= 0:
            break
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        substitute.eval()
        chosen = substitute(xt).gather(1, torch.as_tensor(hard(targets))[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, xt)
        new = np.clip(x + lam * np.sign(grad.numpy()), low, high).astype(np.float32)
        if len(new) > left:
            new = new[np.sort(rng.choice(len(new), left, replace=False))]
        x = np.concatenate([x, new])
        targets = np.concatenate([targets, ask(model, new, used)])
        fit(substitute, x, targets, _seed(rng), epochs=epochs)
        done += 1
    substitute.eval()
    return Theft(substitute, x, targets, {"answers": used, "rounds": done,
                                          "rows_queried": int(model.queries - spent_before)})


def _substitute_proba(substitute: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    substitute.eval()
    with torch.no_grad():
        return softmax(substitute(torch.from_numpy(np.ascontiguousarray(x))).numpy())


# -- the attacks ----------------------------------------------------------------------------


class JacobianSubstitute(ExtractionAttack):
    """Jacobian-based substitute training: a labelled seed set grown along the copy's gradients.

    Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, 2017, "Practical Black-Box
    Attacks against Machine Learning" (Algorithm 1: substitute training with Jacobian-based
    dataset augmentation; reservoir sampling replaced by a random subset of a round's new
    rows once the query budget runs short, no periodic step sign). Measures how much of
    the victim a label-only (or score-reading) attacker copies from ``seed_size`` pool
    rows and their synthetic neighbours: fidelity and substitute accuracy on the test rows,
    and the queries spent. The default substitute is the built-in MLP: the victim's own
    CNN (``architecture="same"``) costs 5-8 times the time for a point or two of fidelity.
    On the digits demo CNN (450 test rows; seed_size 100, lam 0.1, epochs 10, MLP, one
    thread): fidelity 0.90 / 0.90 / 0.90 / 0.89 after 0 / 1 / 2 / 3 rounds (100 / 200 /
    400 / 800 queries) with labels, 0.92 / 0.94 / 0.93 / 0.93 with scores; knockoff's 300
    random pool rows do as well (0.93), as natural rows carry more than synthetic ones.
    The augmentation pays from a small seed: 20 rows, lam 0.2, labels: 0.61 with 0 rounds,
    0.68 with 3 (160 queries). About 1-3 s a cell.
    """

    name = "jacobian-substitute"

    rounds: int = param(3, "Jacobian augmentation rounds (each doubles the set; stops "
                        "when the budget is spent)", ge=0)
    seed_size: int = param(100, "rows of the attacker's pool in the initial seed set", ge=1)
    lam: float = param(0.1, "augmentation step lambda along the sign of the substitute's "
                       "gradient", gt=0)
    epochs: int = param(10, "training epochs of the substitute each round (at least "
                        f"{MIN_STEPS} minibatch steps)", ge=1)
    architecture: str = param("mlp", ARCH_HELP, choices=ARCHITECTURES)
    answers: str = param("auto", ANSWERS_HELP, choices=ANSWERS)

    def steal(self, model: Model, pool: np.ndarray, budget: int,
              rng: np.random.Generator) -> torch.nn.Module:
        theft = jacobian_theft(model, pool, budget, rng, rounds=self.rounds,
                               seed_size=self.seed_size, lam=self.lam, epochs=self.epochs,
                               architecture=self.architecture, answers=self.answers)
        self.notes.update(theft.notes)
        return theft.substitute


class Knockoff(ExtractionAttack):
    """Knockoff Nets: a substitute trained on the victim's answers to budget rows of the pool.

    Orekondy, Schiele and Fritz, 2019, "Knockoff Nets: Stealing Functionality of Black-Box
    Models". ``sampling="random"`` queries ``budget`` pool rows drawn uniformly without
    replacement; ``"adaptive"`` is the paper's gradient-bandit policy over coarse groups
    of the pool (here its ``groups`` k-means clusters; the paper uses a label hierarchy):
    ``steps`` rounds each draw a cluster from the softmax of the preferences, query
    ``budget / steps`` of its rows, reward the cluster with the substitute's loss on the
    victim's answers (cross-entropy to the scores, or disagreement with the labels),
    update the preferences against the running mean reward, and train the substitute one
    epoch on everything held; the substitute is trained ``epochs`` more at the end.
    Measures fidelity, substitute accuracy and queries against the budget. On the digits
    demo CNN (450 test rows; MLP substitute, epochs 10, one thread), fidelity at budget
    100 / 300 / 1000: random 0.88 / 0.93 / 0.95 with labels, 0.89 / 0.93 / 0.95 with
    scores; adaptive 0.77 / 0.92 / 0.98 with labels, 0.78 / 0.94 / 0.98 with scores (at
    100 rows, 4 a draw, the first pass over the 10 clusters takes 40 of them). The
    victim's CNN as substitute (``architecture="same"``): 0.97 at 1000 random rows, at
    7 times the time. About 0.3-0.9 s a cell (random). The default sweep is 50 / 100 /
    200 rows, what the demo's pool of 200 training rows allows.
    """

    name = "knockoff"

    # Small enough for the demo's pool (its 200 training rows: a larger budget could not
    # be spent, and the cells would repeat one point); raise it for larger data.
    budget: int = param((50, 100, 200), "most rows the theft may send to the victim (a "
                        "budget above the pool queries every pool row once)", ge=1)
    sampling: str = param("random", "random: budget pool rows drawn uniformly; adaptive: a "
                          "gradient bandit over the pool's k-means clusters",
                          choices=("random", "adaptive"))
    epochs: int = param(10, f"training epochs of the substitute (at least {MIN_STEPS} "
                        "minibatch steps)", ge=1)
    groups: int = param(10, "k-means clusters of the pool the adaptive bandit chooses "
                        "among", ge=2)
    steps: int = param(30, "adaptive rounds (bandit draws), each querying budget / steps "
                       "rows", ge=1)
    bandit_lr: float = param(1.0, "step size of the adaptive policy's preferences", gt=0)
    architecture: str = param("mlp", ARCH_HELP, choices=ARCHITECTURES)
    answers: str = param("auto", ANSWERS_HELP, choices=ANSWERS)

    def steal(self, model: Model, pool: np.ndarray, budget: int,
              rng: np.random.Generator) -> torch.nn.Module:
        used = answers_used(model, self.answers)
        n = min(budget, len(pool))
        substitute = build_substitute(model, self.architecture, _seed(rng))
        if self.sampling == "random":
            rows = np.sort(rng.choice(len(pool), n, replace=False))
            x = np.ascontiguousarray(pool[rows], dtype=np.float32)
            targets = ask(model, x, used)
        else:
            x, targets, picks = self._adaptive(model, pool, n, rng, used, substitute)
            self.notes["draws_per_cluster"] = np.bincount(picks, minlength=min(
                self.groups, len(pool))).tolist()
        fit(substitute, x, targets, _seed(rng), epochs=self.epochs)
        self.notes.update({"answers": used, "sampling": self.sampling,
                           "rows_queried": int(len(x))})
        return substitute

    def _adaptive(self, model: Model, pool: np.ndarray, n: int, rng: np.random.Generator,
                  used: str, substitute: torch.nn.Module
                  ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        from sklearn.cluster import KMeans

        flat = pool.reshape(len(pool), -1)
        k = min(self.groups, len(pool))
        cluster = KMeans(k, n_init=1, random_state=_seed(rng)).fit_predict(flat)
        members = [list(rng.permutation(np.flatnonzero(cluster == c))) for c in range(k)]
        prefs = np.zeros(k)
        mean_reward, seen = 0.0, 0
        xs: list[np.ndarray] = []
        ts: list[np.ndarray] = []
        picks: list[int] = []
        per_step = max(1, math.ceil(n / self.steps))
        held = 0
        first = list(rng.permutation(k))  # each cluster drawn once, then the policy
        while held < n:
            open_ = np.array([len(m) > 0 for m in members])
            policy = np.where(open_, np.exp(prefs - prefs[open_].max()), 0.0)
            policy /= policy.sum()
            c = int(first.pop()) if first else int(rng.choice(k, p=policy))
            take = min(per_step, n - held, len(members[c]))
            rows = np.sort(np.array([members[c].pop() for _ in range(take)]))
            x = np.ascontiguousarray(pool[rows], dtype=np.float32)
            answer = ask(model, x, used)
            p = _substitute_proba(substitute, x)
            if used == "scores":
                reward = float(-(answer * np.log(np.maximum(p, 1e-12))).sum(axis=1).mean())
            else:
                reward = float((p.argmax(axis=1) != answer).mean())
            seen += 1
            mean_reward += (reward - mean_reward) / seen
            # gradient bandit (Sutton & Barto 2.8), as Knockoff's adaptive policy
            step = self.bandit_lr * (reward - mean_reward)
            prefs -= step * policy
            prefs[c] += step
            xs.append(x)
            ts.append(answer)
            picks.append(c)
            held += take
            fit(substitute, np.concatenate(xs), np.concatenate(ts), _seed(rng), epochs=1,
                min_steps=0)
        return np.concatenate(xs), np.concatenate(ts), picks


@dataclasses.dataclass
class TransferOutcome(EvasionOutcome):
    """An evasion outcome whose adversarial inputs were crafted on a stolen substitute.

    :param notes: the theft's facts (answers used, rounds, rows queried, the substitute's
        agreement with the victim on the attacked rows' clean inputs).
    """

    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def artifacts(self) -> dict[str, Any]:
        out = super().artifacts()
        if self.notes:
            out["notes"] = self.notes
        return out


class Transfer(EvasionAttack):
    """Black-box transfer attack: PGD on a substitute stolen with Jacobian augmentation.

    Papernot et al., 2017, "Practical Black-Box Attacks against Machine Learning": the
    attacker, with labels only, trains a substitute (``jacobian-substitute``'s theft, with
    its own ``budget``, ``rounds``, ``seed_size``, ``lam``, ``epochs``), crafts
    L-infinity PGD examples (Madry et al., 2018) on the substitute's gradients alone, and
    sends them to the victim. Robust accuracy here beside the white-box attacks' at the
    same eps: a transfer attack that beats PGD means masked gradients. Every query it
    counts is a theft query (the substitute is stolen once per cell, from the deployment
    attacked). On the digits demo CNN (450 test rows, clean accuracy 0.98; eps 0.2, budget
    1000 of which 800 spent, MLP substitute, one thread): robust accuracy 0.40 against
    white-box PGD's 0.004 at eps 0.2; under adv-training 0.61 against PGD's 0.22. About
    1-3 s a cell.
    """

    name = "transfer"
    needs = Access.LABELS
    outcome = TransferOutcome

    eps: float = param(0.2, "L-infinity budget: the largest change to any input value",
                       ge=0)
    max_iter: int = param(20, "PGD steps on the substitute", ge=1)
    step_ratio: float = param(0.25, "PGD step size as a fraction of eps", gt=0)
    budget: int = param(1000, "most rows the theft may send to the victim", ge=1)
    rounds: int = param(3, "Jacobian augmentation rounds of the theft", ge=0)
    seed_size: int = param(100, "pool rows in the theft's seed set", ge=1)
    lam: float = param(0.1, "the theft's augmentation step lambda", gt=0)
    epochs: int = param(10, "training epochs of the substitute each round", ge=1)
    architecture: str = param("mlp", ARCH_HELP, choices=ARCHITECTURES)

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator,
            **kwargs: Any) -> TransferOutcome:
        self._pool = dataset.x_train.view()
        self._pool.flags.writeable = False
        self._thefts: dict[int, Theft] = {}
        out = super().run(model, dataset, rng, **kwargs)
        theft = self._thefts.get(id(model))
        notes = dict(theft.notes) if theft else {}
        return TransferOutcome(**{f.name: getattr(out, f.name)
                                  for f in dataclasses.fields(EvasionOutcome)}, notes=notes)

    def generate(self, model: Model, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        import torch

        from gauntlet.training import pgd_linf

        theft = self._thefts.get(id(model))
        if theft is None:  # stolen once per deployment, at its first batch
            theft = jacobian_theft(model, self._pool, self.budget, rng, rounds=self.rounds,
                                   seed_size=self.seed_size, lam=self.lam,
                                   epochs=self.epochs, architecture=self.architecture,
                                   answers="labels")
            self._thefts[id(model)] = theft
        substitute = theft.substitute
        for p in substitute.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(_seed(rng))
        adv = pgd_linf(substitute, torch.from_numpy(np.array(x, np.float32)),
                       torch.as_tensor(np.asarray(y, np.int64)), self.eps,
                       self.eps * self.step_ratio, self.max_iter, model.clip_values, gen)
        return adv.numpy()


class Queries(Metric):
    """Rows the attack sent to the victim, as the Model counted them (no interval).

    The cost side of model theft (Tramer et al., 2016; Orekondy et al., 2019): fidelity
    is read against it. For the transfer attack, every query is a theft query.
    """

    name = "queries"
    title = "Queries"
    applies_to = (ExtractionOutcome, TransferOutcome)
    higher_is_better = True  # a theft that needs more queries is costlier to mount

    def compute(self, outcome: Any) -> MetricValue:
        return MetricValue(float(outcome.queries or 0), outcome.n)


@hookimpl
def register_attacks(register: Callable[[type], None]) -> None:
    for cls in (JacobianSubstitute, Knockoff, Transfer):
        register(cls)


@hookimpl
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    register(Queries)
