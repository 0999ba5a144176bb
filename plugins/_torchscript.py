"""Checking a TorchScript archive from its bytes, before ``torch.jit.load`` sees it.

``torch.jit.load`` is not inert: it compiles the archive's serialized code, unpickles
``data.pkl`` and ``constants.pkl`` with TorchScript's restricted unpickler, runs the
scripted ``__setstate__`` of every object whose class defines one and evaluates every
function's default arguments. That code can call any
registered operator, among them ``aten::from_file`` (read, or with ``shared=True``
overwrite, any file), custom operators and classes (native code outside PyTorch),
``print`` and ``fork``. :func:`check_torchscript` reads the code and pickles without
loading them and admits an archive only if every operator its code can reach is on the
allow-list of :mod:`gauntlet.plugins._operators`. It fails closed: code that does not
parse, or a construct it cannot classify, is refused.

Names resolve as TorchScript's SourceImporter resolves them: ``torch.X`` and
``torch.autograd.X`` are ``aten::X``, ``ops.NS.X`` is ``NS::X``, Python builtins are the
operators TorchScript binds them to, ``__torch__.…`` are the archive's own classes and
functions (all of whose bodies are checked), and ``v.name`` on a value is ``aten::name``
whenever that operator exists. A scan of the raw text backs the parse up, in case
TorchScript's lexer and Python's disagree. A helper of :mod:`gauntlet.plugins.torch_models`.
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
    TORCHSCRIPT_BUILTINS,
    GraphCheck,
    is_allowed,
    note_operator,
    refuse,
    registered_operators,
)
from gauntlet.plugins._tensor_bounds import tensor_bound_problems

__all__ = ["GraphCheck", "check_torchscript", "zip_problem"]


def zip_problem(zf: zipfile.ZipFile) -> str | None:
    """Why torch's zip reader might be shown other bytes than a check reads, if it might."""
    names = zf.namelist()
    # torch's reader takes the archive's name from the first entry and matches member names
    # case-insensitively: a second root or a near-duplicate name could hide a member.
    if len({n.split("/", 1)[0] for n in names}) != 1 or len({n.lower() for n in names}) \
            != len(names) or any("/" not in n or "\\" in n or "\0" in n for n in names):
        return "its zip layout is ambiguous (several roots or duplicate names)"
    return None


# The TorchScript archive layout (torch.jit.save, trace, _save_for_lite_interpreter).
_MEMBER = re.compile(r"code/__torch__(/[A-Za-z_]\w*)*\.py(\.debug_pkl)?|"
                     r"(data|constants|traced_inputs|bytecode)\.pkl|"
                     r"(data|constants|traced_inputs)/\d+|\.data/(version|serialization_id)|"
                     r"version|byteorder|extra/[\w.-]+", re.ASCII)
# Pickle globals TorchScript's own pickler writes, besides the archive's classes.
_PICKLER = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
            "build_tensor_from_id", "restore_type_tag")
_REBUILD = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
            ("torch", "device"), ("builtins", "complex"),
            *(("torch.jit._pickle", name) for name in _PICKLER)}
_CUSTOM = "__torch__.torch.classes"  # C++ classes: their methods are native code
# Classes whose `_packed_params : Tensor` SourceImporter silently retypes to a C++ class.
_RETYPED = re.compile(r"__torch__\.torch\.(ao\.)?nn\.(intrinsic\.)?quantized\.")
_MAX_MEMBER = 64 << 20  # code and pickles are small; this stops a zip bomb
_TYPES = {"Tensor", "int", "float", "bool", "str", "complex", "NoneType", "Any", "Device",
          "number", "Layout", "ScalarType", "MemoryFormat", "QScheme", "Generator", "SymInt",
          "SymFloat", "SymBool"}
