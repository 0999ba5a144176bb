"""The classic FGSM table: precision, recall, F1 and mean confidence for each eps.

Goodfellow, Shlens and Szegedy (2015, "Explaining and Harnessing Adversarial Examples")
introduced the fast gradient sign method and observed that the model's wrong answers are
confident ones (a shallow softmax MNIST model: 99.9% error at eps 0.25, at 79.3% mean
confidence). Early studies of FGSM on an MNIST sigmoid MLP (784-200-10) reported it as
one table of macro precision, recall, F1 and mean confidence per eps, clean included:
F1 0.958 clean and 0.777 / 0.443 / 0.329 at eps 0.1 / 0.2 / 0.3, while the mean
confidence stayed near 0.8. :func:`classic` keeps that table for every defended model, read
from the cells' own metrics (``precision``, ``recall``, ``f1``, ``confidence``) and the
clean row from the defense's ``clean`` cell, so it can be set beside the study's.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from gauntlet.reports.tables import attack_keys, cell_index, label

ATTACK = "fgsm"
CLEAN = "clean"
METRICS = ("precision", "recall", "f1", "confidence")
#: The founding study's figures: eps -> F1 (None: clean).
REFERENCE_F1 = {None: 0.958, 0.1: 0.777, 0.2: 0.443, 0.3: 0.329}
REFERENCE_CONFIDENCE = 0.8
TITLE = "The classic FGSM table (after Goodfellow et al. 2015)"
#: Mean confidence at or above this, with F1 well below clean, is "confidently wrong".
CONFIDENT = 0.7


@dataclasses.dataclass(frozen=True)
class ClassicValue:
    text: str  # "0.958", or "—" / "n/a" / "error"
    value: float | None
    tooltip: str


@dataclasses.dataclass(frozen=True)
class ClassicRow:
    label: str  # "clean" or "eps = 0.1" (other swept parameters follow)
    eps: float | None
    values: list[ClassicValue]  # one per METRICS entry
    reference_f1: str  # the study's F1 at this eps, "" where it has none


@dataclasses.dataclass(frozen=True)
class ClassicTable:
    defense: str
    rows: list[ClassicRow]
    verdict: str  # one sentence, "" when there is nothing to say


@dataclasses.dataclass(frozen=True)
class Classic:
    title: str
    intro: str
    headers: list[str]
    tables: list[ClassicTable]


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _value(cell: Mapping[str, Any] | None, metric: str, where: str) -> ClassicValue:
    if cell is None:
        return ClassicValue("—", None, f"{where}: not run")
    status = cell.get("status", "ok")
    if status != "ok":
        text = "n/a" if status == "not_applicable" else "error"
        return ClassicValue(text, None, f"{where}: {text}: {cell.get('reason') or ''}".strip())
    rec = (cell.get("metrics") or {}).get(metric) or {}
    value = _number(rec.get("value"))
    if value is None:
        return ClassicValue("—", None, f"{where}: {metric} not measured")
    tip = f"{where}: {metric} {value:.4f}, n = {rec.get('n', cell.get('n'))}"
    low, high = _number(rec.get("low")), _number(rec.get("high"))
    if low is not None and high is not None:
        tip += f", 95% interval {low:.3f}–{high:.3f}"
    return ClassicValue(f"{value:.3f}", value, tip)


def _eps(cell: Mapping[str, Any]) -> float | None:
    return _number((cell.get("attack_params") or {}).get("eps"))


def _reference(eps: float | None) -> str:
    for ref_eps, f1 in REFERENCE_F1.items():
        if (ref_eps is None and eps is None) or (
                ref_eps is not None and eps is not None and math.isclose(eps, ref_eps)):
            return f"{f1:.3f}"
    return ""


def _verdict(rows: list[ClassicRow]) -> str:
    """"Confidently wrong" where the last attacked row's F1 fell well below the clean one
    while the mean confidence stayed high."""
    f1, conf = METRICS.index("f1"), METRICS.index("confidence")
    clean = rows[0].values[f1].value if rows and rows[0].eps is None else None
    attacked = [r for r in rows if r.eps is not None and r.values[f1].value is not None
                and r.values[conf].value is not None]
    if clean is None or not attacked:
        return ""
    last = max(attacked, key=lambda r: r.eps)  # type: ignore[arg-type, return-value]
    f1_last, conf_last = last.values[f1].value, last.values[conf].value
    assert f1_last is not None and conf_last is not None
    if conf_last >= CONFIDENT and f1_last <= clean - 0.2:
        return (f"Confidently wrong: at eps {last.eps:g} F1 fell from {clean:.3f} to "
                f"{f1_last:.3f} while the mean confidence was {conf_last:.3f}.")
    return ""


def classic(result: Mapping[str, Any], attack: str = ATTACK) -> Classic | None:
    """The table for ``attack`` (FGSM), one per defended model; None when no ok cell of
    the attack measured F1."""
    index = cell_index(result)
    points = [ap for a, ap in attack_keys(result) if a == attack]
    if not any(c.get("status") == "ok" and "f1" in (c.get("metrics") or {})
               for (_, _, a, _), c in index.items() if a == attack):
        return None
    defenses = list(dict.fromkeys((d, dp) for d, dp, a, _ in index if a == attack))
    tables = []
    for d in defenses:
        where = f"no attack against {label(*d)}"
        clean_cell = index.get((*d, CLEAN, ""))
        rows = [ClassicRow("clean", None, [_value(clean_cell, m, where) for m in METRICS],
                           _reference(None))]
        cells = [(ap, index[(*d, attack, ap)]) for ap in points if (*d, attack, ap) in index]
        cells.sort(key=lambda pc: (_eps(pc[1]) is None, _eps(pc[1]) or 0.0))
        for ap, cell in cells:
            eps = _eps(cell)
            other = ", ".join(p for p in ap.split(", ") if p and not p.startswith("eps="))
            text = (f"eps = {eps:g}" if eps is not None else ap) + (f" ({other})"
                                                                   if other and eps is not None
                                                                   else "")
            where = f"{label(attack, ap)} against {label(*d)}"
            rows.append(ClassicRow(text, eps, [_value(cell, m, where) for m in METRICS],
                                   _reference(eps)))
        tables.append(ClassicTable(label(*d), rows, _verdict(rows)))
    intro = ("Macro precision, recall and F1 of the predictions, and the mean probability of "
             "the predicted class, on clean test rows and on FGSM's adversarial rows at each "
             "eps. A founding study of FGSM on an MNIST sigmoid MLP (784-200-10) reported F1 "
             "0.958 clean and 0.777 / 0.443 / 0.329 at eps 0.1 / 0.2 / 0.3 (the study column), "
             f"while the mean confidence stayed near {REFERENCE_CONFIDENCE:g}: the model was "
             "confidently wrong.")
    return Classic(TITLE, intro, ["Precision", "Recall", "F1", "Mean confidence"], tables)
