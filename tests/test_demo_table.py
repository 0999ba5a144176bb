"""The core redesign changed no number: every metric of the demo audit, as recorded before it.

``tests/data/demo_metrics.json`` holds every metric of ``gauntlet audit --seed 0`` (the
embedded demo) as the pre-redesign code computed it. A cell's random draws come from a
seed derived from its attack's name and parameter point, and the redesign renamed
parameters (``samples`` became ``rows``, ``members``, ``probes``) and added some
(``batch_size`` for ``noise``), which changes those seeds by design. So this test runs
today's code with each cell seeded from the key the old code used: the computation
(plugins, bases, Model, defenses, metrics) must then give exactly the recorded numbers.
The key function is the only thing swapped; everything else is the real audit.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

import gauntlet
from gauntlet.params import params_key
from gauntlet.plan import Cell

TABLE = Path(__file__).parent / "data" / "demo_metrics.json"

# The parameter points as the pre-redesign plugins declared them (old name: value), with
# the one swept parameter taken from the new point.
_OLD_POINTS = {
    "clean": lambda p: {},
    "fgsm": lambda p: {"backend": p["backend"], "batch_size": p["batch_size"],
                       "eps": p["eps"], "samples": p["rows"]},
    "pgd": lambda p: {"batch_size": 256, "eps": p["eps"], "max_iter": p["max_iter"],
                      "num_random_init": p["num_random_init"], "samples": p["rows"],
                      "step_ratio": p["step_ratio"]},
    "noise": lambda p: {"eps": p["eps"], "samples": p["rows"]},
    "label-flip": lambda p: {"fraction": p["fraction"], "train_seed": p["train_seed"]},
    "mia-threshold": lambda p: {"samples": p["members"]},
    "trash-bucket": lambda p: {"samples": p["probes"]},
}


def _old_attack_key(cell: Cell) -> str:
    return "attack|" + cell.attack.name + params_key(_OLD_POINTS[cell.attack.name](
        cell.attack_params))


def _same_platform(recorded: dict[str, object]) -> bool:
    import torch

    here = {"torch": torch.__version__.split("+")[0],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "machine": platform.machine()}
    return here == recorded


@pytest.mark.slow
def test_demo_audit_reproduces_every_recorded_metric(monkeypatch):
    table = json.loads(TABLE.read_text())
    monkeypatch.setattr(Cell, "attack_seed_key", property(_old_attack_key))
    result = gauntlet.audit(seed=0)
    got = {}
    for c in result.cells:
        for name, m in c["metrics"].items():
            got[(c["defense"], c["defense_point"], c["attack"], c["attack_point"], name)] = \
                (m["value"], m["n"])
        if not c["metrics"]:
            got[(c["defense"], c["defense_point"], c["attack"], c["attack_point"], None)] = \
                (c["status"], None)
    exact = _same_platform(table["platform"])
    missing, differ = [], []
    for defense, dpoint, attack, apoint, metric, value, n in table["rows"]:
        key = (defense, dpoint, attack, apoint, metric)
        if key not in got:
            missing.append(key)
        elif exact and got[key] != (value, n):
            differ.append((key, (value, n), got[key]))
        elif not exact and isinstance(value, float) and abs(got[key][0] - value) > 0.05:
            differ.append((key, (value, n), got[key]))
    assert not missing, f"recorded cells or metrics missing now: {missing[:5]}"
    assert not differ, (
        f"{len(differ)} of {len(table['rows'])} recorded values changed "
        f"({'exact comparison' if exact else 'recorded on another platform: within 0.05'}); "
        f"first: {differ[:3]}")
