"""Where the model computes: the audit's device (``auto``, ``cpu`` or ``cuda``).

:func:`select` sets it once per process (the audit, each worker); models, the modules a
recipe trains and ART estimators read it with :func:`current`. Plugins never need to:
a :class:`gauntlet.Model` takes CPU arrays and tensors and answers on the CPU, whatever
device its module lives on.
"""
from __future__ import annotations

from gauntlet.errors import ConfigError

_current = "cpu"


def resolve(name: str) -> str:
    """``auto``: ``cuda`` when torch sees a CUDA device, else ``cpu``. ``cuda`` where
    there is none is a ConfigError."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device "
                          "(use 'auto' to fall back to the CPU)")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    return name


def select(device: str) -> str:
    """Make ``device`` (resolved) this process's device; return it."""
    global _current
    _current = resolve(device)
    if _current == "cuda":
        import torch

        # TF32 matrix products and convolutions move logits by about 1e-3 against the
        # CPU's; full float32 keeps a GPU audit's numbers those of a CPU one.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return _current


def current() -> str:
    """This process's device: ``cpu`` unless :func:`select` chose ``cuda``."""
    return _current
