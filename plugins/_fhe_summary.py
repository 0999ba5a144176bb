"""The three answers the report's Summary gives about encrypted inference, one line each.

For every point of the ``fhe`` defense that has cells: does the encrypted deployment give
the same answers, what does it cost, and what does it stop and not stop, each a short
sentence of numbers read from ``results.json`` data (the ``fhe_*`` facts of its clean
cell, ``server-view`` and ``server-tamper``, and the evasion and membership cells it
shares with the undefended model ``none``). A number the results do not hold is left
out, or the sentence says the attack was not run; nothing is filled in. A helper of
:mod:`gauntlet.plugins.fhe`, not a plugin.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

DEFENSE = "fhe"
UNDEFENDED = "none"
#: What each line answers, in order.
QUESTIONS = ("same answers?", "what it costs", "what it stops, and what it does not")

Cell = Mapping[str, Any]


def summary_lines(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """Three Summary sections (``title``, ``text``, ``place="summary"``) per ``fhe``
    defense point with cells in ``result`` (plain results.json data); none without."""
    cells = [c for c in result.get("cells") or [] if isinstance(c, Mapping)]
    plain = [c for c in cells if c.get("defense") == UNDEFENDED and not c.get("defense_point")]
    points = dict.fromkeys(c.get("defense_point") or "" for c in cells
                           if c.get("defense") == DEFENSE)
    lines = []
    for point in points:
        mine = [c for c in cells
                if c.get("defense") == DEFENSE and (c.get("defense_point") or "") == point]
        name = f"Encrypted inference ({DEFENSE}{', ' + point if point else ''})"
        texts = (same_answers(mine, plain), costs(mine), stops(mine, plain))
        lines += [{"title": f"{name}: {q}", "text": t, "place": "summary"}
                  for q, t in zip(QUESTIONS, texts)]
    return lines


def same_answers(mine: list[Cell], plain: list[Cell]) -> str:
    """Agreement with the model (and with the plaintext twin), and clean accuracy beside
    the undefended model's."""
    clean, base = _baseline(mine), _baseline(plain)
    parts = []
    model, twin = _value(clean, "fhe_agreement_model"), _value(clean, "fhe_agreement_twin")
    if model is not None or twin is not None:
        metric = "fhe_agreement_model" if model is not None else "fhe_agreement_twin"
        whose = "the model" if model is not None else "its plaintext twin"
        also = f" (with its plaintext twin: {_pct(twin)})" \
            if model is not None and twin is not None else ""
        parts.append(f"Encrypted predictions agree with {whose} on "
                     f"{_pct(_value(clean, metric))}{also}{_of_rows(clean, metric)}.")
    acc = _value(clean, "clean_accuracy")
    if acc is not None:
        text = f"Clean accuracy {_pct(acc)} encrypted"
        base_acc = _value(base, "clean_accuracy")
        if base_acc is not None:
            text += f" vs {_pct(base_acc)} for the undefended model"
            n, n_base = _n(clean, "clean_accuracy"), _n(base, "clean_accuracy")
            if n is not None and n_base is not None and n != n_base:
                text += f" (on {n:,} and {n_base:,} rows)"
        parts.append(text + ".")
    return " ".join(parts) or _unmeasured(mine)


def costs(mine: list[Cell]) -> str:
    """Latency (a full batch and one input alone), bytes each way, security level."""
    clean = _baseline(mine)
    amortised = _value(clean, "fhe_latency_amortised_ms")
    single = _value(clean, "fhe_latency_single_ms")
    up, down = _value(clean, "fhe_upload_bytes"), _value(clean, "fhe_download_bytes")
    bits = _value(clean, "fhe_security_bits")
    parts = []
    latency = []
    if amortised is not None:
        batch = _n(clean, "fhe_latency_amortised_ms")
        latency.append(f"{_ms(amortised)} per input in a full batch"
                       f"{f' of {batch:,}' if batch and batch > 1 else ''}")
    if single is not None:
        latency.append(f"{_ms(single)} for one input alone")
    if latency:
        parts.append(", ".join(latency))
    traffic = [f"{_bytes(v)} {way}" for v, way in ((up, "uploaded"), (down, "downloaded"))
               if v is not None]
    if traffic:
        parts.append(" and ".join(traffic) + " per input")
    if bits is not None:
        parts.append(f"{bits:.0f}-bit security" if bits > 0 else "below 128-bit security")
    if not parts:
        return _unmeasured(mine)
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def stops(mine: list[Cell], plain: list[Cell]) -> str:
    """What the server learns (server-view), how often it changes answers
    (server-tamper), and evasion and membership inference beside the undefended model."""
    return " ".join([_server_view(mine, plain), _tamper(mine, plain),
                     _paired(mine, plain, "evasion", "robust_accuracy",
                             ("Evasion", "robust accuracy"), lower_is_stronger=True),
                     _paired(mine, plain, "inference", "membership_advantage",
                             ("Membership inference", "advantage"), lower_is_stronger=False)])


