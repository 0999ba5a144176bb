"""Subpopulation poisoning on tabular data (Jagielski et al., 2021): damage one group of
people, and only them.

The attacker picks a subpopulation, by feature values (FeatureMatch: a conjunction of
categorical values such as ``loan_grade=G``) or as a k-means cluster of the inputs
(ClusterMatch), and adds label-flipped copies of its points to the training set. The
cell's test rows in the subpopulation are the ones aimed at (``target_accuracy``,
``target_drop``, ``target_success``); the others measure the collateral damage
(``collateral_accuracy``, ``collateral_drop``), which a stealthy attack keeps near zero.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gauntlet import (
    Attack,
    ConfigError,
    Dataset,
    NotApplicable,
    PoisonedSet,
    PoisoningAttack,
    hookimpl,
    param,
)
from gauntlet.params import Params

METHODS = ("featurematch", "clustermatch")


def categorical_columns(feature_names: tuple[str, ...]) -> dict[str, list[int]]:
    """The one-hot columns of each categorical feature, by its name: ``"column=value"``
    feature names grouped by ``column`` (as the ``csv:`` loader names them)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(feature_names):
        column, sep, _ = name.partition("=")
        if sep:
            groups.setdefault(column, []).append(i)
    return groups


def parse_where(where: str, feature_names: tuple[str, ...]) -> list[int]:
    """The one-hot columns named by ``"column=value, column=value"`` (or joined by ``&``,
    as the report names groups; spaces around ``=`` are ignored), each one of the data's
    feature names; ConfigError naming the unknown ones otherwise."""
    parts = [part.strip() for part in where.replace("&", ",").split(",") if part.strip()]
    wanted = ["=".join(side.strip() for side in part.split("=", 1)) for part in parts]
    index = {name: i for i, name in enumerate(feature_names)}
    unknown = [w for w in wanted if w not in index or "=" not in w]
    if unknown or not wanted:
        known = ", ".join(n for n in feature_names if "=" in n) or "none"
        raise ConfigError(f"subpopulation where = {where!r}: {', '.join(unknown) or 'empty'} "
                          f"is not a categorical value of this data (known: {known})")
    return [index[w] for w in wanted]


def feature_match(dataset: Dataset, min_rows: int, max_share: float
                  ) -> list[tuple[str, list[int]]]:
    """FeatureMatch candidates: every categorical value and every pair of values of two
    different categoricals whose training rows number at least ``min_rows`` and at most
    ``max_share`` of the training set, largest first (ties by name)."""
    groups = categorical_columns(dataset.feature_names)
    if not groups:
        raise NotApplicable("FeatureMatch picks subpopulations by categorical values (one-hot "
                            "features named 'column=value', as the csv: loader names them), "
                            "and this data has none; set method = 'clustermatch'")
    on = dataset.x_train > 0.5
    singles = [[i] for cols in groups.values() for i in cols]
    pairs = [[a, b] for g1, g2 in itertools.combinations(groups.values(), 2)
             for a in g1 for b in g2]
    found = []
    for cols in singles + pairs:
        size = int(on[:, cols].all(axis=1).sum())
        if min_rows <= size <= max_share * len(on):
            found.append((size, " & ".join(dataset.feature_names[c] for c in cols), cols))
    found.sort(key=lambda t: (-t[0], t[1]))
    return [(name, cols) for _, name, cols in found]


def cluster_match(dataset: Dataset, clusters: int, min_rows: int, max_share: float
                  ) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """ClusterMatch candidates: k-means clusters of the training inputs (fixed seed: the
    subpopulations are the data's, the same in every cell) of at least ``min_rows`` and
    at most ``max_share`` of the training rows, largest first; with each training and
    test row's cluster."""
    from sklearn.cluster import KMeans

    flat_train = dataset.x_train.reshape(len(dataset.x_train), -1)
    km = KMeans(n_clusters=clusters, n_init=4, random_state=0).fit(flat_train)
    train = km.labels_.astype(np.int64)
    test = km.predict(dataset.x_test.reshape(len(dataset.x_test), -1)).astype(np.int64)
    sizes = np.bincount(train, minlength=clusters)
    order = sorted(range(clusters), key=lambda c: (-sizes[c], c))
    found = [(f"cluster {c} of {clusters} (k-means)", c) for c in order
             if min_rows <= sizes[c] <= max_share * len(train)]
    return found, train, test


