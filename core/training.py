"""Training loops shared by built-in models, recipes and training-time defenses: plain
supervised training, PGD adversarial training (Madry et al., 2018), and training with one
class at the end of every epoch (the training-order probe)."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def device_of(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without any): where its
    batches go."""
    import torch

    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def on_audit_device(module: torch.nn.Module) -> Iterator[torch.device]:
    """Train ``module`` on the audit's device (:func:`gauntlet.device.current`): on CUDA,
    a module elsewhere is moved there for the block and back after, so whoever holds it
    finds it where it was (a recipe's fresh CPU module is stored and cached from the CPU;
    a Model moves it again). Yields the device its batches go to. On the CPU nothing moves.
    """
    from gauntlet import device

    home = device_of(module)
    if device.current() != "cuda" or home.type == "cuda":
        yield home
        return
    module.to("cuda")
    try:
        yield device_of(module)
    finally:
        module.to(home)


def train_classifier(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int, *,
                     epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
                     weight_decay: float = 0.0,
                     order: Callable[[torch.Generator], Any] | None = None) -> None:
    """Train ``module`` in place with Adam and cross-entropy; deterministic for a seed.
    Each epoch visits the rows in ``order(generator)`` (default: a fresh permutation).
    Trains on the audit's device (:func:`on_audit_device`)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    with on_audit_device(module) as at:
        opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = torch.nn.CrossEntropyLoss()
        module.train()
        for _ in range(epochs):
            # Row orders are drawn on the CPU whatever the device: the same for a seed.
            rows = torch.randperm(len(xt), generator=gen) if order is None else \
                torch.as_tensor(order(gen))
            for start in range(0, len(xt), batch_size):
                idx = rows[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(module(xt[idx].to(at)), yt[idx].to(at)).backward()
                opt.step()
        module.eval()


def train_adversarial(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int, *,
                      eps: float, steps: int = 5, step_size: float | None = None,
                      epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
                      clip_values: tuple[float, float] = (0.0, 1.0),
                      weight_decay: float = 0.0) -> None:
    """PGD adversarial training (Madry et al., 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks"), in place; deterministic for a seed.

    Each minibatch is replaced by its PGD adversarial examples against the current weights
    (L-infinity ball of radius ``eps``, a uniform random start in the ball, ``steps``
    signed-gradient steps of ``step_size``, default ``2.5 * eps / steps`` as in the paper,
    each clipped to ``clip_values``), and Adam takes one cross-entropy step on them: the
    min-max objective's inner maximisation approximated by PGD. Same loop as
    :func:`train_classifier` otherwise (Adam, shuffled minibatches, one seed for all draws,
    the audit's device).
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    low, high = (float(v) for v in clip_values)
    alpha = float(step_size) if step_size is not None else 2.5 * eps / max(steps, 1)
    with on_audit_device(module) as at:
        opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), batch_size):
                idx = order[start : start + batch_size]
                xb, yb = xt[idx].to(at), yt[idx].to(at)
                module.eval()  # the attack sees the model as it predicts (batch norm, dropout)
                x_adv = pgd_linf(module, xb, yb, eps, alpha, steps, (low, high), gen)
                module.train()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(module(x_adv), yb).backward()
                opt.step()
        module.eval()


def pgd_linf(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             alpha: float, steps: int, clip_values: tuple[float, float],
             gen: torch.Generator | None = None) -> torch.Tensor:
    """PGD on ``module``'s cross-entropy from a uniform random start in the L-infinity
    ball of radius ``eps`` around ``x``: ``steps`` signed steps of ``alpha``, each clipped
    to the valid range and projected on the ball. Input gradients only (weights keep no
    gradient from it). Computes on ``module``'s device; returns a detached tensor on
    ``x``'s."""
    import torch
    import torch.nn.functional as F

    low, high = clip_values
    home, at = x.device, device_of(module)
    # The start is drawn on the CPU (``gen`` is a CPU generator): the same for a seed on
    # any device.
    noise = (torch.rand(x.shape, generator=gen) * 2.0 - 1.0) * eps
    x, y = x.to(at), y.to(at)
    x_adv = (x + noise.to(at)).clamp(low, high)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(module(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = (x_adv + alpha * grad.sign()).clamp(low, high)
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv.detach().to(home)


@dataclasses.dataclass(frozen=True)
class AdversarialFit:
    """:func:`train_adversarial` with its settings, as a recipe fit
    (``recipe.train(x, y, seed, fit=AdversarialFit(...))``); its ``repr`` names every
    setting, so the recipe caches each setting's model apart."""

    eps: float
    steps: int = 5
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    clip_values: tuple[float, float] = (0.0, 1.0)

    def __call__(self, module: torch.nn.Module, x: np.ndarray, y: np.ndarray,
                 seed: int) -> None:
        train_adversarial(module, x, y, seed, eps=self.eps, steps=self.steps,
                          epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                          clip_values=self.clip_values)


#: How :func:`train_ordered` orders each epoch's rows.
ORDERS = ("last-block", "class-blocks")


def epoch_order(y: np.ndarray, last: int | None, protocol: str,
                gen: torch.Generator) -> np.ndarray:
    """One epoch's row order: shuffled (``last`` None, the reference), or with the rows of
    class ``last`` at the end: ``"last-block"`` shuffles every other row first;
    ``"class-blocks"`` goes class by class in index order, ``last`` moved to the end
    (rows shuffled within each class)."""
    import torch

    perm = torch.randperm(len(y), generator=gen).numpy()
    if last is None:
        return perm
    labels = np.asarray(y)[perm]
    if protocol == "last-block":
        return np.concatenate([perm[labels != last], perm[labels == last]])
    classes = [c for c in np.unique(labels) if c != last] + [last]
    return np.concatenate([perm[labels == c] for c in classes])


def train_ordered(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int, *,
                  last: int | None, protocol: str = "last-block", epochs: int = 20,
                  lr: float = 3e-3, batch_size: int = 64) -> None:
    """:func:`train_classifier` with each epoch's rows in the order :func:`epoch_order`
    gives (class ``last`` trained last), in place; deterministic for a seed. With ``last``
    None it is :func:`train_classifier` exactly (the same permutations)."""
    labels = np.asarray(y)
    train_classifier(module, x, y, seed, epochs=epochs, lr=lr, batch_size=batch_size,
                     order=lambda gen: epoch_order(labels, last, protocol, gen))


@dataclasses.dataclass(frozen=True)
class OrderedFit:
    """:func:`train_ordered` with its settings, as a recipe fit (its ``repr`` names every
    setting, so the recipe caches each order's model apart; ``last=None`` is the shuffled
    reference, trained by the same loop)."""

    last: int | None
    protocol: str = "last-block"
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64

    def __call__(self, module: torch.nn.Module, x: np.ndarray, y: np.ndarray,
                 seed: int) -> None:
        train_ordered(module, x, y, seed, last=self.last, protocol=self.protocol,
                      epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
