"""Checking a TorchScript archive from its bytes, before ``torch.jit.load`` sees it.

``torch.jit.load`` is not inert: it compiles the archive's serialized code, unpickles
``data.pkl`` and ``constants.pkl`` with TorchScript's restricted unpickler, and runs the
scripted ``__setstate__`` of every object whose class defines one. The code can call any
registered operator, among them ``aten::from_file`` (read, or with ``shared=True``
overwrite, any file), custom operators and custom classes (native code outside PyTorch),
``print`` and ``fork``. So :func:`check_torchscript` reads the code and the pickles
without loading them and admits an archive only if every operator any of its code can
reach is on the allow-list of :mod:`gauntlet.plugins._operators`. It fails closed: code
that does not parse, or a construct it cannot classify, is refused.

Names resolve the way TorchScript's SourceImporter resolves them: ``torch.X`` and
``torch.autograd.X`` are ``aten::X``, ``ops.NS.X`` is ``NS::X``, Python builtins are the
operators TorchScript binds them to, ``__torch__.…`` are the archive's own classes and
functions (whose bodies are checked too), and a method call ``v.name(...)`` on a value is
``aten::name`` whenever that operator exists (``t.save(path)`` is ``aten::save``). A scan
of the raw text backs the parse up, in case TorchScript's lexer and Python's disagree.
A helper of :mod:`gauntlet.plugins.torch_models`, not a plugin.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import pickletools
import re
import zipfile
from collections import deque

from gauntlet.plugins._operators import (
    NAMESPACES,
    is_allowed,
    registered_operators,
    why_refused,
)


@dataclasses.dataclass
class GraphCheck:
    """What a model archive's code can call, and why (if) Gauntlet refuses it."""

    operators: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.refused and not self.problems


def first_reason(check: GraphCheck) -> str:
    """One line for an error message: the first problem, else the first refusal."""
    if check.problems:
        return check.problems[0]
    what, where = check.refused[0]
    why = f" ({why_refused(what)})" if "::" in what else ""
    return f"{what}{why} in {where}"


def note_operator(check: GraphCheck, op: str, where: str) -> None:
    check.operators[op] = check.operators.get(op, 0) + 1
    if not is_allowed(op):
        refuse(check, op, where)


def refuse(check: GraphCheck, what: str, where: str) -> None:
    if (what, where) not in check.refused:
        check.refused.append((what, where))


def zip_problem(zf: zipfile.ZipFile) -> str | None:
    """Why torch's zip reader might be shown other bytes than a check reads, if it might."""
    names = zf.namelist()
    roots = {n.split("/", 1)[0] for n in names}
    # torch's reader takes the archive's name from the first entry and matches member names
    # case-insensitively: a second root or a near-duplicate name could hide a member.
    if len(roots) != 1 or len({n.lower() for n in names}) != len(names) or any(
            "/" not in n or "\\" in n or "\0" in n for n in names):
        return "its zip layout is ambiguous (several roots or duplicate names)"
    return None


# The TorchScript archive layout (torch.jit.save, trace, _save_for_lite_interpreter).
_MEMBER = re.compile(r"code/__torch__(/[A-Za-z_]\w*)*\.py(\.debug_pkl)?|"
                     r"(data|constants|traced_inputs|bytecode)\.pkl|"
                     r"(data|constants|traced_inputs)/\d+|\.data/(version|serialization_id)|"
                     r"version|byteorder|extra/[\w.-]+")
# Pickle globals TorchScript's own pickler writes besides the archive's classes.
_REBUILD = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
            ("torch", "device"), ("builtins", "complex")} | {
    ("torch.jit._pickle", f"build_{kind}") for kind in (
        "intlist", "tensorlist", "doublelist", "boollist", "tensor_from_id")} | {
    ("torch.jit._pickle", "restore_type_tag")}
_CUSTOM_CLASSES = "__torch__.torch.classes"
_MAX_MEMBER = 64 << 20  # code and pickles are small; this stops a zip bomb

