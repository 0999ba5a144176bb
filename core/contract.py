"""What a plugin hands back to the runner is checked here, and a fault is blamed on it.

An outcome is checked before any metric sees it, so a wrong outcome becomes an error
cell naming the attack ("attack 'x' returned proba with 3 non-finite values"), not a
traceback from the first metric that trips over it, nor plausible-looking numbers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from gauntlet.outcome import (
    EvasionOutcome,
    ExtractionOutcome,
    MembershipOutcome,
    Outcome,
    PoisoningOutcome,
    Predictions,
    ProbeOutcome,
    TrainingOrderOutcome,
)

#: EvasionOutcome fields with one entry per attacked row (or none: not recorded).
PER_ROW_FIELDS = ("rows", "l0", "l2", "linf")


class ContractError(Exception):
    """A plugin returned something its interface rules out (a defense that returns no
    Model, an outcome whose arrays disagree); the message names the plugin."""


def what(value: Any) -> str:
    """A short description of a value, for messages: ``a dict ({'a': 1})``."""
    return "None" if value is None else f"a {type(value).__name__} ({repr(value)[:60]})"


def _array(owner: str, field: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is not an array
        raise ContractError(f"{owner} returned {field} = {what(value)}, not an array: "
                            f"{exc}") from None
    if arr.dtype.kind not in "biuf":
        raise ContractError(f"{owner} returned {field} of dtype {arr.dtype}, not numbers")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ContractError(f"{owner} returned {field} with {bad} non-finite values (NaN or "
                            f"inf) among {arr.size}: its inputs or the model's outputs went "
                            "non-finite")
    return arr


def _as_arrays(owner: str, outcome: Outcome) -> None:
    """Replace array-likes (lists, tensors) by numpy arrays; reject NaN anywhere."""
    if not dataclasses.is_dataclass(outcome):
        return
    for f in dataclasses.fields(outcome):
        value = getattr(outcome, f.name)
        if isinstance(value, (float, np.floating)):
            if math.isnan(value):
                raise ContractError(f"{owner} returned {f.name} = {value}: its inputs "
                                    "went non-finite")
        elif isinstance(value, (np.ndarray, list, tuple)) or (
                hasattr(value, "__array__") and not isinstance(value, np.generic)):
            arr = _array(owner, f.name, value)
            if arr is not value:  # a list or tensor: metrics get numpy
                setattr(outcome, f.name, arr)


def check_outcome(owner: str, outcome: Outcome, n_rows: int, n_classes: int) -> None:
    """Raise ContractError unless ``outcome`` is usable by metrics: every number finite;
    probabilities shaped ``(rows, n_classes)`` in [0, 1]; labels in ``[0, n_classes)``;
    per-row arrays of one length, at most the ``n_rows`` test rows the attack was given;
    an evasion outcome's row indices among those rows.

    Array-likes are replaced by numpy arrays.
    """
    _as_arrays(owner, outcome)
    rows: dict[str, int] = {}

    def proba(name: str, same_rows: bool = True) -> None:
        a = getattr(outcome, name)
        if a is None and not same_rows:
            return
        if not isinstance(a, np.ndarray) or a.ndim != 2 or (len(a) and a.shape[1] != n_classes):
            shape = a.shape if isinstance(a, np.ndarray) else what(a)
            raise ContractError(f"{owner} returned {name} shaped {shape}; expected "
                                f"probabilities shaped (rows, {n_classes})")
        if a.size and (a.min() < -1e-4 or a.max() > 1 + 1e-4):
            raise ContractError(f"{owner} returned {name} with values in [{a.min():g}, "
                                f"{a.max():g}]; probabilities lie in [0, 1]")
        if same_rows:
            rows[name] = len(a)

    def labels(name: str) -> None:
        a = getattr(outcome, name)
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "iu" or \
                (a.size and (a.min() < 0 or a.max() >= n_classes)):
            raise ContractError(f"{owner} returned {name} that is not a vector of class "
                                f"labels in [0, {n_classes})")
        rows[name] = len(a)

    def per_row(name: str) -> None:
        a = getattr(outcome, name)
        if not isinstance(a, np.ndarray) or a.ndim != 1:
            raise ContractError(f"{owner} returned {name} = {what(a)}; expected one number "
                                "per attacked row")
        if len(a):  # empty: not recorded (an attack that does not use EvasionAttack)
            rows[name] = len(a)

    if isinstance(outcome, Predictions):
        labels("y_true")
        proba("proba")
        if isinstance(outcome, EvasionOutcome):
            proba("proba_clean")
            for name in PER_ROW_FIELDS:
                per_row(name)
            index = outcome.rows
            if index.size and (index.dtype.kind not in "iu" or index.min() < 0 or
                               index.max() >= n_rows or len(np.unique(index)) < len(index)):
                raise ContractError(f"{owner} returned rows that are not distinct indices "
                                    f"of the {n_rows} test rows it was given")
        if isinstance(outcome, PoisoningOutcome):
            proba("proba_reference")
            proba("proba_triggered", same_rows=False)
    elif isinstance(outcome, ExtractionOutcome):
        labels("y_true")
        proba("proba_victim")
        proba("proba_substitute")
    elif isinstance(outcome, ProbeOutcome):
        proba("proba", same_rows=False)
        if isinstance(outcome, TrainingOrderOutcome):
            proba("proba_reference", same_rows=False)
            if outcome.proba_reference.shape != outcome.proba.shape or \
                    len(outcome.proba) % max(outcome.seeds, 1):
                raise ContractError(f"{owner} returned proba {outcome.proba.shape} and "
                                    f"proba_reference {outcome.proba_reference.shape}; "
                                    f"expected the same {outcome.seeds} seeds x probes")
    elif isinstance(outcome, MembershipOutcome):
        for name in ("scores_members", "scores_nonmembers"):
            if getattr(outcome, name).ndim != 1:
                raise ContractError(f"{owner} returned {name} that is not a vector of scores")
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{k} {v}" for k, v in rows.items())
        raise ContractError(f"{owner} returned arrays with different numbers of rows ({counts}); "
                            "each needs one row per attacked test row")
    if rows and max(rows.values()) > n_rows:
        raise ContractError(f"{owner} returned {max(rows.values())} rows, but it was given "
                            f"{n_rows} test rows to attack")


#: Inputs a plugin makes may leave the valid range by this much (float rounding), no more.
CLIP_TOLERANCE = 1e-5


def returned_array(error: type[Exception], owner: str, call: str, value: object,
                   dtype: type, what: str) -> np.ndarray:
    """``value`` (what ``owner``'s ``call`` returned) as a finite ``dtype`` array, or
    ``error`` naming the plugin and the fault. Shared by the family bases."""
    try:
        out: np.ndarray = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise error(f"{owner}: {call} returned {type(value).__name__}, not an array: "
                    f"{exc}") from None
    if not np.isfinite(out).all():
        raise error(f"{owner}: {call} returned non-finite {what} (NaN or inf)")
    return out


def check_in_range(error: type[Exception], owner: str, call: str, x: np.ndarray,
                   clip_values: tuple[float, float]) -> None:
    """Raise ``error`` unless the inputs ``x`` lie in the model's valid range."""
    low, high = clip_values
    if x.size and (x.min() < low - CLIP_TOLERANCE or x.max() > high + CLIP_TOLERANCE):
        raise error(f"{owner}: {call} returned inputs in [{x.min():g}, {x.max():g}], "
                    f"outside the valid range [{low:g}, {high:g}]; clip them")
