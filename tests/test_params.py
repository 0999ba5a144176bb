"""Declared parameters: types from annotations, sweeps, overrides, bounds and choices that
name what they expect, and declarations that are rejected before a plugin ever runs."""
from __future__ import annotations

import pytest

from gauntlet import Attack, ConfigError, Defense, PluginError, param


class Swept(Attack):
    """A parameterised attack.

    Test only.
    """

    name = "swept"
    eps: float = param((0.1, 0.2), "budget", ge=0)
    steps: int = param(10, "iterations", ge=1)
    mode: str = param("fast", "which variant", choices=("fast", "slow"))
    targeted: bool = param(False, "aim at a chosen class")
    ratio: float = param(0.5, "a share", gt=0, lt=1)
    limit: int | None = param(None, "optional cap (None: no cap)", le=100)


def test_types_come_from_the_annotations_even_as_strings():
    # `from __future__ import annotations` makes every annotation a string here.
    params = Swept.parameters()
    assert list(params) == ["eps", "steps", "mode", "targeted", "ratio", "limit"]
    assert {n: p.type_name() for n, p in params.items()} == {
        "eps": "float", "steps": "int", "mode": "str", "targeted": "bool", "ratio": "float",
        "limit": "int | None"}


def test_an_unannotated_parameter_takes_the_type_of_its_default():
    class Bare(Attack):
        """Unannotated parameters."""

        name = "bare"
        eps = param((0.1, 0.3), "budget")
        label = param("x", "a label")

    assert Bare.parameters()["eps"].type_name() == "float"
    with pytest.raises(ConfigError, match="parameter 'label' must be str, got 3"):
        Bare.grid({"label": 3})


def test_defaults_expand_into_a_sweep_with_labels():
    grid = Swept.grid()
    assert [p["eps"] for p, _ in grid] == [0.1, 0.2]
    assert [label for _, label in grid] == ["eps=0.1", "eps=0.2"]
    assert all(p["steps"] == 10 and p["limit"] is None for p, _ in grid)


def test_overrides_replace_defaults_and_lists_sweep():
    grid = Swept.grid({"eps": 0.3, "steps": [1, 2], "mode": ["fast", "slow"]})
    assert [(p["eps"], p["steps"], p["mode"]) for p, _ in grid] == [
        (0.3, 1, "fast"), (0.3, 1, "slow"), (0.3, 2, "fast"), (0.3, 2, "slow")]
    assert grid[1][1] == "steps=1, mode=slow"


def test_int_is_accepted_for_float_and_cast():
    (point, _), = Swept.grid({"eps": 1})
    assert point["eps"] == 1.0 and isinstance(point["eps"], float)


def test_optional_parameter_takes_none_or_its_type():
    assert Swept(limit=None).limit is None and Swept(limit=5).limit == 5
    with pytest.raises(ConfigError, match="parameter 'limit' must be int | None"):
        Swept(limit="5")
    with pytest.raises(ConfigError, match="parameter 'limit' must be <= 100, got 101"):
        Swept(limit=101)


@pytest.mark.parametrize("override, message", [
    ({"eps": -0.1}, "attack 'swept': parameter 'eps' must be >= 0, got -0.1"),
    ({"eps": [0.1, -1]}, "parameter 'eps' must be >= 0, got -1"),
    ({"steps": 0}, "parameter 'steps' must be >= 1, got 0"),
    ({"ratio": 0.0}, "parameter 'ratio' must be > 0, got 0.0"),
    ({"ratio": 1}, "parameter 'ratio' must be < 1, got 1.0"),
    ({"eps": float("nan")}, "parameter 'eps' is NaN"),
    ({"mode": "medium"}, "parameter 'mode' must be one of 'fast', 'slow', got 'medium'"),
])
def test_a_value_out_of_bounds_names_the_bound(override, message):
    with pytest.raises(ConfigError) as err:
        Swept.grid(override)
    assert str(err.value) == message if message.startswith("attack") else \
        message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ({"epsilon": 0.1}, "unknown parameter 'epsilon'; known parameters: eps, limit, mode, "
                       "ratio, steps, targeted"),
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
    assert attack.eps == 0.25 and attack.steps == 10 and attack.mode == "fast"
    assert attack.values == {"eps": 0.25, "steps": 10, "mode": "fast", "targeted": False,
                             "ratio": 0.5, "limit": None}
    with pytest.raises(AttributeError):
        attack.nothing  # noqa: B018
    with pytest.raises(ConfigError, match="parameter 'eps' takes one value here"):
        Swept(eps=[0.1, 0.2])
    with pytest.raises(ConfigError, match="unknown parameter 'epsilon'"):
        Swept(epsilon=0.1)


