"""TorchScript and torch.export intake: real models pass the operator allow-list; hostile
archives are refused before torch.jit.load runs any of their code.

Each hostile archive is shown to be live first (loaded the unsafe way, its payload runs),
then refused by ``load_model`` with the operator named, its payload's marker file absent,
and ``torch.jit.load`` never called.
"""
from __future__ import annotations

import re
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision

from gauntlet import Dataset, ModelLoadError
from gauntlet.plugins import _operators
from gauntlet.plugins._torch_export import check_export_program
from gauntlet.plugins._torchscript import check_torchscript
from gauntlet.plugins.datasets import load_sklearn
from gauntlet.plugins.torch_models import build_cnn, build_mlp, load_model

Edit = Callable[[str, bytes], "bytes | None"]


# -- helpers ----------------------------------------------------------------------------
def script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
        torch.jit.script(module.eval()).save(str(path))
    return path


def unsafe_load(path: Path) -> torch.jit.ScriptModule:
    """What Gauntlet must never do with an untrusted file: the control for each payload."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def rewrite(src: Path, dst: Path, edit: Edit) -> Path:
    """Copy a zip archive, passing each member's name and bytes through ``edit``, which
    must change something."""
    changed = False
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            before = zin.read(info.filename)
            data = edit(info.filename, before)
            changed |= data != before
            if data is not None:
                zout.writestr(info, data)
    assert changed, "the edit did not apply"
    return dst


def edit_code(old: str, *new: str) -> Edit:
    """Replace ``old`` with the lines ``new`` in the archive's code (the .py members)."""
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith(".py") and old.encode() in data:
            return data.replace(old.encode(), "\n".join(new).encode())
        return data
    return edit


def code_module(path: Path) -> str:
    """The qualified name TorchScript gives the module of the archive's first code member."""
    with zipfile.ZipFile(path) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".py"))
    return member.split("/", 2)[2].removesuffix(".py").replace("/", ".")


