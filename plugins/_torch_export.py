"""Loading torch.export archives (.pt2) without letting them run code.

``torch.export.load`` is not safe on an untrusted file: it unpickles weight and constant
payloads with ``weights_only=False`` and ``pickle.loads``, falls back to
``weights_only=False`` for sample inputs, evals symbolic-shape strings through
``sympy.sympify``, and ``ExportedProgram.module()`` execs the archive's guard code; an
archive may also carry AOTInductor shared libraries. :func:`check_export_program` admits
an archive only if every member is on an allow-list, each of those paths is closed or
checked, and every operator its graph calls is on the allow-list of
:mod:`gauntlet.plugins._operators` (the one TorchScript archives are held to).
A helper of :mod:`gauntlet.plugins.torch_models`, not a plugin.
"""
from __future__ import annotations

import functools
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from gauntlet import ModelLoadError, ScanReport
from gauntlet.plugins._operators import (
    GraphCheck,
    base_name,
    note_operator,
    refuse,
)
from gauntlet.plugins._torchscript import zip_problem

# The torch.export archive allow-list. Everything torch.export.load could unpickle, eval or
# exec is either absent here or checked: pickled payloads, custom objects and AOTInductor
# shared libraries are refused; sample inputs must pass weights_only; symbolic shapes may
# only use sympy's constructors; guard code (exec'd by .module()) must be empty; graph
# nodes may only call operators on the allow-list of gauntlet.plugins._operators, and a few
# pure Python functions on sizes and torch's control-flow combinators.
_PT2_MEMBER = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|"
                         r"\.data/serialization_id|models/\w+\.json|data/sample_inputs/\w+\.pt|"
                         r"data/(weights|constants)/(\w+_(weights|constants)_config\.json|"
                         r"weight_\d+|tensor_\d+)|extra/[\w.-]+)")
_OPERATOR = re.compile(r"torch\.ops\.(\w+)\.(\w+)\.(\w+)")
_PYTHON_TARGET = re.compile(r"_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|"
                            r"abs|eq|ne|lt|le|gt|ge|and_|or_|not_)|"
                            r"torch\.ops\.higher_order\.(cond|while_loop|map_impl|"
                            r"wrap_with_set_grad_enabled|wrap_with_autocast)|torch\.sym_\w+|"
                            r"math\.\w+")
_EXPR_TOKEN = re.compile(r"\s+|\d{1,20}(\.\d{1,20})?(e[+-]?\d{1,3})?|'[\w.+-]{0,64}'|"
                         r"[A-Za-z_]\w*|\*\*|//|[-+*/%(),=<>!&|~]")
_EXPR_NAMES = {
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "true", "false",
    "True", "False", "oo", "zoo", "nan", "floor", "ceiling", "sqrt", "positive", "negative",
    "nonnegative", "nonpositive", "integer", "real", "finite", "precision", "FloorDiv",
    "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity",
}


class _Problem(Exception):
    """An archive-level reason to refuse (it stops the checks that depend on it)."""


def check_export_program(data: bytes) -> GraphCheck:
    """What a .pt2 archive's graph calls, and why (if) Gauntlet refuses to load it."""
    check = GraphCheck()
    try:
        _check_archive(zipfile.ZipFile(io.BytesIO(data)), check)
    except _Problem as why:
        check.problems.append(str(why))
    except Exception as exc:  # noqa: BLE001 - a malformed archive is refused, not loaded
        check.problems.append(f"it is malformed ({type(exc).__name__}: {exc})")
    return check


def _check_archive(zf: zipfile.ZipFile, check: GraphCheck) -> None:
    if (why := zip_problem(zf)) is not None:
        raise _Problem(why)
    members = {n.split("/", 1)[1]: n for n in zf.namelist()}
    for rel in members:
        if rel.startswith("data/aotinductor/"):
            raise _Problem("it holds AOTInductor-compiled native code, which Gauntlet never runs")
        if not _PT2_MEMBER.fullmatch(rel):
            raise _Problem(f"unexpected member {rel!r} (pickled or native payloads are refused)")
    for rel, name in members.items():
        if rel.endswith("_config.json"):
            for key, meta in json.loads(zf.read(name)).get("config", {}).items():
                if meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+",
                                                              str(meta.get("path_name"))):
                    raise _Problem(f"{key!r} is a pickled object, not a plain tensor")
        elif rel.startswith("data/sample_inputs/"):
            _check_weights_only(zf.read(name))
        elif rel.startswith("models/"):
            _check_program(json.loads(zf.read(name)), check)