_GENERICS = {"List", "Dict", "Tuple", "Optional", "Union", "Final"}
_BASES = {"Module", "Enum", "ModuleInterface", "Interface", "NamedTuple"}
# The raw-text scan. A dot may have whitespace and line continuations around it; each
# pattern's last group is the name an operator would be reached by. Any `.name` counts,
# called or not: TorchScript can bind `t.save` or `fork` to a variable and call it later.
_DOT = r"[\s\\]*\.[\s\\]*"
_RAW = [(re.compile(rf"(?<![\w.])torch(?:{_DOT}autograd)*{_DOT}(\w+)"), "aten"),
        (re.compile(rf"(?<![\w.])ops{_DOT}\w+(?:{_DOT}autograd)+{_DOT}(\w+)"), "aten"),
        (re.compile(rf"(?<![\w.])ops{_DOT}(\w+){_DOT}(\w+)"), "ops"),
        (re.compile(rf"{_DOT}([A-Za-z_]\w*)"), "method"),
        (re.compile(r"\b(?:getattr|hasattr)\s*\([^,]*,\s*[\"'](\w+)[\"']"), "method"),
        (re.compile(r"(?<![\w.])(print|fork|awaitable)\b"), "builtin"),
        (re.compile(r"(?<![\w.])(id)[\s\\]*\("), "builtin"),
        (re.compile(rf"torch{_DOT}classes\b"), "custom")]

