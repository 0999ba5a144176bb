"""Gate checks (gauntlet.gate): parsed, judged on real audits, and failing the CLI with
exit 1 (one line per violation) after the report is written; JUnit XML for CI; the
README's GitHub Actions workflow."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import plugin
from markupsafe import escape as html_escape

import gauntlet
from gauntlet import Access, Attack, Family, memo
from gauntlet.cli import _parser, main
from gauntlet.config import AuditConfig, from_mapping
from gauntlet.errors import ConfigError
from gauntlet.gate import (
    Check,
    GateError,
    Verdict,
    evaluate,
    junit,
    known_names,
    parse,
    validate,
    verdicts_of,
)
from gauntlet.provenance import fingerprint
from gauntlet.registry import make_registry
from gauntlet.results import check_result

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


# -- parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('robust_accuracy.fgsm["eps=0.1"] >= 0.5',
     Check("robust_accuracy", "fgsm", ">=", 0.5, point="eps=0.1", written="0.5")),
    ("membership_auc.mia-threshold <= 0.6",
     Check("membership_auc", "mia-threshold", "<=", 0.6, written="0.6")),
    ('robust_accuracy.fgsm["eps=0.1"]@adv-training >= 0.8',
     Check("robust_accuracy", "fgsm", ">=", 0.8, point="eps=0.1", defense="adv-training",
           written="0.8")),
    ("clean_accuracy.clean>=0.9", Check("clean_accuracy", "clean", ">=", 0.9, written="0.9")),
    ("robust_accuracy.fgsm['eps=0.1'] @ input-noise[\"r=0.1\"] > 50%",
     Check("robust_accuracy", "fgsm", ">", 0.5, point="eps=0.1", defense="input-noise",
           defense_point="r=0.1", written="50%")),
    ("attack_success_rate.one-pixel < 1e-1",
     Check("attack_success_rate", "one-pixel", "<", 0.1, written="1e-1")),
    # an operator inside the quoted point is part of the point
    ('accuracy_drop.subpopulation["where=a<3"] <= 5 %',
     Check("accuracy_drop", "subpopulation", "<=", 0.05, point="where=a<3", written="5 %")),
])
def test_valid_forms_parse(text, expected):
    check = parse(text)
    assert same_check(check, expected)
    assert check.text == text.strip()
    again = parse(str(check))  # the canonical form reads back the same
    assert same_check(again, expected)


def same_check(a: Check, b: Check) -> bool:
    fields = ("metric", "attack", "op", "point", "defense", "defense_point", "written")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and \
        a.threshold == pytest.approx(b.threshold, abs=1e-12)


def test_percent_and_plain_numbers_mean_the_same_threshold():
    assert parse("robust_accuracy.fgsm >= 50%").threshold == parse(
        "robust_accuracy.fgsm >= 0.5").threshold == 0.5
    assert parse("clean_accuracy.clean >= 92.5%").threshold == pytest.approx(0.925)


def test_left_out_point_means_every_point_and_defense_means_none():
    check = parse("robust_accuracy.fgsm >= 0.5")
    assert check.point is None and check.defense == "none" and check.defense_point is None
    assert parse('robust_accuracy.fgsm[""] >= 0.5').point == ""  # the one unswept point


@pytest.mark.parametrize("text, why", [
    ("robust_accuracy.fgsm == 0.5", "'==' is not a comparison a gate makes"),
    ("robust_accuracy.fgsm = 0.5", "'=' is not a comparison"),
    ("robust_accuracy.fgsm", "it compares nothing"),
    ("robust_accuracy.fgsm >=", "nothing after >= is not a number"),
    ("robust_accuracy.fgsm >= high", "'high' after >= is not a number"),
    ("robust_accuracy.fgsm >= nan", "'nan' after >= is not a number"),
    ("robust_accuracy fgsm >= 0.5", "name the metric and the attack as METRIC.ATTACK"),
    ("robust_accuracy.fgsm[eps=0.1] >= 0.5", 'put the point in double quotes'),
    ('robust_accuracy.fgsm["eps=0.1" >= 0.5', "a [ is never closed"),
    ('robust_accuracy.fgsm["eps=0.1] >= 0.5', "a quote is never closed"),
    ("robust_accuracy.fgsm@ >= 0.5", "cannot read"),
    ("", "it compares nothing"),
])
def test_malformed_checks_are_rejected_saying_why(text, why):
    with pytest.raises(GateError) as info:
        parse(text)
    message = str(info.value)
    assert why in message and "\n" not in message
    assert 'the form is METRIC.ATTACK["POINT"]@DEFENSE OP NUMBER' in message
    assert isinstance(info.value, ConfigError)  # exit 2 in the CLI


# -- judged on a real audit ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fgsm_audit(digits, digits_model, tmp_path_factory):
    """The digits CNN under fgsm's default sweep, 60 rows, gated through the Python API."""
    out = tmp_path_factory.mktemp("gated")
    return gauntlet.audit(model=digits_model, data=digits, attacks=["fgsm"],
                          defenses=["none"], samples=60, cache=False, out=out,
                          gate=["clean_accuracy.clean >= 0.1", "robust_accuracy.fgsm < 0.99"])