# What TorchScript binds bare names to: SourceImporter's environment and the compiler's
# Python builtins (frontend/ir_emitter.cpp).
_BUILTINS = {
    "annotate": "prim::annotate", "unchecked_cast": "prim::unchecked_cast",
    "uninitialized": "prim::Uninitialized", "fork": "prim::fork",
    "awaitable": "prim::awaitable", "print": "prim::Print", "tuple": "prim::TupleConstruct",
    "float": "aten::Float", "complex": "aten::Complex", "int": "aten::Int",
    "bool": "aten::Bool", "str": "aten::str", "getattr": "prim::GetAttr",
    "hasattr": "prim::HasAttr", "isinstance": "prim::isinstance",
    "_to_tensor": "prim::NumToTensor", "len": "aten::len", "hex": "aten::hex",
    "oct": "aten::oct", "round": "aten::round", "hash": "aten::hash", "id": "prim::id",
    "min": "prim::min", "max": "prim::max", "abs": "prim::abs", "all": "aten::all",
    "any": "aten::any", "divmod": "aten::divmod", "sum": "aten::sum", "list": "prim::list",
    "dict": "prim::dict", "ord": "aten::ord", "chr": "aten::chr", "bin": "aten::bin",
    "pow": "aten::pow", "range": "prim::range", "zip": "prim::zip",
    "enumerate": "prim::enumerate", "rangelist": "prim::rangelist",
    "sorted": "aten::sorted", "AssertionError": "prim::RaiseException",
}
_TYPES = {"Tensor", "int", "float", "bool", "str", "complex", "NoneType", "Any", "Device",
          "number", "Layout", "ScalarType", "MemoryFormat", "QScheme", "Generator", "SymInt",
          "SymFloat", "SymBool"}
_GENERICS = {"List", "Dict", "Tuple", "Optional", "Union", "Final"}
_BASES = {"Module", "Enum", "ModuleInterface", "Interface", "NamedTuple"}

# The raw-text scan: a dot may have whitespace and line continuations around it. Each
# pattern's groups give the operator it would reach.
_DOT = r"[\s\\]*\.[\s\\]*"
_RAW = [(re.compile(rf"(?<![\w.])torch(?:{_DOT}autograd)*{_DOT}(\w+)"), "aten::{0}"),
        (re.compile(rf"(?<![\w.])ops{_DOT}(\w+){_DOT}autograd(?:{_DOT}autograd)*{_DOT}(\w+)"),
         "aten::{1}"),
        (re.compile(rf"(?<![\w.])ops{_DOT}(\w+){_DOT}(\w+)"), "{0}::{1}"),
        (re.compile(rf"{_DOT}(\w+)[\s\\]*\("), "aten::{0}"),
        (re.compile(rf"{_DOT}(\w+)[\s\\]*\("), "prim::{0}"),
        (re.compile(r"\b(?:getattr|hasattr)\s*\([^,]*,\s*[\"'](\w+)[\"']"), "aten::{0}"),
        (re.compile(r"(?<![\w.])(print|fork|awaitable|id)[\s\\]*\("), "builtin:{0}"),
        (re.compile(rf"torch{_DOT}(classes)\b"), "custom:{0}")]


@dataclasses.dataclass
class _Class:
    name: str
    file: str
    methods: dict[str, ast.FunctionDef] = dataclasses.field(default_factory=dict)
    attrs: dict[str, ast.expr | None] = dataclasses.field(default_factory=dict)


def check_torchscript(data: bytes) -> GraphCheck:
    """Everything the archive's code can call, without running or unpickling any of it."""
    check = GraphCheck()
    try:
        if not data.startswith(b"PK\x03\x04"):
            raise ValueError("not a zip archive")
        _Archive(zipfile.ZipFile(io.BytesIO(data)), check).run()
    except Exception as exc:  # noqa: BLE001 - a malformed archive is refused, not loaded
        check.problems.append(f"it is malformed ({type(exc).__name__}: {exc})")
    return check