Ref = tuple[str, str]  # what an expression is: (kind, qualified name)
VALUE: Ref = ("value", "")


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
        self.functions: dict[str, ast.FunctionDef] = {}
        self.texts: dict[str, str] = {}
        self.root: str | None = None
        self.paths: dict[str, list[str]] = {}

    def problem(self, why: str) -> None:
        self.check.problems.append(why)

    def run(self) -> None:
        if (why := zip_problem(self.zf)) is not None:
            return self.problem(why)
        members = {i.filename.split("/", 1)[1]: i for i in self.zf.infolist()}
        if "data.pkl" not in members:
            self.problem("it has no data.pkl, so it is not a TorchScript module")
        for rel, info in members.items():
            if not _MEMBER.fullmatch(rel):
                self.problem(f"unexpected member {rel!r} (native code or other payloads are "
                             "not part of a TorchScript archive)")
            elif info.file_size > _MAX_MEMBER and rel.endswith(("py", "pkl")):
                self.problem(f"member {rel!r} is implausibly large")
            elif rel.endswith(".py"):
                try:  # decoding first ignores PEP 263 coding lines, as TorchScript's lexer does
                    self.texts[rel] = self.zf.read(info).decode("utf-8")
                    self.collect(rel, ast.parse(self.texts[rel], filename=rel))
                except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
                    self.problem(f"code member {rel!r} does not parse ({exc})")
        for rel, info in members.items():
            if rel.endswith("pkl") and _MEMBER.fullmatch(rel) and info.file_size <= _MAX_MEMBER:
                self.pickle(rel, self.zf.read(info))
        if not self.check.problems:  # only a well-formed archive's pickles are read for sizes
            self.check.problems += tensor_bound_problems(self.zf)
        self.tree()
        for cls in self.classes.values():
            for attr, ann in cls.attrs.items():
                if ann is not None:
                    _Function(self, f"attribute {attr!r} of class {cls.name}").type(ann)
            for name, fn in cls.methods.items():
                _Function(self, self.where(cls.name, name), cls).run(fn)
        for qual, fn in self.functions.items():
            _Function(self, f"function {qual}").run(fn)
        for rel, text in self.texts.items():
            self.raw(rel, text)

    def collect(self, rel: str, tree: ast.Module) -> None:
        """The classes and functions a code member defines."""
        module = rel[len("code/"):-len(".py")].replace("/", ".")
        for node in tree.body:
            qual = f"{module}.{getattr(node, 'name', '')}"
            if qual in self.classes or qual in self.functions:
                # TorchScript and this check might each pick a different one of the two.
                self.problem(f"{rel} line {node.lineno}: {qual} is defined twice")
            if _RETYPED.match(re.sub(r"\.___torch_mangle_\d+", "", qual)):
                self.problem(f"{rel} defines {qual}, a quantized module whose attributes "
                             "TorchScript retypes to native custom classes")
            if isinstance(node, ast.ClassDef) and not node.decorator_list and not node.keywords \
                    and all(isinstance(b, ast.Name) and b.id in _BASES for b in node.bases):
                cls = self.classes[qual] = _Class(qual, rel)
                for stmt in node.body:
                    self.member(cls, stmt)
            elif isinstance(node, ast.FunctionDef) and not node.decorator_list:
                self.functions[qual] = node
            elif not (isinstance(node, ast.Assign) and _literal(node.value)
                      and [_dotted(t) for t in node.targets] == ["op_version_set"]):
                self.problem(f"{rel} line {node.lineno}: unexpected {type(node).__name__} "
                             "at module level")

    def member(self, cls: _Class, stmt: ast.stmt) -> None:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
            else getattr(stmt, "target", None)
        if isinstance(stmt, ast.FunctionDef) and not stmt.decorator_list:
            if stmt.name in cls.methods:
                self.problem(f"{cls.file} line {stmt.lineno}: {cls.name}.{stmt.name} is "
                             "defined twice")
            cls.methods[stmt.name] = stmt
        elif isinstance(stmt, ast.AnnAssign) and isinstance(target, ast.Name) and (
                stmt.value is None or _literal(stmt.value)):
            cls.attrs[target.id] = stmt.annotation
        elif isinstance(stmt, ast.Assign) and isinstance(target, ast.Name) \
                and _literal(stmt.value):
            cls.attrs[target.id] = None  # __parameters__, an enum member, ...
        elif isinstance(stmt, ast.Assign) and isinstance(target, ast.Subscript) \
                and _dotted(target.value) == "__annotations__" \
                and isinstance(key := target.slice, ast.Constant) and isinstance(key.value, str):
            cls.attrs[key.value] = stmt.value  # submodules named "0", "1", ...
        elif not isinstance(stmt, ast.Pass):
            self.problem(f"{cls.file} line {stmt.lineno}: unexpected {type(stmt).__name__} "
                         f"in class {cls.name}")

    def pickle(self, rel: str, blob: bytes) -> None:
        """A pickle may only name the archive's classes and TorchScript's rebuild helpers."""
        from picklescan.scanner import scan_pickle_bytes

        scan = scan_pickle_bytes(io.BytesIO(blob), rel, multiple_pickles=False)
        if scan.scan_err:
            return self.problem(f"{rel} is not a readable pickle")
        for g in sorted(scan.globals, key=lambda g: not g.module.startswith(_CUSTOM)):
            name = f"{g.module}.{g.name}"
            if name.startswith(_CUSTOM):
                self.problem(f"{rel} builds {name}, a native custom class whose C++ code runs "
                             "while loading")
            elif not ((g.module, g.name) in _REBUILD or name in self.classes
                      or (g.module == "torch" and re.fullmatch(r"[A-Z][a-z]*Storage", g.name))):
                self.problem(f"{rel} names {name}, which is neither a class of the archive "
                             "nor one of TorchScript's tensor-rebuild helpers")
        for op, arg, _ in pickletools.genops(blob):
            if isinstance(arg, str) and _CUSTOM in arg and op.name != "GLOBAL":
                refuse(self.check, arg[:120], f"{rel} (a type tag naming a native class)")
            elif op.name == "GLOBAL" and rel == "data.pkl" and self.root is None:
                self.root = str(arg).replace(" ", ".")  # the first object is the module

    def tree(self) -> None:
        """Attribute paths from the root module to each class, from the attribute types."""
        held = {_dotted(a) for c in self.classes.values() for a in c.attrs.values() if a}
        roots = [self.root] if self.root in self.classes else [
            q for q, c in self.classes.items() if q not in held and "forward" in c.methods]
        queue = deque((r, "") for r in roots[:1])
        while queue:  # at most 20 paths per class, so a cycle or a lattice stays small
            qual, path = queue.popleft()
            if len(self.paths.setdefault(qual, [])) < 20:
                self.paths[qual].append(path)
                for attr, ann in self.classes[qual].attrs.items():
                    if ann is not None and (child := _dotted(ann)) in self.classes:
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

    def raw(self, rel: str, text: str) -> None:
        """Refuse a disallowed operator named anywhere in the text, strings and comments
        included, which the parse did not already refuse."""
        found = {what for what, _ in self.check.refused}
        registered = registered_operators()
        for pattern, kind in _RAW:
            for m in pattern.finditer(text):
                if kind == "custom":
                    ops = [_CUSTOM]
                elif kind == "builtin":
                    ops = [TORCHSCRIPT_BUILTINS[m.group(1)]]
                else:
                    ns = m.group(1) if kind == "ops" else None
                    names = [f"{n}::{m.group(m.lastindex or 1)}" for n in (
                        [ns] if ns else ["aten", "prim"] if kind == "method" else ["aten"])]
                    ops = [o for o in names if not is_allowed(o) and (
                        o in registered or o.split("::")[0] not in NAMESPACES)]
                for op in ops:
                    if op not in found:
                        found.add(op)
                        line = text.count("\n", 0, m.start()) + 1
                        refuse(self.check, op, f"the text of {rel}, line {line}")


