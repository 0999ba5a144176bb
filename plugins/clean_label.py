"""Clean-label poisoning: feature collision (Poison Frogs).

The attacker wants a few chosen test instances (the targets) read as another class (the
base class) and may alter some training images, but not their labels. Each poison starts
from a base-class training image and is moved until the network under audit sees it as
the target: its penultimate features collide with the target's, while it stays close to
its base in input space, so a person labelling it still says "base class". A model
trained on the poisons learns to put the target's features on the base-class side of its
boundary.

The poisons are crafted white-box against the model under audit, then the base re-trains
its architecture from scratch on the poisoned set (:class:`gauntlet.PoisoningAttack`),
which weakens the collision: the features the poisons were matched to are the audited
model's, not the re-trained one's. Shafahi et al. met the same when every layer was
trained and blended a faint watermark of the target into every poison (``watermark``),
which does much of the work here too.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet import (
    Access,
    Attack,
    Dataset,
    Model,
    NotApplicable,
    PoisonedSet,
    PoisoningAttack,
    hookimpl,
    param,
)

if TYPE_CHECKING:
    import torch


def feature_extractor(model: Model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The audited network's differentiable penultimate features
    (:meth:`gauntlet.Model.feature_module`): counts every row as a query; NotApplicable
    when the network has no Linear layer."""
    try:
        return model.feature_module()  # type: ignore[no-any-return]
    except NotApplicable as exc:
        raise NotApplicable(f"feature collision matches the network's penultimate "
                            f"features: {exc}") from None


def collide(features: Callable[[torch.Tensor], torch.Tensor], anchors: np.ndarray,
            goals: np.ndarray, *, beta: float, steps: int, lr: float,
            clip_values: tuple[float, float]) -> np.ndarray:
    """Shafahi et al.'s forward-backward splitting, one poison per row of ``anchors``:
    minimise ``||f(x) - goal||^2 + beta * ||x - anchor||^2`` over ``x`` in the valid range,
    starting at the anchor.

    Each step is a gradient step on the feature distance (forward), then the proximal step
    of the distance to the anchor, ``x = (x + lr * beta * anchor) / (1 + lr * beta)``
    (backward), then clipping. A step that would raise a poison's objective is refused
    and that poison's step size halved (their step-size decay), so the objective never
    rises. ``lr`` is the first step's largest change to an input, as a share of the valid
    range (each poison's step size is scaled by its first gradient's largest entry), so it
    means the same for any network's feature scale.

    :param goals: the target's features for each poison, ``(N, D)``.
    """
    import torch

    low, high = clip_values
    anchor = torch.as_tensor(np.asarray(anchors, dtype=np.float32))
    goal = torch.as_tensor(np.asarray(goals, dtype=np.float32))
    shape = (-1,) + (1,) * (anchor.dim() - 1)

    def evaluate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        distance = ((features(x) - goal) ** 2).sum(dim=1)
        (grad,) = torch.autograd.grad(distance.sum(), x)
        near = ((x.detach() - anchor) ** 2).reshape(len(x), -1).sum(dim=1)
        return distance.detach() + beta * near, grad

    x = anchor.clone()
    objective, grad = evaluate(x)
    largest = grad.reshape(len(x), -1).abs().amax(dim=1).clamp_min(1e-12)
    step = (lr * (high - low) / largest).reshape(shape)
    for _ in range(steps):
        forward = x - step * grad
        candidate = ((forward + step * beta * anchor) / (1 + step * beta)).clamp(low, high)
        new_objective, new_grad = evaluate(candidate)
        better = new_objective <= objective
        x = torch.where(better.reshape(shape), candidate, x)
        grad = torch.where(better.reshape(shape), new_grad, grad)
        objective = torch.where(better, new_objective, objective)
        step = torch.where(better.reshape(shape), step, step / 2)
    return x.numpy()


