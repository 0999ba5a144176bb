"""The ``gauntlet`` command: ``audit``, ``plugins``, ``describe``, ``scan``, ``report`` and
``diff``.

Exit codes: 0 done (``scan``: safe to load); 1 ``audit --fail-on-error`` found an error
cell, a failed metric or a broken plugin, or an ``audit`` gate check failed (``--gate``,
the config's ``[gate]``; each failure one line on stderr), always after the report is
written (``scan``: the file is refused); 2 bad input (a GauntletError, a malformed gate
check or one naming a metric, attack or defense the audit lacks), as one line on stderr,
never a traceback; 130 interrupted, keeping the cells already finished. ``diff`` exits
0 when version B did not change significantly, 1 when it changed (or a backdoor is
suspected), 2 for bad input.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gauntlet.errors import ConfigError, GauntletError

log = logging.getLogger("gauntlet")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors are bad input too: exit 2, one clear line (the
        # usage block it would print first is ten lines of every flag).
        print(f"gauntlet: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    import gauntlet

    p = _Parser(prog="gauntlet", description="Audit a machine-learning model against "
                "attacks and defenses; write an HTML report with JSON and CSV results.")
    p.add_argument("--version", action="version", version=f"gauntlet {gauntlet.__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    # -v is also accepted after the command (gauntlet audit -v); SUPPRESS keeps a
    # subcommand that was not given -v from resetting one given before it.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log what happens")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = sub.add_parser("audit", parents=[verbose],
                       help="run an audit (no arguments: the embedded digits demo)")
    a.add_argument("config", nargs="?", help="audit TOML file (default: the built-in demo)")
    a.add_argument("--model", help="builtin:cnn, builtin:mlp, or a model file")
    a.add_argument("--arch", help="package.module:factory for a state_dict/safetensors file")
    a.add_argument("--data", help="sklearn:digits (or another scikit-learn set), idx:DIR, "
                   "npz:FILE or csv:FILE")
    a.add_argument("--attacks", help="comma-separated attack names (default: all)")
    a.add_argument("--defenses", help="comma-separated defense names (default: all)")
    a.add_argument("--out", help="output folder (default: gauntlet-report)")
    a.add_argument("--seed", type=int, help="random seed (same seed, same numbers)")
    a.add_argument("--samples", type=int, help="test rows evaluated per cell (0 = all)")
    a.add_argument("--timeout", type=float,
                   help="seconds a cell may run before it is recorded as an error (0 = none)")
    a.add_argument("--resamples", type=int, metavar="K",
                   help="each metric's spread over K bootstrap resamples of its rows "
                        "(no attack re-runs; 0 = none; gauntlet diff pairs them)")
    a.add_argument("--resume", action="store_true",
                   help="(the default now) finished cells come from the content cache")
    a.add_argument("--executor", choices=("serial", "process", "ray"),
                   help="where cells run: here one after another (default), a pool of "
                   "worker processes, or Ray")
    a.add_argument("--workers", type=int, help="process or Ray workers (0 = one per core)")
    a.add_argument("--ray-address", help="a Ray cluster to run on (default: a local one)")
    a.add_argument("--worker-memory", type=int, metavar="MIB",
                   help="memory each process worker may allocate (0 = no limit)")
    a.add_argument("--cache", metavar="DIR",
                   help="content cache folder (default: the user cache, ~/.cache/gauntlet)")
    a.add_argument("--no-cache", action="store_true",
                   help="neither reuse nor store finished cells and trained models")
    a.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where the model computes (default auto: CUDA when present)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.add_argument("--fail-on-error", action="store_true",
                   help="exit 1 (after writing the report) if a cell or a metric failed or "
                   "a plugin is broken")
    a.add_argument("--gate", action="append", type=_gate_check, metavar="CHECK",
                   help="exit 1 (after writing the report) unless the results pass CHECK, "
                   "e.g. 'robust_accuracy.fgsm[\"eps=0.1\"] >= 0.5': "
                   "METRIC.ATTACK[\"POINT\"]@DEFENSE OP NUMBER, OP one of >= <= > <, NUMBER "
                   "0.5 or 50%%; no POINT: every point; DEFENSE defaults to none. Repeatable; "
                   "added to the config's [gate] checks")
    a.add_argument("--junit", metavar="FILE",
                   help="write a JUnit XML file for CI: a testcase per gate check and per "
                   "error cell")

    pl = sub.add_parser("plugins", parents=[verbose],
                        help="list installed plugins and what each provides")
    pl.add_argument("--json", action="store_true", help="print a JSON list")

    d = sub.add_parser("describe", parents=[verbose],
                       help="describe one attack, defense, metric or plugin: what it does, "
                       "where it comes from, its parameters and the access it needs")
    d.add_argument("name", help="e.g. fgsm, input-noise, robust_accuracy, torch_models")
    d.add_argument("--kind", choices=("attack", "defense", "metric", "plugin"),
                   help="which kind, where one name is taken by two")
    d.add_argument("--json", action="store_true", help="print it as JSON")

    sc = sub.add_parser("scan", parents=[verbose],
                        help="say what a model file is and would do, without "
                        "running it (exit 0 safe to load, 1 refused, 2 unreadable)")
    sc.add_argument("file", help="a model file (TorchScript, .pt2, .pt, .safetensors, ...)")
    sc.add_argument("--json", action="store_true", help="print the scan as JSON")

    r = sub.add_parser("report", parents=[verbose],
                       help="re-render report.html from a results.json")
    r.add_argument("results", help="results.json written by an audit")
    r.add_argument("--out", help="HTML file to write (default: beside results.json)")

    df = sub.add_parser("diff", parents=[verbose],
                        help="did version B of a model change beyond sampling noise? "
                        "(exit 0 no significant change, 1 changed, 2 bad input)")
    df.add_argument("a", help="the old version's audit: its output folder or results.json")
    df.add_argument("b", help="the new version's audit, on the same data and plan")
    df.add_argument("--out", help="folder for diff.html and diff.json "
                    "(default: gauntlet-diff)")
    df.add_argument("--json", action="store_true",
                    help="print the diff as JSON instead of text")
    df.add_argument("--top", type=int, default=10, metavar="N",
                    help="changes listed in the text (default 10)")
    return p


def _gate_check(text: str) -> str:
    """``--gate``'s type: a malformed check is argparse's usage error."""
    from gauntlet.gate import GateError, parse

    try:
        parse(text)
    except GateError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_audit(args: argparse.Namespace) -> int:
    from gauntlet import config as config_mod
    from gauntlet import gate as gate_mod
    from gauntlet.api import audit

    if args.config:
        cfg = config_mod.load(args.config)
    elif args.model is None and args.data is None:
        cfg = config_mod.demo()
    else:
        cfg = config_mod.AuditConfig()
    cfg = config_mod.override(cfg, model=args.model, data=args.data, attacks=args.attacks,
                              defenses=args.defenses, out=args.out, seed=args.seed,
                              samples=args.samples, timeout=args.timeout,
                              resamples=args.resamples, executor=args.executor,
                              workers=args.workers, ray_address=args.ray_address,
                              worker_memory=args.worker_memory,
                              cache=False if args.no_cache else args.cache,
                              device=args.device, gate=args.gate)
    if args.no_cache and args.cache:
        raise ConfigError("--cache and --no-cache contradict each other")
    if args.arch:
        cfg.model_options["arch"] = args.arch
    progress = not args.no_progress
    if progress and not args.verbose:
        # Stage messages (loading, training) while the progress bar is not up yet.
        logging.getLogger("gauntlet").setLevel(logging.INFO)
    result = audit(config=cfg, progress=progress, out=cfg.out, resume=args.resume)
    counts = {s: sum(c["status"] == s for c in result.cells)
              for s in ("ok", "not_applicable", "error")}
    lost = sum(len(c.get("metric_errors") or {}) for c in result.cells)
    broken = len(result.result["provenance"].get("broken_plugins", []))
    out = Path(cfg.out)
    # Each failure was logged once as it happened; the summary only counts them.
    print(f"audited {cfg.model} on {cfg.data}: {len(result.cells)} cells "
          f"({counts['ok']} ok, {counts['not_applicable']} not applicable, "
          f"{counts['error']} errors" + (f", {lost} metric values lost" if lost else "")
          + (f", {broken} broken plugins" if broken else "") + ")")
    print(f"report: {out / 'report.html'}\nresults: {out / 'results.json'}, "
          f"{out / 'results.csv'}")
    code = 0
    if args.fail_on_error and (counts["error"] or lost or broken):
        print(f"gauntlet: failing (--fail-on-error): {counts['error']} error cells, "
              f"{lost} failed metric values, {broken} broken plugins", file=sys.stderr)
        code = 1
    verdicts = gate_mod.verdicts_of(result.result)
    failed = [v for v in verdicts if not v.passed]
    for verdict in failed:
        print(f"gauntlet: gate failed: {verdict.line()}", file=sys.stderr)
    if verdicts and not failed:
        print(f"gate: {len(verdicts)} check{'s' * (len(verdicts) != 1)} passed")
    if args.junit:
        print(f"junit: {gate_mod.write_junit(args.junit, result.result, verdicts)}")
    return 1 if failed else code


def cmd_plugins(args: argparse.Namespace) -> int:
    from gauntlet.registry import make_registry

    rows = make_registry().describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [(row["kind"], row["name"], row["group"],
              f"{row['distribution']} {row['version']}".strip(),
              f"UNAVAILABLE: {row['unavailable']}" if row.get("unavailable")
              else ("(opt-in: runs when an audit names it) "
                    if row.get("in_default_audit") is False else "") + row["description"])
             for row in rows]
    header = ("KIND", "NAME", "FAMILY/STAGE", "FROM", "DESCRIPTION")
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(4)]
    for line in [header, *table]:
        print(" ".join(f"{str(v):<{w}}" for v, w in zip(line, widths)) + f" {line[4]}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from gauntlet.registry import make_registry

    info = make_registry().details(args.name, args.kind)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


_ACCESS = {"labels": "labels only (a black box answering with its predicted class)",
           "scores": "scores (the probability vector)",
           "gradients": "gradients (a white box)"}


def format_description(info: dict[str, Any]) -> str:
    """``gauntlet describe``'s output for a terminal, from Registry.details()."""
    kind = info["kind"]
    where = {"attack": f"attack, family {info.get('family')}",
             "defense": f"defense, stage {info.get('stage')}",
             "metric": "metric, " + ("higher" if info.get("higher_is_better") else "lower")
             + " is better", "plugin": "plugin"}[kind]
    lines = [f"{info['name']} ({where})", ""]
    lines += [info["doc"] or info["description"] or "(no docstring)", ""]
    dist = f"{info['distribution']} {info['version']}".strip()
    facts = [("source", f"plugin {info['plugin']!r} from {dist}, module {info['module']}")]
    if kind == "attack":
        needs = _ACCESS.get(info["needs"], info["needs"])
        facts.append(("needs", needs))
        if info["needs_recipe"]:
            facts.append(("recipe", "needs a training recipe (it re-trains the model)"))
        facts.append(("outcome", info["outcome"]))
    elif kind == "defense":
        facts += [("adaptive", "yes: attacks account for this defense" if info["adaptive"]
                   else "no: its robustness numbers are an upper bound"),
                  ("evaluation", info["evaluation"] or "(not stated)")]
    elif kind == "metric":
        bounds = info["bounds"]
        facts += [("title", info["title"]), ("applies to", ", ".join(info["applies_to"])),
                  ("bounds", f"[{bounds[0]:g}, {bounds[1]:g}]" if bounds else "unbounded"),
                  ("format", info["format"])]
    else:
        facts += [("hooks", ", ".join(info["hooks"]) or "none"),
                  ("provides", ", ".join(info["provides"]) or "nothing to register")]
        if info["error"]:
            facts.append(("BROKEN", info["error"]))
    if kind != "plugin":
        facts.append(("class", info["class"]))
    lines += [textwrap.fill(str(text), 88, initial_indent=f"{label + ':':<12}",
                            subsequent_indent=" " * 12) for label, text in facts]
    if "parameters" in info:
        lines += ["", "parameters:" if info["parameters"] else "parameters: none"]
        rows = [(p["name"], p["type"], _default_text(p), p["bounds"] or "-", p["help"])
                for p in info["parameters"]]
        header = ("NAME", "TYPE", "DEFAULT", "BOUNDS", "HELP")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        lines += ["  " + " ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + f" {r[4]}"
                  for r in ([header, *rows] if rows else [])]
    return "\n".join(lines)


