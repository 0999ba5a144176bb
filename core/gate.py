"""Gate an audit for CI: checks an audit's numbers must pass, such as::

    robust_accuracy.fgsm["eps=0.1"] >= 0.5
    membership_auc.mia-threshold <= 60%
    robust_accuracy.fgsm["eps=0.1"]@adv-training >= 0.8
    clean_accuracy.clean >= 0.9

A check is ``METRIC.ATTACK["POINT"]@DEFENSE["POINT"] OP NUMBER``: OP is ``>=``, ``<=``,
``>`` or ``<``, NUMBER is written ``0.5`` or ``50%``, and each POINT is a cell's
``attack_point`` (``defense_point``) as results.json writes it (``eps=0.1``; empty for a
plugin without a sweep). Left out, a point means every point of that attack (defense),
each judged on its own; the defense defaults to ``none``. The value compared is the
cell's point estimate, ``metrics[METRIC]["value"]``; a cell that is missing, failed, or
has no such value fails its check, saying why.

Checks come from the config's ``[gate]`` table (``checks = [...]``) and from
``gauntlet audit --gate``. They judge the results and never change them, so they are
left out of everything that identifies an audit (its cache and replay keys): changing
a threshold re-runs nothing. The verdicts are recorded in results.json under ``gate``.

This module reads plain results.json data and imports neither torch nor a plugin, so a
results.json written elsewhere can be gated too::

    verdicts = evaluate(json.loads(Path("results.json").read_text()), ["..."])
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gauntlet.errors import ConfigError

#: The comparisons a check may make.
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
#: What a check looks like, for error messages and ``--help``.
FORM = 'METRIC.ATTACK["POINT"]@DEFENSE OP NUMBER, e.g. robust_accuracy.fgsm["eps=0.1"] >= 0.5'
#: The keys of each verdict in results.json's ``gate`` list.
VERDICT_KEYS = ("expression", "check", "passed", "message", "value", "low", "high", "n")

_NAME = r"[^\s.\[\]@\"'<>=!]+"
_PLUGIN = r"[^\s\[\]@\"'<>=!]+"  # attack and defense names may hold '.', '-', '+'
_POINT = r"\[\s*(?:\"[^\"]*\"|'[^']*')\s*\]"
_TARGET = re.compile(rf"(?P<metric>{_NAME})\.(?P<attack>{_PLUGIN})\s*(?P<point>{_POINT})?"
                     rf"\s*(?:@\s*(?P<defense>{_PLUGIN})\s*(?P<dpoint>{_POINT})?)?")
_NUMBER = re.compile(r"(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
                     r"(?P<percent>%)?")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Characters XML 1.0 cannot hold, even escaped (a plugin's message may carry them).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class GateError(ConfigError):
    """A gate check that is malformed or names what the audit does not have."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One parsed gate check. A point of None means every point."""

    metric: str
    attack: str
    op: str
    threshold: float
    point: str | None = None
    defense: str = "none"
    defense_point: str | None = None
    #: The number as written (``50%``, ``0.5``), for messages.
    written: str = ""
    #: The whole check as written.
    text: str = ""

    def expression(self, point: str | None = None, defense_point: str | None = None) -> str:
        """The check in canonical form; with ``point`` / ``defense_point`` filled in
        where it names every point."""
        point = self.point if self.point is not None else point
        dpoint = self.defense_point if self.defense_point is not None else defense_point
        target = f"{self.metric}.{self.attack}{_bracket(point)}"
        if self.defense != "none" or dpoint:
            target += f"@{self.defense}{_bracket(dpoint)}"
        return f"{target} {self.op} {self.written or f'{self.threshold:g}'}"

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return self.expression()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one check on one cell (a check that names every point of a sweep
    has one verdict per point)."""

    #: The check, with the cell's points filled in.
    expression: str
    passed: bool
    #: ``got 41.3% [36.8%–45.9%] (n=450)``, or ``no value: ...`` saying why.
    message: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    #: The check as written.
    check: str = ""

    def line(self) -> str:
        """``EXPRESSION: MESSAGE``, one line."""
        return f"{self.expression}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(**{k: data[k] for k in VERDICT_KEYS if k in data})


def parse(text: str) -> Check:
    """Parse one check; raise :class:`GateError` naming what is wrong with it."""
    if not isinstance(text, str):
        raise GateError(f"a gate check must be a string, got {text!r}")
    target, op, number = _split(text)
    if op not in OPS:
        _malformed(text, f"{op!r} is not a comparison a gate makes; use >=, <=, > or <")
    number_match = _NUMBER.fullmatch(number)
    if number_match is None:
        _malformed(text, f"{repr(number) if number else 'nothing'} after {op} is not a "
                   "number (write 0.5 or 50%)")
    threshold = float(number_match["value"]) / (100 if number_match["percent"] else 1)
    m = _TARGET.fullmatch(target)
    if m is None:
        if "." not in target.split("[")[0]:
            why = "name the metric and the attack as METRIC.ATTACK"
        elif re.search(r"\[\s*[^\s\"']", target):
            why = 'put the point in double quotes: fgsm["eps=0.1"]'
        else:
            why = f"cannot read {target!r}"
        _malformed(text, why)
    return Check(metric=m["metric"], attack=m["attack"], op=op, threshold=threshold,
                 point=_unbracket(m["point"]), defense=m["defense"] or "none",
                 defense_point=_unbracket(m["dpoint"]), written=number, text=text.strip())


def parse_all(texts: Iterable[str | Check]) -> list[Check]:
    """:func:`parse` each check (a Check passes through)."""
    return [t if isinstance(t, Check) else parse(t) for t in texts]


def known_names(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a results.json object lets a check name, as :func:`validate`'s keyword
    arguments: its metrics with their bounds, and the attacks and defenses of its cells."""
    cells = result.get("cells") or []
    points: dict[str, set[str]] = {}
    measures: dict[str, set[str]] = {}
    for c in cells:
        points.setdefault(c["attack"], set()).add(c.get("attack_point") or "")
        if c.get("status") == "ok":  # a metric that raised was still one that applies
            measures.setdefault(c["attack"], set()).update(c.get("metrics") or {},
                                                           c.get("metric_errors") or {})
    return {"metrics": {name: entry.get("bounds")
                        for name, entry in (result.get("metrics") or {}).items()},
            "attacks": {c["attack"] for c in cells}, "defenses": {c["defense"] for c in cells},
            "points": points, "measures": measures}


