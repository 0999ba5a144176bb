"""Per-row results kept compactly in ``cells.jsonl``, and what they make possible.

Each ok cell's record carries ``rows``: its outcome's :meth:`~gauntlet.Outcome.per_row`
arrays, packed one field at a time::

    {"correct_after": {"dtype": "bool", "n": 450, "data": "<base64 of np.packbits>"},
     "linf": {"dtype": "float32", "n": 450, "data": "<base64, little-endian>"}, ...}

Booleans take one bit per row, numbers four bytes (float32, or int32 for whole numbers
that fit; int64 otherwise). 450 rows of an evasion cell cost about 9 kB of JSON. The
rows go to ``cells.jsonl`` only, never to ``results.json``, which the report reads and
should stay small.

With them, a per-sample worst case over attacks (:func:`worst_case`, AutoAttack's
rule), a row-by-row comparison of two audits or a resampled interval needs no re-run.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gauntlet.metric import MetricValue, proportion

Packed = dict[str, dict[str, Any]]
_INT32 = np.iinfo(np.int32)


def _pack_one(values: np.ndarray) -> dict[str, Any]:
    a = np.asarray(values).ravel()
    if a.dtype.kind == "b":
        dtype, raw = "bool", np.packbits(a).tobytes()
    elif a.dtype.kind in "iu" and (not a.size or (_INT32.min <= a.min() and
                                                  a.max() <= _INT32.max)):
        dtype, raw = "int32", a.astype("<i4").tobytes()
    elif a.dtype.kind in "iu":
        dtype, raw = "int64", a.astype("<i8").tobytes()
    else:
        dtype, raw = "float32", a.astype("<f4").tobytes()
    return {"dtype": dtype, "n": int(a.size), "data": base64.b64encode(raw).decode("ascii")}


def pack(per_row: Mapping[str, np.ndarray]) -> Packed:
    """Per-row arrays (``Outcome.per_row()``) as JSON-able, compact data."""
    return {name: _pack_one(values) for name, values in per_row.items()}


def _unpack_one(field: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(field["data"])
    n = int(field["n"])
    if field["dtype"] == "bool":
        bits = np.frombuffer(raw, dtype=np.uint8)
        return np.unpackbits(bits, count=n).astype(bool)
    return np.frombuffer(raw, dtype={"int32": "<i4", "int64": "<i8",
                                     "float32": "<f4"}[field["dtype"]])[:n].copy()


def unpack(packed: Mapping[str, Mapping[str, Any]] | None) -> dict[str, np.ndarray]:
    """The arrays :func:`pack` packed (booleans as bool, numbers as float32 or int32/64)."""
    return {name: _unpack_one(field) for name, field in (packed or {}).items()}


def worst_case(records: Iterable[Mapping[str, Any]], defense: str, *,
               attacks: Iterable[tuple[str, str]] | None = None,
               defense_point: str = "") -> MetricValue:
    """Robust accuracy of one defense under the per-sample worst case over attack cells.

    A row counts as robust only if it is classified correctly after every given attack
    (AutoAttack's rule): the union of what the attacks break, never better than the best
    single attack.

    :param records: cell records with their ``rows`` (``cells.jsonl`` lines, or
        :attr:`gauntlet.results.AuditResult.records`).
    :param defense: the defense's name; ``defense_point`` picks one point of a sweep.
    :param attacks: ``(attack, attack_point)`` pairs, e.g. every attack at one budget;
        None: every ok evasion cell of the defense.
    :returns: the proportion of rows robust under all of them, over the rows every one
        of them attacked, with its Wilson interval.
    """
    wanted = None if attacks is None else set(attacks)
    cells = [r for r in records
             if r.get("defense") == defense and r.get("defense_point", "") == defense_point
             and r.get("family") == "evasion" and r.get("status") == "ok"
             and not r.get("derived")
             and (wanted is None or (r["attack"], r["attack_point"]) in wanted)]
    found = {(r["attack"], r["attack_point"]) for r in cells}
    if wanted is not None and wanted - found:
        missing = ", ".join(f"{a} ({p})" if p else a for a, p in sorted(wanted - found))
        raise ValueError(f"no ok evasion cell of defense {defense!r} for {missing}")
    if not cells:
        raise ValueError(f"defense {defense!r} has no ok evasion cell")
    robust: dict[int, bool] = {}
    for i, cell in enumerate(cells):
        rows = unpack(cell.get("rows"))
        if "correct_after" not in rows:
            raise ValueError(f"cell {cell['id']} keeps no per-row results")
        after = rows["correct_after"]
        index = rows.get("row")
        index = index if index is not None and len(index) else np.arange(len(after))
        here = dict(zip(index.tolist(), after.tolist()))
        robust = here if i == 0 else {k: v and here[k] for k, v in robust.items() if k in here}
    return proportion(float(sum(robust.values())), len(robust))


#: The attack name of the derived worst-case cells (:func:`worst_case_cells`).
WORST_CASE = "worst-case"


def attack_meta(result: Mapping[str, Any], name: str) -> dict[str, Any]:
    """What results say of an attack: its ``result["attacks"]`` entry, completed from its
    plugin row in ``provenance.plugins`` (where ``norm`` and ``minimal`` are listed)."""
    entry = dict((result.get("attacks") or {}).get(name) or {})
    for row in (result.get("provenance") or {}).get("plugins") or ():
        if row.get("kind") == "attack" and row.get("name") == name:
            for key in ("norm", "minimal"):
                if key in row:
                    entry.setdefault(key, row[key])
    return entry


def budget_of(result: Mapping[str, Any], cell: Mapping[str, Any]) -> tuple[str, float] | None:
    """``(norm, eps)`` of an evasion cell whose attack has an eps budget, else None (a
    minimal-perturbation attack, a few-pixel search, another family, a derived cell).
    An attack whose results do not name its norm counts as L-infinity when it has eps."""
    if cell.get("family") != "evasion" or cell.get("derived"):
        return None
    meta = attack_meta(result, cell["attack"])
    eps = (cell.get("attack_params") or {}).get("eps")
    if meta.get("minimal") or meta.get("derived") or isinstance(eps, bool) or \
            not isinstance(eps, (int, float)):
        return None
    norm = meta.get("norm", "linf")
    return (str(norm), float(eps)) if norm else None


def budget_label(norm: str, eps: float) -> str:
    """``eps=0.1`` for an L-infinity budget, ``l2 eps=0.5`` for another norm."""
    return f"eps={eps:g}" if norm == "linf" else f"{norm} eps={eps:g}"


def worst_case_cells(result: Mapping[str, Any],
                     records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The derived ``worst-case`` cells: for each defense point and each budget at which
    two or more evasion attacks with an eps budget ran (ok cells), the robust accuracy
    under the per-row worst case over all of them (:func:`worst_case`, AutoAttack's rule),
    from the cells' per-row results: no model is queried.

    Each is a results.json cell marked ``"derived": true``, whose artifacts name the
    cells it combines; it is never stored in ``cells.jsonl`` (it is recomputed, e.g. on
    resume). Cells without per-row results are left out of it.
    """
    from gauntlet.results import metric_record

    records = [r for r in records if r.get("status") == "ok" and r.get("rows")
               and "robust_accuracy" in (r.get("metrics") or {})]
    groups: dict[tuple[str, str, str, float], list[Mapping[str, Any]]] = {}
    for r in records:
        budget = budget_of(result, r)
        if budget is not None:
            groups.setdefault((r["defense"], r.get("defense_point", ""), *budget), []).append(r)
    cells = []
    for (defense, point, norm, eps), group in groups.items():
        if len({r["attack"] for r in group}) < 2:
            continue
        pairs = [(r["attack"], r["attack_point"]) for r in group]
        value = worst_case(group, defense, attacks=pairs, defense_point=point)
        params = {"eps": eps, "norm": norm}
        cells.append({
            "id": f"{group[0]['id'].split('|')[0]}|{WORST_CASE}"
                  f"{json.dumps(params, sort_keys=True)}",
            "defense": defense, "defense_params": group[0].get("defense_params", {}),
            "defense_point": point, "attack": WORST_CASE, "family": "evasion",
            "attack_params": params, "attack_point": budget_label(norm, eps),
            "status": "ok", "reason": None, "traceback": None, "duration_s": 0.0,
            "n": value.n, "metrics": {"robust_accuracy": metric_record(
                value.value, value.n, value.low, value.high)},
            "metric_errors": {},
            "artifacts": {"combines": [f"{a} ({p})" if p else a for a, p in pairs]},
            "derived": True,
        })
    return cells