def _check_weights_only(blob: bytes) -> None:
    import torch

    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything weights_only rejects, we reject
        raise _Problem("its sample inputs hold pickled Python objects") from None


def _check_program(doc: Any, check: GraphCheck) -> None:
    if doc.get("guards_code"):
        raise _Problem("it carries Python guard code, which loading would execute")
    stack: list[tuple[Any, str]] = [(doc, "the program")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            stack.extend((x, where) for x in item)
        elif isinstance(item, dict):
            if isinstance(item.get("target"), str):  # a graph node
                where = _node_where(item)
            for key, value in item.items():
                if not isinstance(value, str):
                    stack.append((value, where))
                elif key in ("target", "as_operator"):
                    _check_target(value, where, check)
                elif key == "expr_str" and not _safe_expr(value):
                    raise _Problem(f"symbolic expression {value[:80]!r} is not plain "
                                   "arithmetic (loading would eval it)")
                elif key == "name" and not re.fullmatch(r"[A-Za-z_]\w{0,200}", value):
                    raise _Problem(f"graph name {value[:80]!r} is not an identifier")


def _check_target(target: str, where: str, check: GraphCheck) -> None:
    """Count the operator a node calls; refuse it unless it is on the allow-list."""
    if (m := _OPERATOR.fullmatch(target)) is not None:
        note_operator(check, base_name(f"{m.group(1)}::{m.group(2)}"), where)
    elif _PYTHON_TARGET.fullmatch(target):
        check.operators[target] = check.operators.get(target, 0) + 1
    else:
        refuse(check, target[:80], where)


def _node_where(node: dict[str, Any]) -> str:
    """A graph node in the user's words: its name and the module (path, class) it ran in."""
    meta = node.get("metadata") or {}
    stack = str(meta.get("nn_module_stack") or "").rsplit(";", 1)[-1].split(",")
    where = f"node {str(node.get('name') or '?')[:80]!r}"
    if len(stack) >= 3:
        where += f" of {stack[1] or 'the root module'} ({stack[-1][:120]})"
    elif meta.get("stack_trace"):
        where += f" ({str(meta['stack_trace']).strip().splitlines()[-1].strip()[:160]})"
    return where


def _safe_expr(expr: str) -> bool:
    """True if sympy.sympify(expr) can only build sympy values: every name is a known sympy
    constructor or a shape-symbol name, and there is no attribute access or indexing."""
    if len(expr) > 2000:
        return False
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            return False
        tok = m.group()
        if (tok[0].isalpha() or tok[0] == "_") and tok not in _EXPR_NAMES \
                and not re.fullmatch(r"[a-z]{1,4}\d{1,9}", tok):
            return False
        pos = m.end()
    return True


def load_export(path: Path, data: bytes, report: ScanReport) -> Any:
    """The program in ``data``, which a passing intake scan (check_export_program) read."""
    import torch

    report.require_passed(data)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path} is not a loadable torch.export program: {exc}") from None
    users = [n for n in program.graph.nodes if n.op == "placeholder"
             and n.name in set(program.graph_signature.user_inputs)]
    if len(users) != 1:
        raise ModelLoadError(f"{path} takes {len(users)} inputs; Gauntlet needs a classifier "
                             "with one input batch")
    val = users[0].meta.get("val")
    batch = val.shape[0] if val is not None and isinstance(val.shape[0], int) else None
    return _exported_class()(program.module(), batch)


@functools.cache
def _exported_class() -> type:
    import torch

    class Exported(torch.nn.Module):
        """A torch.export program as a module: its train/eval mode was fixed at export time
        (the graph refuses .eval()), and it takes any batch size even when exported for one
        fixed batch (rows are then zero-padded into chunks of that size)."""

        def __init__(self, program: torch.nn.Module, batch: int | None) -> None:
            super().__init__()
            self.program = program
            self.batch = batch

        def train(self, mode: bool = True) -> Exported:
            self.training = mode
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = self.batch
            if b is None or len(x) == b:
                return self.program(x)  # type: ignore[no-any-return]
            pad = (-len(x)) % b
            xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
            return torch.cat([self.program(chunk) for chunk in xp.split(b)])[: len(x)]

    return Exported
