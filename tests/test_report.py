"""The HTML report: content in the right places, colours, escaping, offline, determinism."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest

from gauntlet import wilson
from gauntlet.reports.html import render_report, write_report
from gauntlet.reports.tables import matrix, worst_findings
from gauntlet.results import check_result

EVIL = "<script>alert(1)</script>"
N_EVAL = 500
EPS = (0.05, 0.1, 0.2, 0.3)
FRACTIONS = (0.1, 0.2, 0.3)
DEFENSES = ("none", "confidence-clip", "input-noise", "confidence-noise")
CLEAN = {"none": 0.972, "confidence-clip": 0.968, "input-noise": 0.931, "confidence-noise": 0.962}
STRENGTH = {"fgsm": 7.0, "pgd": 12.0, "noise": 0.8}  # how fast robust accuracy decays in eps
SHIELD = {"none": 1.0, "confidence-clip": 1.0, "input-noise": 0.45, "confidence-noise": 0.9}
MIA_SEPARATION = {"none": 0.55, "confidence-clip": 0.35, "input-noise": 0.4,
                  "confidence-noise": 0.15}
NA_REASON = "needs gradients access; this model exposes scores only"
ERROR_REASON = "ValueError: training diverged (loss is NaN)"

METRICS = {  # name: (title, higher_is_better, bounds, format), as the built-ins declare
    "clean_accuracy": ("Clean accuracy", True, [0.0, 1.0], "percent"),
    "robust_accuracy": ("Robust accuracy", True, [0.0, 1.0], "percent"),
    "attack_success_rate": ("Attack success rate", False, [0.0, 1.0], "percent"),
    "precision": ("Precision (macro)", True, [0.0, 1.0], "percent"),
    "recall": ("Recall (macro)", True, [0.0, 1.0], "percent"),
    "f1": ("F1 (macro)", True, [0.0, 1.0], "percent"),
    "confidence": ("Mean confidence", True, [0.0, 1.0], "percent"),
    "membership_accuracy": ("Membership accuracy", False, [0.0, 1.0], "percent"),
    "membership_advantage": ("Membership advantage", False, [-1.0, 1.0], "percent"),
    "membership_auc": ("Membership AUC", False, [0.0, 1.0], "number"),
    "poisoned_accuracy": ("Poisoned accuracy", True, [0.0, 1.0], "percent"),
    "accuracy_drop": ("Accuracy drop", False, [-1.0, 1.0], "percent"),
    "top_class_share": ("Top class share", False, [0.0, 1.0], "percent"),
    "prediction_entropy": ("Prediction entropy", True, None, "number"),
    "probe_confidence": ("Probe confidence", False, [0.0, 1.0], "percent"),
}
ATTACKS = {
    "clean": ("baseline", "none", "No attack: the defended model on clean test data."),
    "fgsm": ("evasion", "gradients", "Fast Gradient Sign Method."),
    "pgd": ("evasion", "gradients", "Projected Gradient Descent."),
    "noise": ("evasion", "labels", "Uniform random noise of size eps."),
    "mia-threshold": ("inference", "scores", "Confidence-threshold membership inference."),
    "label-flip": ("poisoning", "training", "Flip a fraction of training labels."),
    "trash-bucket": ("probe", "labels", "Feed out-of-distribution noise."),
}


EPS_PARAMETER = {"name": "eps", "type": "float", "default": list(EPS), "sweep": True,
                 "bounds": ">= 0", "help": "L-infinity budget"}


def _metric(value: float, n: int = N_EVAL, interval: bool = True) -> dict[str, Any]:
    low, high = wilson(value * n, n) if interval else (None, None)
    return {"value": value, "n": n, "low": low, "high": high}


def _cell(defense: str, attack: str, point: dict[str, Any], metrics: dict[str, float],
          status: str = "ok", reason: str | None = None, tb: str | None = None,
          artifacts: dict[str, Any] | None = None) -> dict[str, Any]:
    apoint = ", ".join(f"{k}={v:g}" for k, v in point.items())
    return {
        "id": f"{defense}|{attack}|{apoint}", "defense": defense, "defense_params": {},
        "defense_point": "", "attack": attack, "family": ATTACKS[attack][0],
        "attack_params": dict(point), "attack_point": apoint, "status": status,
        "reason": reason, "traceback": tb, "duration_s": 0.5 + len(apoint) / 10,
        "n": N_EVAL if status == "ok" else None,
        "metrics": {k: _metric(v, interval=k != "prediction_entropy") for k, v in metrics.items()},
        "metric_errors": {}, "artifacts": artifacts or {},
    }


def robust(defense: str, attack: str, eps: float) -> float:
    return round(CLEAN[defense] * math.exp(-STRENGTH[attack] * SHIELD[defense] * eps), 4)


def _quality(acc: float) -> dict[str, float]:
    return {"precision": round(acc + 0.004, 4), "recall": round(acc - 0.002, 4),
            "f1": round(acc + 0.001, 4), "confidence": round(0.5 + acc / 2, 4)}


def build_result(defenses: tuple[str, ...] = DEFENSES) -> dict[str, Any]:
    """A realistic results.json object of the default audit (digits CNN)."""
    cells = []
    for d in defenses:
        base = CLEAN.get(d, 0.95)
        cells.append(_cell(d, "clean", {}, {"clean_accuracy": base, **_quality(base)}))
        for attack in ("fgsm", "pgd", "noise"):
            for eps in EPS:
                if attack == "pgd" and d == "confidence-noise":
                    cells.append(_cell(d, attack, {"eps": eps}, {}, "not_applicable", NA_REASON))
                    continue
                acc = robust(d, attack, eps) if d in CLEAN else 0.5
                cells.append(_cell(d, attack, {"eps": eps}, {
                    "robust_accuracy": acc, "attack_success_rate": round(1 - acc / base, 4),
                    **_quality(acc)}))
        sep = MIA_SEPARATION.get(d, 0.3)
        fpr = [i / 100 for i in range(101)]
        unit = NormalDist()
        tpr = [0.0 if f == 0 else 1.0 if f == 1 else unit.cdf(unit.inv_cdf(f) + sep) for f in fpr]
        auc = unit.cdf(sep / math.sqrt(2))
        cells.append(_cell(d, "mia-threshold", {}, {
            "membership_accuracy": round(0.5 + (auc - 0.5) * 0.8, 4),
            "membership_advantage": round((auc - 0.5) * 1.2, 4), "membership_auc": round(auc, 4)},
            artifacts={"roc": {"fpr": fpr, "tpr": tpr}}))
        for frac in FRACTIONS:
            if d == "input-noise" and frac == 0.3:
                cells.append(_cell(d, "label-flip", {"fraction": frac}, {}, "error", ERROR_REASON,
                                   "Traceback (most recent call last):\n  File \"poison.py\", "
                                   "line 42, in run\n" + ERROR_REASON))
                continue
            poisoned = round(base - frac * 0.4, 4)
            cells.append(_cell(d, "label-flip", {"fraction": frac}, {
                "poisoned_accuracy": poisoned, "accuracy_drop": round(base - poisoned, 4)}))
        counts = [20, 25, 18, 30, 22, 15, 28, 280 if d == "none" else 90, 40, 22]
        share = max(counts) / sum(counts)
        cells.append(_cell(d, "trash-bucket", {}, {
            "top_class_share": round(share, 4), "prediction_entropy": 1.7 + (share < 0.5),
            "probe_confidence": 0.91 if d == "none" else 0.62},
            artifacts={"histogram": {"counts": counts}}))
    return {
        "schema": 1,
        "title": "Digits audit",
        "provenance": {
            "gauntlet": "0.1.0", "python": "3.11.7", "platform": "Linux-6.1-x86_64",
            "libraries": {"torch": "2.5.1", "adversarial-robustness-toolbox": "1.20.1",
                          "numpy": "2.1.0"},
            "seed": 0, "started": "2025-01-01T12:00:00+00:00", "duration_s": 83.4,
            "model": {"name": "digits-cnn", "spec": "builtin:cnn", "format": "builtin",
                      "sha256": "ab" * 32, "input_shape": [1, 8, 8], "n_classes": 10,
                      "access": "gradients", "recipe": True},
            "data": {"name": "digits", "spec": "sklearn:digits", "n_train": 1347,
                     "n_test": 450, "n_eval": N_EVAL, "sha256": "cd" * 32},
            "plugins": [], "broken_plugins": [],
        },
        "intake": {"safe": None, "format": "builtin",
                   "verdict": "not scanned: built-in model trained on the fly"},
        "config": {"model": "builtin:cnn", "data": "sklearn:digits", "seed": 0,
                   "attacks": list(ATTACKS), "defenses": list(defenses)},
        "metrics": {k: {"title": t, "higher_is_better": h, "bounds": b, "format": f,
                        "description": f"{t} of the model.", "plugin": "metrics",
                        "distribution": "gauntlet", "version": "0.1.0"}
                    for k, (t, h, b, f) in METRICS.items()},
        "attacks": {k: {"family": f, "needs": needs, "description": desc,
                        "parameters": [EPS_PARAMETER] if k in STRENGTH else [],
                        "plugin": "builtin", "distribution": "gauntlet", "version": "0.1.0"}
                    for k, (f, needs, desc) in ATTACKS.items()},
        "defenses": {d: {"stage": "none" if d == "none" else "output" if "confidence" in d
                         else "input", "description": f"The {d} defense.",
                         "evaluation": "Gradients pass through the defense (adaptive)."
                         if d != "confidence-noise" else
                         "Randomised output, attacked without EOT.",
                         "adaptive": d != "confidence-noise", "parameters": [],
                         "plugin": "defenses", "distribution": "gauntlet", "version": "0.1.0"}
                     for d in defenses},
        "cells": cells,
    }


class _Cells(HTMLParser):
    """Collects matrix cells: (metric, defense, attack, point) -> (text, attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.metric: str | None = None
        self.current: dict[str, str] | None = None
        self.cells: dict[tuple[str, str, str, str], tuple[str, dict[str, str]]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table" and "data-metric" in a:
            self.metric = a["data-metric"]
        if tag == "td" and "data-attack" in a and self.metric:
            self.current = {**a, "text": ""}

    def handle_data(self, data: str) -> None:
        if self.current is not None:
            self.current["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.current is not None:
            c = self.current
            key = (self.metric or "", c["data-defense"], c["data-attack"], c["data-attack-point"])
            self.cells[key] = (c["text"].strip(), c)
            self.current = None


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return build_result()


@pytest.fixture(scope="module")
def html(result: dict[str, Any]) -> str:
    return render_report(result, sections=[{"title": "Extra", "text": "plugin says hi"}])


@pytest.fixture(scope="module")
def cells(html: str) -> dict[tuple[str, str, str, str], tuple[str, dict[str, str]]]:
    parser = _Cells()
    parser.feed(html)
    return parser.cells


def test_hand_made_result_follows_the_real_schema(result: dict[str, Any]) -> None:
    # The fixture above stands in for an audit's results.json: held to the schema an audit
    # writes (test_audit checks real results against the same), it cannot drift from it.
    check_result(result)
    check_result(hostile_result())


@pytest.fixture(scope="session")
def real_audit(digits: Any, digits_model: Any) -> Any:
    """A real tiny audit: every family the report draws, a not-applicable cell, 30 rows."""
    import gauntlet

    return gauntlet.audit(model=digits_model, data=digits,
                          attacks={"fgsm": {"eps": [0.1, 0.3]}, "mia-threshold": {},
                                   "trash-bucket": {"probes": 50}},
                          defenses=["none", "confidence-clip"], samples=30, seed=0)


def test_report_of_a_real_audit_shows_its_numbers(real_audit: Any) -> None:
    result = real_audit.result
    check_result(result)
    parser = _Cells()
    parser.feed(render_report(result))
    shown = 0
    for cell in result["cells"]:
        for name, m in cell["metrics"].items():
            if result["metrics"][name]["format"] != "percent":
                continue
            key = (name, cell["defense"], cell["attack"], cell["attack_point"])
            text, attrs = parser.cells[key]
            assert text == f"{m['value'] * 100:.1f}%", key
            assert f"n = {m['n']}" in attrs["title"]
            shown += 1
    assert shown > 20
    na = [c for c in result["cells"] if c["status"] == "not_applicable"]
    assert na  # fgsm behind confidence-clip (scores only)
    text, attrs = parser.cells[("robust_accuracy", na[0]["defense"], na[0]["attack"],
                                na[0]["attack_point"])]
    assert text == "n/a" and na[0]["reason"] in attrs["title"]


def _redness(hex_colour: str) -> int:
    r, g = int(hex_colour[1:3], 16), int(hex_colour[3:5], 16)
    return r - g


def test_summary_shows_model_data_and_counts(html: str, result: dict[str, Any]) -> None:
    statuses = [c["status"] for c in result["cells"]]
    assert "digits-cnn" in html and "digits" in html
    assert re.search(rf'id="count-ok">{statuses.count("ok")}<', html)
    assert re.search(rf'id="count-na">{statuses.count("not_applicable")}<', html)
    assert re.search(r'id="count-error">1<', html)
    assert "Randomised output, attacked without EOT" in html
    assert html.count("not adaptive</span>") == 1  # from the defense's adaptive flag
    assert "plugin says hi" in html


def test_matrix_value_in_its_row_and_column(cells: dict, result: dict[str, Any]) -> None:
    expected = robust("input-noise", "fgsm", 0.1)
    text, attrs = cells[("robust_accuracy", "input-noise", "fgsm", "eps=0.1")]
    assert text == f"{expected * 100:.1f}%"
    low, _ = wilson(expected * N_EVAL, N_EVAL)
    assert f"n = {N_EVAL}" in attrs["title"] and f"{low * 100:.1f}%" in attrs["title"]
    # Neighbouring cells hold their own values, not this one.
    assert cells[("robust_accuracy", "none", "fgsm", "eps=0.1")][0] == \
        f"{robust('none', 'fgsm', 0.1) * 100:.1f}%"
    assert cells[("robust_accuracy", "input-noise", "pgd", "eps=0.1")][0] == \
        f"{robust('input-noise', 'pgd', 0.1) * 100:.1f}%"
    # The shared metric keeps the clean column beside the attacks for reference.
    assert ("precision", "none", "clean", "") in cells


def test_not_applicable_and_error_cells(cells: dict, html: str) -> None:
    text, attrs = cells[("robust_accuracy", "confidence-noise", "pgd", "eps=0.2")]
    assert text == "n/a" and NA_REASON in attrs["title"]
    text, attrs = cells[("poisoned_accuracy", "input-noise", "label-flip", "fraction=0.3")]
    assert text == "error" and ERROR_REASON in attrs["title"]
    # Listed with reasons; the traceback sits in a <details>.
    assert html.count(NA_REASON) >= 5  # four tooltips per metric table plus the list
    assert re.search(r"<details>.*?" + re.escape(ERROR_REASON) + r".*?<pre class=\"traceback\">"
                     r"Traceback \(most recent", html, re.DOTALL)


@pytest.mark.parametrize("metric,better,worse", [
    # higher is better: lower robust accuracy is worse
    ("robust_accuracy", ("none", "fgsm", "eps=0.05"), ("none", "fgsm", "eps=0.3")),
    # lower is better: higher attack success is worse
    ("attack_success_rate", ("input-noise", "pgd", "eps=0.05"), ("none", "pgd", "eps=0.3")),
    ("membership_auc", ("confidence-noise", "mia-threshold", ""), ("none", "mia-threshold", "")),
])
def test_worse_value_gets_a_worse_colour(cells: dict, metric: str, better: tuple,
                                         worse: tuple) -> None:
    _, good = cells[(metric, *better)]
    _, bad = cells[(metric, *worse)]
    assert float(bad["data-badness"]) > float(good["data-badness"])
    colour = re.compile(r"background: (#[0-9a-f]{6})")
    good_colour = colour.search(good["style"]).group(1)
    bad_colour = colour.search(bad["style"]).group(1)
    assert _redness(bad_colour) > _redness(good_colour)


def test_no_external_resources(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "@import" not in html
    # Every reference is a fragment inside this page (nav links, SVG clip paths, markers).
    assert not re.search(r"url\((?!#)", html)
    assert not re.search(r"""(?:src|href)=["'](?!#)""", html)


def test_charts_are_inline_svg(html: str) -> None:
    # 3 robustness curves (fgsm, pgd, noise), 1 poisoning curve (label-flip against its
    # fraction), 1 ROC and 1 privacy-utility chart (its four defenses), 4 trash-bucket
    # histograms.
    assert html.count("<svg") == 10
    assert "<?xml" not in html and "DOCTYPE svg" not in html
    assert "robust accuracy vs eps" in html and "membership ROC" in html
    assert len(html.encode()) < 1_500_000


def test_render_is_deterministic(result: dict[str, Any], html: str) -> None:
    assert render_report(result, sections=[{"title": "Extra", "text": "plugin says hi"}]) == html


def test_untrusted_text_is_escaped() -> None:
    result = build_result(defenses=("none", EVIL))
    result["attacks"][EVIL] = {**result["attacks"]["fgsm"], "description": EVIL}
    for cell in result["cells"]:
        if cell["attack"] == "fgsm":
            cell["attack"] = EVIL
        if cell["attack"] == "label-flip" and cell["defense"] == EVIL:
            cell.update(status="error", reason=EVIL, traceback=EVIL, metrics={})
    result["metrics"]["robust_accuracy"]["description"] = EVIL
    result["provenance"]["model"]["name"] = EVIL
    html = render_report(result, sections=[{"title": EVIL, "text": EVIL}])
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # The defense name also reaches the matplotlib legends inside the inline SVG.
    svgs = re.findall(r"<svg.*?</svg>", html, re.DOTALL)
    assert any("&lt;script&gt;" in svg for svg in svgs)


def test_write_report(tmp_path: Path, result: dict[str, Any], html: str) -> None:
    path = write_report(result, tmp_path / "out" / "report.html",
                        sections=[{"title": "Extra", "text": "plugin says hi"}])
    assert path == tmp_path / "out" / "report.html"
    assert path.read_text(encoding="utf-8") == html


def test_empty_result_renders() -> None:
    html = render_report({"cells": []})
    assert "No cell produced a value" in html and "<svg" not in html


def test_matrix_frame(result: dict[str, Any]) -> None:
    frame = matrix(result, "robust_accuracy")
    assert list(frame.index) == list(DEFENSES)
    assert frame.loc["input-noise", "pgd (eps=0.2)"] == robust("input-noise", "pgd", 0.2)
    assert math.isnan(frame.loc["confidence-noise", "pgd (eps=0.2)"])
    assert list(frame.columns)[:4] == [f"fgsm (eps={e:g})" for e in EPS]


def test_worst_findings(result: dict[str, Any]) -> None:
    findings = worst_findings(result, k=50)
    by_metric = {f.metric: f for f in findings}
    # Independent reference: the minimum robust accuracy over every ok cell.
    ref = min((robust(d, a, e), d, a, e) for d in DEFENSES for a in STRENGTH for e in EPS
              if not (a == "pgd" and d == "confidence-noise"))
    worst = by_metric["robust_accuracy"]
    assert (worst.value, worst.defense, worst.attack, worst.attack_point) == \
        (ref[0], ref[1], ref[2], f"eps={ref[3]:g}")
    assert by_metric["membership_auc"].defense == "none"  # highest AUC is worst
    # Ranked by badness, bounded metrics first; the unbounded entropy comes last.
    bounded = [f.badness for f in findings if f.badness is not None]
    assert bounded == sorted(bounded, reverse=True)
    assert findings[-1].metric == "prediction_entropy" and findings[-1].badness is None
    assert len(worst_findings(result, k=3)) == 3


def test_poisoning_is_drawn_against_each_swept_parameter(result: dict[str, Any]) -> None:
    from gauntlet.reports.charts import poisoning_charts

    (chart,) = poisoning_charts(result)  # label-flip's fraction; nothing else is swept
    assert chart.title == "label-flip: poisoned model vs fraction"
    # One solid line per defense, through its poisoned accuracies in fraction order (the
    # error cell at 0.3 under input-noise leaves that line two points).
    lines = re.findall(r'<path d="(M [^"]*)" clip-path="[^"]*" style="fill: none; stroke: '
                       r'(#[0-9a-f]{6}); stroke-width: 1.6', str(chart.svg))  # not the legend
    assert len({colour for _, colour in lines}) == len(DEFENSES)
    assert sorted(p.count("L ") + 1 for p, _ in lines) == [2] + [3] * (len(DEFENSES) - 1)
    # A backdoor swept over patch size and fraction: a chart per parameter, the other
    # parameter splitting the lines, backdoor success dashed beside clean accuracy.
    # (Cells of a poisoning attack named label-flip here: the chart reads only the points.)
    backdoor = dict(result, cells=[
        _cell("none", "label-flip", {"fraction": f, "patch": s},
              {"poisoned_accuracy": 0.97, "backdoor_success": min(1.0, f * s)})
        for f in (0.1, 0.2) for s in (1, 3, 6)])
    charts = poisoning_charts(backdoor)
    assert [c.title for c in charts] == ["label-flip: poisoned model vs fraction",
                                         "label-flip: poisoned model vs patch"]
    svg = str(charts[1].svg)
    assert "none [fraction=0.1]: backdoor success" in svg and "stroke-dasharray" in svg


def test_chart_labels_are_literal_text() -> None:
    # "$...$" would be mathtext and a leading "_" hides a legend entry in matplotlib.
    result = build_result(defenses=("none", "$x^2$", "_hidden"))
    html = render_report(result)
    svgs = "".join(re.findall(r"<svg.*?</svg>", html, re.DOTALL))
    assert "$x^2$" in svgs and "_hidden" in svgs


CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
       "form-action 'none'")
# Each tries a different way out of escaped text: a script element, an event handler, an
# end tag of the raw-text <style>, a script URL, a redirect, and an attribute breakout.
PAYLOADS = (
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    "</style><script>alert(3)</script>",
    "javascript:alert(4)",
    '<meta http-equiv="refresh" content="0; url=javascript:alert(5)">',
    '"><svg onload=alert(6)>',
)
HOSTILE = " ".join(PAYLOADS)
URL_ATTRIBUTES = {"href", "src", "xlink:href", "action", "formaction", "background"}


class _Tags(HTMLParser):
    """Every element as a browser's tokenizer sees it, and the text of <style> elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.style_text = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_style = tag == "style"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style_text += data


def _tags(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser


def _csp_directives(content: str) -> dict[str, list[str]]:
    directives = (d.split() for d in content.split(";") if d.strip())
    return {d[0]: d[1:] for d in directives}


def test_content_security_policy_comes_first(html: str) -> None:
    head = html[html.index("<head>"):html.index("</head>")]
    tags = _tags(head).tags
    # A meta CSP only covers markup after it: it must precede the CSS and every piece of
    # plugin text (the title is already the model's name).
    assert tags[0] == ("head", {})
    assert tags[1] == ("meta", {"charset": "utf-8"})
    assert tags[2][0] == "meta" and tags[2][1]["http-equiv"] == "Content-Security-Policy"
    assert tags[2][1]["content"] == CSP
    policy = _csp_directives(tags[2][1]["content"])
    assert policy["default-src"] == ["'none'"]  # scripts, fetches, frames, fonts: none
    assert "script-src" not in policy and "connect-src" not in policy
    assert policy["style-src"] == ["'unsafe-inline'"] and policy["img-src"] == ["data:"]
    # These two do not fall back to default-src, so they must be named.
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'none'"]
    assert len(re.findall("Content-Security-Policy", html)) == 1


def hostile_result() -> dict[str, Any]:
    """The realistic result with a payload in every string a plugin or model supplies."""
    bad_defense, bad_attack = "d " + HOSTILE, "a " + HOSTILE
    result = build_result(defenses=("none", bad_defense))
    result["title"] = HOSTILE
    result["attacks"][bad_attack] = {**result["attacks"]["fgsm"], "description": HOSTILE,
                                     "family": HOSTILE}
    result["defenses"][bad_defense].update(description=HOSTILE, evaluation=HOSTILE,
                                           stage=HOSTILE, adaptive=False)
    for meta in result["metrics"].values():
        meta["description"] = HOSTILE
    result["metrics"]["robust_accuracy"]["title"] = HOSTILE
    for cell in result["cells"]:
        if cell["attack"] == "fgsm":
            cell["attack"] = bad_attack
            cell["attack_point"] = cell["attack_point"] + " " + HOSTILE
        if cell["defense"] == bad_defense:
            cell["defense_point"] = HOSTILE
            if cell["status"] != "ok":
                cell["reason"] = cell["traceback"] = HOSTILE
    result["provenance"]["model"].update(name=HOSTILE, spec=HOSTILE)
    result["provenance"]["data"]["name"] = HOSTILE
    result["provenance"]["libraries"][HOSTILE] = HOSTILE
    result["config"]["attacks"].append(HOSTILE)
    return result


@pytest.fixture(scope="module")
def hostile_html() -> str:
    return render_report(hostile_result(), sections=[{"title": HOSTILE, "text": HOSTILE}])


def test_hostile_plugin_text_stays_inert(hostile_html: str, html: str) -> None:
    page = _tags(hostile_html)
    names = {tag for tag, _ in page.tags}
    assert not names & {"script", "img", "iframe", "object", "embed", "base", "form", "link"}
    metas = [attrs for tag, attrs in page.tags if tag == "meta"]
    assert metas == [attrs for tag, attrs in _tags(html).tags if tag == "meta"]  # none added
    assert [m for m in metas if "http-equiv" in m] == [
        {"http-equiv": "Content-Security-Policy", "content": CSP}]
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)  # no handler
        for name in URL_ATTRIBUTES & set(attrs):
            assert attrs[name].startswith("#"), (tag, attrs)  # in-page links only
    assert "alert" not in page.style_text  # "</style>" did not end a style element
    low = hostile_html.lower()
    for opener in ("<script", "<img", "<meta http-equiv=\"refresh\"", "<svg onload"):
        assert opener not in low
    # Shown as text, not dropped: escaped in the page, and in the charts' SVG text.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_html
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in hostile_html
    assert "&lt;/style&gt;&lt;script&gt;alert(3)" in hostile_html
    assert "&lt;meta http-equiv=&#34;refresh&#34;" in hostile_html
    svgs = "".join(re.findall(r"<svg.*?</svg>", hostile_html, re.DOTALL))
    assert "&lt;img src=x onerror=" in svgs


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)


def _headless(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` in headless Chromium; console messages (CSP reports) go to stderr."""
    browser = _chromium()
    assert browser is not None
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-color-profile=srgb", f"--user-data-dir={page.parent / 'profile'}",
         "--enable-logging=stderr", "--v=0", *flags, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)


def _csp_complaints(stderr: str) -> list[str]:
    # Chromium reports a blocked inline style, script or fetch, and a directive it does
    # not understand, as console messages naming the policy.
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and "Content" in line and "Security" in line]


def needs_chromium(test: Any) -> Any:
    # A browser start takes seconds: slow, and skipped where no browser is installed.
    skip = pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH")
    return pytest.mark.slow(skip(test))


@needs_chromium
def test_report_renders_in_a_browser_under_its_policy(tmp_path: Path, result: dict[str, Any],
                                                      html: str) -> None:
    page = write_report(result, tmp_path / "report.html")
    dom = _headless(page, "--dump-dom")
    assert _csp_complaints(dom.stderr) == []
    built = _tags(dom.stdout).tags
    def matrices(tags: list[tuple[str, dict[str, str]]]) -> int:
        return sum(1 for tag, a in tags if tag == "table" and "data-metric" in a)

    assert matrices(built) == matrices(_tags(html).tags) > 10
    def charts(tags: list[tuple[str, dict[str, str]]]) -> int:
        return sum(1 for tag, _ in tags if tag == "svg")

    assert charts(built) == charts(_tags(html).tags) == 10  # every chart made it in

    shot = tmp_path / "report.png"
    # Tall enough to reach the first matrices below the summary's verdict and findings.
    run = _headless(page, f"--screenshot={shot}", "--window-size=1280,4000")
    assert _csp_complaints(run.stderr) == []
    import matplotlib.image

    pixels = {tuple(p) for p in
              (matplotlib.image.imread(shot)[:, :, :3] * 255).round().astype(int).reshape(-1, 3)}
    # The <style> element applied: the header band has its accent colour ...
    assert (0x1F, 0x4E, 0x79) in pixels
    # ... and so did the inline style attributes that colour the matrix cells.
    inline = {tuple(int(c[i:i + 2], 16) for i in (0, 2, 4))
              for c in re.findall(r'style="background: #([0-9a-f]{6})"', html)}
    assert len(inline & pixels) >= 5


@needs_chromium
def test_hostile_report_stays_inert_in_a_browser(tmp_path: Path, hostile_html: str) -> None:
    page = tmp_path / "report.html"
    page.write_text(hostile_html, encoding="utf-8")
    dom = _headless(page, "--dump-dom")
    # No CSP complaint: nothing even tried to run or load, the escaping held on its own.
    assert _csp_complaints(dom.stderr) == []
    built = _tags(dom.stdout).tags
    assert not {tag for tag, _ in built} & {"script", "img", "iframe", "base", "form"}
    assert [a for _, attrs in built for a in attrs if a.startswith("on")] == []
    assert [a for tag, a in built if tag == "meta" and "refresh" in str(a).lower()] == []


def test_a_row_limited_attack_says_so_in_its_column_header(result: dict[str, Any]) -> None:
    """A slow attack limited to its first rows (square, cw-l2, ...) says so above its
    columns, so a reader does not compare its n = 40 with another column's n = 450."""
    import copy

    limited = copy.deepcopy(result)
    for cell in limited["cells"]:
        if cell["attack"] == "pgd" and cell["status"] == "ok":
            cell["attack_params"]["rows"], cell["n"] = 40, 40
        if cell["attack"] == "noise":  # a limit larger than the audit's rows did not bite
            cell["attack_params"]["rows"] = N_EVAL + 100
    html = render_report(limited)
    headers = re.findall(r'class="attack">([a-z-]+)(?:<div class="desc">([^<]*)</div>)?</th>',
                         html)
    notes = {attack: note for attack, note in headers}
    assert notes["pgd"] == "first 40 rows"
    assert notes["fgsm"] == "" and notes["noise"] == ""
    assert "first 40 rows" not in render_report(result)