def validate(checks: Iterable[Check], *, metrics: Mapping[str, Sequence[float] | None],
             attacks: Collection[str], defenses: Collection[str],
             points: Mapping[str, Collection[str]] | None = None,
             measures: Mapping[str, Collection[str]] | None = None) -> None:
    """Raise :class:`GateError` for a check naming a metric, an attack or a defense the
    audit does not have, or a threshold outside its metric's bounds (``>= 50`` for a
    proportion, meant as 50%), before anything runs.

    :param metrics: every metric name, with its ``(low, high)`` bounds or None.
    :param attacks: the attacks the audit runs (``clean`` included).
    :param defenses: the defenses it runs.
    :param points: per attack, the points its sweep runs (a check naming another point
        is a typo, not a regression).
    :param measures: per attack, the metrics that can apply to what it returns (an
        attack missing here is not checked).
    """
    for check in checks:
        where = f"gate check {check.text or str(check)!r}"
        if check.metric not in metrics:
            raise GateError(f"{where}: unknown metric {check.metric!r}"
                            f"{_suggest(check.metric, metrics)}; `gauntlet plugins` "
                            "lists the metrics")
        for kind, name, planned in (("attack", check.attack, attacks),
                                    ("defense", check.defense, defenses)):
            if name not in planned:
                raise GateError(f"{where}: {kind} {name!r} is not in this audit"
                                f"{_suggest(name, planned)} (it runs: "
                                f"{', '.join(sorted(planned)) or 'none'})")
        known = (points or {}).get(check.attack)
        if check.point is not None and known is not None and check.point not in known:
            listed = ", ".join(f'"{p}"' for p in sorted(known))
            raise GateError(f"{where}: {check.attack} runs no point \"{check.point}\" (its "
                            f"points: {listed or 'none'})")
        measured = (measures or {}).get(check.attack)
        if measured is not None and check.metric not in measured:
            raise GateError(f"{where}: {check.attack} does not measure {check.metric} (it "
                            f"measures: {', '.join(sorted(measured)) or 'nothing'})")
        bounds = metrics[check.metric]
        if bounds and not bounds[0] <= check.threshold <= bounds[1]:
            hint = f" (a percentage? write {check.threshold:g}% or " \
                f"{check.threshold / 100:g})" if 1 < check.threshold <= 100 and \
                bounds[1] <= 1 else ""
            raise GateError(f"{where}: {check.written} is outside {check.metric}'s range "
                            f"[{bounds[0]:g}, {bounds[1]:g}]{hint}")


