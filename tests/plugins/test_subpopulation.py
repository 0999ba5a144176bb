"""Subpopulation poisoning on a small synthetic table written as CSV and loaded by the
csv: loader: FeatureMatch and ClusterMatch candidates counted by hand, the poisoned set's
copies and labels, and the attack's point: the subpopulation's accuracy falls far more
than everyone else's."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gauntlet import ConfigError, Dataset, NotApplicable
from gauntlet.plugins.datasets import load_dataset
from gauntlet.plugins.subpopulation import Subpopulation, cluster_match, feature_match

REGIONS, SEGMENTS = ("north", "south", "east", "west"), ("retail", "business", "student")


def table(n: int = 2400, seed: int = 0) -> list[list]:
    """Customers whose label is a rule on two numbers, the same in every group."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        region, segment = REGIONS[i % 4], SEGMENTS[(i // 4) % 3]
        a, b = (round(float(v), 4) for v in rng.uniform(0, 1, 2))
        rows.append([region, segment, a, b, int(a + b > 1.0)])
    return rows


@pytest.fixture(scope="module")
def customers(tmp_path_factory) -> Dataset:
    path = Path(tmp_path_factory.mktemp("subpop")) / "customers.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["region", "segment", "a", "b", "churn"])
        writer.writerows(table())
    return load_dataset(f"csv:{path}", {"label": "churn"})


def test_featurematch_candidates_counted_by_hand(customers: Dataset) -> None:
    found = feature_match(customers, min_rows=10, max_share=0.2)
    on = customers.x_train > 0.5
    names = customers.feature_names
    # By hand: single values over 20% of the rows are not subpopulations (every region
    # is a quarter, every segment a third); region x segment pairs (a twelfth) are.
    expected = []
    for r in REGIONS:
        for s in SEGMENTS:
            cols = [names.index(f"region={r}"), names.index(f"segment={s}")]
            expected.append((int(on[:, cols].all(axis=1).sum()), f"region={r} & segment={s}"))
    expected.sort(key=lambda t: (-t[0], t[1]))
    assert [name for name, _ in found] == [name for _, name in expected]
    assert all(size <= 0.2 * len(on) for size, _ in expected)


def test_poisoned_set_adds_flipped_copies_of_the_subpopulation(customers: Dataset) -> None:
    attack = Subpopulation(where="region=west, segment=student", fraction=2.0)
    p = attack.poison(customers, np.random.default_rng(0))
    names = customers.feature_names
    cols = [names.index("region=west"), names.index("segment=student")]
    members = (customers.x_train[:, cols] > 0.5).all(axis=1)
    n = round(2.0 * members.sum())
    assert p.n_poisoned == n and len(p.x) == len(customers.x_train) + n
    # The clean rows are untouched; the added rows are copies of members whose label was
    # not the poison label, now carrying it.
    assert np.array_equal(p.x[: len(customers.x_train)], customers.x_train)
    assert np.array_equal(p.poisoned_rows, np.arange(len(customers.x_train), len(p.x)))
    label = int(p.y[-1])
    assert (p.y[len(customers.x_train):] == label).all()
    added = p.x[len(customers.x_train):]
    sources = {row.tobytes() for row in customers.x_train[members & (customers.y_train != label)]}
    assert all(row.tobytes() in sources for row in added)
    # The label is the subpopulation's second most common class.
    counts = np.bincount(customers.y_train[members], minlength=2)
    assert label == int(np.argsort(-counts, kind="stable")[1])
    # Aimed at exactly the members among the test rows.
    in_test = (customers.x_test[:, cols] > 0.5).all(axis=1)
    assert np.array_equal(p.aimed, np.where(in_test, label, -1))
    assert p.notes["subpopulation"] == "region=west & segment=student"
    assert p.notes["train_rows"] == members.sum() and p.notes["test_rows"] == in_test.sum()


