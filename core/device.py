"""Where the model computes: the audit's device (``auto``, ``cpu`` or ``cuda``).

:func:`select` sets it once per process (the audit, each worker); models, the modules a
recipe trains and ART estimators read it with :func:`current`. Plugins never need to:
a :class:`gauntlet.Model` takes CPU arrays and tensors and answers on the CPU, whatever
device its module lives on.
"""
from __future__ import annotations

import os
from collections.abc import Callable

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


#: Environment variables that size the native thread pools a library starts when it loads.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(n: int) -> Callable[[], None]:
    """Hold this process to ``n`` CPU threads: torch's, and the BLAS and OpenMP pools
    that numpy, scipy and scikit-learn loaded (through threadpoolctl), and, through the
    environment, those of libraries loaded later. Plugins that start native threads of
    their own (TenSEAL) size them by ``torch.get_num_threads()``.

    torch's setting alone is not enough: two pool workers on two cores each ran
    scikit-learn's BLAS on both cores, and a logistic regression took 3x as long beside
    another one as alone (1.05x with one thread each)."""
    import torch
    from threadpoolctl import threadpool_limits

    n = max(1, int(n))
    before = torch.get_num_threads(), {k: os.environ.get(k) for k in THREAD_VARIABLES}
    torch.set_num_threads(n)
    pools = threadpool_limits(limits=n)  # in force until restored, not only in a block
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)

    def restore() -> None:
        pools.restore_original_limits()  # first: torch's OpenMP pool is one of them
        torch.set_num_threads(before[0])
        for name, value in before[1].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return restore
