"""The architecture of the classic FGSM study's model: a 784-200-10 MLP with a sigmoid
hidden layer (the shallow networks Goodfellow, Shlens and Szegedy 2015 first attacked).

Gauntlet builds it from this factory and loads a state_dict into it, so the weights file
carries numbers only, never code (see ``fashion-mnist-mlp.toml``)::

    arch = "sigmoid_mlp:make_mlp"     # with examples/ on PYTHONPATH
"""
from __future__ import annotations

import math

import torch

HIDDEN = 200


def make_mlp(input_shape: tuple[int, ...] = (1, 28, 28), n_classes: int = 10) -> torch.nn.Module:
    """``Flatten -> Linear(784, 200) -> Sigmoid -> Linear(200, 10)`` for 28x28 inputs; the
    output is logits (Gauntlet applies the softmax)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(math.prod(input_shape), HIDDEN),
        torch.nn.Sigmoid(),
        torch.nn.Linear(HIDDEN, n_classes),
    )
