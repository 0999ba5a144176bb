"""Model loaders: built-in trainable networks, and (safely) model files.

``builtin:cnn`` is the default audit's model: a small CNN sized to the dataset's image
shape, trained on the fly on the training split, with a recipe so poisoning can re-train
it. ``builtin:mlp`` does the same for tabular data.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gauntlet import ConfigError, Dataset, Model, Recipe, hookimpl, train_classifier


def build_cnn(input_shape: tuple[int, ...], n_classes: int) -> Any:
    """Two 3x3 conv layers, a 2x2 max-pool, one hidden dense layer."""
    import torch.nn as nn

    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 2) * (w // 2), 64), nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def build_mlp(input_shape: tuple[int, ...], n_classes: int) -> Any:
    """One hidden layer of 64 units."""
    import math

    import torch.nn as nn

    d = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, n_classes))


def _builtin(kind: str, options: Mapping[str, Any]) -> Model:
    import torch

    dataset = options.get("dataset")
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"builtin:{kind} trains on the audit's data, and none was given")
    shape, n = dataset.input_shape, dataset.n_classes
    if kind == "cnn" and len(shape) != 3:
        raise ConfigError(f"builtin:cnn needs image data shaped (C, H, W), got {shape}; "
                          "use builtin:mlp for tabular data")
    build = build_cnn if kind == "cnn" else build_mlp
    epochs = int(options.get("epochs", 20))
    lr = float(options.get("lr", 3e-3))
    seed = int(options.get("seed", 0))

    def make() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build(shape, n)

    def fit(module: torch.nn.Module, x: Any, y: Any, fit_seed: int) -> None:
        train_classifier(module, x, y, fit_seed, epochs=epochs, lr=lr)

    recipe = Recipe(make, fit, f"{kind} trained {epochs} epochs, Adam lr={lr}")
    module = recipe.train(dataset.x_train, dataset.y_train, seed)
    return Model(module, input_shape=shape, n_classes=n, clip_values=dataset.clip_values,
                 recipe=recipe, name=f"builtin:{kind}",
                 source={"spec": f"builtin:{kind}", "format": "built-in, trained on the fly",
                         "recipe": recipe.description})


@hookimpl
def load_model(spec: str, options: Mapping[str, Any]) -> Model | None:
    if spec in ("builtin:cnn", "builtin:mlp"):
        return _builtin(spec.split(":", 1)[1], options)
    return None