def evaluate(result: Mapping[str, Any], checks: Iterable[str | Check]) -> list[Verdict]:
    """Judge each check on a results.json object: one verdict per cell it names (one
    failing verdict, saying why, where it names no cell)."""
    cells: list[Mapping[str, Any]] = list(result.get("cells") or [])
    formats = {name: entry.get("format", "number")
               for name, entry in (result.get("metrics") or {}).items()}
    verdicts = []
    for check in parse_all(checks):
        matching = [c for c in cells if c["attack"] == check.attack
                    and c["defense"] == check.defense
                    and check.point in (None, c["attack_point"])
                    and check.defense_point in (None, c["defense_point"])]
        if not matching:
            verdicts.append(Verdict(str(check), False, f"no value: {_missing(check, cells)}",
                                    check=check.text or str(check)))
        for cell in matching:
            verdicts.append(_judge(check, cell, formats.get(check.metric, "number")))
    return verdicts


def verdicts_of(result: Mapping[str, Any]) -> list[Verdict]:
    """The verdicts a results.json object records (none when it was not gated)."""
    return [Verdict.from_dict(v) for v in result.get("gate") or []]


def _judge(check: Check, cell: Mapping[str, Any], fmt: str) -> Verdict:
    expression = check.expression(cell["attack_point"], cell["defense_point"])

    def failed(why: str) -> Verdict:
        return Verdict(expression, False, f"no value: {why}", check=check.text or str(check))

    if cell.get("status") == "error":
        return failed(f"the cell failed: {_one_line(cell.get('reason'))}")
    if cell.get("status") == "not_applicable":
        return failed(f"the cell was not applicable: {_one_line(cell.get('reason'))}")
    metric = (cell.get("metrics") or {}).get(check.metric)
    if metric is None:
        why = (cell.get("metric_errors") or {}).get(check.metric)
        if why:
            return failed(f"the metric failed: {_one_line(why)}")
        has = ", ".join(sorted(cell.get("metrics") or {})) or "none"
        return failed(f"this cell has no {check.metric} (it has: {has})")
    value = metric.get("value")
    if value is None or not math.isfinite(value):
        return failed(f"{check.metric} is undefined in this cell")
    low, high, n = metric.get("low"), metric.get("high"), metric.get("n")
    return Verdict(expression, check.holds(value),
                   f"got {_estimate(value, low, high, n, fmt, check.threshold)}",
                   value=value, low=low, high=high, n=n, check=check.text or str(check))


def _missing(check: Check, cells: Sequence[Mapping[str, Any]]) -> str:
    """Why no cell matches ``check``."""
    mine = [c for c in cells if c["attack"] == check.attack]
    if not mine:
        return f"the audit has no {check.attack} cell"
    defended = [c for c in mine if c["defense"] == check.defense]
    if not defended:
        ran = ", ".join(dict.fromkeys(c["defense"] for c in mine))
        return f"no {check.attack} cell under defense {check.defense} (it ran under: {ran})"
    if check.defense_point is not None and \
            not any(c["defense_point"] == check.defense_point for c in defended):
        points = ", ".join(f'"{p}"' for p in dict.fromkeys(c["defense_point"]
                                                         for c in defended))
        return (f'{check.defense} has no point "{check.defense_point}" (its points: '
                f"{points})")
    points = ", ".join(f'"{p}"' for p in dict.fromkeys(c["attack_point"] for c in defended))
    return (f'{check.attack} has no point "{check.point}" under defense {check.defense} '
            f"(its points: {points})")


def _estimate(value: float, low: float | None, high: float | None, n: int | None,
              fmt: str, threshold: float) -> str:
    """``41.3% [36.8%–45.9%] (n=450)``, with as many digits as it takes to tell the
    value from the threshold."""
    digits = 1
    while digits < 8 and value != threshold and \
            _shown(value, fmt, digits) == _shown(threshold, fmt, digits):
        digits += 1
    text = _shown(value, fmt, digits)
    if low is not None and high is not None:
        text += f" [{_shown(low, fmt, digits)}\u2013{_shown(high, fmt, digits)}]"
    return text + (f" (n={n})" if n is not None else "")


