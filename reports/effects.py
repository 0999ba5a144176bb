"""Attack effects: each cell's number read beside what the defender had without the attack.

A number on its own says little about an attack: robust accuracy means something beside
the same defense's clean accuracy, a membership AUC beside chance (0.5), a backdoor's
success beside none at all. The Summary's verdict and its findings rank attacks by that
change (:class:`Effect`), never by a statistic of the clean model.

Which metrics read as an attack's effect, and against what, is the table
:data:`READINGS` (built-in metric names: a metric has no declared "value without the
attack" yet; a plugin metric not in it is shown in the matrices, not ranked here).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from gauntlet.checklist import FAIL, stored
from gauntlet.reports.tables import Key, defense_keys, metric_meta, metric_value

T = TypeVar("T")
CLEAN_ATTACK = "clean"
UNDEFENDED = ("none", "")
#: The reference is ``1 / number of classes``: a guess, or an even spread.
CHANCE = "chance"


@dataclasses.dataclass(frozen=True)
class Reading:
    """How one metric reads as an attack's effect.

    ``reference`` is the value without the attack: a number, :data:`CHANCE`,
    ``"clean:<metric>"`` (the same defense's clean row) or ``"cell:<metric>"`` (another
    metric of the same cell, measured without the attack's lever).
    """

    group: str  # the findings show one row per attack and group
    reference: float | str
    reference_name: str  # how the report names the reference ("clean", "chance", ...)


#: Per group, the first metric a cell reports is the one read (dict order).
READINGS: dict[str, Reading] = {
    "robust_accuracy": Reading("accuracy", "clean:clean_accuracy", "clean"),
    "accuracy_drop": Reading("accuracy", 0.0, "unpoisoned"),
    "attack_success_rate": Reading("accuracy", 0.0, "no attack"),
    "backdoor_success": Reading("trigger", 0.0, "no trigger"),
    "target_success": Reading("target", 0.0, "unpoisoned"),
    "membership_auc": Reading("membership", 0.5, "chance"),
    "membership_advantage": Reading("membership", 0.0, "chance"),
    "fidelity": Reading("theft", CHANCE, "chance"),
    "substitute_accuracy": Reading("theft", CHANCE, "chance"),
    "top_class_share": Reading("probe", CHANCE, "an even spread"),
    "last_class_share": Reading("probe", "cell:last_class_share_shuffled", "shuffled"),
    "tamper_success": Reading("tamper", 0.0, "no attack"),
    "server_recovery": Reading("recovery", "cell:server_chance", "chance"),
}
GROUPS = tuple(dict.fromkeys(r.group for r in READINGS.values()))


@dataclasses.dataclass(frozen=True)
class Effect:
    """One ok cell's metric beside its value without the attack."""

    cell: Mapping[str, Any]
    metric: str
    value: float
    reference: float
    harm: float  # how much worse than the reference for the defender, in the metric's units
    share: float  # harm over the room between the reference and the metric's worst bound
    higher_is_better: bool

    @property
    def outcome(self) -> float:
        """The value as the defender ranks it: higher is better, whatever the metric."""
        return self.value if self.higher_is_better else -self.value

    @property
    def defense(self) -> Key:
        return self.cell["defense"], self.cell.get("defense_point") or ""

    @property
    def attack(self) -> str:
        return str(self.cell["attack"])

    @property
    def point(self) -> str:
        return str(self.cell.get("attack_point") or "")

    @property
    def n(self) -> int | None:
        n = ((self.cell.get("metrics") or {}).get(self.metric) or {}).get("n",
                                                                          self.cell.get("n"))
        return n if isinstance(n, int) else None


def is_attack(cell: Mapping[str, Any]) -> bool:
    """A cell of a real attack: not the clean row, not a cell derived from others."""
    return cell.get("attack") != CLEAN_ATTACK and cell.get("family") != "baseline" \
        and not cell.get("derived")


def clean_cells(result: Mapping[str, Any]) -> dict[Key, Mapping[str, Any]]:
    """Each defense point's clean row (no attack)."""
    return {(c["defense"], c.get("defense_point") or ""): c for c in result.get("cells", [])
            if c.get("attack") == CLEAN_ATTACK and not c.get("derived")}


def reference_defense(result: Mapping[str, Any]) -> Key | None:
    """The undefended model (``none``); in an audit without it, the first defense row,
    which the report then names wherever it stands in."""
    keys = defense_keys(result)
    return UNDEFENDED if UNDEFENDED in keys else (keys[0] if keys else None)


def _chance(result: Mapping[str, Any]) -> float | None:
    n = ((result.get("provenance") or {}).get("model") or {}).get("n_classes")
    return 1.0 / n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else None


def effect(result: Mapping[str, Any], cell: Mapping[str, Any], metric: str,
           clean: Mapping[Key, Mapping[str, Any]]) -> Effect | None:
    """``metric`` of ``cell`` as an :class:`Effect`, or None (no value, no reference)."""
    reading = READINGS.get(metric)
    value = metric_value(cell, metric)
    meta = metric_meta(result, metric)
    if reading is None or value is None or meta.higher_is_better is None or not meta.bounds:
        return None
    ref: float | None
    if isinstance(reading.reference, (int, float)):
        ref = float(reading.reference)
    elif reading.reference == CHANCE:
        ref = _chance(result)
    else:
        where, _, name = reading.reference.partition(":")
        source = clean.get((cell["defense"], cell.get("defense_point") or "")) \
            if where == "clean" else cell
        ref = metric_value(source, name) if source is not None else None
    if ref is None:
        return None
    harm = ref - value if meta.higher_is_better else value - ref
    worst = meta.bounds[0] if meta.higher_is_better else meta.bounds[1]
    room = abs(worst - ref)
    return Effect(cell, metric, value, ref, harm, harm / room if room > 0 else 0.0,
                  meta.higher_is_better)


def cell_effects(result: Mapping[str, Any], cell: Mapping[str, Any],
                 clean: Mapping[Key, Mapping[str, Any]]) -> dict[str, Effect]:
    """Per group, the effect of the first metric of :data:`READINGS` the cell reports."""
    out: dict[str, Effect] = {}
    for metric, reading in READINGS.items():
        if reading.group not in out and (e := effect(result, cell, metric, clean)):
            out[reading.group] = e
    return out


@dataclasses.dataclass(frozen=True)
class Doubt:
    """Why a defense point's numbers cannot be taken at face value (the checklist)."""

    upper_bound: bool  # not adaptive: its numbers are upper bounds, in every family
    failed: tuple[str, ...]  # titles of failed checks (evasion rules: evasion only)

    def reason(self, family: str) -> str:
        if self.upper_bound:
            return "upper bound; not adaptive"
        if self.failed and family == "evasion":
            return "fails the checklist: " + ", ".join(self.failed)
        return ""


def doubts(result: Mapping[str, Any]) -> dict[Key, Doubt]:
    """The checklist's doubts per defense point (none listed: no doubt)."""
    return {(d.defense, d.defense_point): Doubt(
        d.upper_bound, tuple(c.title for c in d.checks if c.status == FAIL))
        for d in stored(result)}


@dataclasses.dataclass(frozen=True)
class Defended:
    """The best defense for one attack point: the best the checklist trusts, and a
    better one it does not (an upper bound, or a failed check), with why."""

    best: Effect | None
    untrusted: Effect | None
    why: str  # the untrusted one's doubt ("upper bound; not adaptive", "fails ...")
    upper_bound: bool = False  # the untrusted one's numbers are upper bounds


def best_defense(effects: Iterable[Effect], family: str, doubt: Mapping[Key, Doubt],
                 clean: Mapping[Key, Mapping[str, Any]]) -> Defended:
    """The defense whose value under the attack is best for the defender (the robust
    accuracy it keeps, not its loss against its own clean accuracy: a defense that starts
    low and loses little still leaves less; its clean cost is stated beside it). Ties: the
    higher clean accuracy.

    A defense the checklist doubts is never the best one silently: it is returned apart,
    and only when it beats every trusted one.
    """
    def key(e: Effect) -> tuple[float, float]:
        acc = metric_value(clean[e.defense], "clean_accuracy") if e.defense in clean else None
        return -e.outcome, -(acc or 0.0)

    trusted: list[Effect] = []
    untrusted: list[tuple[Effect, Doubt]] = []
    for e in effects:
        d = doubt.get(e.defense)
        if d is not None and d.reason(family):
            untrusted.append((e, d))
        else:
            trusted.append(e)
    best = min(trusted, key=key, default=None)
    other = min(untrusted, key=lambda t: key(t[0]), default=None)
    if other is not None and (best is None or other[0].outcome > best.outcome):
        return Defended(best, other[0], other[1].reason(family), other[1].upper_bound)
    return Defended(best, None, "")


def clean_cost(clean: Mapping[Key, Mapping[str, Any]], defense: Key,
               reference: Key) -> float | None:
    """Clean accuracy the defense gives up against the reference row (0.015 = 1.5
    points; negative where the defense gains)."""
    mine, base = clean.get(defense), clean.get(reference)
    a = metric_value(mine, "clean_accuracy") if mine is not None else None
    b = metric_value(base, "clean_accuracy") if base is not None else None
    return None if a is None or b is None else b - a


def lower_median(points: Sequence[T]) -> T:
    """The middle of a sweep's points (in sweep order), the lower of two middles."""
    return points[(len(points) - 1) // 2]


def change(result: Mapping[str, Any], metric: str, delta: float) -> str:
    """A change of ``metric`` by ``delta``: ``−41.8 points`` (a percentage), ``+0.219``."""
    sign = "−" if delta < 0 else "+"
    if metric_meta(result, metric).percent:
        return f"{sign}{abs(delta) * 100:.1f} points"
    return f"{sign}{abs(delta):.3g}"