@pytest.fixture
def no_jit_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything calls torch.jit.load or torch.export.load."""
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused archive reached the unsafe loader")
    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch.export, "load", forbidden)


def refused(path: Path, dataset: Dataset, operator: str) -> str:
    with pytest.raises(ModelLoadError, match="will not load") as caught:
        load_model(str(path), {"dataset": dataset})
    message = str(caught.value)
    assert operator in message and "\n" not in message
    return message


# -- the allow-list ---------------------------------------------------------------------
def test_allow_list_names_real_operators_and_leaves_the_dangerous_ones_out():
    forms = _operators._qualify("prim", _operators._PRIM_FORMS)
    registered = _operators.registered_operators()
    assert sorted(_operators.ALLOWED - forms - registered) == []
    assert not _operators.ALLOWED & set(_operators.EXCLUDED)
    for name in ("aten::from_file", "aten::save", "prim::Print", "aten::set_",
                 "aten::as_strided", "aten::wait", "prim::id", "evil::boom",
                 "torchvision::nms", "quantized::linear"):
        assert not _operators.is_allowed(name), name
    assert _operators.is_allowed("aten::conv2d.padding")  # overloads fold into the name
    assert "file" in _operators.why_refused("aten::from_file.default")
    assert "custom operator" in _operators.why_refused("evil::boom")


# -- real models pass -------------------------------------------------------------------
MODELS = {
    "cnn": (lambda: build_cnn((1, 8, 8), 10), (2, 1, 8, 8)),
    "mlp": (lambda: build_mlp((4,), 3), (2, 4)),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), (1, 3, 32, 32)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(weights=None),
                           (2, 3, 32, 32)),
    "squeezenet1_1": (lambda: torchvision.models.squeezenet1_1(weights=None), (1, 3, 64, 64)),
}


def graph_kinds(graph: torch.Graph) -> set[str]:
    kinds = set()
    for node in graph.nodes():
        kinds.add(node.kind())
        for block in node.blocks():
            kinds |= graph_kinds(block)
    return kinds


def built(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    return build().eval(), torch.rand(shape)


@pytest.mark.parametrize("name", list(MODELS))
def test_real_models_pass_scripted(name, tmp_path):
    module, _ = built(name)
    path = script(module, tmp_path / f"{name}.ts")
    check = check_torchscript(path.read_bytes())
    assert check.safe, (check.refused, check.problems)
    assert check.operators.get("aten::linear", 0) + check.operators.get("aten::conv2d", 0) > 0
    # The allow-list also covers what TorchScript compiles the code into (trusted here).
    assert {k for k in graph_kinds(unsafe_load(path).inlined_graph)
            if not _operators.is_allowed(k)} == set()


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_built_in_models_pass_traced(name, tmp_path):
    module, example = built(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, example, check_trace=False).save(str(tmp_path / "traced.ts"))
    check = check_torchscript((tmp_path / "traced.ts").read_bytes())
    assert check.safe, (check.refused, check.problems)


SLOW = pytest.mark.slow  # exporting a torchvision model takes several seconds on 2 cores


@pytest.mark.parametrize("name", ["cnn", "mlp", pytest.param("resnet18", marks=SLOW),
                                  pytest.param("mobilenet_v3_small", marks=SLOW),
                                  pytest.param("squeezenet1_1", marks=SLOW)])
def test_real_models_pass_exported(name, tmp_path):
    module, example = built(name)
    path = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(module, (example,)), path)
    check = check_export_program(path.read_bytes())
    assert check.safe, (check.refused, check.problems)
    assert all("." not in op.partition("::")[2] for op in check.operators)  # no overloads


@pytest.mark.parametrize("fmt", ["scripted", "exported"])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_built_in_models_load_through_load_model(name, fmt, tmp_path, digits):
    data = digits if name == "cnn" else load_sklearn("iris", {})
    module = MODELS[name][0]().eval()
    if fmt == "scripted":
        path = script(module, tmp_path / "model.ts")
    else:
        path = tmp_path / "model.pt2"
        example = torch.as_tensor(data.x_test[:3]).float()
        torch.export.save(torch.export.export(module, (example,)), path)
    model = load_model(str(path), {"dataset": data})
    assert model.n_classes == data.n_classes
    with torch.no_grad():
        expected = module(torch.as_tensor(data.x_test[:3]).float()).numpy()
    assert abs(model.logits(data.x_test[:3]) - expected).max() < 1e-5


# -- hostile TorchScript ----------------------------------------------------------------
class FileWriter(torch.nn.Module):
    """Overwrites ``path`` through a shared file mapping whenever it runs."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.lin = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, True, 8, dtype=torch.uint8)
        t.fill_(65)
        return self.lin(x.flatten(1)) + t[0].float() * 0


class FileReader(torch.nn.Module):
    """Returns the first bytes of ``path`` as its logits."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, False, 8, dtype=torch.uint8)
        return x.flatten(1)[:, :8] * 0 + t.float()


class OnLoad(torch.nn.Module):
    """Overwrites ``path`` from __setstate__, which torch.jit.load itself runs."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.w = torch.zeros(10, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path, self.w, self.training = state[0], state[1], state[2]
        t = torch.from_file(self.path, True, 8, dtype=torch.uint8)
        t.fill_(66)
        self.w = self.w + t[0].float() * 0


class Inner(torch.nn.Module):
    """The payload sits in a helper, in a loop's last pass, behind an if."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _helper(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for i in range(n):
            if i == n - 1:
                t = torch.from_file(self.path, True, 8, dtype=torch.uint8)
                t.fill_(67)
                x = x + t[0].float() * 0
        return x

    def _via(self, x: torch.Tensor) -> torch.Tensor:
        return self._helper(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._via(x)


class Net(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.block1 = Inner(path)
        self.lin = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.block1(x.flatten(1)))


class Outer(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.net = Net(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Plain(torch.nn.Module):
    """A harmless model whose serialized code the tests below edit."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x.flatten(1))
        return y


RETURN = "    return y"


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return script(Plain(), tmp_path / "plain.ts")


@pytest.mark.parametrize("payload", [FileWriter, Inner, "ops.prim.autograd", "torch.save",
                                     "fork", "default-argument"])
