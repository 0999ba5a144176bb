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


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(TrashBucket)
    register(TrainingOrder)
