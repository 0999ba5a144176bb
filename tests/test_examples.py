"""Every example config parses and plans with the installed plugins (nothing runs): a
typo in an example is caught here, not by a user."""
from __future__ import annotations

from pathlib import Path

import pytest

from gauntlet.config import load
from gauntlet.plan import Selection, plan
from gauntlet.registry import make_registry

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_plans(path: Path) -> None:
    cfg = load(path)
    registry = make_registry()
    attacks = cfg.attacks if cfg.attacks is not None else \
        [Selection(n) for n in registry.entries["attack"]]
    defenses = cfg.defenses if cfg.defenses is not None else [Selection("none")]
    cells = plan(registry, defenses, attacks)
    assert len({c.id for c in cells}) == len(cells)
    assert len({(c.defense_key, c.attack.name, c.attack_point) for c in cells}) == len(cells)


def test_the_backdoor_example_runs_the_study_s_three_curves() -> None:
    cfg = load(Path(__file__).parent.parent / "examples" / "backdoor-fashion-mnist.toml")
    cells = plan(make_registry(), cfg.defenses or [], cfg.attacks or [])
    points = [c.attack_params for c in cells if c.attack.name == "backdoor"]
    assert sorted(p["patch"] for p in points if p["kind"] == "noisy") == [1, 2, 3, 4, 5, 6]
    for kind in ("wrong-label", "mixture"):
        assert sorted(p["fraction"] for p in points if p["kind"] == kind) == \
            [0.1, 0.2, 0.4, 0.6, 0.8]


def test_the_demo_example_is_the_embedded_demo() -> None:
    from gauntlet.config import demo

    cfg, built_in = load(Path(__file__).parent.parent / "examples" / "demo.toml"), demo()
    for field in ("model", "model_options", "data", "data_options", "attacks", "defenses",
                  "seed", "samples", "title"):
        assert getattr(cfg, field) == getattr(built_in, field), field