class _Archive:
    def __init__(self, zf: zipfile.ZipFile, check: GraphCheck) -> None:
        self.zf, self.check = zf, check
        self.classes: dict[str, _Class] = {}
        self.functions: dict[str, tuple[ast.FunctionDef, str]] = {}
        self.texts: dict[str, str] = {}
        self.root: str | None = None
        self.paths: dict[str, list[str]] = {}

    def problem(self, why: str) -> None:
        self.check.problems.append(why)

    def run(self) -> None:
        if (why := zip_problem(self.zf)) is not None:
            return self.problem(why)
        members = {i.filename.split("/", 1)[1]: i for i in self.zf.infolist()}
        trees: dict[str, ast.Module] = {}
        for rel, info in members.items():
            if not _MEMBER.fullmatch(rel):
                self.problem(f"unexpected member {rel!r} (native code or other payloads are "
                             "not part of a TorchScript archive)")
            elif rel.endswith((".py", "pkl")) and info.file_size > _MAX_MEMBER:
                self.problem(f"member {rel!r} is implausibly large")
            elif rel.endswith(".py"):
                try:
                    # Decoding first ignores any PEP 263 coding line, which TorchScript's
                    # lexer does not honour either.
                    self.texts[rel] = self.zf.read(info).decode("utf-8")
                    trees[rel] = ast.parse(self.texts[rel], filename=rel)
                except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
                    self.problem(f"code member {rel!r} does not parse ({exc})")
        if "data.pkl" not in members:
            self.problem("it has no data.pkl, so it is not a TorchScript module")
        for rel, tree in trees.items():
            self.collect(rel, tree)
        for rel, info in members.items():
            if rel.endswith("pkl") and _MEMBER.fullmatch(rel) and info.file_size <= _MAX_MEMBER:
                self.pickle(rel, self.zf.read(info))
        self.tree()
        for cls in self.classes.values():
            for attr, ann in cls.attrs.items():
                if ann is not None:
                    _Function(self, f"attribute {attr!r} of class {cls.name}").type(ann)
            for name, fn in cls.methods.items():
                _Function(self, self.where(cls.name, name), cls).run(fn)
        for qual, (fn, _) in self.functions.items():
            _Function(self, f"function {qual}").run(fn)
        for rel, text in self.texts.items():
            self.raw(rel, text)

    # -- the archive's definitions -------------------------------------------------------
    def collect(self, rel: str, tree: ast.Module) -> None:
        module = rel[len("code/"):-len(".py")].replace("/", ".")
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.decorator_list and not node.keywords \
                    and all(isinstance(b, ast.Name) and b.id in _BASES for b in node.bases):
                qual = self.define(f"{module}.{node.name}", rel, node)
                cls = self.classes[qual] = _Class(qual, rel)
                for stmt in node.body:
                    self.member(cls, stmt)
            elif isinstance(node, ast.FunctionDef) and not node.decorator_list:
                self.functions[self.define(f"{module}.{node.name}", rel, node)] = (node, rel)
            elif not (isinstance(node, ast.Assign) and _names(node.targets) == ["op_version_set"]
                      and _literal(node.value)):
                self.problem(f"{rel} line {node.lineno}: unexpected {type(node).__name__} "
                             "at module level")

    def define(self, qual: str, rel: str, node: ast.stmt) -> str:
        # TorchScript and this check might each pick a different one of two same-named
        # definitions, so there must be only one.
        if qual in self.classes or qual in self.functions:
            self.problem(f"{rel} line {node.lineno}: {qual} is defined twice")
        return qual

    def member(self, cls: _Class, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.FunctionDef) and not stmt.decorator_list:
            if stmt.name in cls.methods:
                self.problem(f"{cls.file} line {stmt.lineno}: {cls.name}.{stmt.name} is "
                             "defined twice")
            cls.methods[stmt.name] = stmt
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and (
                stmt.value is None or _literal(stmt.value)):
            cls.attrs[stmt.target.id] = stmt.annotation
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and _literal(stmt.value) \
                and isinstance(stmt.targets[0], ast.Name):
            cls.attrs[stmt.targets[0].id] = None  # __parameters__, an enum member, ...
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(key := stmt.targets[0], ast.Subscript) \
                and _names([key.value]) == ["__annotations__"] \
                and isinstance(key.slice, ast.Constant) and isinstance(key.slice.value, str):
            cls.attrs[key.slice.value] = stmt.value  # submodules named "0", "1", ...
        elif not isinstance(stmt, ast.Pass):
            self.problem(f"{cls.file} line {stmt.lineno}: unexpected {type(stmt).__name__} "
                         f"in class {cls.name}")

    def pickle(self, rel: str, blob: bytes) -> None:
        from picklescan.scanner import scan_pickle_bytes

        scan = scan_pickle_bytes(io.BytesIO(blob), rel, multiple_pickles=False)
        if scan.scan_err:
            return self.problem(f"{rel} is not a readable pickle")
        # Native custom classes first: they are the reason worth naming.
        for g in sorted(scan.globals, key=lambda g: not g.module.startswith(_CUSTOM_CLASSES)):
            name = f"{g.module}.{g.name}"
            if name.startswith(_CUSTOM_CLASSES):
                self.problem(f"{rel} builds {name}, a native custom class whose C++ code "
                             "runs while loading")
            elif not ((g.module, g.name) in _REBUILD or name in self.classes
                      or (g.module == "torch" and re.fullmatch(r"[A-Z][a-z]*Storage", g.name))):
                self.problem(f"{rel} names {name}, which is neither a class of the archive "
                             "nor one of TorchScript's tensor-rebuild helpers")
        for op, arg, _ in pickletools.genops(blob):
            if isinstance(arg, str) and _CUSTOM_CLASSES in arg and op.name != "GLOBAL":
                refuse(self.check, arg[:120], f"{rel} (a native custom class)")
            elif op.name == "GLOBAL" and rel == "data.pkl" and self.root is None:
                self.root = arg.replace(" ", ".")

    # -- where a finding is, in the user's words -----------------------------------------
    def tree(self) -> None:
        """Attribute paths from the root module to each class, from the attribute types."""
        held = {_dotted(a) for c in self.classes.values() for a in c.attrs.values() if a}
        roots = [self.root] if self.root in self.classes else [
            q for q in self.classes if q not in held and self.classes[q].methods.get("forward")]
        queue = deque((r, "") for r in roots[:1])
        while queue:
            qual, path = queue.popleft()
            if len(self.paths.setdefault(qual, [])) >= 20:
                continue
            self.paths[qual].append(path)
            for attr, ann in self.classes[qual].attrs.items():
                child = _dotted(ann) if ann is not None else None
                if child in self.classes and path.count(".") < 50:
                    queue.append((child, f"{path}.{attr}" if path else attr))

    def where(self, cls: str, method: str) -> str:
        paths = self.paths.get(cls)
        if not paths:
            text = f"`{method}` of class {cls}"
        else:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            text = f"`{method}` of {paths[0] or 'the root module'}{more} (class {cls})"
        if method == "__setstate__":
            text += ", which torch.jit.load would run while reading the archive"
        return text

    # -- the raw text, in case TorchScript's lexer sees code that Python's does not -------
    def raw(self, rel: str, text: str) -> None:
        found = {what for what, _ in self.check.refused}
        for pattern, template in _RAW:
            for m in pattern.finditer(text):
                what = template.format(*m.groups())
                if what.startswith("builtin:"):
                    what = _BUILTINS[m.group(1)]
                elif what.startswith("custom:"):
                    what = _CUSTOM_CLASSES
                elif what.split("::")[0] in NAMESPACES and (
                        what not in registered_operators() or is_allowed(what)):
                    continue
                if what not in found:
                    found.add(what)
                    line = text.count("\n", 0, m.start()) + 1
                    refuse(self.check, what, f"the text of {rel}, line {line}")


