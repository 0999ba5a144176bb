"""The csv:FILE loader: a credit-risk-shaped table is one-hot encoded and scaled with
statistics of its training rows only, split stratified or by a column, and each kind of
broken file or option gets an error that names what is wrong; an audit runs on it."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

import gauntlet
from gauntlet import ConfigError, DataError
from gauntlet.loading import load_dataset as load_by_spec
from gauntlet.plugins.datasets import load_dataset, load_sklearn
from gauntlet.registry import make_registry

GRADES = "ABCDEFG"
HOMES = ("RENT", "OWN", "MORTGAGE")
HEADER = ("id", "loan_grade", "interest_rate", "income", "home_ownership", "default")
CREDIT_FEATURES = (*(f"loan_grade={g}" for g in GRADES), "interest_rate", "income",
                   "home_ownership=MORTGAGE", "home_ownership=OWN", "home_ownership=RENT")
CREDIT = {"label": "default", "drop": ["id"]}


def write_csv(path: Path, header: tuple[str, ...] | list[str], rows: list[list]) -> Path:
    """Write a CSV with the standard writer, independently of the loader under test."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def credit_rows(n: int = 240, seed: int = 0) -> list[list]:
    """Loans that default by a rule a small network learns: a grade of E or worse, or a
    renter on a low income."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        grade, home = GRADES[i % 7], HOMES[int(rng.integers(3))]
        income = int(rng.integers(15_000, 120_000))
        rate = round(5 + 2.5 * GRADES.index(grade) + float(rng.uniform(-1, 1)), 2)
        default = int(GRADES.index(grade) >= 4 or (home == "RENT" and income < 45_000))
        rows.append([1000 + i, grade, rate, income, home, default])
    return rows


@pytest.fixture
def credit_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "credit.csv", HEADER, credit_rows())


# -- encoding ----------------------------------------------------------------------------
def test_credit_table_shapes_names_and_provenance(credit_csv):
    data = load_dataset(f"csv:{credit_csv}", CREDIT)
    assert data.name == "csv:credit.csv"
    assert data.x_train.shape == (180, 12) and data.x_test.shape == (60, 12)
    assert data.x_train.dtype == np.float32 and data.feature_names == CREDIT_FEATURES
    assert data.class_names == ("0", "1") and data.n_classes == 2
    assert data.clip_values == (0.0, 1.0)
    for x in (data.x_train, data.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
        # Every row has exactly one grade and one home-ownership feature set.
        assert np.array_equal(x[:, :7].sum(axis=1), np.ones(len(x)))
        assert np.array_equal(x[:, 9:].sum(axis=1), np.ones(len(x)))
    assert data.source == {"spec": f"csv:{credit_csv}", "path": str(credit_csv.resolve()),
                           "sha256": hashlib.sha256(credit_csv.read_bytes()).hexdigest()}


def test_stratified_split_sizes_and_determinism(credit_csv):
    y = np.array([r[-1] for r in credit_rows()])
    data = load_dataset(f"csv:{credit_csv}", {**CREDIT, "test_size": 0.3, "split_seed": 7})
    assert len(data.x_test) == 72 and len(data.x_train) == 168
    for c in (0, 1):  # each class in the test split in proportion, to within a row
        assert abs(np.sum(data.y_test == c) - 0.3 * np.sum(y == c)) <= 1
    again = load_dataset(f"csv:{credit_csv}", {**CREDIT, "test_size": 0.3, "split_seed": 7})
    assert np.array_equal(again.x_test, data.x_test)
    assert np.array_equal(again.y_train, data.y_train)
    other = load_dataset(f"csv:{credit_csv}", {**CREDIT, "test_size": 0.3, "split_seed": 8})
    assert not np.array_equal(other.x_test, data.x_test)


def split_table(tmp_path: Path) -> Path:
    rows = [  # id, grade, rate, income, home, default, part
        [1, "C", 10.0, 40_000, "OWN", 0, "train"],
        [2, "A", 5.0, 20_000, "RENT", 1, "train"],
        [3, "G", 20.0, 60_000, "MORTGAGE", 1, "train"],
        [4, "B", 7.5, 30_000, "RENT", 0, "TRAIN"],
        [5, "F", 25.0, 90_000, "OTHER", 1, "test"],  # beyond train max; unseen grade, home
        [6, "A", 2.5, 10_000, "OWN", 0, "test"],  # below train min
    ]
    return write_csv(tmp_path / "parts.csv", (*HEADER, "part"), rows)


def test_split_column_fits_scaling_and_categories_on_train_rows_only(tmp_path):
    data = load_dataset(f"csv:{split_table(tmp_path)}", {**CREDIT, "split": "part"})
    # Categories seen in training only, sorted; "part" is no feature.
    assert data.feature_names == ("loan_grade=A", "loan_grade=B", "loan_grade=C",
                                  "loan_grade=G", "interest_rate", "income",
                                  "home_ownership=MORTGAGE", "home_ownership=OWN",
                                  "home_ownership=RENT")
    assert len(data.x_train) == 4 and len(data.x_test) == 2  # file order kept
    # The first row, by hand: grade C, rate (10 - 5) / 15, income (40k - 20k) / 40k, OWN.
    assert np.allclose(data.x_train[0], [0, 0, 1, 0, 1 / 3, 0.5, 0, 1, 0])
    assert data.x_train[:, 4].min() == 0.0 and data.x_train[:, 4].max() == 1.0
    # Test values beyond the training range clip; unseen categories are all zeros.
    assert np.allclose(data.x_test[0], [0, 0, 0, 0, 1, 1, 0, 0, 0])
    assert np.allclose(data.x_test[1], [1, 0, 0, 0, 0, 0, 0, 1, 0])
    assert data.y_train.tolist() == [0, 1, 1, 0] and data.y_test.tolist() == [1, 0]


def test_limits_keep_the_first_rows_and_fit_on_them(tmp_path):
    path = split_table(tmp_path)
    data = load_dataset(f"csv:{path}", {**CREDIT, "split": "part", "limit_train": 2,
                                        "limit_test": 1})
    assert len(data.x_train) == 2 and len(data.x_test) == 1
    assert "loan_grade=G" not in data.feature_names  # row 3 is past the limit
    income = data.feature_names.index("income")
    assert data.x_train[:, income].tolist() == [1.0, 0.0]


def test_missing_values_numeric_mean_and_categorical_own_category(tmp_path):
    rows = [["", 10, "a", 0, "train"], ["x", 20, "", 1, "train"], ["y", 30, "b", 0, "train"],
            ["x", "", "a", 1, "train"], ["", "", "", 0, "test"], ["z", 40, "b", 1, "test"]]
    path = write_csv(tmp_path / "gaps.csv", ("kind", "amount", "tag", "y", "part"), rows)
    data = load_dataset(f"csv:{path}", {"label": "y", "split": "part"})
    assert data.feature_names == ("kind=", "kind=x", "kind=y", "amount", "tag=", "tag=a",
                                  "tag=b")
    amount = data.feature_names.index("amount")
    # Missing amounts are the training mean, 20, scaled over [10, 30]: 0.5.
    assert data.x_train[:, amount].tolist() == [0.0, 0.5, 1.0, 0.5]
    assert data.x_test[:, amount].tolist() == [0.5, 1.0]
    assert data.x_test[0].tolist() == [1, 0, 0, 0.5, 1, 0, 0]
    assert data.x_test[1].tolist() == [0, 0, 0, 1, 0, 0, 1]  # unseen kind z: all zeros


def test_categorical_option_one_hots_a_numeric_looking_column(tmp_path):
    rows = [["02139", 3, i % 2] for i in range(6)] + [["10001", 5, i % 2] for i in range(6)] \
        + [["9", 4, i % 2] for i in range(6)]
    path = write_csv(tmp_path / "zips.csv", ("zip", "rooms", "y"), rows)
    plain = load_dataset(f"csv:{path}", {"label": "y", "test_size": 0.5})
    assert plain.feature_names == ("zip", "rooms")
    data = load_dataset(f"csv:{path}", {"label": "y", "categorical": ["zip"],
                                        "test_size": 0.5})
    # Sorted as numbers, spelled as written (leading zero kept).
    assert data.feature_names == ("zip=9", "zip=02139", "zip=10001", "rooms")
    assert np.array_equal(data.x_train[:, :3].sum(axis=1), np.ones(9))


def test_constant_column_is_zero(tmp_path):
    path = write_csv(tmp_path / "c.csv", ("flat", "v", "y"),
                     [[7, i, i % 2] for i in range(8)])
    data = load_dataset(f"csv:{path}", {"label": "y", "test_size": 0.5})
    assert not data.x_train[:, 0].any() and not data.x_test[:, 0].any()


@pytest.mark.parametrize("labels, names", [
    (["10", "9", "2"], ("2", "9", "10")),  # numbers sort as numbers
    (["yes", "no", "maybe"], ("maybe", "no", "yes")),
])
def test_label_values_sorted_become_classes(tmp_path, labels, names):
    # "copy" repeats the label as a categorical feature, so each row says its own label.
    rows = [[labels[i % 3], labels[i % 3]] for i in range(12)]
    path = write_csv(tmp_path / "l.csv", ("copy", "label"), rows)
    data = load_dataset(f"csv:{path}", {"label": "label", "categorical": ["copy"],
                                        "test_size": 0.5})
    assert data.class_names == names
    assert data.feature_names == tuple(f"copy={n}" for n in names)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert np.array_equal(x.argmax(axis=1), y)


def test_sklearn_tabular_sets_name_their_features():
    from sklearn.datasets import load_wine

    wine = load_sklearn("wine", {})
    assert len(wine.feature_names) == 13
    assert wine.feature_names == tuple(load_wine().feature_names)
    assert load_sklearn("digits", {}).feature_names == ()  # images, not named columns


# -- errors ------------------------------------------------------------------------------
def bad(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "bad.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


GOOD = "a,b,y\n" + "".join(f"{i},x{i % 2},{i % 2}\n" for i in range(12))


@pytest.mark.parametrize("text, options, error, fragments", [
    ("", {"label": "y"}, DataError, ["is empty", "header"]),
    ("\n\n", {"label": "y"}, DataError, ["is empty"]),
    ("1,2,0\n3,4,1\n", {"label": "y"}, DataError, ["1, 2, 0", "no header row"]),
    ("a,b,y\n", {"label": "y"}, DataError, ["no data rows"]),
    ("a,b,y\n1,2,0\n3,4\n", {"label": "y"}, DataError, ["line 3", "2 fields", "has 3"]),
    ("a,,y\n1,2,0\n", {"label": "y"}, DataError, ["column 2", "no name"]),
    ("a,a,y\n1,2,0\n", {"label": "y"}, DataError, ["'a' twice"]),
    (b"a,y\n\xff\xfe,1\n", {"label": "y"}, DataError, ["not UTF-8"]),
    (GOOD, {}, ConfigError, ["label", "a, b, y"]),
    (GOOD, {"label": "target"}, ConfigError, ["'target'", "a, b, y"]),
    (GOOD, {"label": 3}, ConfigError, ["label must be a column name"]),
    (GOOD, {"label": "y", "drop": "a"}, ConfigError, ["drop must be a list", "'a'"]),
    (GOOD, {"label": "y", "categorical": ["c"]}, ConfigError, ["categorical", "'c'"]),
    (GOOD, {"label": "y", "drop": ["y"]}, ConfigError, ["'y' is the label column", "drop"]),
    (GOOD, {"label": "y", "split": "y"}, ConfigError,
     ["'y' is the split column", "the label column"]),
    (GOOD, {"label": "y", "drop": ["a"], "categorical": ["a"]}, ConfigError,
     ["'a'", "both drop and categorical"]),
    (GOOD, {"label": "y", "split": "b", "test_size": 0.5}, ConfigError,
     ["test_size", "split = 'b'"]),
    (GOOD, {"label": "y", "test_size": 2}, ConfigError, ["test_size"]),
    (GOOD, {"label": "y", "limit_train": 0}, ConfigError, ["limit_train"]),
    (GOOD, {"label": "y", "drop": ["a", "b"]}, DataError, ["no feature columns"]),
    ("a,y\n1,0\n2,0\n3,0\n", {"label": "y"}, DataError, ["'y'", "one class", "'0'"]),
    ("a,y\n1,0\n2,\n3,1\n", {"label": "y"}, DataError, ["line 3", "label column 'y' is empty"]),
    ("a,y\n1,0\n2,0\n3,1\n4,0\n", {"label": "y"}, DataError,
     ["stratified", "rarest class has 1 row", "split column"]),
    ("a,y,part\n1,0,train\n2,1,validation\n", {"label": "y", "split": "part"}, DataError,
     ["line 3", "'validation'", "train or test"]),
    ("a,y,part\n1,0,train\n2,1,train\n", {"label": "y", "split": "part"}, DataError,
     ["'part'", "is test"]),
    ("a,y,part\n1,0,test\n2,1,test\n", {"label": "y", "split": "part"}, DataError,
     ["'part'", "is train"]),
    ("a,y\n1,0\n2,1\nNA,0\n4,1\n", {"label": "y"}, DataError,
     ["line 4", "column 'a'", "'NA'", "empty cell", "categorical"]),
    ("name,y\n" + "".join(f"user{i},{i % 2}\n" for i in range(400)), {"label": "y"},
     DataError, ["column 'name'", "id or free text", "drop"]),
])
def test_errors_name_what_is_wrong(tmp_path, text, options, error, fragments):
    with pytest.raises(error) as info:
        load_dataset(f"csv:{bad(tmp_path, text)}", options)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="CSV data file not found.*absent.csv"):
        load_dataset(f"csv:{tmp_path / 'absent.csv'}", {"label": "y"})


# -- in an audit -------------------------------------------------------------------------
def test_builtin_mlp_learns_the_table_and_an_audit_runs_on_it(credit_csv, tmp_path):
    from gauntlet.plugins.torch_models import load_model

    spec = f"csv:{credit_csv}"
    data = load_by_spec(make_registry(), spec, CREDIT)  # through the registry, as an audit
    model = load_model("builtin:mlp", {"dataset": data, "seed": 0})  # 20 epochs
    accuracy = float(np.mean(model.labels(data.x_test) == data.y_test))
    majority = np.bincount(data.y_test).max() / len(data.y_test)
    assert accuracy >= majority + 0.1, (accuracy, majority)

    config = tmp_path / "audit.toml"
    config.write_text(f'seed = 0\nout = "{tmp_path / "out"}"\n'
                      '[model]\nspec = "builtin:mlp"\nepochs = 5\n'
                      f'[data]\nspec = "{spec}"\nlabel = "default"\ndrop = ["id"]\n'
                      '[attacks.fgsm]\neps = 0.1\n[defenses.none]\n')
    result = gauntlet.audit(config=config)
    assert result.result["provenance"]["data"]["spec"] == spec
    assert {c["status"] for c in result.cells} == {"ok"}, result.cells
    assert (tmp_path / "out" / "report.html").is_file()
