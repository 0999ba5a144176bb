"""Parameters: defaults, sweeps, overrides, unknown names and wrong types."""
from __future__ import annotations

import pytest

from gauntlet import Attack, ConfigError


class Swept(Attack):
    """A parameterised attack.

    Test only.
    """

    name = "swept"
    params = {"eps": (0.1, 0.2), "steps": 10, "mode": "fast", "targeted": False}


def test_defaults_expand_into_a_sweep_with_labels():
    grid = Swept.grid()
    assert [p["eps"] for p, _ in grid] == [0.1, 0.2]
    assert [label for _, label in grid] == ["eps=0.1", "eps=0.2"]
    assert all(p["steps"] == 10 for p, _ in grid)


def test_overrides_replace_defaults_and_lists_sweep():
    grid = Swept.grid({"eps": 0.3, "steps": [1, 2]})
    assert [(p["eps"], p["steps"]) for p, _ in grid] == [(0.3, 1), (0.3, 2)]
    assert grid[0][1] == "steps=1"


def test_int_is_accepted_for_float_and_cast():
    (point, _), = Swept.grid({"eps": 1})
    assert point["eps"] == 1.0 and isinstance(point["eps"], float)


@pytest.mark.parametrize("override, message", [
    ({"epsilon": 0.1}, "unknown parameter 'epsilon'; known parameters: eps, mode, steps, targeted"),
    ({"steps": 1.5}, "parameter 'steps' must be int"),
    ({"steps": True}, "parameter 'steps' must be int"),
    ({"mode": 3}, "parameter 'mode' must be str"),
    ({"targeted": "yes"}, "parameter 'targeted' must be bool"),
    ({"eps": []}, "empty sweep"),
])
def test_bad_parameters_are_rejected_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        Swept.grid(override)


def test_instance_reads_parameters_as_attributes():
    attack = Swept(eps=0.25)
    assert attack.eps == 0.25 and attack.steps == 10
    with pytest.raises(AttributeError):
        attack.nothing  # noqa: B018
    with pytest.raises(ConfigError):
        Swept(eps=[0.1, 0.2])