def test_code_that_writes_files_is_refused_before_anything_runs(payload, tmp_path, plain,
                                                                 digits, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ts"
    if payload is FileWriter:
        script(FileWriter(str(marker)), path)
        where = r"`forward` of the root module \(class __torch__\.\S*FileWriter\)"
    elif payload is Inner:
        script(Outer(str(marker)), path)
        where = r"`_helper` of net\.block1 \(class __torch__\.\S*Inner\)"
    elif payload == "ops.prim.autograd":  # a namespace's .autograd is aten again
        rewrite(plain, path, edit_code(
            RETURN, f'    t = ops.prim.autograd.from_file("{marker}", True, 8, dtype=0)',
            "    _0 = torch.fill_(t, 68)", "    return torch.add(y, torch.select(t, 0, 0))"))
        where = "`forward` of the root module"
    elif payload == "default-argument":  # evaluated while loading, even if never called
        rewrite(plain, path, edit_code(
            RETURN, RETURN, f"  def other(self: {code_module(plain)}.Plain,",
            f'    t: Tensor=torch.from_file("{marker}", True, 8, dtype=0)) -> Tensor:',
            "    return t"))
        where = "a default argument of `other` of the root module .*while reading the archive"
    elif payload == "torch.save":
        rewrite(plain, path, edit_code(RETURN, f'    torch.save(y, "{marker}")', RETURN))
        where = "`forward` of the root module"
    else:
        rewrite(plain, path, edit_code(
            RETURN, f"    fut = fork({code_module(plain)}.leak, y)",
            "    return torch.add(y, torch.wait(fut))", "def leak(y: Tensor) -> Tensor:",
            f'  t = torch.from_file("{marker}", True, 8, dtype=0)',
            "  _0 = torch.fill_(t, 69)", "  return torch.add(y, torch.select(t, 0, 0))"))
        where = "`forward` of the root module"
    operator = {"torch.save": "aten::save", "fork": "prim::fork"}.get(payload,
                                                                     "aten::from_file")
    unsafe_load(path)(torch.zeros(2, 1, 8, 8))
    assert marker.exists()  # the payload is live
    marker.unlink()

    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
    message = refused(path, digits, operator)
    assert not marker.exists()
    check = check_torchscript(path.read_bytes())
    assert check.refused[0][0] == operator
    assert re.search(where, check.refused[0][1]), check.refused[0]
    assert f"{operator} in " in message  # the operator, then where it is


def test_the_torchscript_loader_loads_only_bytes_a_passing_scan_read(tmp_path, monkeypatch):
    """_load_torchscript takes the scan's report and refuses what it refused, or other bytes."""
    from gauntlet.plugins.scanners import scan_torch
    from gauntlet.plugins.torch_models import _load_torchscript

    marker = tmp_path / "pwned"
    path = script(FileWriter(str(marker)), tmp_path / "evil.ts")
    evil = path.read_bytes()
    good = script(Plain(), tmp_path / "good.ts").read_bytes()
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
    refused, _ = scan_torch(path, evil, "torchscript")
    with pytest.raises(ModelLoadError, match=r"evil\.ts is a torchscript file that Gauntlet "
                       r"will not load: aten::from_file in `forward` of the root module"):
        _load_torchscript(path, evil, refused)
    passed, _ = scan_torch(path, good, "torchscript")
    with pytest.raises(ModelLoadError, match="not the bytes scanned"):
        _load_torchscript(path, evil, passed)
    assert not marker.exists()


def test_code_that_reads_a_file_is_refused(tmp_path, digits, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_bytes(b"ssh-key!")
    path = script(FileReader(str(secret)), tmp_path / "reader.ts")
    leaked = unsafe_load(path)(torch.zeros(1, 1, 8, 8))
    assert bytes(leaked[0].to(torch.uint8).tolist()) == b"ssh-key!"  # the payload is live

    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
    message = refused(path, digits, "aten::from_file")
    assert "FileReader" in message


def test_setstate_payload_is_refused_though_loading_alone_would_run_it(tmp_path, digits,
                                                                       monkeypatch):
    marker = tmp_path / "pwned"
    path = script(OnLoad(str(marker)), tmp_path / "onload.ts")
    marker.unlink(missing_ok=True)  # scripting ran nothing, but be sure
    unsafe_load(path)  # no call: loading alone runs __setstate__
    assert marker.read_bytes() == b"B" * 8
    marker.unlink()

    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
    message = refused(path, digits, "aten::from_file")
    assert "`__setstate__`" in message and "while reading the archive" in \
        check_torchscript(path.read_bytes()).refused[0][1]
    assert not marker.exists()


_BOOM: list[Path] = []


def register_evil_boom() -> None:
    """A custom operator, evil::boom, as a library could register it: native to TorchScript,
    it runs whatever its author wrote (here: it touches a marker file)."""
    try:
        torch.ops.evil.boom  # noqa: B018 - already registered by an earlier test run
        return
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op("evil::boom", mutates_args=())
    def boom(x: torch.Tensor) -> torch.Tensor:
        _BOOM[-1].touch()
        return x.clone()


def test_custom_operator_namespace_is_refused(tmp_path, plain, digits, monkeypatch):
    marker = tmp_path / "pwned"
    _BOOM.append(marker)
    register_evil_boom()
    path = rewrite(plain, tmp_path / "custom.ts",
                   edit_code(RETURN, "    return torch.add(y, ops.evil.boom(y))"))
    unsafe_load(path)(torch.zeros(2, 1, 8, 8))
    assert marker.exists()  # callable from TorchScript once registered
    marker.unlink()

    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
    message = refused(path, digits, "evil::boom")
    assert not marker.exists()
    assert "custom operator" in message or "evil::boom in `forward`" in message


@pytest.mark.parametrize("edit, operator", [
    (edit_code(RETURN, '    print("PWNED")', RETURN), "prim::Print"),
    (edit_code(RETURN, '    _0 = (y).save("pwned")', RETURN), "aten::save"),
    (edit_code(RETURN, '    _0 = getattr(y, "save")("pwned")', RETURN), "aten::save"),
    (edit_code(RETURN, "    return torch.add(y, ops.torchvision.nms(y, y, 0.5))"),
     "torchvision::nms"),
    (edit_code(RETURN, "    # t = torch.from_file('/etc/passwd')", RETURN), "aten::from_file"),
    (edit_code(RETURN, '    return torch.add(y, len("torch.from_file"))'), "aten::from_file"),
    (edit_code("  lin : __torch__", "  packed : __torch__.torch.classes.quantized.Packed",
               "  lin : __torch__"), "__torch__.torch.classes"),
    (edit_code(RETURN, "    return y +"), "does not parse"),
    (edit_code(RETURN, "    return id(y)"), "prim::id"),
    (edit_code(RETURN, RETURN, "class Plain(Module):", "  pass"), "defined twice"),
    (edit_code("torch.flatten(", "torch.flatten.x("),
     "attribute .x of op aten::flatten"),
], ids=["print", "tensor-method-save", "getattr-save", "torchvision-op", "comment",
        "string", "custom-class-annotation", "unparsable", "id", "duplicate-class",
        "unclassifiable"])
def test_refused_edits(edit, operator, tmp_path, plain, digits, capfd, no_jit_load):
    path = rewrite(plain, tmp_path / "edited.ts", edit)
    refused(path, digits, operator)
    assert "PWNED" not in capfd.readouterr().out


def test_hidden_text_is_refused_by_the_raw_scan(tmp_path, plain):
    """What Python's parser sees only as a comment is still refused, in case TorchScript's
    lexer ever reads it as code."""
    path = rewrite(plain, tmp_path / "hidden.ts",
                   edit_code(RETURN, "    # y = torch.from_file('/etc/passwd')", RETURN))
    unsafe_load(path)  # TorchScript accepts the archive
    check = check_torchscript(path.read_bytes())
    [(what, where)] = check.refused
    assert what == "aten::from_file"
    assert re.fullmatch(r"the text of code/__torch__/\S+\.py, line \d+", where), where


def test_tensor_method_save_resolves_to_aten_save_or_nothing(tmp_path, plain):
    """t.save(path) is refused whatever this torch makes of it (today it fails to compile,
    because aten::save's first argument is not named self)."""
    path = rewrite(plain, tmp_path / "m.ts",
                   edit_code(RETURN, f'    _0 = (y).save("{tmp_path / "pwned"}")', RETURN))
    try:
        unsafe_load(path)(torch.zeros(1, 1, 8, 8))
    except RuntimeError as exc:
        assert "no attribute or method 'save'" in str(exc)
    assert check_torchscript(path.read_bytes()).refused[0][0] == "aten::save"


def test_native_custom_class_is_refused(tmp_path, digits, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated
        module = torch.ao.nn.quantized.Linear(4, 3)
    path = script(module, tmp_path / "quantized.ts")
    unsafe_load(path)  # its C++ __setstate__ (native code) ran while loading
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
    refused(path, digits, "quantized")
    check = check_torchscript(path.read_bytes())
    assert "data.pkl builds __torch__.torch.classes.quantized.LinearPackedParamsBase, a " \
        "native custom class whose C++ code runs while loading" in check.problems
    assert ("__torch__.torch.classes.quantized.LinearPackedParamsBase",
            "attribute '_packed_params' of class __torch__.torch.ao.nn.quantized.modules."
            "linear.LinearPackedParams (a native custom class)") in check.refused


def test_quantized_class_names_are_refused(tmp_path, plain):
    """SourceImporter retypes `_packed_params : Tensor` of these classes to a native custom
    class, so the name alone brings one in: the text never says torch.classes."""
    path = tmp_path / "retyped.ts"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith((".py", ".debug_pkl")):
                zout.writestr(info, zin.read(info))
        zout.writestr("plain/code/__torch__/torch/ao/nn/quantized/modules/linear.py",
                      "class Linear(Module):\n  _packed_params : Tensor\n")
    check = check_torchscript(path.read_bytes())
    assert any("retypes to native custom classes" in p for p in check.problems), check


def test_unexpected_native_member_is_refused(tmp_path, plain, digits, no_jit_load):
    path = tmp_path / "so.ts"
    path.write_bytes(plain.read_bytes())
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("plain/x.so", b"\x7fELF")
    refused(path, digits, "unexpected member 'x.so'")


# -- hostile torch.export programs ------------------------------------------------------
def test_pt2_node_calling_a_registered_but_disallowed_operator(tmp_path, digits,
                                                               no_jit_load):
    module = build_cnn((1, 8, 8), 10).eval()
    pt2 = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(module, (torch.zeros(2, 1, 8, 8),)), pt2)

    def to_save(name: str, data: bytes) -> bytes:
        return data.replace(b'"torch.ops.aten.relu.default"', b'"torch.ops.aten.save.default"',
                            1) if name.endswith("models/model.json") else data
    path = rewrite(pt2, tmp_path / "save.pt2", to_save)
    message = refused(path, digits, "aten::save")
    assert "node 'relu' of 1 (torch.nn.modules.activation.ReLU)" in message


LIVE_PT2 = """
import sys, torch
secret, out = sys.argv[1], sys.argv[2]
# torch.export needs a meta kernel to trace from_file; an attacker's machine has one.
lib = torch.library.Library("aten", "IMPL", "Meta")
lib.impl("from_file", lambda filename, shared=None, size=0, *, dtype=None, layout=None,
         device=None, pin_memory=None: torch.empty(size, dtype=dtype, device="meta"))
class Leak(torch.nn.Module):
    def forward(self, x):
        t = torch.from_file(secret, False, 8, dtype=torch.uint8)
        return x.flatten(1)[:, :8] * 0 + t.float()
torch.export.save(torch.export.export(Leak(), (torch.zeros(2, 1, 8, 8),)), out)
del lib
leaked = torch.export.load(out).module()(torch.zeros(2, 1, 8, 8))
print(bytes(leaked[0].to(torch.uint8).tolist()).decode())
"""


@SLOW  # a fresh interpreter builds it: the kernel it registers must not leak into this one
def test_live_pt2_that_reads_a_file_is_refused(tmp_path, digits, no_jit_load):
    secret, path = tmp_path / "secret", tmp_path / "leak.pt2"
    secret.write_bytes(b"ssh-key!")
    run = subprocess.run([sys.executable, "-c", LIVE_PT2, str(secret), str(path)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "ssh-key!"  # torch.export.load runs it and leaks the file
    message = refused(path, digits, "aten::from_file")
    assert "node 'from_file'" in message