def _default_text(p: dict[str, Any]) -> str:
    if p["sweep"]:
        return "sweep " + ", ".join(str(v) for v in p["default"])
    return str(p["default"])


def cmd_scan(args: argparse.Namespace) -> int:
    from gauntlet.intake import scan
    from gauntlet.registry import make_registry

    report = scan(make_registry(), args.file)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_scan(report.to_dict()))
    return 0 if report.safe else 1


def format_scan(report: dict[str, Any]) -> str:
    """A scan report as lines for a terminal."""
    refusals = sum(1 for f in report["findings"] if f["refused"])
    verdict = "safe to load" if report["safe"] else \
        f"REFUSED ({refusals} finding{'s' if refusals != 1 else ''}, below)"
    lines = [f"{report['path']}: {report['format']}, {report['size']:,} bytes",
             f"sha256:  {report['sha256']}", f"verdict: {verdict}"]
    refused = {f["what"] for f in report["findings"] if f["refused"]}
    for finding in report["findings"]:
        mark = "REFUSED" if finding["refused"] else "note"
        where = f" in {finding['where']}" if finding["where"] else ""
        why = f": {finding['why']}" if finding.get("why") else ""
        lines.append(f"  {mark}: {finding['what']}{where}{why}")
    inventory = report["inventory"]
    if "operators" in inventory:
        ops = inventory["operators"]
        sites = sum(ops.values())
        lines.append(f"operators: {len(ops)} distinct, {sites} call site{'s' * (sites != 1)}")
        lines += [f"  {name:<40} {count:>5}{'  REFUSED' if name in refused else ''}"
                  for name, count in ops.items()]
    if "globals" in inventory:
        lines.append(f"pickle globals: {len(inventory['globals'])}")
        lines += [f"  {g['module'] + '.' + g['name']:<56} {g['safety']}"
                  for g in inventory["globals"]]
    if "types" in inventory:
        lines.append(f"types: {len(inventory['types'])}")
        lines += [f"  {t}" for t in inventory["types"]]
    if "tensors" in inventory:
        lines.append(f"tensors: {len(inventory['tensors'])}")
        lines += [f"  {t['name']:<40} {t['dtype']:<10} {tuple(t['shape'])}"
                  for t in inventory["tensors"]]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from gauntlet.registry import make_registry
    from gauntlet.results import AuditResult

    path = Path(args.results)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"results file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a results.json: {exc}") from None
    if not isinstance(data, dict) or "cells" not in data:
        raise ConfigError(f"{path} is not a results.json written by gauntlet")
    from gauntlet.reports.html import write_report

    target = Path(args.out) if args.out else path.with_name("report.html")
    sections = AuditResult(data, make_registry()).sections()
    print(f"report: {write_report(data, target, sections)}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from gauntlet.diff import diff, text
    from gauntlet.reports.diff import write_diff

    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    found = diff(args.a, args.b)
    out = Path(args.out or "gauntlet-diff")
    data = found.to_dict()
    try:
        html = write_diff(found, out / "diff.html")
        (out / "diff.json").write_text(json.dumps(data, indent=1, allow_nan=False) + "\n",
                                       encoding="utf-8")
    except OSError as exc:  # exit 1 means "changed": a folder we cannot write is exit 2
        raise ConfigError(f"cannot write the diff to {out}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps(data, indent=1, allow_nan=False))
    else:
        print("\n".join(text(found, args.top)))
        print(f"report: {html}")
    return 1 if found.changed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="gauntlet: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"audit": cmd_audit, "plugins": cmd_plugins, "describe": cmd_describe,
               "report": cmd_report, "scan": cmd_scan, "diff": cmd_diff}
    try:
        return handler[args.command](args)
    except GauntletError as exc:
        from gauntlet.gate import GateError

        hint = f" (see gauntlet {args.command} --help)" if isinstance(exc, GateError) else ""
        print(f"gauntlet: error: {exc}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ("; finished cells are in cells.jsonl and the content cache (run the same "
                "audit again and they are reused)" if args.command == "audit" else "")
        print(f"gauntlet: interrupted{kept}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gauntlet scan m.pt | head`: the reader left; stop quietly with the status a Unix
        # tool killed by SIGPIPE has (128 + 13), never 1, which means "refused" for scan.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