class Subpopulation(PoisoningAttack):
    """Subpopulation poisoning: label-flipped copies of one group's points, aimed at it.

    The model should fail on that group and on few others.
    Jagielski, Severi, Pousette Harger and Oprea, 2021, "Subpopulation Data Poisoning
    Attacks". The subpopulation is an explicit ``where`` (``"column=value, ..."``), or
    candidate number ``subpopulation`` (0 = the largest) of FeatureMatch (categorical values
    and pairs of values) or ClusterMatch (k-means clusters), each holding at least
    ``min_rows`` and at most ``max_share`` of the training rows. The attacker's auxiliary
    points are the subpopulation's training rows whose label is not the poison label,
    drawn with replacement (``fraction`` times the subpopulation's training rows), each
    added again labelled with the poison label: the class most common in the
    subpopulation after its majority class, unless ``label`` is set.
    """

    name = "subpopulation"
    in_default_audit = False  # tabular studies: several re-trainings; name it to run it
    method: str = param("featurematch", "featurematch: categorical values (and pairs); "
                        "clustermatch: k-means clusters of the inputs", choices=METHODS)
    fraction: float = param((0.5, 1.0, 2.0), "poison rows added, as a multiple of the "
                            "subpopulation's training rows", gt=0, le=10)
    subpopulation: int = param((0, 1, 2), "which candidate subpopulation, largest first "
                               "(ignored when where is set)", ge=0)
    where: str = param("", "an explicit subpopulation, 'column=value, column=value' in the "
                       "data's feature names (featurematch only)")
    clusters: int = param(10, "k of ClusterMatch's k-means", ge=2, le=1000)
    min_rows: int = param(10, "fewest training rows a candidate subpopulation holds", ge=1)
    max_share: float = param(0.2, "largest share of the training rows a candidate holds",
                             gt=0, le=1)
    label: int = param(-1, "the poison label; -1: the subpopulation's second most common "
                       "class", ge=-1)

    @classmethod
    def grid(cls, overrides: Mapping[str, Any] | None = None) -> list[tuple[Params, str]]:
        """As every attack's, except that a ``where`` leaves the candidate sweep out
        (it names the group itself; each candidate index would repeat the same cell)."""
        overrides = dict(overrides or {})
        if overrides.get("where") and "subpopulation" not in overrides:
            overrides["subpopulation"] = 0
        return super().grid(overrides)

    def validate(self) -> None:
        if self.where and self.method != "featurematch":
            raise ConfigError("subpopulation: where names categorical values; it needs "
                              "method = 'featurematch'")

    def check_data(self, dataset: Dataset) -> None:
        if self.where:
            parse_where(self.where, dataset.feature_names)

    def poison(self, dataset: Dataset, rng: np.random.Generator) -> PoisonedSet:
        if len(dataset.input_shape) != 1 and self.method == "featurematch":
            raise NotApplicable(f"FeatureMatch needs feature vectors; this data's inputs are "
                                f"shaped {dataset.input_shape} (method = 'clustermatch' "
                                "works on any input)")
        train, test, name = self._members(dataset)
        n_sub = int(train.sum())
        if not test.any():
            raise NotApplicable(f"subpopulation {name} has no test rows to measure it on")
        label = self._label(dataset, dataset.y_train[train])
        pool = np.flatnonzero(train & (dataset.y_train != label))
        if not len(pool):
            raise NotApplicable(f"every training row of subpopulation {name} already has "
                                f"label {label}: there is nothing to flip")
        n = max(1, round(self.fraction * n_sub))
        copies = rng.choice(pool, n, replace=True)
        x = np.concatenate([dataset.x_train, dataset.x_train[copies]])
        y = np.concatenate([dataset.y_train, np.full(n, label, dtype=dataset.y_train.dtype)])
        aimed = np.where(test, label, -1).astype(np.int64)
        names = dataset.class_names
        return PoisonedSet(
            x, y, n_poisoned=n, poisoned_rows=np.arange(len(dataset.x_train), len(x)),
            aimed=aimed,
            notes={"subpopulation": name, "method": self.method, "train_rows": n_sub,
                   "test_rows": int(test.sum()), "poison_rows": n,
                   "poison_label": names[label] if label < len(names) else str(label)})

    def _members(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
        """Training and test membership masks of the chosen subpopulation, and its name."""
        if self.method == "clustermatch":
            found, train, test = cluster_match(dataset, self.clusters, self.min_rows,
                                               self.max_share)
            name, c = self._pick(found)
            return train == c, test == c, name
        if self.where:
            cols = parse_where(self.where, dataset.feature_names)
            name = " & ".join(dataset.feature_names[c] for c in cols)
        else:
            name, cols = self._pick(feature_match(dataset, self.min_rows, self.max_share))
        return ((dataset.x_train[:, cols] > 0.5).all(axis=1),
                (dataset.x_test[:, cols] > 0.5).all(axis=1), name)

    def _pick(self, found: list) -> tuple:
        if self.subpopulation >= len(found):
            raise NotApplicable(f"{self.method} found {len(found)} candidate subpopulations "
                                f"of at least {self.min_rows} rows and at most "
                                f"{self.max_share:.0%} of the training rows; subpopulation "
                                f"{self.subpopulation} is not one of them")
        return found[self.subpopulation]  # type: ignore[no-any-return]

    def _label(self, dataset: Dataset, y_sub: np.ndarray) -> int:
        if self.label >= 0:
            if self.label >= dataset.n_classes:
                raise NotApplicable(f"label {self.label} is not one of the data's "
                                    f"{dataset.n_classes} classes")
            return int(self.label)
        counts = np.bincount(y_sub, minlength=dataset.n_classes)
        order = np.argsort(-counts, kind="stable")
        return int(order[1]) if dataset.n_classes > 1 else int(order[0])


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(Subpopulation)
