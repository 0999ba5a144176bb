"""Loading torch.export archives (.pt2) without letting them run code.

``torch.export.load`` is not safe on an untrusted file: it unpickles weight and constant
payloads with ``weights_only=False`` and ``pickle.loads``, falls back to
``weights_only=False`` for sample inputs, evals symbolic-shape strings through
``sympy.sympify``, and ``ExportedProgram.module()`` execs the archive's guard code; an
archive may also carry AOTInductor shared libraries. :func:`check_pt2` admits an archive
only if every member is on an allow-list and each of those paths is closed or checked.
A helper of :mod:`gauntlet.plugins.torch_models`, not a plugin.
"""
from __future__ import annotations

import functools
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gauntlet import ModelLoadError

# The torch.export archive allow-list. Everything torch.export.load could unpickle, eval or
# exec is either absent here or checked: pickled payloads, custom objects and AOTInductor
# shared libraries are refused; sample inputs must pass weights_only; symbolic shapes may
# only use sympy's constructors; guard code (exec'd by .module()) must be empty; graph
# nodes may only call aten/prims operators and a few pure operator-module functions.
_PT2_MEMBER = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|"
                         r"\.data/serialization_id|models/\w+\.json|data/sample_inputs/\w+\.pt|"
                         r"data/(weights|constants)/(\w+_(weights|constants)_config\.json|"
                         r"weight_\d+|tensor_\d+)|extra/[\w.-]+)")
_OPS = re.compile(r"torch\.ops\.(aten|prims)\.(?!from_file\.)\w+\.\w+|"
                  r"_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|"
                  r"eq|ne|lt|le|gt|ge|and_|or_|not_)|"
                  r"torch\.ops\.higher_order\.(cond|while_loop|map_impl|"
                  r"wrap_with_set_grad_enabled|wrap_with_autocast)|torch\.sym_\w+|math\.\w+")
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


def check_pt2(path: Path, data: bytes) -> None:
    """Raise ModelLoadError unless torch.export.load would only read data from ``data``."""
    def refuse(why: str) -> ModelLoadError:
        return ModelLoadError(f"{path} is a torch.export archive that Gauntlet will not load: "
                              f"{why}")

    try:
        _check_archive(zipfile.ZipFile(io.BytesIO(data)), refuse)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed archive is refused, not loaded
        raise refuse(f"it is malformed ({type(exc).__name__}: {exc})") from None


def _check_archive(zf: zipfile.ZipFile, refuse: Callable[[str], ModelLoadError]) -> None:
    names = zf.namelist()
    roots = {n.split("/", 1)[0] for n in names}
    # torch's zip reader matches names case-insensitively and reads one root folder, so a
    # second root or a near-duplicate name could show it other bytes than were checked here.
    if len(roots) != 1 or len({n.lower() for n in names}) != len(names):
        raise refuse("its zip layout is ambiguous (several roots or duplicate names)")
    members = {n.split("/", 1)[1]: n for n in names if "/" in n}
    for rel in members:
        if rel.startswith("data/aotinductor/"):
            raise refuse("it holds AOTInductor-compiled native code, which Gauntlet never runs")
        if not _PT2_MEMBER.fullmatch(rel):
            raise refuse(f"unexpected member {rel!r} (pickled or native payloads are refused)")
    for rel, name in members.items():
        if rel.endswith("_config.json"):
            for key, meta in json.loads(zf.read(name)).get("config", {}).items():
                if meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+",
                                                              str(meta.get("path_name"))):
                    raise refuse(f"{key!r} is a pickled object, not a plain tensor")
        elif rel.startswith("data/sample_inputs/"):
            _check_weights_only(zf.read(name), refuse)
        elif rel.startswith("models/"):
            _check_program(json.loads(zf.read(name)), refuse)


def _check_weights_only(blob: bytes, refuse: Callable[[str], ModelLoadError]) -> None:
    import torch

    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything weights_only rejects, we reject
        raise refuse("its sample inputs hold pickled Python objects") from None


def _check_program(doc: Any, refuse: Callable[[str], ModelLoadError]) -> None:
    if doc.get("guards_code"):
        raise refuse("it carries Python guard code, which loading would execute")
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if key in ("target", "as_operator") and not _OPS.fullmatch(value):
                        raise refuse(f"its graph calls {value[:80]!r}, which is not a "
                                     "tensor operator")
                    if key == "expr_str" and not _safe_expr(value):
                        raise refuse(f"symbolic expression {value[:80]!r} is not plain "
                                     "arithmetic (loading would eval it)")
                    if key == "name" and not re.fullmatch(r"[A-Za-z_]\w{0,200}", value):
                        raise refuse(f"graph name {value[:80]!r} is not an identifier")
                else:
                    stack.append(value)


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


def load_export(path: Path, data: bytes) -> Any:
    import torch

    check_pt2(path, data)
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
