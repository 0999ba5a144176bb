"""The model under audit, seen by every plugin through one interface.

A :class:`Model` wraps a ``torch.nn.Module`` that maps a float batch shaped
``(N, *input_shape)`` to logits ``(N, n_classes)``. Defenses return a new Model around
a new module, so a defended model is again a Model and attacks never need to know
which defense they face.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.errors import NotApplicable

if TYPE_CHECKING:
    import torch

    from gauntlet.dataset import Dataset


class Access(enum.IntEnum):
    """What an attacker may use. Ordered: each level includes those below it."""

    LABELS = 1  # the predicted class only
    SCORES = 2  # the probability vector
    GRADIENTS = 3  # white box: gradients of the loss w.r.t. the input


@dataclasses.dataclass
class Recipe:
    """How to train this architecture from scratch.

    Poisoning, shadow models and training-time defenses need it. ``build`` returns a
    fresh untrained module; ``fit`` trains it in place on ``(x, y)`` with the given seed.
    Results are cached per training set and seed, so the same poisoned set is trained
    once however many defenses are then stacked on top of it.
    """

    build: Callable[[], torch.nn.Module]
    fit: Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], None]
    description: str = ""
    _cache: dict[str, torch.nn.Module] = dataclasses.field(default_factory=dict, repr=False)

    def train(self, x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
        key = _fingerprint(x, y, seed)
        if key not in self._cache:
            module = self.build()
            self.fit(module, x, y, seed)
            module.eval()
            self._cache[key] = module
        return self._cache[key]


def _fingerprint(x: np.ndarray, y: np.ndarray, seed: int) -> str:
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    h.update(str(seed).encode())
    return h.hexdigest()


class Model:
    """A classifier under audit.

    :param module: maps ``(N, *input_shape)`` float32 to logits ``(N, n_classes)``.
    :param input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
    :param n_classes: number of classes.
    :param clip_values: the valid input range, ``(low, high)``.
    :param access: what an attacker of this model may use.
    :param recipe: how to train this architecture from scratch, when known.
    :param name: a label for reports.
    :param source: provenance (file path, sha256, format) for the report.
    :param rebuild: for a defended model, how to put the same defense around another
        base module; lets poisoning re-train the base and keep the defense.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shape: tuple[int, ...],
        n_classes: int,
        clip_values: tuple[float, float] = (0.0, 1.0),
        access: Access = Access.GRADIENTS,
        recipe: Recipe | None = None,
        name: str = "model",
        source: dict[str, Any] | None = None,
        rebuild: Callable[[torch.nn.Module], Model] | None = None,
        batch_size: int = 512,
    ) -> None:
        module.eval()
        self.module = module
        self.input_shape = tuple(int(d) for d in input_shape)
        self.n_classes = int(n_classes)
        self.clip_values = (float(clip_values[0]), float(clip_values[1]))
        self.access = Access(access)
        self.recipe = recipe
        self.name = name
        self.source = dict(source or {})
        self.batch_size = batch_size
        self._rebuild = rebuild

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, input_shape={self.input_shape}, "
            f"n_classes={self.n_classes}, access={self.access.name})"
        )

    # -- inference ------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch, as float32 numpy. Evaluated without gradients, in batches."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                chunk = torch.as_tensor(np.asarray(x[start : start + self.batch_size]),
                                        dtype=torch.float32)
                out.append(self.module(chunk).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        return np.concatenate(out)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch (softmax of the logits)."""
        z = self.logits(x).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p.astype(np.float32)

    # -- what attacks need ----------------------------------------------------------
    def require(self, access: Access) -> None:
        """Raise NotApplicable unless an attacker of this model has ``access``."""
        if self.access < access:
            raise NotApplicable(
                f"needs {access.name.lower()} access; this model exposes "
                f"{self.access.name.lower()} only"
            )

    def require_recipe(self) -> Recipe:
        """Return the training recipe or raise NotApplicable."""
        if self.recipe is None:
            raise NotApplicable(
                "needs to re-train the model, and it has no training recipe "
                "(load it as weights plus an architecture factory, or use the built-in model)"
            )
        return self.recipe

    def with_module(self, module: torch.nn.Module) -> Model:
        """The same deployment (defense included) around another base module."""
        if self._rebuild is not None:
            return self._rebuild(module)
        return Model(
            module,
            input_shape=self.input_shape,
            n_classes=self.n_classes,
            clip_values=self.clip_values,
            access=self.access,
            recipe=self.recipe,
            name=self.name,
            source=self.source,
            batch_size=self.batch_size,
        )

    def retrain(self, x: np.ndarray, y: np.ndarray, seed: int) -> Model:
        """Train this architecture from scratch on ``(x, y)``, keeping any defense."""
        recipe = self.require_recipe()
        return self.with_module(recipe.train(x, y, seed))

    def to_art(self) -> Any:
        """An ART ``PyTorchClassifier`` over this model's logits (needs gradient access)."""
        self.require(Access.GRADIENTS)
        import torch
        from art.estimators.classification import PyTorchClassifier

        return PyTorchClassifier(
            model=self.module,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=self.input_shape,
            nb_classes=self.n_classes,
            clip_values=self.clip_values,
            device_type="cpu",
        )

    def check_data(self, dataset: Dataset) -> None:
        """Raise DataError if ``dataset`` does not fit this model."""
        from gauntlet.errors import DataError

        if tuple(dataset.input_shape) != self.input_shape:
            raise DataError(
                f"data {dataset.name!r} has inputs shaped {tuple(dataset.input_shape)}, "
                f"but model {self.name!r} expects {self.input_shape}"
            )
        if dataset.n_classes > self.n_classes:
            raise DataError(
                f"data {dataset.name!r} has {dataset.n_classes} classes, "
                f"but model {self.name!r} outputs {self.n_classes}"
            )
