"""Train and test splits with everything an attack needs to know about them."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gauntlet.errors import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images or feature vectors with integer labels.

    Inputs are float32 shaped ``(N, *input_shape)`` (channels first for images) in
    ``clip_values``; labels are int64 in ``[0, n_classes)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    clip_values: tuple[float, float] = (0.0, 1.0)
    class_names: tuple[str, ...] = ()
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: For feature-vector inputs ``(N, F)``: one name per column, in the user's words (a
    #: one-hot column of a categorical is ``"column=value"``), so attacks that pick rows by
    #: feature values (subpopulations) report them by name. Empty when unknown.
    feature_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim < 2:
                raise DataError(f"{self.name}: x_{split} must have a batch axis, got {x.shape}")
            if len(x) != len(y):
                raise DataError(
                    f"{self.name}: x_{split} has {len(x)} rows but y_{split} has {len(y)}"
                )
            if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
                raise DataError(f"{self.name}: y_{split} labels outside [0, {self.n_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train inputs {self.x_train.shape[1:]} and test inputs "
                f"{self.x_test.shape[1:]} differ in shape"
            )
        if self.feature_names and (self.x_train.ndim != 2
                                   or len(self.feature_names) != self.x_train.shape[1]):
            raise DataError(f"{self.name}: {len(self.feature_names)} feature names for inputs "
                            f"shaped {self.input_shape}; give one name per column of (N, F) "
                            "inputs")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"input_shape={self.input_shape}, n_classes={self.n_classes})"
        )

    @classmethod
    def from_arrays(
        cls,
        name: str,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        *,
        n_classes: int | None = None,
        clip_values: tuple[float, float] = (0.0, 1.0),
        class_names: tuple[str, ...] = (),
        source: dict[str, Any] | None = None,
        feature_names: tuple[str, ...] = (),
    ) -> Dataset:
        """Build a Dataset from array-likes, casting to float32 / int64."""
        xtr = np.ascontiguousarray(x_train, dtype=np.float32)
        xte = np.ascontiguousarray(x_test, dtype=np.float32)
        ytr = np.asarray(y_train).astype(np.int64).reshape(-1)
        yte = np.asarray(y_test).astype(np.int64).reshape(-1)
        if n_classes is None:
            n_classes = int(max(ytr.max(initial=-1), yte.max(initial=-1)) + 1)
        return cls(name, xtr, ytr, xte, yte, int(n_classes), clip_values,
                   tuple(class_names), dict(source or {}), tuple(feature_names))

    def subsample_test(self, n: int, seed: int) -> Dataset:
        """The same data with at most ``n`` test rows, drawn without replacement, stratified
        only by the seed (so every cell of an audit sees the same rows)."""
        if n <= 0 or n >= len(self.x_test):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.x_test), n, replace=False))
        return dataclasses.replace(self, x_test=self.x_test[idx], y_test=self.y_test[idx])