def _shown(value: float, fmt: str, digits: int) -> str:
    if fmt == "percent":
        return f"{value * 100:.{digits}f}%"
    return f"{value:.{digits + 2}g}"


def _split(text: str) -> tuple[str, str, str]:
    """(target, operator, number): the operator is the first of ``<>=!`` outside quotes
    and brackets (a point such as ``"eps=0.1"`` holds one)."""
    quote = ""
    depth = 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[]":
            depth = max(0, depth + (1 if ch == "[" else -1))
        elif ch in "<>=!" and not depth:
            op = text[i:i + 2] if text[i:i + 2] in (">=", "<=", "==", "!=", "=>", "=<") else ch
            return text[:i].strip(), op, text[i + len(op):].strip()
    if quote or depth:
        _malformed(text, f"a {'quote' if quote else '['} is never closed")
    _malformed(text, "it compares nothing; use >=, <=, > or <")


def _malformed(text: str, why: str) -> NoReturn:
    raise GateError(f"gate check {text.strip()!r} is malformed: {why}; the form is {FORM}")


def _bracket(point: str | None) -> str:
    return f'["{point}"]' if point else ""


def _unbracket(group: str | None) -> str | None:
    return None if group is None else group.strip()[1:-1].strip()[1:-1]


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _one_line(text: Any) -> str:
    """A reason on one line (a CI log line per violation), at most 300 characters, its
    control characters made visible (a plugin's message must not drive the terminal)."""
    flat = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}",
                        " ".join(str(text or "no reason given").split()))
    return flat if len(flat) <= 300 else flat[:299] + "\u2026"


# -- JUnit XML ------------------------------------------------------------------------------

def junit(result: Mapping[str, Any], verdicts: Sequence[Verdict]) -> ET.ElementTree:
    """A JUnit XML report for CI: a ``gauntlet.gate`` testcase per verdict (``<failure>``
    when violated) and a ``gauntlet.cells`` testcase per error cell (``<error>`` with its
    reason; its traceback as the text). With neither, one passing testcase, so the CI
    page shows the audit ran."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name="gauntlet")
    failures = errors = 0
    for verdict in verdicts:
        case = _case(suite, "gauntlet.gate", verdict.expression, 0.0)
        if not verdict.passed:
            failures += 1
            ET.SubElement(case, "failure", message=_xml(verdict.message)).text = \
                _xml(verdict.line())
    cells = list(result.get("cells") or [])
    for cell in cells:
        if cell.get("status") == "error":
            errors += 1
            reason = _xml(_one_line(cell.get("reason")))
            case = _case(suite, "gauntlet.cells", _cell_name(cell), cell.get("duration_s"))
            ET.SubElement(case, "error", message=reason).text = \
                _xml(cell.get("traceback") or reason)
    if not len(suite):
        _case(suite, "gauntlet.audit", f"audit: {len(cells)} cells, no error cells",
              (result.get("provenance") or {}).get("duration_s"))
    duration = (result.get("provenance") or {}).get("duration_s") or 0.0
    totals = {"tests": str(len(suite)), "failures": str(failures), "errors": str(errors),
              "time": f"{float(duration):.3f}"}
    for element in (suites, suite):
        for key, value in totals.items():
            element.set(key, value)
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(path: str | Path, result: Mapping[str, Any],
                verdicts: Sequence[Verdict]) -> Path:
    """Write :func:`junit` to ``path`` (its folder made if need be)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        junit(result, verdicts).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the JUnit file {path}: "
                          f"{exc.strerror or exc}") from None
    return path


def _case(suite: ET.Element, classname: str, name: str, seconds: Any) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=classname, name=_xml(name),
                         time=f"{float(seconds or 0.0):.3f}")


def _cell_name(cell: Mapping[str, Any]) -> str:
    """``DEFENSE [POINT] / ATTACK [POINT]``."""
    def part(name: str, point: str) -> str:
        return f"{name} {point}" if point else name

    return (f"{part(cell['defense'], cell.get('defense_point') or '')} / "
            f"{part(cell['attack'], cell.get('attack_point') or '')}")


def _xml(text: str) -> str:
    """``text`` with what XML 1.0 cannot hold (control characters) made visible; the
    rest ElementTree escapes."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