class _Function:
    """One function or method body, checked statement by statement."""

    def __init__(self, archive: _Archive, where: str, cls: _Class | None = None,
                 outer: frozenset[str] = frozenset()) -> None:
        self.a, self.where, self.cls = archive, where, cls
        self.locals = set(outer)
        self.self_name: str | None = None

    def problem(self, node: ast.AST, what: str) -> None:
        self.a.problem(f"{what} at line {getattr(node, 'lineno', '?')} in {self.where}")

    def run(self, fn: ast.FunctionDef) -> None:
        args = fn.args
        if args.vararg or args.kwarg or args.posonlyargs:
            return self.problem(fn, "*args, **kwargs or positional-only arguments")
        params = args.args + args.kwonlyargs
        stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)
                  and not isinstance(n.ctx, ast.Load)}
        stored |= {n.name for n in ast.walk(fn) if isinstance(n, ast.FunctionDef)}
        self.locals |= stored | {p.arg for p in params}
        if self.cls is not None and params and params[0].arg not in stored:
            self.self_name = params[0].arg
        for p in params:
            if p.annotation is not None:
                self.type(p.annotation)
        for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.expr(d)
        if fn.returns is not None:
            self.type(fn.returns)
        self.block(fn.body)

    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.stmt(stmt)

    def stmt(self, s: ast.stmt) -> None:  # noqa: C901 - one case per statement kind
        if isinstance(s, ast.FunctionDef) and not s.decorator_list:
            _Function(self.a, self.where, None, frozenset(self.locals)).run(s)
        elif isinstance(s, ast.Assign):
            for t in s.targets:
                self.expr(t)
            self.expr(s.value)
        elif isinstance(s, (ast.AugAssign, ast.AnnAssign)):
            if isinstance(s, ast.AnnAssign):
                self.type(s.annotation)
            self.expr(s.target)
            if s.value is not None:
                self.expr(s.value)
        elif isinstance(s, (ast.Expr, ast.Return)):
            if s.value is not None:
                self.expr(s.value)
        elif isinstance(s, (ast.If, ast.While, ast.For)):
            for e in (s.test,) if not isinstance(s, ast.For) else (s.target, s.iter):
                self.expr(e)
            self.block(s.body + s.orelse)
        elif isinstance(s, ast.With):
            for item in s.items:
                self.expr(item.context_expr)
                if item.optional_vars is not None:
                    self.expr(item.optional_vars)
            self.block(s.body)
        elif isinstance(s, (ast.Assert, ast.Raise, ast.Delete)):
            for e in ast.iter_child_nodes(s):
                self.expr(e)  # type: ignore[arg-type]
        elif not isinstance(s, (ast.Pass, ast.Break, ast.Continue)):
            self.problem(s, f"unsupported statement {type(s).__name__}")

    def expr(self, e: ast.expr) -> tuple[str, str]:  # noqa: C901 - one case per node kind
        if isinstance(e, ast.Name):
            return self.name(e) if isinstance(e.ctx, ast.Load) else ("value", "")
        if isinstance(e, ast.Attribute):
            return self.attr(self.expr(e.value), e.attr, e, call=False)
        if isinstance(e, ast.Call):
            return self.call(e)
        if isinstance(e, ast.Dict) and None in e.keys:
            self.problem(e, "dict unpacking")
        elif isinstance(e, (ast.ListComp, ast.DictComp)):
            for gen in e.generators:
                if gen.is_async:
                    self.problem(e, "async comprehension")
                for sub in (gen.target, gen.iter, *gen.ifs):
                    self.expr(sub)
            for sub in ((e.elt,) if isinstance(e, ast.ListComp) else (e.key, e.value)):
                self.expr(sub)
            return ("value", "")
        elif not isinstance(e, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                                ast.IfExp, ast.Subscript, ast.Slice, ast.Tuple, ast.List,
                                ast.Dict, ast.Starred)):
            self.problem(e, f"unsupported expression {type(e).__name__}")
            return ("value", "")
        for child in ast.iter_child_nodes(e):
            if isinstance(child, ast.expr):
                self.expr(child)
        return ("value", "")

    def name(self, e: ast.Name) -> tuple[str, str]:
        n = e.id
        # Names TorchScript binds globally are resolved as such even where a local shadows
        # them: their resolution then over-approximates what the code can call.
        if n in _BUILTINS:
            self.op(_BUILTINS[n])
            return ("builtin", n)
        special = {"torch": ("ns", "aten"), "ops": ("ops", ""), "__torch__": ("tree", n),
                   "CONSTANTS": ("constants", "")}
        if n in special:
            return special[n]
        if n == self.self_name:
            return ("self", "")
        if n in self.locals or n in ("inf", "nan", "infj", "nanj"):
            return ("value", "")
        refuse(self.a.check, f"name {n!r}", f"{self.where} (not defined anywhere)")
        return ("value", "")

    def op(self, qualified: str) -> tuple[str, str]:
        note_operator(self.a.check, qualified, self.where)
        return ("op", qualified)

    def attr(self, base: tuple[str, str], name: str, node: ast.AST,
             call: bool) -> tuple[str, str]:
        kind, val = base
        if kind == "ns":  # torch, torch.autograd and ops.NS are TorchScript BuiltinModules
            return ("ns", "aten") if name == "autograd" else self.op(f"{val}::{name}")
        if kind == "ops":
            return ("ns", name)
        if kind == "constants" and re.fullmatch(r"c\d+", name):
            return ("value", "")
        if kind in ("tree", "class"):
            qual = f"{val}.{name}"
            cls = self.a.classes.get(val)
            if qual.startswith(_CUSTOM_CLASSES):
                refuse(self.a.check, qual, f"{self.where} (a native custom class)")
            elif cls is not None and (name == "__new__" or name in cls.methods
                                      or name in cls.attrs):
                return ("value", "")
            elif kind == "tree" and qual in self.a.classes:
                return ("class", qual)
            elif kind == "tree" and qual in self.a.functions:
                return ("function", qual)
            elif kind == "tree" and any(k.startswith(qual + ".") for k in
                                        (*self.a.classes, *self.a.functions)):
                return ("tree", qual)
            else:
                refuse(self.a.check, qual, f"{self.where} (not defined in the archive)")
            return ("value", "")
        if kind == "self" and self.cls is not None and (name in self.cls.methods
                                                          or name in self.cls.attrs):
            return ("value", "")
        if kind in ("value", "self"):
            # TorchScript resolves v.name to the builtin operator aten::name when one exists
            # (t.save(path) is aten::save), so such a name must be allowed, whatever v is.
            for ns in ("aten", "prim"):
                if f"{ns}::{name}" in registered_operators():
                    return self.op(f"{ns}::{name}")
            if call and not any(name in c.methods for c in self.a.classes.values()):
                refuse(self.a.check, f"method .{name}()",
                       f"{self.where} (neither an operator nor a method of the archive)")
            return ("value", "")
        self.problem(node, f"attribute .{name} of {kind} {val}")
        return ("value", "")

    def call(self, e: ast.Call) -> tuple[str, str]:
        f = e.func
        ref = self.attr(self.expr(f.value), f.attr, f, call=True) \
            if isinstance(f, ast.Attribute) else self.expr(f)
        args = list(e.args)
        if ref[0] == "builtin" and ref[1] in ("getattr", "hasattr"):
            if len(args) < 2 or not (isinstance(args[1], ast.Constant)
                                     and isinstance(args[1].value, str)):
                self.problem(e, f"{ref[1]} without a literal attribute name")
                return ("value", "")
            self.attr(self.expr(args[0]), args[1].value, e, call=False)
            args = args[2:]
        elif ref[0] == "builtin" and ref[1] in ("annotate", "unchecked_cast", "uninitialized",
                                               "isinstance") and args:
            type_arg = args.pop(1 if ref[1] == "isinstance" and len(args) > 1 else 0)
            self.type(type_arg)
        for a in args:
            self.expr(a)
        for k in e.keywords:
            if k.arg is None:
                self.problem(e, "**kwargs in a call")
            self.expr(k.value)
        return ("value", "")

    def type(self, t: ast.expr) -> None:
        if isinstance(t, ast.Constant) and t.value is None:
            return
        if isinstance(t, ast.Name):
            if t.id not in _TYPES:
                refuse(self.a.check, f"type {t.id}", self.where)
        elif isinstance(t, ast.Attribute):
            qual = _dotted(t)
            if qual is not None and qual.startswith(_CUSTOM_CLASSES):
                refuse(self.a.check, qual, f"{self.where} (a native custom class)")
            elif qual not in self.a.classes:
                refuse(self.a.check, f"type {qual}", f"{self.where} (not defined in the archive)")
        elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) \
                and t.value.id in _GENERICS:
            self.type(t.slice)
        elif isinstance(t, ast.Tuple):
            for elt in t.elts:
                self.type(elt)
        else:
            self.problem(t, "a type annotation Gauntlet cannot read")


def _dotted(e: ast.expr) -> str | None:
    """``__torch__.a.B`` as a string; None if ``e`` is not a plain dotted name."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Attribute) and (base := _dotted(e.value)) is not None:
        return f"{base}.{e.attr}"
    return None


def _names(targets: list[ast.expr]) -> list[str]:
    return [t.id if isinstance(t, ast.Name) else "" for t in targets]


def _literal(e: ast.expr) -> bool:
    """Plain data: constants, and tuples/lists of them (class-level attribute values)."""
    if isinstance(e, (ast.Tuple, ast.List)):
        return all(_literal(x) for x in e.elts)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd)):
        return _literal(e.operand)
    return isinstance(e, ast.Constant) or (isinstance(e, ast.Name) and e.id in ("inf", "nan"))
