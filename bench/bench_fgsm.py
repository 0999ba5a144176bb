"""Time Gauntlet's FGSM cell against a hand-written torch loop and ART called directly.

Run as::

    /work/venv/bin/python bench/bench_fgsm.py [--data sklearn:digits|idx:DIR] [--repeat N]
                                              [--device auto|cpu|cuda]

In one process, on the same model, rows and batch size, it times

(a) a hand-written torch FGSM loop: adversarial examples and robust accuracy;
(b) ART's ``FastGradientMethod`` on ``model.to_art()``, then ART's ``predict``;
(c) Gauntlet's whole FGSM cell: ``attack.run(model, dataset, rng)`` and the
    ``robust_accuracy`` metric on its outcome.

Each is run once to warm up, then ``--repeat`` rounds in rotating order (so drifting
machine load hits all three alike). The table gives median times and ratios to (a); the
goal is (c) at most 1.10x (a). Performance is measured here, never asserted in a test.

``--device`` is the audit's device (:mod:`gauntlet.device`): the model is trained and
computes there, and (a) runs its loop on the same device.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

GOAL = 1.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="sklearn:digits",
                   help="dataset spec: sklearn:digits (default) or idx:DIR (MNIST-format files)")
    p.add_argument("--repeat", type=int, default=9, help="timed rounds (default 9)")
    p.add_argument("--rows", type=int, default=5000,
                   help="test rows to attack; a smaller test set is tiled up to this many "
                        "(default 5000)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the built-in CNN (default 20 for digits, 1 else)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model trains and computes, for all three (default cpu)")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Any, Any, Any, int]:
    from gauntlet.registry import make_registry

    registry = make_registry()
    dataset = registry.pm.hook.load_dataset(spec=args.data, options={})
    if dataset is None:
        scheme = args.data.partition(":")[0]
        sys.exit(f"no installed plugin loads {args.data!r} (no '{scheme}:' loader yet); "
                 "only sklearn:digits is supported until one exists")
    epochs = args.epochs if args.epochs is not None else (
        20 if args.data == "sklearn:digits" else 1)
    model = registry.pm.hook.load_model(
        spec="builtin:cnn", options={"dataset": dataset, "epochs": epochs, "seed": 0})
    return registry, dataset, model, epochs


def workload(dataset: Any, rows: int) -> tuple[Any, bool]:
    """The first ``rows`` test rows, tiling the test set when it has fewer."""
    n = len(dataset.x_test)
    tiled = rows > n
    reps = -(-rows // n)
    x = np.ascontiguousarray(np.concatenate([dataset.x_test] * reps)[:rows])
    y = np.concatenate([dataset.y_test] * reps)[:rows]
    return dataclasses.replace(dataset, x_test=x, y_test=y), tiled


def torch_loop(model: Any, x: np.ndarray, y: np.ndarray, eps: float, batch_size: int) -> float:
    """(a) FGSM as one would write it by hand, with robust accuracy."""
    import torch
    import torch.nn.functional as F

    # The base module itself, as a user holding the weights would write it (the core's
    # internal name for it; plugins reach the model only through the Model's methods).
    module, (low, high) = model._base, model.clip_values
    at = next(module.parameters()).device  # the audit's device: the model lives there
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(at).requires_grad_(True)
        yb = torch.from_numpy(y[start : start + batch_size]).to(at)
        (grad,) = torch.autograd.grad(F.cross_entropy(module(xb), yb), xb)
        with torch.no_grad():
            x_adv = (xb + eps * grad.sign()).clamp(low, high)
            correct += int((module(x_adv).argmax(1) == yb).sum())
    return correct / len(x)


def art_direct(model: Any, x: np.ndarray, y: np.ndarray, eps: float, batch_size: int) -> float:
    """(b) ART's FastGradientMethod and ART's predict, as an ART user would call them."""
    from art.attacks.evasion import FastGradientMethod

    classifier = model.to_art()
    x_adv = FastGradientMethod(classifier, norm=np.inf, eps=eps,
                               batch_size=batch_size).generate(x, y=y)
    return float((classifier.predict(x_adv, batch_size=batch_size).argmax(1) == y).mean())


def gauntlet_cell(registry: Any, model: Any, dataset: Any, eps: float, batch_size: int) -> float:
    """(c) the whole cell: the registered fgsm attack, then the robust_accuracy metric."""
    attack = registry.attacks["fgsm"](eps=eps, batch_size=batch_size)
    outcome = attack.run(model, dataset, np.random.default_rng(0))
    return float(registry.metrics["robust_accuracy"]().evaluate(outcome).value)


def time_rounds(cases: dict[str, Callable[[], float]], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(repeat):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    import torch

    from gauntlet import device
    from gauntlet.errors import ConfigError

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        where = device.select(args.device)  # before the model is trained, as an audit does
    except ConfigError as exc:
        sys.exit(str(exc))
    registry, dataset, model, epochs = load(args)
    if "fgsm" not in registry.attacks or "robust_accuracy" not in registry.metrics:
        broken = "; ".join(f"{p.name}: {p.error}" for p in registry.broken)
        sys.exit(f"fgsm attack or robust_accuracy metric not registered ({broken or 'none'})")
    data, tiled = workload(dataset, args.rows)
    x, y = data.x_test, data.y_test
    eps, bs = args.eps, args.batch_size
    cases = {
        "(a) torch loop": lambda: torch_loop(model, x, y, eps, bs),
        "(b) ART direct": lambda: art_direct(model, x, y, eps, bs),
        "(c) Gauntlet cell": lambda: gauntlet_cell(registry, model, data, eps, bs),
    }
    accuracy = {name: run() for name, run in cases.items()}  # warm-up, and a cross-check
    times = time_rounds(cases, args.repeat)

    source = (f"{len(dataset.x_test)} test rows tiled to {len(x)}" if tiled
              else f"first {len(x)} of {len(dataset.x_test)} test rows")
    print(f"FGSM eps={eps:g}, batch {bs}, data {args.data} ({source}, shape "
          f"{tuple(x.shape[1:])}); builtin:cnn trained {epochs} epochs; "
          f"torch {torch.__version__} on {where.upper()}, {torch.get_num_threads()} CPU "
          "threads; "
          f"{args.repeat} rounds after one warm-up")
    base = statistics.median(times["(a) torch loop"])
    base_min = min(times["(a) torch loop"])
    print(f"load average {os.getloadavg()[0]:.1f} at the end (times spread under load)")
    print(f"\n{'':20s} {'median ms':>10s} {'min ms':>8s} {'ratio':>6s} {'paired':>7s} "
          f"{'of mins':>7s} {'robust acc':>10s}")
    for name, ts in times.items():
        paired = statistics.median(t / a for t, a in zip(ts, times["(a) torch loop"], strict=True))
        print(f"{name:20s} {statistics.median(ts) * 1e3:10.1f} {min(ts) * 1e3:8.1f} "
              f"{statistics.median(ts) / base:6.2f} {paired:7.2f} {min(ts) / base_min:7.2f} "
              f"{accuracy[name]:10.4f}")
    ratio = statistics.median(times["(c) Gauntlet cell"]) / base
    print(f"\nratio = median / median of (a); paired = median over rounds of t / t(a) in the "
          f"same round;\nof mins = fastest / fastest of (a).\n"
          f"goal (c) <= {GOAL:.2f}x (a): {'met' if ratio <= GOAL else 'NOT met'} "
          f"({ratio:.2f}x)")


if __name__ == "__main__":
    main()
