"""Property-based fuzzing of everything that reads user input: the config parser and every
model and data loader. Random, truncated and mutated versions of valid inputs must end in
success or a GauntletError (exit 2, one line), never another exception and never a hang.

Each format is one line of FORMATS: a spec template and a factory of valid files. The
default run is deterministic and takes well under a minute; ``GAUNTLET_FUZZ_SCALE=20``
multiplies the examples and draws fresh random ones each run.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import io
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gauntlet import Dataset, GauntletError
from gauntlet.intake import scan
from gauntlet.loading import check_fit, load_dataset, load_model
from gauntlet.plan import Selection, plan
from gauntlet.run import deadline

SCALE = float(os.environ.get("GAUNTLET_FUZZ_SCALE", "1"))
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HANG_S = 60  # one load of a tiny file taking longer than this is a hang


def fuzz_settings(examples: int) -> settings:
    # Deterministic by default (no flaky CI, no .hypothesis folder); random when scaled up.
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    derandomize=SCALE <= 1, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def only_gauntlet_errors(call: Callable[[], Any]) -> Any:
    """Run ``call``; a GauntletError is an answer, anything else fails the test."""
    with deadline(HANG_S):
        try:
            return call()
        except GauntletError as exc:
            assert str(exc).strip(), "a GauntletError needs a message"
            return None


@pytest.fixture(scope="module")
def registry():
    """Every installed plugin, plus loader plugins of this checkout not yet installed as
    entry points (so a new format is fuzzed before a reinstall)."""
    from gauntlet.registry import make_registry

    reg = make_registry()
    for name in ("onnx_models", "sklearn_models"):
        try:
            module = importlib.import_module(f"gauntlet.plugins.{name}")
        except ImportError:
            continue
        if not reg.pm.is_registered(module):
            reg.add_plugin(module, name, "ml-gauntlet")
    return reg


# -- mutations ----------------------------------------------------------------------------
def flip_bits(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[(p // 8) % len(out)] ^= 1 << (p % 8)
    return bytes(out)


def rezip(data: bytes, member: int, edit: Callable[[bytes], bytes]) -> bytes:
    """The zip ``data`` with one member's bytes edited and every CRC right, so the edit
    reaches the parser behind the zip layer."""
    src = zipfile.ZipFile(io.BytesIO(data))
    infos = src.infolist()
    target = infos[member % len(infos)].filename
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in infos:
            blob = src.read(info.filename)
            dst.writestr(info.filename, edit(blob) if info.filename == target else blob)
    return buf.getvalue()


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Random bytes, a truncation, bit flips, an overwritten run, or (for a zip) one of
    those applied inside a member."""
    def edit(blob: bytes) -> bytes:
        how = draw(st.sampled_from(["truncate", "flip", "overwrite", "random"]))
        if how == "truncate" or not blob:
            return blob[:draw(st.integers(0, max(0, len(blob) - 1)))]
        if how == "flip":
            return flip_bits(blob, draw(st.lists(st.integers(0, 8 * len(blob) - 1),
                                                 min_size=1, max_size=6)))
        if how == "overwrite":
            at = draw(st.integers(0, len(blob) - 1))
            run = draw(st.binary(min_size=1, max_size=16))
            return blob[:at] + run + blob[at + len(run):]
        return draw(st.binary(max_size=512))

    if data[:4] == b"PK\x03\x04" and draw(st.booleans()):
        return rezip(data, draw(st.integers(0, 64)), edit)
    return edit(data)


# -- valid files of every format ------------------------------------------------------------
SHAPE, N_CLASSES = (1, 4, 4), 3
ARCH = "gauntlet.plugins.torch_models:build_mlp"


def tiny_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((24, *SHAPE), dtype=np.float32)
    return Dataset.from_arrays("fuzz", x[:16], np.arange(16) % N_CLASSES, x[16:],
                               np.arange(8) % N_CLASSES, n_classes=N_CLASSES)


def tiny_module() -> Any:
    import torch

    from gauntlet.plugins.torch_models import build_mlp

    torch.manual_seed(0)
    return build_mlp(SHAPE, N_CLASSES).eval()