def test_subpopulation_damage_stays_on_the_subpopulation(customers: Dataset) -> None:
    from gauntlet.executor import SerialExecutor
    from gauntlet.plan import Selection, plan
    from gauntlet.plugins import defenses, metrics, subpopulation
    from gauntlet.plugins.torch_models import load_model
    from gauntlet.registry import make_registry
    from gauntlet.run import Runner

    model = load_model("builtin:mlp", {"dataset": customers, "seed": 0})
    registry = make_registry(entrypoints=False, plugins={
        "s": subpopulation, "m": metrics, "d": defenses})
    cells = plan(registry, [Selection("none")], [Selection("subpopulation", {
        "subpopulation": [0], "fraction": [0.5, 2.0]})])
    results = SerialExecutor(progress=False).run(Runner(model, customers,
                                                        registry.metrics.values(), 0), cells)
    by = {r.attack_params.get("fraction"): r for r in results if r.attack == "subpopulation"}
    assert all(r.status == "ok" for r in by.values()), [r.reason for r in by.values()]
    strong = by[2.0].metrics
    # The group loses far more than everyone else (Jagielski et al.'s point).
    assert strong["target_drop"]["value"] > 0.25
    assert strong["collateral_drop"]["value"] < 0.05
    assert strong["target_drop"]["value"] > 5 * max(strong["collateral_drop"]["value"], 0.01)
    assert strong["target_success"]["value"] > 0.7
    # More poison, more damage on the target.
    assert strong["target_drop"]["value"] >= by[0.5].metrics["target_drop"]["value"]
    # Sizes in the report's words.
    notes = by[2.0].artifacts["notes"]
    assert notes["subpopulation"].startswith(("region=", "segment="))
    assert strong["target_accuracy"]["n"] == notes["test_rows"]
    assert strong["collateral_accuracy"]["n"] == len(customers.y_test) - notes["test_rows"]


def test_clustermatch_on_any_input_and_featurematch_needs_categoricals(digits: Dataset) -> None:
    with pytest.raises(NotApplicable, match="clustermatch"):
        Subpopulation().poison(digits, np.random.default_rng(0))
    found, train, test = cluster_match(digits, clusters=10, min_rows=10, max_share=0.2)
    sizes = np.bincount(train, minlength=10)
    assert [name for name, _ in found] == [
        f"cluster {c} of 10 (k-means)" for c in sorted(range(10), key=lambda c: (-sizes[c], c))
        if 10 <= sizes[c] <= 0.2 * len(train)]
    assert len(test) == len(digits.x_test) and test.max() < 10
    p = Subpopulation(method="clustermatch", fraction=1.0, subpopulation=0).poison(
        digits, np.random.default_rng(0))
    chosen = found[0][1]
    assert p.n_poisoned == sizes[chosen] and (p.aimed >= 0).sum() == (test == chosen).sum()


def test_bad_choices_are_config_errors(customers: Dataset) -> None:
    with pytest.raises(ConfigError, match="is not a categorical value"):
        Subpopulation(where="region=mars").poison(customers, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="featurematch"):
        Subpopulation(where="region=west", method="clustermatch")
    with pytest.raises(NotApplicable, match="candidate subpopulations"):
        Subpopulation(subpopulation=500).poison(customers, np.random.default_rng(0))
    assert Subpopulation.in_default_audit is False


def test_opt_in_studies_run_only_when_named() -> None:
    from gauntlet.api import default_selections
    from gauntlet.registry import make_registry

    registry = make_registry()
    names = {s.name for s in default_selections(registry, "attack")}
    assert "subpopulation" in registry.attacks and "subpopulation" not in names
    assert {"fgsm", "label-flip", "backdoor"} <= names
    listed = {row["name"]: row for row in registry.describe() if row["kind"] == "attack"}
    assert listed["subpopulation"]["in_default_audit"] is False
    assert listed["fgsm"]["in_default_audit"] is True


