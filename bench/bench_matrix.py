"""Time the demo matrix on each executor, and what the content cache saves on a re-run.

Run as::

    python bench/bench_matrix.py                       # serial, process x2, ray x2
    python bench/bench_matrix.py --executors serial,process --samples 100
    python bench/bench_matrix.py --cache examples/fashion-mnist.toml

**Executors.** In one process, on the demo's config (``gauntlet audit`` with no
arguments: its model, data and every default attack and defense), it runs the whole
matrix with a fresh cache

(a) ``serial`` on one torch thread: the reference (one worker);
(b) ``process`` with ``--workers`` worker processes, one torch thread each;
(c) ``ray`` with ``--workers`` actors, one torch thread each (a local Ray, started once
    before the timed runs, so its start-up is reported apart);
(d) ``serial`` on torch's default threads, as ``gauntlet audit`` runs by default.

The model is trained once before the timed runs (it comes from the content cache), so
every run times the cells alone. Every run must give (a)'s numbers exactly, fhe's cells
aside (two serial runs differ there too: unseeded CKKS noise, and latency is a timing);
the script checks. Throughput is cells per second; the goal is (b) and (c) at 2 workers at least
1.8x (a).

**Cache** (``--cache CONFIG``): runs ``gauntlet audit CONFIG`` as a user would (a new
process each time, so imports and loading count) with an empty cache folder, then again
unchanged, and prints the second run's time as a share of the first (goal: at most 5%
for examples/fashion-mnist.toml) and, for the demo, the re-run's seconds (goal: 3 s).

Performance is measured here, never asserted in a test. On a shared machine, run it with
nothing else running.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_SPEEDUP = 1.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--executors", default="serial,process,ray",
                   help="comma-separated: serial, process, ray (default all three)")
    p.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    p.add_argument("--samples", type=int, default=0,
                   help="test rows evaluated per cell (default 0 = the demo's 450)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="where the model computes (default cpu)")
    p.add_argument("--no-default-threads", action="store_true",
                   help="skip (d), serial on torch's default threads")
    p.add_argument("--cache", metavar="CONFIG", nargs="?", const="demo",
                   help="time a cached re-run of CONFIG ('demo': gauntlet audit with no "
                        "config) instead of the executors")
    return p.parse_args(argv)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def executors(args: argparse.Namespace) -> None:
    import torch

    import gauntlet
    from gauntlet import config as config_mod
    from gauntlet.device import limit_threads

    cfg = config_mod.demo()
    cfg.samples = args.samples
    default_threads = torch.get_num_threads()
    names = [n.strip() for n in args.executors.split(",") if n.strip()]
    with tempfile.TemporaryDirectory() as cache:
        # Train the model once: each timed run gets a fresh cache holding a copy of it,
        # so it loads the model and then trains (shadows, poisoned models) and runs
        # everything else as a first run does.
        gauntlet.audit(config=cfg, attacks=["noise"], defenses=["none"], cache=cache,
                       device=args.device)
        if "ray" in names:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            print(f"ray: local cluster started in {time.perf_counter() - start:.1f} s "
                  "(not counted below)")
        runs: list[tuple[str, int, int]] = [("serial", 1, 1)]
        runs += [(n, args.workers, 1) for n in names if n != "serial"]
        if not args.no_default_threads and default_threads > 1:
            runs.append(("serial", 1, default_threads))
        rows: list[dict[str, Any]] = []
        reference: dict[str, Any] | None = None
        for executor, workers, threads in runs:
            # One thread means torch's and the BLAS/OpenMP pools' (numpy, scipy,
            # scikit-learn, TenSEAL), as each pool worker holds itself to.
            restore = limit_threads(threads)
            cells_dir = tempfile.mkdtemp(dir=cache)
            _share_models(cache, cells_dir)
            start = time.perf_counter()
            result = gauntlet.audit(config=cfg, executor=executor, workers=workers,
                                    cache=cells_dir, device=args.device)
            seconds = time.perf_counter() - start
            # fhe's cells are not reproducible even serially (unseeded CKKS noise, timings)
            got = {c["id"]: (c["status"], c["metrics"]) for c in result.cells
                   if c["defense"] != "fhe"}
            same = "" if reference is None or threads != 1 else \
                ("same numbers" if got == reference else "NUMBERS DIFFER")
            if reference is None:
                reference = got
            n = sum(not c.get("derived") for c in result.cells)
            rows.append({"run": f"{executor} x{workers}, {threads} thread(s)/worker",
                         "cells": n, "s": seconds, "cells/s": n / seconds, "check": same})
            restore()
        if "ray" in names:
            ray.shutdown()
    base = rows[0]["cells/s"]
    print(f"\ndemo matrix, {rows[0]['cells']} cells, device {args.device}, "
          f"load average before: {load_average()}")
    print(f"{'run':44} {'seconds':>8} {'cells/s':>8} {'speed-up':>9}  check")
    for r in rows:
        print(f"{r['run']:44} {r['s']:8.1f} {r['cells/s']:8.2f} {r['cells/s'] / base:8.2f}x"
              f"  {r['check']}")
    print(f"goal: {GOAL_SPEEDUP}x at 2 workers on 2 cores")


def _share_models(cache: str, cells_dir: str) -> None:
    """Copy the trained model of the warm-up run into a run's fresh cache folder."""
    import shutil

    models = Path(cache) / "models"
    if models.is_dir():
        shutil.copytree(models, Path(cells_dir) / "models")


def cached_rerun(config: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "GAUNTLET_CACHE_DIR": str(Path(folder) / "cache")}
        command = [sys.executable, "-m", "gauntlet", "audit", "--no-progress",
                   "--out", str(Path(folder) / "out")]
        if config != "demo":
            command.insert(4, config)
        times = []
        for label in ("first run (empty cache)", "unchanged re-run"):
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
            print(f"{label:28} {times[-1]:8.2f} s")
        print(f"re-run / first run: {times[1] / times[0]:.1%} (goal: at most 5% for "
              f"examples/fashion-mnist.toml; 3 s for the demo); "
              f"load average: {load_average()}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cache:
        cached_rerun(args.cache)
    else:
        executors(args)


if __name__ == "__main__":
    main()
