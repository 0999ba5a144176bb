"""Print the membership-inference study's table from an audit's results.json.

One row per setting (defense), in the study's shape: the target model's clean accuracy
and the global-threshold attack's accuracy (``mia-threshold``'s ``membership_accuracy``,
with its 95% interval: 50% is a coin flip), then for context its advantage (TPR - FPR),
AUC and true positive rate at 1% false positives, and the study's own figures where it
reports them (an MNIST 784-200-200-10 MLP: undefended 93.57% / 60.5%, the three defenses
combined 92.65% / 56%). ``--attack mia-loss`` (or any membership attack the audit ran)
fills the same table from that attack's cells, without the study's columns. Run from
the repository root after the audit::

    gauntlet audit examples/fashion-mnist-privacy.toml
    python examples/privacy_table.py [gauntlet-report/fashion-mnist-privacy/results.json]

A missing or unreadable file exits with code 2 and one line saying why.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = "gauntlet-report/fashion-mnist-privacy/results.json"
ATTACK = "mia-threshold"

#: The study's figures (MNIST): (target accuracy, attack accuracy) per setting it reports.
STUDY: dict[str, tuple[float, float]] = {
    "none": (0.9357, 0.605),
    "combined": (0.9265, 0.56),
}

#: How each setting is named in the table, in the study's words.
SETTINGS: dict[str, str] = {
    "none": "no defense",
    "confidence-clip": "confidence clipping",
    "input-noise": "input perturbation",
    "confidence-noise": "confidence perturbation",
    "combined": "all three combined",
}


class ResultsError(Exception):
    """The results file is missing or not an audit's results.json."""


def load(path: Path) -> dict[str, Any]:
    """The parsed results.json, or ResultsError saying why not."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file (run the audit first: gauntlet audit "
                           "examples/fashion-mnist-privacy.toml)") from None
    except IsADirectoryError:
        raise ResultsError(f"{path} is a folder, not a results.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: unreadable: {exc}") from None
    try:
        result = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ResultsError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(result, Mapping) or not isinstance(result.get("cells"), list) \
            or not all(isinstance(c, Mapping) for c in result["cells"]):
        raise ResultsError(f"{path}: not an audit's results.json (no list of cells)")
    return dict(result)


def _metric(cell: Mapping[str, Any] | None, name: str, field: str = "value") -> float | None:
    """``cell``'s metric ``name`` (its ``field``: value, low or high) as a finite float,
    or None."""
    if cell is None or cell.get("status", "ok") != "ok":
        return None
    metrics = cell.get("metrics")
    entry = metrics.get(name) if isinstance(metrics, Mapping) else None
    value = entry.get(field) if isinstance(entry, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        return None
    return float(value)


def _key(cell: Mapping[str, Any]) -> str:
    """A row's setting: the defense, with its point when it is swept."""
    defense = str(cell.get("defense", "?"))
    point = cell.get("defense_point") or ""
    return f"{defense} {point}" if point else defense


def rows(result: Mapping[str, Any], attack: str = ATTACK) -> list[dict[str, Any]]:
    """One dict per setting, in the order the audit ran them: ``setting``, ``defense``,
    ``clean`` (clean accuracy), ``accuracy`` (with its 95% interval ``accuracy_low`` /
    ``accuracy_high``), ``advantage``, ``auc``, ``tpr1`` (the attack's metrics; None
    where missing), ``status`` and ``reason`` of the attack's
    cell, and the study's ``study_clean`` / ``study_attack`` (None where it reports none).
    """
    table: dict[str, dict[str, Any]] = {}
    for cell in result["cells"]:
        key = _key(cell)
        defense = str(cell.get("defense", "?"))
        row = table.setdefault(key, {"setting": key, "defense": defense, "clean": None,
                                     "attack_cell": None})
        if cell.get("attack") == "clean":
            row["clean"] = _metric(cell, "clean_accuracy")
        elif cell.get("attack") == attack and row["attack_cell"] is None:
            row["attack_cell"] = cell  # the first point, should the attack be swept
    out = []
    for key, row in table.items():
        cell = row.pop("attack_cell")
        study = STUDY.get(key)
        out.append({
            **row,
            "accuracy": _metric(cell, "membership_accuracy"),
            "accuracy_low": _metric(cell, "membership_accuracy", "low"),
            "accuracy_high": _metric(cell, "membership_accuracy", "high"),
            "advantage": _metric(cell, "membership_advantage"),
            "auc": _metric(cell, "membership_auc"),
            "tpr1": _metric(cell, "tpr_at_1pct_fpr"),
            "status": None if cell is None else cell.get("status"),
            "reason": None if cell is None else cell.get("reason"),
            "study_clean": study[0] if study else None,
            "study_attack": study[1] if study else None,
        })
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _pct_interval(value: float | None, low: float | None, high: float | None) -> str:
    """A percentage with its 95% interval, when the cell has one."""
    if value is None or low is None or high is None:
        return _pct(value)
    return f"{100 * value:.2f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(table: Sequence[Mapping[str, Any]], attack: str = ATTACK) -> str:
    """The table as markdown, with a note for every attack cell that did not run. The
    study's columns come only with its attack, the global threshold."""
    study = attack == ATTACK
    head = (f"| setting | target accuracy | {attack} attack accuracy | advantage | AUC "
            "| TPR at 1% FPR |")
    rule = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if study:
        head += " study (MNIST): target accuracy | study (MNIST): attack accuracy |"
        rule += " ---: | ---: |"
    lines = [head, rule]
    notes = []
    for row in table:
        name = SETTINGS.get(row["setting"], row["setting"])
        label = name if name == row["setting"] else f"{name} (`{row['setting']}`)"
        attack_accuracy = _pct_interval(row["accuracy"], row.get("accuracy_low"),
                                        row.get("accuracy_high"))
        line = (f"| {label} | {_pct(row['clean'])} | {attack_accuracy} "
                f"| {_num(row['advantage'])} | {_num(row['auc'])} | {_pct(row['tpr1'])} |")
        if study:
            line += f" {_pct(row['study_clean'])} | {_pct(row['study_attack'])} |"
        lines.append(line)
        if row["status"] is None:
            notes.append(f"- {row['setting']}: no {attack} cell in these results")
        elif row["status"] != "ok":
            notes.append(f"- {row['setting']}: {attack} {row['status']}"
                         + (f": {row['reason']}" if row["reason"] else ""))
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python examples/privacy_table.py",
        description="The membership-inference study's table from an audit's results.json.")
    parser.add_argument("results", nargs="?", default=DEFAULT_RESULTS,
                        help=f"the audit's results.json (default {DEFAULT_RESULTS})")
    parser.add_argument("--attack", default=ATTACK,
                        help=f"membership attack whose cells fill the table (default "
                             f"{ATTACK}, the study's; the study's columns come with it only)")
    args = parser.parse_args(argv)  # a bad flag exits 2, as argparse does
    path = Path(args.results)
    try:
        result = load(path)
    except ResultsError as exc:
        print(f"privacy_table: {exc}", file=sys.stderr)
        return 2
    table = rows(result, args.attack)
    if not table:
        print(f"privacy_table: {path}: no cells", file=sys.stderr)
        return 2
    sys.stdout.write(markdown(table, args.attack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