def test_report_lists_the_groups_worst_first_in_the_user_s_words(tmp_path) -> None:
    import gauntlet

    rows = table(1200)
    for row in rows:  # a hostile category name reaches the report as text
        if row[0] == "west":
            row[0] = "<b>west</b>"
    path = tmp_path / "customers.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["region", "segment", "a", "b", "churn"])
        writer.writerows(rows)
    config = tmp_path / "audit.toml"
    config.write_text(f'seed = 0\nout = "{tmp_path / "out"}"\n'
                      '[model]\nspec = "builtin:mlp"\n'
                      f'[data]\nspec = "csv:{path}"\nlabel = "churn"\n'
                      '[attacks.subpopulation]\nwhere = ["region=<b>west</b>, segment=student",'
                      ' "region=north"]\nmax_share = 0.3\nfraction = 2.0\n'
                      '[defenses.none]\n')
    result = gauntlet.audit(config=config)
    cells = [c for c in result.cells if c["attack"] == "subpopulation"]
    assert [c["status"] for c in cells] == ["ok", "ok"], [c.get("reason") for c in cells]
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="targeted"' in html
    assert "region=&lt;b&gt;west&lt;/b&gt; &amp; segment=student" in html
    assert "<b>west</b>" not in html
    # Worst first: the table's rows follow the target accuracy drop.
    from gauntlet.reports.targeted import targeted_rows

    listed = targeted_rows(result.result)
    assert [r.drop for r in listed] == sorted((c["metrics"]["target_drop"]["value"]
                                               for c in cells), reverse=True)
    import html as html_mod

    section = html[html.index('id="targeted"'):]
    first, second = (section.index(html_mod.escape(r.target, quote=False)) for r in listed)
    assert first < second and listed[0].drop > listed[1].drop


def test_a_supplied_tabular_model_is_poisoned_through_its_factory(customers: Dataset,
                                                                   tmp_path) -> None:
    import torch

    from gauntlet.plugins.metrics import CollateralDrop, TargetDrop
    from gauntlet.plugins.torch_models import load_model

    trained = load_model("builtin:mlp", {"dataset": customers, "seed": 0})
    path = tmp_path / "churn.pt"
    torch.save(trained._base.state_dict(), path)  # the user's weights, without code
    model = load_model(str(path), {"dataset": customers,
                                   "arch": "gauntlet.plugins.torch_models:build_mlp"})
    assert model is not None and model.recipe is not None
    assert np.array_equal(model.labels(customers.x_test), trained.labels(customers.x_test))
    outcome = Subpopulation(where="region=west, segment=student", fraction=2.0).run(
        model, customers, np.random.default_rng(0))
    assert TargetDrop().evaluate(outcome).value > 0.25
    assert CollateralDrop().evaluate(outcome).value < 0.05


def test_a_where_the_data_lacks_is_a_usage_error_before_any_cell(customers: Dataset,
                                                                 tmp_path) -> None:
    from test_cli import assert_bad_input, gauntlet

    path = tmp_path / "c.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["region", "segment", "a", "b", "churn"])
        writer.writerows(table(200))
    config = tmp_path / "audit.toml"
    config.write_text(f'out = "{tmp_path / "out"}"\n[model]\nspec = "builtin:mlp"\nepochs = 1\n'
                      f'[data]\nspec = "csv:{path}"\nlabel = "churn"\n'
                      '[attacks.subpopulation]\nwhere = "region=mars"\n[defenses.none]\n')
    proc = gauntlet("audit", str(config))
    assert_bad_input(proc, "region=mars is not a categorical value", "region=west")
    assert not (tmp_path / "out" / "cells.jsonl").exists()


def test_where_takes_the_report_s_own_spelling(customers: Dataset) -> None:
    from gauntlet.plugins.subpopulation import parse_where

    names = customers.feature_names
    expected = [names.index("region=west"), names.index("segment=student")]
    for spelling in ("region=west, segment=student", "region=west & segment=student",
                     "region = west ,segment= student"):
        assert parse_where(spelling, names) == expected


def test_describe_names_the_attack_alone() -> None:
    from gauntlet.registry import make_registry

    details = make_registry().details("subpopulation", None)
    assert details["kind"] == "attack" and details["in_default_audit"] is False