def torchscript_bytes() -> dict[str, bytes]:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch deprecates TorchScript; users still have files
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(tiny_module()), buf)
    return {"model.pt": buf.getvalue()}


def export_bytes() -> dict[str, bytes]:
    import torch

    program = torch.export.export(tiny_module(), (torch.zeros(2, *SHAPE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return {"model.pt2": buf.getvalue()}


def state_dict_bytes() -> dict[str, bytes]:
    import torch

    buf = io.BytesIO()
    torch.save(tiny_module().state_dict(), buf)
    return {"weights.pt": buf.getvalue()}


def safetensors_bytes() -> dict[str, bytes]:
    from safetensors.torch import save

    return {"weights.safetensors": save(tiny_module().state_dict())}


def onnx_bytes() -> dict[str, bytes]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.random((16, N_CLASSES), dtype=np.float32), "w")
    b = numpy_helper.from_array(np.zeros(N_CLASSES, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "b"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", N_CLASSES])],
        [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return {"model.onnx": model.SerializeToString()}


def skops_bytes() -> dict[str, bytes]:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    data = tiny_dataset()
    estimator = LogisticRegression(max_iter=50).fit(data.x_train.reshape(16, -1),
                                                    data.y_train)
    return {"model.skops": sio.dumps(estimator)}


def npz_bytes() -> dict[str, bytes]:
    data = tiny_dataset()
    buf = io.BytesIO()
    np.savez(buf, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
             y_test=data.y_test, class_names=np.array(["a", "b", "c"]))
    return {"data.npz": buf.getvalue()}


def idx_file(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, code, array.ndim]) + dims + array.tobytes()


def idx_bytes(gz: bool = False) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 12), ("t10k", 6)):
        files[f"{split}-images-idx3-ubyte"] = idx_file(
            rng.integers(0, 256, (n, 4, 4), dtype=np.uint8))
        files[f"{split}-labels-idx1-ubyte"] = idx_file((np.arange(n) % 3).astype(np.uint8))
    if gz:
        return {f"{name}.gz": gzip.compress(blob, mtime=0) for name, blob in files.items()}
    return files


@dataclasses.dataclass(frozen=True)
class Format:
    """One input format: ``spec`` names the files written into ``{dir}``."""

    id: str
    kind: str  # model | data
    spec: str
    make: Callable[[], dict[str, bytes]]
    options: tuple[tuple[str, Any], ...] = ()
    needs: str | None = None  # a module without which the format is skipped


FORMATS = [
    Format("torchscript", "model", "{dir}/model.pt", torchscript_bytes),
    Format("torch.export", "model", "{dir}/model.pt2", export_bytes),
    Format("state_dict", "model", "{dir}/weights.pt", state_dict_bytes, (("arch", ARCH),)),
    Format("safetensors", "model", "{dir}/weights.safetensors", safetensors_bytes,
           (("arch", ARCH),)),
    Format("onnx", "model", "{dir}/model.onnx", onnx_bytes, needs="onnxruntime"),
    Format("skops", "model", "{dir}/model.skops", skops_bytes, needs="skops"),
    Format("npz", "data", "npz:{dir}/data.npz", npz_bytes),
    Format("idx", "data", "idx:{dir}", idx_bytes),
    Format("idx.gz", "data", "idx:{dir}", lambda: idx_bytes(gz=True)),
]
_VALID: dict[str, dict[str, bytes]] = {}


def valid_files(fmt: Format) -> dict[str, bytes]:
    if fmt.id not in _VALID:
        _VALID[fmt.id] = fmt.make()
    return _VALID[fmt.id]


def open_input(fmt: Format, registry: Any, folder: Path) -> None:
    """Load what ``fmt`` names in ``folder`` the way an audit does; scan model files too."""
    spec = fmt.spec.format(dir=folder)
    if fmt.kind == "data":
        only_gauntlet_errors(lambda: load_dataset(registry, spec, dict(fmt.options)))
        return
    only_gauntlet_errors(lambda: scan(registry, spec))
    dataset = tiny_dataset()
    model = only_gauntlet_errors(
        lambda: load_model(registry, spec, dict(fmt.options), dataset, 0))
    if model is not None:
        only_gauntlet_errors(lambda: check_fit(model, dataset))


def params(formats: list[Format]) -> list[Any]:
    return [pytest.param(f, id=f.id) for f in formats]


@pytest.mark.parametrize("fmt", params(FORMATS))
def test_valid_files_load(fmt, registry, tmp_path):
    """The seeds of the fuzz are good files: each loads (so mutations start from real data)."""
    if fmt.needs:
        pytest.importorskip(fmt.needs)
    for name, blob in valid_files(fmt).items():
        (tmp_path / name).write_bytes(blob)
    spec = fmt.spec.format(dir=tmp_path)
    if fmt.kind == "data":
        assert load_dataset(registry, spec, dict(fmt.options)).n_classes == N_CLASSES
    else:
        model = load_model(registry, spec, dict(fmt.options), tiny_dataset(), 0)
        check_fit(model, tiny_dataset())


@pytest.mark.parametrize("fmt", params(FORMATS))
@fuzz_settings(60)
@given(data=st.data())
def test_mutated_files_load_or_fail_with_one_clear_error(fmt, registry, data):
    if fmt.needs:
        pytest.importorskip(fmt.needs)
    files = dict(valid_files(fmt))
    name = data.draw(st.sampled_from(sorted(files)), label="file")
    files[name] = data.draw(mutated(files[name]), label="bytes")
    with tempfile.TemporaryDirectory() as folder:
        for fname, blob in files.items():
            Path(folder, fname).write_bytes(blob)
        open_input(fmt, registry, Path(folder))


# -- the config parser ---------------------------------------------------------------------
VALID_CONFIGS = [(EXAMPLES / "digits.toml").read_text(),
                 (EXAMPLES / "fashion-mnist.toml").read_text(),
                 'seed = 3\nsamples = 50\ntimeout = 10.5\nattacks = ["fgsm", "noise"]\n'
                 '[model]\nspec = "builtin:mlp"\n[data]\nspec = "sklearn:iris"\n'
                 '[defenses.input-noise]\nr = [0.05, 0.1]\n']
TOML_VALUES = ["-1", "0", "1", "1.5", "-0.5", "nan", "inf", "-inf", "true", '"x"', '""',
               "[]", "[[0.1]]", "[1, 2]", "{}", "{a = 1}", "1979-05-27", "07:32:00",
               "1e400", str(2**64), '"builtin:cnn"', '"npz:nope.npz"', '["fgsm", "fgsm"]']


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID_CONFIGS))
    how = draw(st.sampled_from(["value", "truncate", "chars", "lines", "random"]))
    lines = text.splitlines()
    if how == "value":  # a key keeps its name and gets a value of another type or range
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(lines) - 1))
            key = lines[i].split("=", 1)[0].strip() if "=" in lines[i] else \
                draw(st.sampled_from(["seed", "samples", "timeout", "eps", "spec", "r"]))
            lines[i] = f"{key} = {draw(st.sampled_from(TOML_VALUES))}"
        return "\n".join(lines)
    if how == "truncate":
        return text[:draw(st.integers(0, len(text)))]
    if how == "chars":
        chars = list(text)
        for _ in range(draw(st.integers(1, 5))):
            chars[draw(st.integers(0, len(chars) - 1))] = draw(st.characters())
        return "".join(chars)
    if how == "lines":
        picked = draw(st.lists(st.sampled_from(lines), max_size=len(lines)))
        return "\n".join(picked)
    return draw(st.text(max_size=200))