def _server_view(mine: list[Cell], plain: list[Cell]) -> str:
    cell = _strongest(mine, "server-view", "server_recovery", highest=True)
    if cell is None:
        return _absent(mine, "server-view") + "."
    text = (f"A curious server recovers {_pct(_value(cell, 'server_recovery'))} of "
            f"{_rows_of(cell, 'server_recovery')}served labels from what it sees")
    notes = []
    if (chance := _value(cell, "server_chance")) is not None:
        notes.append(f"chance {_pct(chance)}")
    base = _strongest(plain, "server-view", "server_recovery", highest=True)
    if base is not None:
        notes.append(f"{_pct(_value(base, 'server_recovery'))} from the plaintext "
                     f"deployment '{UNDEFENDED}'")
    return text + (f" ({'; '.join(notes)})" if notes else "") + "."


def _tamper(mine: list[Cell], plain: list[Cell]) -> str:
    cell = _strongest(mine, "server-tamper", "tamper_success", highest=True)
    if cell is None:
        return _absent(mine, "server-tamper") + "."
    text = (f"A malicious server replaces {_pct(_value(cell, 'tamper_success'))} of "
            f"{_rows_of(cell, 'tamper_success')}answers with its chosen class, undetected")
    base = _strongest(plain, "server-tamper", "tamper_success", highest=True)
    if base is not None:
        text += f" ({_pct(_value(base, 'tamper_success'))} in plaintext)"
    return text + "."


def _paired(mine: list[Cell], plain: list[Cell], family: str, metric: str,
            words: tuple[str, str], *, lower_is_stronger: bool) -> str:
    """``metric`` under fhe beside the undefended model's, for the strongest attack cell
    of ``family`` both ran (the same attack and point); fhe's own strongest when the
    undefended model has none to compare; "not run" when fhe has none."""
    def key(c: Cell) -> tuple[str, str]:
        return c.get("attack", ""), c.get("attack_point") or ""

    def strength(v: float) -> float:
        return v if lower_is_stronger else -v

    ours = {key(c): c for c in mine if c.get("family") == family and _value(c, metric) is not None}
    theirs = {key(c): c for c in plain
              if c.get("family") == family and _value(c, metric) is not None}
    if not ours:
        return f"{words[0]}: not run."
    shared = [k for k in ours if k in theirs]
    pool = shared or list(ours)
    best = min(pool, key=lambda k: (strength(_value(ours[k], metric) or 0.0),
                                    strength(_value(theirs[k], metric) or 0.0)
                                    if k in theirs else 0.0))
    where = _label(*best)
    text = f"{words[0]}: {words[1]} {_pct(_value(ours[best], metric))} under {DEFENSE}"
    if shared:
        text += f" vs {_pct(_value(theirs[best], metric))} undefended"
        of = f", the strongest of {len(shared)} cells run against both" if len(shared) > 1 else ""
        return f"{text} ({where}{of})."
    return f"{text} ({where}; no undefended cell to compare)."


# -- reading cells ---------------------------------------------------------------------


def _baseline(cells: Iterable[Cell]) -> Cell | None:
    return next((c for c in cells if c.get("family") == "baseline"), None)


def _value(cell: Cell | None, metric: str) -> float | None:
    """The finite value of ``metric`` in an ok cell, else None."""
    if cell is None or cell.get("status", "ok") != "ok":
        return None
    value = ((cell.get("metrics") or {}).get(metric) or {}).get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value):
        return None
    return float(value)


def _n(cell: Cell | None, metric: str) -> int | None:
    if cell is None:
        return None
    n = ((cell.get("metrics") or {}).get(metric) or {}).get("n", cell.get("n"))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _strongest(cells: Iterable[Cell], attack: str, metric: str, *,
               highest: bool) -> Cell | None:
    found = [c for c in cells if c.get("attack") == attack and _value(c, metric) is not None]
    if not found:
        return None
    return (max if highest else min)(found, key=lambda c: _value(c, metric) or 0.0)


def _status(cell: Cell | None) -> str:
    """``not run``, ``not measured``, ``not applicable (why)`` or ``error (why)``."""
    if cell is None:
        return "not run"
    status = cell.get("status", "ok")
    if status == "ok":
        return "not measured"
    reason = str(cell.get("reason") or "").strip().splitlines()
    why = f" ({reason[0][:160]})" if reason else ""
    return f"{'not applicable' if status == 'not_applicable' else status}{why}"


def _absent(cells: Iterable[Cell], attack: str) -> str:
    """Why ``attack`` has no numbers under fhe."""
    return f"{attack}: {_status(next((c for c in cells if c.get('attack') == attack), None))}"


def _unmeasured(mine: list[Cell]) -> str:
    """Why the clean cell, which holds the facts, gave none."""
    return f"Not measured: the clean cell is {_status(_baseline(mine))}."


def _of_rows(cell: Cell | None, metric: str) -> str:
    n = _n(cell, metric)
    return f" of {n:,} test rows" if n is not None else ""


def _rows_of(cell: Cell | None, metric: str) -> str:
    n = _n(cell, metric)
    return f"{n:,} " if n is not None else ""


# -- formatting ------------------------------------------------------------------------


def _label(name: str, point: str) -> str:
    return f"{name} {point}" if point else name


def _pct(value: float | None) -> str:
    """As the report prints a proportion: 0.9609 -> ``96.1%``."""
    return "—" if value is None else f"{value * 100:.1f}%"


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f} ms"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def _bytes(value: float) -> str:
    if value >= 1024 * 1024:
        return f"{value / (1024 * 1024):.1f} MiB"
    return f"{value / 1024:.1f} KiB" if value >= 1024 else f"{value:,.0f} bytes"