def cell(result, attack, point=""):
    (found,) = [c for c in result.cells if c["attack"] == attack and c["attack_point"] == point]
    return found


def test_a_threshold_just_below_the_value_passes_and_just_above_fails(fgsm_audit):
    metric = cell(fgsm_audit, "fgsm", "eps=0.1")["metrics"]["robust_accuracy"]
    value = metric["value"]
    assert value == fgsm_audit.value("robust_accuracy", "fgsm", attack_point="eps=0.1")
    below, above = (f'robust_accuracy.fgsm["eps=0.1"] >= {value + d!r}' for d in (-1e-9, 1e-9))
    passed, failed = evaluate(fgsm_audit.result, [below, above])
    assert passed.passed and not failed.passed
    for verdict in (passed, failed):
        assert verdict.value == value and verdict.n == metric["n"] == 60
        assert (verdict.low, verdict.high) == (metric["low"], metric["high"])
    # the message tells the value from the threshold it missed by 1e-9, in percent
    shown = re.fullmatch(r"got ([\d.]+)% \[([\d.]+)%\u2013([\d.]+)%\] \(n=60\)", failed.message)
    assert shown, failed.message
    assert float(shown[1]) / 100 == pytest.approx(value, abs=1e-12)
    assert float(shown[2]) / 100 == pytest.approx(metric["low"], abs=1e-9)
    assert failed.line() == f"{above}: {failed.message}"
    # the other directions
    (le,) = evaluate(fgsm_audit.result, [f'robust_accuracy.fgsm["eps=0.1"] <= {value!r}'])
    (lt,) = evaluate(fgsm_audit.result, [f'robust_accuracy.fgsm["eps=0.1"] < {value!r}'])
    assert le.passed and not lt.passed