def test_validate_checks_combinations_on_construction():
    class Ranged(Defense):
        """Low must stay below high."""

        name = "ranged"
        adaptive = False
        low: float = param(0.0, "lower end")
        high: float = param(1.0, "upper end")

        def validate(self) -> None:
            if self.low >= self.high:
                raise ConfigError(f"defense 'ranged': low ({self.low}) must be below high")

    assert Ranged(low=0.5).low == 0.5
    with pytest.raises(ConfigError, match=r"low \(2.0\) must be below high"):
        Ranged(low=2)


def test_a_subclass_redeclares_a_parameter_in_its_place():
    class Slower(Swept):
        """The same attack, more steps by default."""

        name = "slower"
        steps: int = param(50, "iterations (more by default)", ge=1, le=500)

    params = Slower.parameters()
    assert list(params) == list(Swept.parameters())  # the place is kept
    assert params["steps"].default == 50 and Swept.parameters()["steps"].default == 10
    with pytest.raises(ConfigError, match="must be <= 500"):
        Slower(steps=501)
    assert Swept(steps=501).steps == 501  # the base's declaration is untouched


def test_describe_is_plain_data_for_the_cli():
    params = Swept.parameters()
    assert params["eps"].describe() == {"name": "eps", "type": "float", "default": [0.1, 0.2],
                                        "sweep": True, "bounds": ">= 0", "help": "budget"}
    assert params["ratio"].describe()["bounds"] == "> 0 and < 1"
    assert params["mode"].describe()["bounds"] == "one of 'fast', 'slow'"
    assert params["targeted"].describe()["bounds"] == ""


def test_legacy_params_dict_is_refused_with_the_migration():
    class Legacy(Attack):
        """Written for the old parameter dict."""

        name = "legacy"
        params = {"eps": 0.1}

    with pytest.raises(PluginError) as err:
        Legacy.validate_class()
    message = str(err.value)
    assert "attack 'legacy' declares parameters in a `params` dict" in message
    assert "eps: float = gauntlet.param(0.1, 'one line of help', ge=0)" in message


def declare(**attrs: object) -> type:
    return type("Bad", (Attack,), {"__doc__": "A malformed declaration.", "name": "bad",
                                   "__module__": __name__, **attrs})


@pytest.mark.parametrize("attrs, annotation, message", [
    ({"eps": param(0.1, "")}, None, "parameter 'eps' has no help text"),
    ({"eps": param((), "budget")}, None, "parameter 'eps' has an empty sweep"),
    ({"eps": param(-0.1, "budget", ge=0)}, None,
     "its own default breaks its declaration: attack 'bad': parameter 'eps' must be >= 0"),
    ({"eps": param("fast", "mode", choices=("slow",))}, None, "must be one of 'slow'"),
    ({"shape": param([1, 2], "dims")}, {"shape": "list[int]"}, "is annotated"),
    ({"table": param({"a": 1}, "a dict")}, None, "has a default of type dict"),
    ({"steps": param(0.5, "iterations")}, {"steps": "int"}, "parameter 'steps' must be int"),
])
def test_a_malformed_declaration_is_a_plugin_error(attrs, annotation, message):
    if annotation:
        attrs = {**attrs, "__annotations__": annotation}
    with pytest.raises(PluginError, match=message.replace("(", r"\(")):
        declare(**attrs).validate_class()