def load_and_plan(text: str, registry: Any) -> None:
    from gauntlet import config

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "audit.toml")
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        cfg = only_gauntlet_errors(lambda: config.load(path))
    if cfg is None:
        return
    attacks = cfg.attacks if cfg.attacks is not None else \
        [Selection(n) for n in registry.entries["attack"]]
    defenses = cfg.defenses or [Selection("none")]
    # planning constructs every parameter point: the plugins' own checks run too
    only_gauntlet_errors(lambda: plan(registry, defenses, attacks))


@fuzz_settings(300)
@given(text=toml_texts())
def test_mutated_config_files_parse_or_fail_with_one_clear_error(text, registry):
    load_and_plan(text, registry)


TOML_LEAVES = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
               | st.text(max_size=12) | st.dates())
TOP_KEYS = ["title", "seed", "out", "samples", "timeout", "model", "data", "attacks",
            "defenses", "spec", "eps", "fgsm", "none", "r"]


@fuzz_settings(150)
@given(raw=st.dictionaries(
    st.sampled_from(TOP_KEYS),
    st.recursive(TOML_LEAVES, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.sampled_from(TOP_KEYS), inner, max_size=3),
                 max_leaves=8), max_size=5))
def test_config_mappings_of_any_shape_validate_or_fail_clearly(raw, registry):
    from gauntlet import config

    cfg = only_gauntlet_errors(lambda: config.from_mapping(raw))
    if cfg is not None:
        attacks = cfg.attacks if cfg.attacks is not None else []
        only_gauntlet_errors(lambda: plan(registry, cfg.defenses or [Selection("none")],
                                          attacks))