def test_a_check_without_a_point_judges_every_point_on_its_own(fgsm_audit):
    points = [c["attack_point"] for c in fgsm_audit.cells if c["attack"] == "fgsm"]
    values = {p: cell(fgsm_audit, "fgsm", p)["metrics"]["robust_accuracy"]["value"]
              for p in points}
    middle = sorted(values.values())[len(values) // 2]
    verdicts = evaluate(fgsm_audit.result, [f"robust_accuracy.fgsm >= {middle!r}"])
    assert [v.expression for v in verdicts] == \
        [f'robust_accuracy.fgsm["{p}"] >= {middle!r}' for p in points]
    assert [v.passed for v in verdicts] == [values[p] >= middle for p in points]
    assert any(v.passed for v in verdicts) and not all(v.passed for v in verdicts)
    assert {v.check for v in verdicts} == {f"robust_accuracy.fgsm >= {middle!r}"}


def test_what_has_no_value_fails_and_says_why(fgsm_audit):
    verdicts = evaluate(fgsm_audit.result, [
        'robust_accuracy.fgsm["eps=0.7"] >= 0.5',
        "robust_accuracy.fgsm@adv-training >= 0.5",
        "membership_auc.fgsm <= 0.6",
        "robust_accuracy.pgd >= 0.5",
    ])
    assert not any(v.passed for v in verdicts)
    assert all(v.message.startswith("no value: ") and v.value is None for v in verdicts)
    no_point, no_defense, no_metric = (v.message for v in verdicts[:2] + verdicts[2:3])
    assert 'fgsm has no point "eps=0.7" under defense none' in no_point
    assert '"eps=0.1"' in no_point  # the points it has
    assert "no fgsm cell under defense adv-training (it ran under: none)" in no_defense
    assert no_metric.startswith("no value: this cell has no membership_auc (it has: ")
    assert len([v for v in verdicts if "membership_auc" in v.expression]) == \
        sum(c["attack"] == "fgsm" for c in fgsm_audit.cells)
    assert verdicts[-1].message == "no value: the audit has no pgd cell"


def test_the_python_api_records_verdicts_in_results_json(fgsm_audit):
    saved = json.loads((Path(fgsm_audit.result["config"]["out"]) / "results.json")
                       .read_text())
    check_result(saved)
    assert saved["gate"] == fgsm_audit.result["gate"]
    verdicts = verdicts_of(saved)
    assert verdicts == evaluate(saved, ["clean_accuracy.clean >= 0.1",
                                        "robust_accuracy.fgsm < 0.99"])
    assert verdicts[0] == Verdict.from_dict(verdicts[0].to_dict())
    assert "gate" not in saved["config"]  # judges the audit; not part of what it is


def test_names_are_validated_against_what_the_audit_runs(fgsm_audit):
    names = known_names(fgsm_audit.result)
    assert names["attacks"] == {"clean", "fgsm"} and names["defenses"] == {"none"}
    validate([parse("robust_accuracy.fgsm >= 50%")], **names)
    for text, why in [("robust_acc.fgsm >= 0.5", "unknown metric 'robust_acc' (did you mean "
                                                 "robust_accuracy?)"),
                      ("robust_accuracy.pgd >= 0.5", "attack 'pgd' is not in this audit "
                                                     "(it runs: clean, fgsm)"),
                      ("robust_accuracy.fgsm@jpeg >= 0.5", "defense 'jpeg' is not in this"),
                      ("robust_accuracy.fgsm >= 50", "50 is outside robust_accuracy's range "
                                                     "[0, 1] (a percentage? write 50% or 0.5)")]:
        with pytest.raises(GateError, match=re.escape(why)):
            validate([parse(text)], **names)


def test_gate_checks_are_no_part_of_what_identifies_an_audit(fgsm_audit):
    plain = AuditConfig(model="builtin:mlp", data="sklearn:iris", device="cpu")
    gated = AuditConfig(model="builtin:mlp", data="sklearn:iris", device="cpu",
                        gate=["clean_accuracy.clean >= 0.9"])
    assert plain.to_dict() == gated.to_dict()
    assert memo.audit_key(plain) is not None
    assert memo.audit_key(plain) == memo.audit_key(gated)
    ungated = {k: v for k, v in fgsm_audit.result.items() if k != "gate"}
    assert fingerprint(ungated) == fingerprint(fgsm_audit.result)


def test_the_gate_table_is_validated_like_the_rest_of_the_config():
    cfg = from_mapping({"gate": {"checks": ["clean_accuracy.clean >= 90%"]}})
    assert cfg.gate == ["clean_accuracy.clean >= 90%"]
    for table, why in [({"check": []}, "unknown key 'check' in [gate]; known keys: checks"),
                       ({"checks": "a.b > 1"}, "gate.checks must be list"),
                       ({"checks": [1]}, "each entry of gate.checks must be str"),
                       ({"checks": ["a.b = 1"]}, "is malformed")]:
        with pytest.raises(ConfigError, match=re.escape(why)):
            from_mapping({"gate": table})


# -- JUnit XML ----------------------------------------------------------------------------

class Hostile(Attack):
    """Raises with markup and a control character in its message.

    Test attack.
    """

    name = "hostile"
    family = Family.EVASION
    needs = Access.LABELS

    def run(self, model, dataset, rng):
        raise RuntimeError('<b>&"boom"</b>\x1b[31m')


def test_junit_lists_each_check_and_each_error_cell_escaped(digits, digits_model, tmp_path):
    registry = make_registry(plugins={"hostile": plugin("hostile", Hostile)})
    result = gauntlet.audit(model=digits_model, data=digits, attacks=["hostile"],
                            defenses=["none"], samples=30, cache=False, registry=registry,
                            gate=["clean_accuracy.clean >= 0.1",
                                  "robust_accuracy.hostile >= 0.5"])
    verdicts = verdicts_of(result.result)
    assert [v.passed for v in verdicts] == [True, False]
    assert verdicts[1].message.startswith("no value: the cell failed: RuntimeError: <b>&")
    path = tmp_path / "junit.xml"
    junit(result.result, verdicts).write(path, encoding="utf-8", xml_declaration=True)
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "gauntlet"
    for element in (root, suite):
        assert (element.get("tests"), element.get("failures"), element.get("errors")) == \
            ("3", "1", "1")
    gate_cases = suite.findall("testcase[@classname='gauntlet.gate']")
    assert [c.get("name") for c in gate_cases] == [v.expression for v in verdicts]
    assert gate_cases[0].find("failure") is None
    assert gate_cases[1].find("failure").get("message") == verdicts[1].message
    (error_case,) = suite.findall("testcase[@classname='gauntlet.cells']")
    assert error_case.get("name") == "none / hostile"
    error = error_case.find("error")
    assert error.get("message") == 'RuntimeError: <b>&"boom"</b>\\x1b[31m'
    assert "Traceback" in error.text and "RuntimeError" in error.text


def test_junit_without_a_gate_or_errors_still_has_one_passing_testcase(fgsm_audit):
    root = junit(fgsm_audit.result, []).getroot()
    (case,) = root.iter("testcase")
    assert case.get("classname") == "gauntlet.audit" and len(case) == 0
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("1", "0", "0")


# -- the CLI ------------------------------------------------------------------------------

IRIS = ["--model", "builtin:mlp", "--data", "sklearn:iris", "--attacks", "fgsm",
        "--defenses", "none", "--samples", "30", "--no-progress", "--device", "cpu"]


def gauntlet_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in-process, through the same ``main`` the ``gauntlet`` script calls."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def gate_failures(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("gauntlet: gate failed: ")]


def test_a_failing_gate_exits_1_after_writing_everything_and_a_replay_is_gated_too(tmp_path):
    out = tmp_path / "out"
    args = [*IRIS, "--out", str(out), "--cache", str(tmp_path / "cache")]
    proc = gauntlet_cli("audit", *args, "--gate", "clean_accuracy.clean >= 0.1",
                        "--gate", "robust_accuracy.fgsm >= 0.99")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    saved = json.loads((out / "results.json").read_text())  # written, with the verdicts
    check_result(saved)
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()
    fgsm = [c for c in saved["cells"] if c["attack"] == "fgsm"]
    below = [c for c in fgsm if c["metrics"]["robust_accuracy"]["value"] < 0.99]
    assert below  # 30 iris rows under fgsm: no point keeps 99%
    lines = gate_failures(proc.stderr)
    assert len(lines) == len(below) == sum(not v["passed"] for v in saved["gate"])
    first = below[0]["metrics"]["robust_accuracy"]
    assert lines[0].startswith(f'gauntlet: gate failed: robust_accuracy.fgsm'
                               f'["{below[0]["attack_point"]}"] >= 0.99: got '
                               f'{first["value"] * 100:.1f}% [')
    assert lines[0].endswith(f"(n={first['n']})")
    assert "gate:" not in proc.stdout
    # The report shows the same verdicts, failed first, each check escaped as text.
    html = (out / "report.html").read_text()
    shown = re.findall(r'<tr data-passed="(yes|no)"><td><code>(.*?)</code>', html)
    assert [p for p, _ in shown] == sorted(("yes" if v["passed"] else "no")
                                           for v in saved["gate"])  # "no" first
    assert shown[0][1] == html_escape(saved["gate"][[v["passed"] for v in
                                                     saved["gate"]].index(False)]["expression"])

    # the same audit, another threshold: replayed from the cache, gated anew
    proc = gauntlet_cli("audit", *args, "--gate", "clean_accuracy.clean >= 0.1",
                        "--gate", "robust_accuracy.fgsm >= 0")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((out / "results.json").read_text())
    assert again["provenance"]["run"]["executor"] == "replayed"
    assert f"gate: {1 + len(fgsm)} checks passed" in proc.stdout
    assert not gate_failures(proc.stderr)
    assert all(v["passed"] for v in again["gate"]) and len(again["gate"]) == 1 + len(fgsm)


@pytest.mark.parametrize("gate, fragment", [
    ("no_such_metric.fgsm >= 0.5", "unknown metric 'no_such_metric'"),
    ("robust_accuracy.pgd >= 0.5", "attack 'pgd' is not in this audit"),
    ("robust_accuracy.fgsm >= 50", "outside robust_accuracy's range"),
    ("robust_accuracy.fgsm[eps=0.1] >= 0.5", "argument --gate: gate check"),
    # A typo in a point, or a metric the attack never produces, is known from the plan:
    # it must not cost a whole audit and then read as a regression (exit 1).
    ('robust_accuracy.fgsm["eps=0.15"] >= 0.5', 'fgsm runs no point "eps=0.15" (its points: '
                                                 '"eps=0.05", "eps=0.1"'),
    ("membership_auc.fgsm >= 0.5", "fgsm does not measure membership_auc (it measures: "),
])
def test_a_bad_gate_check_exits_2_with_one_line_before_anything_runs(tmp_path, gate, fragment):
    proc = gauntlet_cli("audit", *IRIS, "--out", str(tmp_path / "o"), "--no-cache",
                        "--gate", gate)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("gauntlet: error: ") and fragment in line
    assert line.endswith("(see gauntlet audit --help)")
    assert not (tmp_path / "o").exists()


def test_a_bad_gate_table_exits_2(tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text('[gate]\nchecks = ["clean_accuracy.clean >= 0.9"]\nfail = true\n')
    proc = gauntlet_cli("audit", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gauntlet: error: unknown key 'fail' in [gate]; known "
                                   "keys: checks")


FAILING_PLUGIN = """
import gauntlet
from gauntlet import Access, Attack, Family


class Explodes(Attack):
    \"\"\"Raises mid-attack.\"\"\"
    name = "explodes"
    family = Family.EVASION
    needs = Access.LABELS

    def run(self, model, dataset, rng):
        raise RuntimeError("kaboom <in> & plugin")


@gauntlet.hookimpl
def register_attacks(register):
    register(Explodes)
"""


def test_junit_and_fail_on_error_from_the_cli(tmp_path):
    """In a fresh interpreter, with a distribution installed whose attack raises: exit 1
    for the error cell (--fail-on-error) and for the failing check, and a JUnit file."""
    site = tmp_path / "site"
    (site / "gauntlet_explodes-1.0.dist-info").mkdir(parents=True)
    (site / "explodes_plugin.py").write_text(FAILING_PLUGIN)
    (site / "gauntlet_explodes-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gauntlet-explodes\nVersion: 1.0\n")
    (site / "gauntlet_explodes-1.0.dist-info" / "entry_points.txt").write_text(
        "[gauntlet]\nexplodes = explodes_plugin\n")
    cfg = tmp_path / "audit.toml"
    cfg.write_text('[attacks.explodes]\n[attacks.noise]\neps = 0.1\n'
                   '[gate]\nchecks = ["clean_accuracy.clean >= 0.1"]\n')
    report = tmp_path / "ci" / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "gauntlet", "audit", str(cfg), "--model", "builtin:mlp",
         "--data", "sklearn:iris", "--defenses", "none", "--samples", "20",
         "--no-progress", "--out", str(tmp_path / "o"), "--fail-on-error",
         "--gate", "robust_accuracy.explodes >= 0.5", "--gate", "robust_accuracy.noise > 0",
         "--junit", str(report)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "failing (--fail-on-error): 1 error cells" in proc.stderr
    (line,) = gate_failures(proc.stderr)
    assert line == ("gauntlet: gate failed: robust_accuracy.explodes >= 0.5: no value: the "
                    "cell failed: RuntimeError: kaboom <in> & plugin")
    assert f"junit: {report}" in proc.stdout
    root = ET.parse(report).getroot()
    cases = list(root.iter("testcase"))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("gauntlet.gate", "clean_accuracy.clean >= 0.1"),
        ("gauntlet.gate", "robust_accuracy.explodes >= 0.5"),
        ("gauntlet.gate", "robust_accuracy.noise > 0"),
        ("gauntlet.cells", "none / explodes")]
    assert cases[3].find("error").get("message") == "RuntimeError: kaboom <in> & plugin"
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    check_result(saved)
    assert [v["passed"] for v in saved["gate"]] == [True, False, True]


# -- the README ---------------------------------------------------------------------------

def readme_section() -> str:
    return README.split("### Gate an audit in CI", 1)[1].split("\n## ", 1)[0]


def test_the_readme_gate_table_is_a_valid_config():
    from gauntlet.config import tomllib

    toml = re.search(r"```toml\n(.*?)```", readme_section(), re.S).group(1)
    cfg = from_mapping(tomllib.loads(toml))
    assert len(cfg.gate) == 4


def test_the_readme_workflow_parses_and_its_command_line_is_accepted():
    text = re.search(r"```yaml\n(.*?)```", readme_section(), re.S).group(1)
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(text)
    assert workflow.get("on", workflow.get(True)) == "push"  # YAML 1.1 reads `on` as true
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    (audit,) = [s for s in steps if "gauntlet audit" in s.get("run", "")]
    argv = shlex.split(audit["run"])
    assert argv[:2] == ["gauntlet", "audit"]
    args = _parser().parse_args(argv[1:])
    assert args.command == "audit" and len(args.gate) == 2
    for check in args.gate:
        parse(check)
    uploads = [s for s in steps if s.get("uses") == "actions/upload-artifact@v4"]
    (junit_step,) = [s for s in steps if s.get("uses", "").startswith(
        "mikepenz/action-junit-report@")]
    assert uploads and all(s["if"] == "always()" for s in uploads + [junit_step])
    assert uploads[0]["with"]["path"].rstrip("/") == args.out
    assert junit_step["with"]["report_paths"] == args.junit
