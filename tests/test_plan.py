"""Planning: selections expand into cells, bad selections fail before anything runs, and
seeds derive from points, never from order."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import plugin

from gauntlet import Access, ConfigError, Defense, EvasionAttack, Stage, param
from gauntlet.plan import Selection, derive_seed, plan
from gauntlet.registry import make_registry


class RandomSign(EvasionAttack):
    """Adds eps times a random sign to every input.

    Test attack.
    """

    name = "random-sign"
    needs = Access.LABELS
    eps: float = param((0.1, 0.3), "step size", ge=0)
    bias: float = param(0.0, "added to every input", ge=0)

    def validate(self) -> None:
        if self.eps + self.bias > 1:
            raise ConfigError(f"{self.owner()}: eps + bias must be at most 1")

    def generate(self, model, x, y, rng):
        return np.clip(x + self.bias + self.eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1)


class Plain(Defense):
    """Deploys the model unchanged, at a sweep of a parameter that does nothing.

    Test defense.
    """

    name = "plain"
    stage = Stage.NONE
    adaptive = True
    level: int = param((1, 2), "ignored", ge=0)

    def apply(self, model, dataset, rng):
        return model.deploy()


@pytest.fixture
def registry():
    return make_registry(entrypoints=False, plugins={"test": plugin("test", RandomSign, Plain)})


def test_plan_is_every_defense_point_times_clean_plus_every_attack_point(registry):
    cells = plan(registry, [Selection("plain")], [Selection("random-sign")])
    assert [(c.defense_point, c.attack.name, c.attack_point) for c in cells] == [
        ("level=1", "clean", ""), ("level=1", "random-sign", "eps=0.1"),
        ("level=1", "random-sign", "eps=0.3"),
        ("level=2", "clean", ""), ("level=2", "random-sign", "eps=0.1"),
        ("level=2", "random-sign", "eps=0.3")]
    assert len({c.id for c in cells}) == len(cells)
    # Overrides replace the sweep; a list is a sweep of its own.
    cells = plan(registry, [Selection("plain", {"level": 0})],
                 [Selection("random-sign", {"eps": [0.05, 0.1, 0.2]})])
    assert [c.attack_point for c in cells] == ["", "eps=0.05", "eps=0.1", "eps=0.2"]
    assert cells[1].attack_params == {"rows": 0, "batch_size": 256, "eps": 0.05, "bias": 0.0}


def test_attack_seed_ignores_the_defense_and_defense_seed_ignores_the_attack(registry):
    cells = plan(registry, [Selection("plain")], [Selection("random-sign")])
    by = {(c.defense_point, c.attack_point): c for c in cells}
    one, other_defense = by[("level=1", "eps=0.1")], by[("level=2", "eps=0.1")]
    other_attack = by[("level=1", "eps=0.3")]
    assert one.attack_seed_key == other_defense.attack_seed_key
    assert one.attack_seed_key != other_attack.attack_seed_key
    assert one.defense_seed_key == other_attack.defense_seed_key
    assert one.defense_seed_key != other_defense.defense_seed_key
    seeds = {derive_seed(0, c.attack_seed_key) for c in cells}
    assert len(seeds) == 3  # clean, eps=0.1, eps=0.3
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, cells[1].attack_seed_key) != derive_seed(0, cells[1].attack_seed_key)


@pytest.mark.parametrize("defenses, attacks, message", [
    (["plain"], [Selection("nope")], "unknown attack 'nope'; known attacks: random-sign"),
    (["nope"], [], "unknown defense 'nope'; known defenses: "),
    (["plain"], [Selection("random-sign", {"epsilon": 1})],
     "attack 'random-sign': unknown parameter 'epsilon'; known parameters: batch_size, bias, "
     "eps, rows"),
    (["plain"], [Selection("random-sign", {"eps": [0.1, float("nan")]})],
     "attack 'random-sign': parameter 'eps' is NaN"),
    (["plain"], [Selection("random-sign", {"eps": -0.1})],
     "attack 'random-sign': parameter 'eps' must be >= 0, got -0.1"),
    (["plain"], [Selection("random-sign", {"eps": 0.6, "bias": 0.5})],
     "eps + bias must be at most 1"),  # validate() runs for every point at plan time
    (["plain"], [Selection("random-sign", {"eps": 0.2}), Selection("random-sign", {"eps": 0.2})],
     "attack 'random-sign' is selected more than once with the same parameters"),
    (["plain", "plain"], [], "defense 'plain' is selected more than once"),
])
def test_bad_selections_fail_before_anything_runs(registry, defenses, attacks, message):
    with pytest.raises(ConfigError) as err:
        plan(registry, [Selection(d) for d in defenses], attacks)
    assert message in str(err.value)


def test_built_in_attacks_keep_the_seeds_they_had_before_their_parameters_were_renamed():
    # So an audit run again with the same seed gives the numbers it gave before issue 6
    # (test_audit compares the whole demo audit with those numbers).
    registry = make_registry()
    cells = plan(registry, [Selection("none")],
                 [Selection("noise", {"eps": 0.05}), Selection("trash-bucket")])
    keys = {c.attack.name: c.attack_seed_key for c in cells}
    assert keys["noise"] == 'attack|noise{"eps": 0.05, "samples": 0}'
    assert keys["trash-bucket"] == 'attack|trash-bucket{"samples": 1000}'
    assert keys["clean"] == "attack|clean{}"
    # the renamed parameter still moves the seed, under its old name
    _, fewer = plan(registry, [Selection("none")],
                    [Selection("noise", {"eps": 0.05, "rows": 10})])
    assert fewer.attack_seed_key == 'attack|noise{"eps": 0.05, "samples": 10}'


def test_a_plugin_selected_several_times_runs_the_union_of_its_sweeps(registry):
    # Two sweeps of one attack: each point once, labelled by every parameter that varies
    # across the union, so the two sweeps' points never share a label.
    cells = plan(registry, [Selection("plain", {"level": 1})],
                 [Selection("random-sign", {"eps": [0.1, 0.3]}),
                  Selection("random-sign", {"eps": [0.3, 0.5], "bias": 0.2})])
    assert [(c.attack_point, c.attack_params["eps"], c.attack_params["bias"])
            for c in cells[1:]] == [("eps=0.1, bias=0", 0.1, 0.0), ("eps=0.3, bias=0", 0.3, 0.0),
                                    ("eps=0.3, bias=0.2", 0.3, 0.2),
                                    ("eps=0.5, bias=0.2", 0.5, 0.2)]
    assert len({c.id for c in cells}) == len(cells)
    # Overlapping sweeps run a shared point once.
    cells = plan(registry, [Selection("plain", {"level": 1})],
                 [Selection("random-sign", {"eps": [0.1, 0.3]}),
                  Selection("random-sign", {"eps": [0.3]})])
    assert [c.attack_point for c in cells[1:]] == ["eps=0.1", "eps=0.3"]
    # The same selection twice is still a mistake.
    with pytest.raises(ConfigError, match="more than once with the same parameters"):
        plan(registry, [Selection("plain")], [Selection("random-sign"), Selection("random-sign")])


def test_config_tables_of_one_attack_are_several_selections(tmp_path):
    from gauntlet.config import load as load_config

    path = tmp_path / "audit.toml"
    path.write_text('[[attacks.backdoor]]\nkind = "noisy"\npatch = [1, 6]\n'
                    '[[attacks.backdoor]]\nkind = "mixture"\nfraction = [0.1, 0.5]\n'
                    '[attacks.fgsm]\n')
    cfg = load_config(path)
    assert [(s.name, dict(s.params)) for s in cfg.attacks] == [
        ("backdoor", {"kind": "noisy", "patch": [1, 6]}),
        ("backdoor", {"kind": "mixture", "fraction": [0.1, 0.5]}), ("fgsm", {})]
    # Written back (provenance, the resume fingerprint) as a list of the tables.
    assert cfg.to_dict()["attacks"]["backdoor"] == [{"kind": "noisy", "patch": [1, 6]},
                                                    {"kind": "mixture", "fraction": [0.1, 0.5]}]
