"""Confidentiality: what the serving side of a deployment learns, and what it can change.

Every other family attacks the model; these two ask about the server that runs it.
``server-view`` measures what a curious server learns of the inputs it serves (in the
clear: everything; under encryption: nothing beyond chance, if the encryption holds).
``server-tamper`` shows that encryption gives confidentiality, not integrity: a malicious
server can move the answers it returns, and the client cannot tell. The report shows
them side by side so nobody reads "encrypted" as "trustworthy".
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet import (
    Access,
    Attack,
    Dataset,
    Family,
    Metric,
    MetricValue,
    Model,
    NotApplicable,
    ServerViewOutcome,
    TamperOutcome,
    hookimpl,
    param,
    proportion,
)


def _rows(dataset: Dataset, rows: int) -> np.ndarray:
    return dataset.x_test[:rows] if rows else dataset.x_test


class ServerView(Attack):
    """A curious server: how well it recovers the labels it serves from what it sees.

    In the clear the server sees each input and computes the answer itself, so it knows
    every served label. When it sees something else (ciphertexts), it is handed the
    served labels of ``rows`` training inputs, trains a logistic regression on what it
    saw of them, and guesses the labels of ``rows`` test inputs from what it sees of
    those: a stronger server than a real one, which is never told any label. Its
    accuracy is compared with chance (the most frequent served label's share among the
    test rows: what a server guessing one class gets).

    Gilad-Bachrach et al., 2016, "CryptoNets" (the server never sees inputs in the clear);
    Goldwasser and Micali, 1984, "Probabilistic Encryption" (indistinguishability).
    """

    name = "server-view"
    family = Family.CONFIDENTIALITY
    needs = Access.LABELS
    outcome = ServerViewOutcome
    rows: int = param(40, "test rows looked at, and training rows whose served labels "
                      "the server is given (0: all test rows)", ge=0)

    def run(self, model: Model, dataset: Dataset,
            rng: np.random.Generator) -> ServerViewOutcome:
        x = _rows(dataset, self.rows)
        if model.exposes_inputs:
            served = model.labels(x)
            return ServerViewOutcome(served=served, guessed=served.copy(), exposed=True)
        known = dataset.x_train[:len(x)]
        both = model.labels(np.concatenate([known, x]))  # one batch: one encrypted call
        labels, served = both[:len(known)], both[len(known):]
        guessed = self._guess(model.server_view(known), labels, model.server_view(x))
        return ServerViewOutcome(served=served, guessed=guessed, exposed=False)

    @staticmethod
    def _guess(seen_known: np.ndarray, labels: np.ndarray, seen: np.ndarray) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if len(np.unique(labels)) < 2:  # one class known: the server guesses it
            return np.full(len(seen), labels[0] if len(labels) else 0, dtype=np.int64)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        clf.fit(np.asarray(seen_known, np.float64), labels)
        return clf.predict(np.asarray(seen, np.float64)).astype(np.int64)


class ServerTamper(Attack):
    """A malicious server: it pushes every answer it returns towards one class.

    It adds ``shift`` to the score of class ``target`` in every answer and counts how
    often the client then receives ``target``. In the clear the server returns whatever
    it likes. Under encryption it adds a plain vector to the encrypted scores, which
    needs no key (CKKS is malleable by design): encryption hides the inputs, it does
    not make the answers trustworthy.
    """

    name = "server-tamper"
    family = Family.CONFIDENTIALITY
    needs = Access.LABELS
    outcome = TamperOutcome
    rows: int = param(256, "test rows served (0: all)", ge=0)
    target: int = param(0, "the class the server pushes answers towards", ge=0)
    shift: float = param(50.0, "what the server adds to the target's logit", gt=0)

    def run(self, model: Model, dataset: Dataset, rng: np.random.Generator) -> TamperOutcome:
        if self.target >= model.n_classes:
            raise NotApplicable(f"target class {self.target} is not one of the model's "
                                f"{model.n_classes} classes")
        x = _rows(dataset, self.rows)
        served = model.labels(x)
        shift = np.zeros(model.n_classes)
        shift[self.target] = self.shift
        return TamperOutcome(target=self.target, served=served,
                             received=model.tampered(x, shift))


class ServerRecovery(Metric):
    """Share of served labels the server recovers from what it saw (Wilson interval):
    100% when it sees inputs in the clear; chance (``server_chance``) when it learns
    nothing."""

    name = "server_recovery"
    title = "Served labels the server recovers"
    applies_to = (ServerViewOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: ServerViewOutcome) -> MetricValue:  # type: ignore[override]
        return proportion(int((outcome.served == outcome.guessed).sum()), outcome.n)


class ServerChance(Metric):
    """What a server that learns nothing recovers: the most frequent served label's
    share of the rows (Wilson interval). Compare ``server_recovery`` with it."""

    name = "server_chance"
    title = "Server recovery by chance"
    applies_to = (ServerViewOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: ServerViewOutcome) -> MetricValue:  # type: ignore[override]
        top = int(np.bincount(outcome.served).max()) if outcome.n else 0
        return proportion(top, outcome.n)


class TamperSuccess(Metric):
    """Share of answers a malicious server replaces by its chosen class, among rows whose
    honest answer was another class (Wilson interval)."""

    name = "tamper_success"
    title = "Answers the server replaces"
    applies_to = (TamperOutcome,)
    higher_is_better = False
    bounds = (0.0, 1.0)
    format = "percent"

    def compute(self, outcome: TamperOutcome) -> MetricValue:  # type: ignore[override]
        moved = outcome.moved
        return proportion(int((outcome.received[moved] == outcome.target).sum()), outcome.n)


@hookimpl
def register_attacks(register: Callable[[type[Attack]], None]) -> None:
    register(ServerView)
    register(ServerTamper)


@hookimpl
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    for cls in (ServerRecovery, ServerChance, TamperSuccess):
        register(cls)