class _Function:
    """One function or method body, checked expression by expression."""

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
        for ann in [p.annotation for p in params] + [fn.returns]:
            if ann is not None:
                self.type(ann)
        where, self.where = self.where, f"a default argument of {self.where}, which " \
            "torch.jit.load evaluates while reading the archive"
        for default in args.defaults + args.kw_defaults:
            if default is not None:
                self.expr(default)
        self.where = where
        for stmt in fn.body:
            self.stmt(stmt)

    def stmt(self, s: ast.stmt) -> None:
        if isinstance(s, ast.FunctionDef) and not s.decorator_list:
            return _Function(self.a, self.where, None, frozenset(self.locals)).run(s)
        if isinstance(s, ast.AnnAssign):
            self.type(s.annotation)
        elif isinstance(s, ast.With):
            for item in s.items:
                self.expr(item.context_expr)
                if item.optional_vars is not None:
                    self.expr(item.optional_vars)
        elif not isinstance(s, (ast.Assign, ast.AugAssign, ast.Expr, ast.Return, ast.If,
                                ast.While, ast.For, ast.Assert, ast.Raise, ast.Delete,
                                ast.Pass, ast.Break, ast.Continue)):
            return self.problem(s, f"unsupported statement {type(s).__name__}")
        for child in ast.iter_child_nodes(s):  # expressions, then nested statements
            if isinstance(child, ast.expr) and not (isinstance(s, ast.AnnAssign)
                                                    and child is s.annotation):
                self.expr(child)
            elif isinstance(child, ast.stmt):
                self.stmt(child)

    def expr(self, e: ast.expr) -> Ref:
        if isinstance(e, ast.Name):
            return self.name(e.id) if isinstance(e.ctx, ast.Load) else VALUE
        if isinstance(e, ast.Attribute):
            return self.attr(self.expr(e.value), e.attr, e, call=False)
        if isinstance(e, ast.Call):
            return self.call(e)
        if isinstance(e, (ast.ListComp, ast.DictComp)):
            for gen in e.generators:
                if gen.is_async:
                    self.problem(e, "an async comprehension")
                for sub in (gen.target, gen.iter, *gen.ifs):
                    self.expr(sub)
        elif isinstance(e, ast.Dict) and None in e.keys:
            self.problem(e, "dict unpacking")
        elif not isinstance(e, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                                ast.IfExp, ast.Subscript, ast.Slice, ast.Tuple, ast.List,
                                ast.Dict, ast.Starred)):
            self.problem(e, f"unsupported expression {type(e).__name__}")
            return VALUE
        for child in ast.iter_child_nodes(e):
            if isinstance(child, ast.expr):
                self.expr(child)
        return VALUE

    def name(self, n: str) -> Ref:
        # A name TorchScript binds globally counts as that builtin even where a local
        # shadows it: what the code can reach is then over-, never under-estimated.
        if n in TORCHSCRIPT_BUILTINS:
            self.op(TORCHSCRIPT_BUILTINS[n])
            return ("builtin", n)
        special = {"torch": ("ns", "aten"), "ops": ("ops", ""), "__torch__": ("tree", n),
                   "CONSTANTS": ("constants", "")}
        if n in special:
            return special[n]
        if n == self.self_name:
            return ("self", "")
        if n not in self.locals and n not in ("inf", "nan", "infj", "nanj"):
            refuse(self.a.check, f"name {n!r}", f"{self.where} (not defined anywhere)")
        return VALUE

    def op(self, qualified: str) -> Ref:
        note_operator(self.a.check, qualified, self.where)
        return ("op", qualified)

    def attr(self, base: Ref, name: str, node: ast.AST, call: bool) -> Ref:
        kind, val = base
        if kind == "ns":  # torch, torch.autograd and ops.NS are TorchScript BuiltinModules
            return ("ns", "aten") if name == "autograd" else self.op(f"{val}::{name}")
        if kind == "ops":
            return ("ns", name)
        if kind == "constants" and re.fullmatch(r"c\d+", name):
            return VALUE
        if kind in ("tree", "class"):
            return self.archive_attr(kind, f"{val}.{name}", name)
        if kind in ("value", "self"):
            own = kind == "self" and self.cls is not None and (
                name in self.cls.methods or name in self.cls.attrs)
            # TorchScript resolves v.name to the operator aten::name where one exists
            # (getattr(t, "save") is aten::save), so that operator must be allowed.
            found = [o for o in (f"aten::{name}", f"prim::{name}") if o in registered_operators()]
            bad = [o for o in found if not is_allowed(o)]
            if bad or (found and not own):
                return self.op((bad or found)[0])
            if call and not own and not any(name in c.methods for c in self.a.classes.values()):
                refuse(self.a.check, f"method .{name}()",
                       f"{self.where} (neither an operator nor a method of the archive)")
            return VALUE
        self.problem(node, f"attribute .{name} of {kind} {val}")
        return VALUE

    def archive_attr(self, kind: str, qual: str, name: str) -> Ref:
        """``__torch__.a.b``: a namespace, class or function of the archive, or a member."""
        cls = self.a.classes.get(qual.rsplit(".", 1)[0]) if kind == "class" else None
        if qual.startswith(_CUSTOM):
            refuse(self.a.check, qual, f"{self.where} (a native custom class)")
        elif cls is not None and (name == "__new__" or name in cls.methods
                                  or name in cls.attrs):
            return VALUE
        elif kind == "tree" and qual in self.a.classes:
            return ("class", qual)
        elif kind == "tree" and qual in self.a.functions:
            return ("function", qual)
        elif kind == "tree" and any(k.startswith(qual + ".") for k in
                                    (*self.a.classes, *self.a.functions)):
            return ("tree", qual)
        else:
            refuse(self.a.check, qual, f"{self.where} (not defined in the archive)")
        return VALUE

    def call(self, e: ast.Call) -> Ref:
        f = e.func
        ref = self.attr(self.expr(f.value), f.attr, f, call=True) \
            if isinstance(f, ast.Attribute) else self.expr(f)
        args = list(e.args)
        if ref in (("builtin", "getattr"), ("builtin", "hasattr")):
            if len(args) < 2 or not (isinstance(args[1], ast.Constant)
                                     and isinstance(args[1].value, str)):
                self.problem(e, f"{ref[1]} without a literal attribute name")
                return VALUE
            self.attr(self.expr(args[0]), args[1].value, e, call=False)
            args = args[2:]
        elif ref[0] == "builtin" and args and ref[1] in (
                "annotate", "unchecked_cast", "uninitialized", "isinstance"):
            self.type(args.pop(1 if ref[1] == "isinstance" and len(args) > 1 else 0))
        for a in args:
            self.expr(a)
        for k in e.keywords:
            if k.arg is None:
                self.problem(e, "**kwargs in a call")
            self.expr(k.value)
        return VALUE

    def type(self, t: ast.expr) -> None:
        qual = _dotted(t)
        if isinstance(t, ast.Constant) and t.value is None or qual in _TYPES:
            return
        if isinstance(t, ast.Subscript) and _dotted(t.value) in _GENERICS:
            self.type(t.slice)
        elif isinstance(t, ast.Tuple):
            for elt in t.elts:
                self.type(elt)
        elif qual is not None and qual.startswith(_CUSTOM):
            refuse(self.a.check, qual, f"{self.where} (a native custom class)")
        elif qual is not None and qual not in self.a.classes:
            refuse(self.a.check, f"type {qual}", f"{self.where} (not a type Gauntlet admits)")
        elif qual is None:
            self.problem(t, "a type annotation Gauntlet cannot read")


def _dotted(e: ast.expr) -> str | None:
    """``__torch__.a.B`` as a string; None if ``e`` is not a plain dotted name."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Attribute) and (base := _dotted(e.value)) is not None:
        return f"{base}.{e.attr}"
    return None


def _literal(e: ast.expr) -> bool:
    """Plain data: constants, and tuples/lists of them (class-level attribute values)."""
    if isinstance(e, (ast.Tuple, ast.List)):
        return all(_literal(x) for x in e.elts)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd)):
        return _literal(e.operand)
    return isinstance(e, ast.Constant) or _dotted(e) in ("inf", "nan")
