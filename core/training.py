"""A plain supervised training loop, shared by built-in models and recipes."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def train_classifier(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int, *,
                     epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
                     weight_decay: float = 0.0) -> None:
    """Train ``module`` in place with Adam and cross-entropy; deterministic for a seed."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(module(xt[idx]), yt[idx]).backward()
            opt.step()
    module.eval()