def test_deeply_nested_toml_is_a_config_error(tmp_path):
    from gauntlet import ConfigError, config

    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        config.load(path)


def test_idx_label_file_with_one_huge_label_is_a_data_error(registry, tmp_path):
    """Found by reasoning about the fuzz: an int32 label file with one label near 2**31
    made the loader name 2**31 classes and run out of memory."""
    files = idx_bytes()
    labels = (np.arange(12) % 3).astype(">i4")
    labels[0] = 2**31 - 1
    files["train-labels-idx1-ubyte"] = bytes([0, 0, 0x0C, 1]) + (12).to_bytes(4, "big") + \
        labels.tobytes()
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    from gauntlet import DataError
    with deadline(HANG_S), pytest.raises(DataError, match="labels go up to 2147483647"):
        load_dataset(registry, f"idx:{tmp_path}", {})


def test_idx_header_claiming_petabytes_is_a_data_error(registry, tmp_path):
    files = idx_bytes(gz=True)
    images = gzip.decompress(files["t10k-images-idx3-ubyte.gz"])
    huge = images[:4] + (2**31).to_bytes(4, "big") + b"\xff" * 8 + images[16:]
    files["t10k-images-idx3-ubyte.gz"] = gzip.compress(huge)
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    from gauntlet import DataError
    with deadline(HANG_S), pytest.raises(DataError, match="is truncated"):
        load_dataset(registry, f"idx:{tmp_path}", {})


def test_torchscript_with_a_truncated_tensor_record_is_refused_before_it_runs(registry,
                                                                               tmp_path):
    """Found by the fuzz: torch.jit.load trusted the declared storage size of a record cut
    to 0 bytes, and the model's forward pass read out of bounds (a segfault)."""
    from gauntlet import ModelLoadError

    blob = valid_files(FORMATS[0])["model.pt"]
    names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    member = next(i for i, n in enumerate(names) if n.endswith("/data/1"))
    (tmp_path / "model.pt").write_bytes(rezip(blob, member, lambda b: b""))
    report = scan(registry, tmp_path / "model.pt")  # gauntlet scan agrees with the loader
    assert not report.safe and "data/1 holds 0 bytes" in report.verdict
    with pytest.raises(ModelLoadError, match=r"tensor record data/1 holds 0 bytes where its "
                                             r"pickle declares \d+"):
        load_model(registry, str(tmp_path / "model.pt"), {}, tiny_dataset(), 0)


def test_onnx_node_whose_op_type_is_not_utf8_is_refused(registry, tmp_path):
    pytest.importorskip("onnxruntime")
    fmt = next(f for f in FORMATS if f.id == "onnx")
    blob = valid_files(fmt)["model.onnx"].replace(b"Flatten", b"Flatt\xe5n")
    (tmp_path / "model.onnx").write_bytes(blob)
    from gauntlet import ModelLoadError
    report = scan(registry, tmp_path / "model.onnx")  # protobuf hands the name back as bytes
    assert not report.safe and "not a readable ONNX model" in report.verdict
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        load_model(registry, str(tmp_path / "model.onnx"), {}, tiny_dataset(), 0)
