"""Probes: what the model answers on inputs that belong to no class.

Each probe here is a :class:`gauntlet.ProbeAttack` and writes only its inputs; the base
measures the model on them. Metrics in ``gauntlet.plugins.metrics`` read how concentrated
and how confident the answers are.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import (
    Access,
    Attack,
    Dataset,
    Family,
    Model,
    NotApplicable,
    ProbeAttack,
    TrainingOrderOutcome,
    TriggerScanOutcome,
    hookimpl,
    param,
)
from gauntlet.model import measure
from gauntlet.training import ORDERS, OrderedFit


def uniform_noise(shape: tuple[int, ...], clip_values: tuple[float, float], n: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``n`` inputs of ``shape``, each value uniform in ``clip_values`` (float32)."""
    low, high = clip_values
    return rng.uniform(low, high, size=(n, *shape)).astype(np.float32)


class TrashBucket(ProbeAttack):
    """Uniform-noise probe: where does the model put inputs that are no class at all?

    Nguyen et al., 2015, "Deep Neural Networks are Easily Fooled: High Confidence
    Predictions for Unrecognizable Images"; Hendrycks & Gimpel, 2017, "A Baseline for
    Detecting Misclassified and Out-of-Distribution Examples".
    """

    name = "trash-bucket"
    probes: int = param(1000, "noise inputs sent to the model", ge=1)

    def inputs(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> np.ndarray:
        return uniform_noise(model.input_shape, model.clip_values, self.probes, rng)


class TrainingOrder(Attack):
    """Training-order probe: does the class trained last collect the trash bucket?

    The founding study fed random inputs to a trained network, then re-trained it with
    the classes in a chosen order and found the class trained last took almost all of
    them. Shumailov et al., 2021, "Manipulating SGD with Data Ordering Attacks", show
    that order alone, with every row and label intact, steers what a model learns. This
    probe re-trains the model's architecture through its recipe (its epochs, learning
    rate and batch size; Gauntlet's ordered loop, so a training-time defense's own fit is
    not applied) with class ``last`` at the end of every epoch, and for each seed a
    reference on shuffled rows by the same loop, and sends both ``probes`` uniform-noise
    inputs. ``last_class_share`` against ``last_class_share_shuffled`` says whether the
    garbage class moved; ``ordered_accuracy`` what the order cost the model.
    ``protocol``: ``last-block`` (every other row shuffled, then the class's rows) keeps
    a working model; ``class-blocks`` (class by class, the study's curriculum) is the
    stronger and dearer order.
    """

    name = "training-order"
    family = Family.PROBE
    needs = Access.LABELS  # the core measures the re-trained models itself
    needs_recipe = True
    outcome = TrainingOrderOutcome
    in_default_audit = False  # 2 x seeds re-trainings a point: name it to run it

    last: int = param(0, "the class trained last (sweep it to try several)", ge=0)
    protocol: str = param("last-block", "last-block: the class's rows end every epoch; "
                          "class-blocks: every epoch goes class by class, this one last",
                          choices=ORDERS)
    seeds: int = param(3, "models trained each way (seeds train_seed, train_seed + 1, ...)",
                       ge=1, le=20)
    probes: int = param(1000, "noise inputs sent to every model", ge=1)
    batch_size: int = param(0, "minibatch size of the ordered and shuffled trainings (0: "
                            "the recipe's); smaller batches make the class's block at the "
                            "end of an epoch more steps", ge=0)
    train_seed: int = param(0, "the first training seed", ge=0)

    def run(self, model: Model, dataset: Dataset,
            rng: np.random.Generator) -> TrainingOrderOutcome:
        self.check(model)
        recipe = model.require_recipe()
        if self.last >= dataset.n_classes:
            raise NotApplicable(f"class {self.last} is not one of the data's "
                                f"{dataset.n_classes} classes")
        options = recipe.options
        fit = {"protocol": self.protocol, "epochs": int(options.get("epochs", 20)),
               "lr": float(options.get("lr", 3e-3)),
               "batch_size": self.batch_size or int(options.get("batch_size", 64))}
        noise = uniform_noise(model.input_shape, model.clip_values, self.probes, rng)
        answers: dict[bool, list[np.ndarray]] = {True: [], False: []}
        accuracy: dict[bool, list[float]] = {True: [], False: []}
        for seed in range(self.train_seed, self.train_seed + self.seeds):
            for ordered in (True, False):
                module = recipe.train(dataset.x_train, dataset.y_train, seed,
                                      fit=OrderedFit(self.last if ordered else None, **fit))
                trained = model.with_module(module)
                answers[ordered].append(measure(trained, noise))
                right = measure(trained, dataset.x_test).argmax(axis=1) == dataset.y_test
                accuracy[ordered].append(float(right.mean()))
        return TrainingOrderOutcome(
            proba=np.concatenate(answers[True]), proba_reference=np.concatenate(answers[False]),
            last=int(self.last), seeds=self.seeds, accuracy=np.array(accuracy[True]),
            accuracy_reference=np.array(accuracy[False]))


class TriggerScan(Attack):
    """Trigger scan: for each class, the smallest patch that sends other classes' rows to it.

    Neural Cleanse (Wang et al., 2019, "Neural Cleanse: Identifying and Mitigating
    Backdoor Attacks in Neural Networks"): for each class t, gradient descent fits a mask
    m and a pattern p so that ``(1 - m) * x + m * p`` is read as t on clean rows of the
    other classes, while an L1 penalty on m, raised whenever the trigger reaches
    ``target_reach`` of the rows and lowered when it does not, shrinks it. A backdoor is
    a shortcut to its target class: that class's smallest trigger is an outlier among the
    classes' (``trigger_anomaly`` > 2, median absolute deviations below their median),
    and ``gauntlet diff`` flags a class whose trigger shrank between two versions of a
    model. It needs no knowledge of the attack: not the patch, its place, nor the target.
    Image inputs (C, H, W) and gradient access only.
    """

    name = "trigger-scan"
    family = Family.PROBE
    needs = Access.GRADIENTS
    outcome = TriggerScanOutcome
    # 10 classes x 200 gradient steps: 9 s on the digits MLP undefended, 30-60 s under a
    # transforming or randomised defense. Name it to run it (gauntlet diff says so).
    in_default_audit = False

    rows: int = param(64, "clean test rows of the other classes each trigger is fitted on",
                      ge=1)
    steps: int = param(200, "optimisation steps per class", ge=10)
    target_reach: float = param(0.9, "share of the rows a trigger must send to its class "
                                "to count", gt=0, le=1)
    lr: float = param(0.1, "Adam's step size on the mask's and pattern's logits", gt=0)

    def run(self, model: Model, dataset: Dataset,
            rng: np.random.Generator) -> TriggerScanOutcome:
        import torch
        import torch.nn.functional as F

        self.check(model)
        shape = dataset.input_shape
        if len(shape) != 3:
            raise NotApplicable(f"a trigger is a patch on image inputs (C, H, W); this "
                                f"data's inputs are shaped {shape}")
        low, high = (float(v) for v in model.clip_values)
        net = model.differentiable()
        x, y = dataset.x_test, dataset.y_test
        pixels = int(shape[1] * shape[2])
        size = np.full(dataset.n_classes, float(pixels))
        reach = np.zeros(dataset.n_classes)
        used = 0
        seed = int(rng.integers(2**31))
        for t in range(dataset.n_classes):
            others = np.flatnonzero(y != t)
            if not len(others):
                continue
            pick = rng.choice(others, min(self.rows, len(others)), replace=False)
            used = max(used, len(pick))
            xb = torch.as_tensor(np.asarray(x[pick], dtype=np.float32))
            goal = torch.full((len(pick),), t, dtype=torch.long)
            gen = torch.Generator().manual_seed(seed + t)
            # The mask starts nearly empty (sigmoid(-3) = 5% a pixel), the pattern random.
            m = torch.full((1, 1, *shape[1:]), -3.0, requires_grad=True)
            p = (torch.rand((1, *shape), generator=gen) * 4 - 2).requires_grad_(True)
            opt = torch.optim.Adam([m, p], lr=self.lr)
            penalty = 1e-3
            for step in range(self.steps):
                mask = torch.sigmoid(m)
                logits = net((1 - mask) * xb + mask * (low + (high - low) * torch.sigmoid(p)))
                share = float((logits.argmax(dim=1) == goal).float().mean())
                l1 = float(mask.detach().sum())
                if share >= self.target_reach and l1 < size[t]:
                    size[t], reach[t] = l1, share
                loss = F.cross_entropy(logits, goal) + penalty * mask.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step % 10 == 9:  # Neural Cleanse's schedule: shrink while it reaches
                    penalty = penalty * 1.5 if share >= self.target_reach else penalty / 1.5
        return TriggerScanOutcome(size=size, reach=reach, pixels=pixels, rows=used,
                                  target_reach=self.target_reach)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(TrashBucket)
    register(TrainingOrder)
    register(TriggerScan)