class FeatureCollision(PoisoningAttack):
    """Feature collision: base-class images nudged until the network sees the target.

    Shafahi, Huang, Najibi, Suciu, Studer, Dumitras and Goldstein, 2018, "Poison Frogs!
    Targeted Clean-Label Poisoning Attacks on Neural Networks". ``targets`` test instances
    the audited model reads correctly are drawn; for each, ``poisons`` training images of
    its base class (``base_class``, or the class the audited model ranks second for the
    target) nearest to it in feature space are blended with the target (``watermark``)
    and moved by forward-backward splitting until their penultimate features match the
    target's. They replace their clean rows, labels kept. Every target's poisons go into
    one training set, so one re-training measures them all: ``target_success`` is the
    share of targets the poisoned model reads as their base class, ``poison_linf`` and
    ``poison_l2`` how far the poisons moved from their clean images (watermark included).
    Crafted against the model under audit (gradient access); any network whose last
    layer is a ``torch.nn.Linear``.
    """

    name = "clean-label"
    needs = Access.GRADIENTS
    # Opt-in: targeted, its few targets give wide intervals, and each cell re-trains.
    in_default_audit = False

    targets: int = param(5, "target test instances, drawn among the rows the audited model "
                         "reads correctly; all their poisons go into one training set", ge=1)
    poisons: int = param(25, "poisoned base-class training rows per target", ge=1)
    base_class: int = param(-1, "the class the poisons come from and the targets should be "
                            "read as; -1: per target, the class the audited model ranks "
                            "second for it", ge=-1)
    beta: float = param(0.25, "Shafahi's beta0, the weight of the distance to the base, "
                        "scaled as theirs by (2048 / input size)^2", gt=0)
    steps: int = param(50, "forward-backward steps per poison", ge=1)
    lr: float = param(0.1, "the first step's largest change to an input, as a share of "
                      "the valid range (halved for a poison whenever a step would raise "
                      "its objective)", gt=0, le=1)
    watermark: float = param(0.3, "opacity of the target blended into each base before "
                             "crafting (Shafahi's 0.3 for end-to-end training; 0: none)",
                             ge=0, lt=1)

    def craft(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        """The poisoned training set, crafted against ``model``. Its ``poisoned_rows``
        hold each target's ``poisons`` rows together, targets in the order of
        ``notes["targets"]``."""
        import torch

        features = feature_extractor(model)
        if self.base_class >= dataset.n_classes:
            raise NotApplicable(f"base class {self.base_class} is not one of the data's "
                                f"{dataset.n_classes} classes")
        targets, bases, rows = self._choose(model, dataset, rng)
        x_target = dataset.x_test[targets]
        with torch.no_grad():
            goal = features(torch.as_tensor(np.asarray(x_target, dtype=np.float32)))
        per = np.repeat(np.arange(len(targets)), self.poisons)  # each poison's target
        clean = dataset.x_train[rows].astype(np.float32)
        anchors = ((1 - self.watermark) * clean
                   + self.watermark * x_target[per].astype(np.float32))
        crafted = collide(features, anchors, goal.numpy()[per], beta=self._beta(dataset),
                          steps=self.steps, lr=self.lr, clip_values=dataset.clip_values)
        x = dataset.x_train.copy()
        x[rows] = crafted.astype(x.dtype)
        aimed = np.full(len(dataset.y_test), -1, dtype=np.int64)
        aimed[targets] = bases
        notes: dict[str, Any] = {
            "targets": [int(t) for t in targets],
            "target_classes": [int(c) for c in dataset.y_test[targets]],
            "base_classes": [int(b) for b in bases],
            "poisons_per_target": self.poisons,
        }
        return PoisonedSet(x, dataset.y_train.copy(), n_poisoned=len(rows),
                           poisoned_rows=rows, bases=clean, aimed=aimed,
                           notes=notes)

    def _beta(self, dataset: Dataset) -> float:
        """Shafahi's beta = beta0 * 2048^2 / d^2 for inputs of d values (2048 is their
        network's feature size; kept so that beta0 = 0.25 means what it meant there)."""
        d = int(np.prod(dataset.input_shape))
        return float(self.beta * 2048**2 / d**2)

    def _choose(self, model: Model, dataset: Dataset, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The target test rows, each one's base class, and the training rows poisoned
        (``poisons`` per target, target by target): targets in the order the generator
        draws them among the correctly read rows of another class than the base, skipping
        one whose base class has too few training rows left (a row is poisoned once)."""
        logits = model.logits(dataset.x_test)
        correct = logits.argmax(axis=1) == dataset.y_test
        runner_up = np.argsort(logits, axis=1)[:, -2]
        chosen_base = runner_up if self.base_class < 0 else \
            np.full(len(correct), self.base_class)
        eligible = np.flatnonzero(correct & (chosen_base != dataset.y_test))
        train_features = model.features(dataset.x_train)
        target_features = model.features(dataset.x_test[eligible]) if len(eligible) else \
            np.zeros((0, train_features.shape[1]), np.float32)
        free = np.ones(len(dataset.y_train), dtype=bool)
        targets: list[int] = []
        bases: list[int] = []
        rows: list[np.ndarray] = []
        for i in rng.permutation(len(eligible)):
            if len(targets) == self.targets:
                break
            target, base = int(eligible[i]), int(chosen_base[eligible[i]])
            pool = np.flatnonzero(free & (dataset.y_train == base))
            if len(pool) < self.poisons:
                continue
            # The base images nearest the target in feature space need the least moving.
            distance = ((train_features[pool] - target_features[i]) ** 2).sum(axis=1)
            mine = pool[np.argsort(distance, kind="stable")[:self.poisons]]
            free[mine] = False
            targets.append(target)
            bases.append(base)
            rows.append(mine)
        if len(targets) < self.targets:
            raise NotApplicable(f"found {len(targets)} of the {self.targets} targets asked for: "
                                f"a target must be a test row the model reads correctly whose "
                                f"base class has {self.poisons} training rows not already "
                                "poisoned for another target")
        return np.array(targets, dtype=np.int64), np.array(bases, dtype=np.int64), \
            np.concatenate(rows).astype(np.int64)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(FeatureCollision)
