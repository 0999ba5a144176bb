"""Model-file loaders: every safe format round-trips the digits CNN; unsafe files are refused
without running anything they carry."""
from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gauntlet import DataError, Dataset, Model, ModelLoadError
from gauntlet.plugins.datasets import load_sklearn
from gauntlet.plugins.torch_models import build_cnn, load_model, model_from_module

ARCH = "gauntlet.plugins.torch_models:build_cnn"


def tiny_linear() -> torch.nn.Module:
    """A zero-argument factory, importable as f"{__name__}:tiny_linear"."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def reference_logits(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.as_tensor(x)).numpy()


def input_gradient(module: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(module(xt), torch.as_tensor(y)).backward()
    return xt.grad.numpy()


def load(path: Path, digits: Dataset, **options: object) -> Model:
    model = load_model(str(path), {"dataset": digits, **options})
    assert model is not None
    return model


def export(module: torch.nn.Module, example: np.ndarray, path: Path, dynamic: bool) -> Path:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(module.eval(), (torch.as_tensor(example),),
                                  dynamic_shapes=shapes)
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def dynamic_pt2(tmp_path_factory: pytest.TempPathFactory, digits_model: Model,
                digits: Dataset) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "digits.pt2"
    return export(digits_model._base, digits.x_test[:4], path, dynamic=True)


# -- formats that load ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_weights_plus_arch_round_trip_with_a_recipe(fmt, tmp_path, digits, digits_model):
    path = tmp_path / ("cnn.pt" if fmt == "state_dict" else "cnn.safetensors")
    if fmt == "state_dict":
        torch.save(digits_model._base.state_dict(), path)
    else:
        save_file(digits_model._base.state_dict(), str(path))
    model = load(path, digits, arch=ARCH, epochs=1)
    expected = reference_logits(digits_model._base, digits.x_test)
    assert np.allclose(model.logits(digits.x_test), expected, atol=1e-5)
    assert (model.n_classes, model.input_shape) == (10, (1, 8, 8))
    intake = model.source.pop("intake")
    assert model.source == {"spec": str(path), "path": str(path.resolve()), "format": fmt,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                            "arch": ARCH}
    assert intake["safe"] and intake["sha256"] == model.source["sha256"]
    assert {t["name"] for t in intake["inventory"]["tensors"]} == \
        set(digits_model._base.state_dict())
    fresh = model.recipe.build()
    assert fresh.state_dict().keys() == digits_model._base.state_dict().keys()
    assert not torch.equal(fresh[0].weight, model._base[0].weight)  # untrained copy


def test_zero_argument_factory_and_recipe_retrains(tmp_path, digits):
    torch.manual_seed(1)
    source = tiny_linear()
    path = tmp_path / "linear.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)  # checkpoint layout
    model = load(path, digits, arch=f"{__name__}:tiny_linear", epochs=2, lr=0.05)
    assert np.allclose(model.logits(digits.x_test), reference_logits(source, digits.x_test),
                       atol=1e-6)
    retrained = model.retrain(digits.x_train, digits.y_train, seed=0)
    accuracy = (retrained.predict(digits.x_test).argmax(1) == digits.y_test).mean()
    assert accuracy > 0.8  # a linear model on digits reaches ~0.95; chance is 0.1


def test_torchscript_loads(tmp_path, digits, digits_model):
    path = tmp_path / "cnn.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated
        torch.jit.trace(digits_model._base, torch.as_tensor(digits.x_test[:2])).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(path, digits)
    assert not [w for w in caught if "torch.jit.load" in str(w.message)]
    expected = reference_logits(digits_model._base, digits.x_test)
    assert np.allclose(model.logits(digits.x_test), expected, atol=1e-5)
    assert model.source["format"] == "torchscript" and model.recipe is None


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "fixed-batch-7"])
def test_torch_export_round_trip_with_gradients(dynamic, tmp_path, digits, digits_model):
    # A program exported for a fixed batch of 7 must still take 40 rows (not a multiple).
    path = export(digits_model._base, digits.x_test[:7], tmp_path / "cnn.pt2", dynamic)
    model = load(path, digits)
    x = digits.x_test[:40]
    assert np.allclose(model.logits(x), reference_logits(digits_model._base, x), atol=1e-5)
    assert model.source["format"] == "torch.export" and model.recipe is None
    x, y = digits.x_test[:5], digits.y_test[:5]
    # Through the Model's public gradient, the same as the original network's.
    assert np.allclose(model.loss_gradient(x, y),
                       input_gradient(digits_model._base, x, y), atol=1e-6)


def test_model_from_module_infers_classes_and_takes_a_factory(digits, digits_model):
    model = model_from_module(digits_model._base, digits, name="mine")
    assert (model.n_classes, model.name, model.recipe) == (10, "mine", None)
    assert np.allclose(model.logits(digits.x_test[:9]),
                       reference_logits(digits_model._base, digits.x_test[:9]))
    with_recipe = model_from_module(digits_model._base, digits, factory=build_cnn)
    assert with_recipe.recipe.build().state_dict().keys() == \
        digits_model._base.state_dict().keys()


def test_unknown_specs_are_left_to_other_plugins(tmp_path):
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07not a torch file")
    assert load_model("hub:someone/model", {}) is None
    assert load_model(str(other), {}) is None


# -- refusals ---------------------------------------------------------------------------
class CreatesFile:
    """Unpickling this object creates ``path``: the canary for code run by a loader."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_full_model_pickle_is_refused_with_how_to_resave(tmp_path, digits, digits_model):
    path = tmp_path / "full.pt"
    torch.save(digits_model._base, path)
    with pytest.raises(ModelLoadError, match=r"(?s)full\.pt .*torch\.nn\.modules\.\w+\.\w+ in the "
                       r"pickle's imports \(suspicious, per picklescan\).*unpickling.*"
                       r"state_dict.*safetensors.*torch\.export"):
        load(path, digits, arch=ARCH)


@pytest.mark.parametrize("container", ["torch.save", "bare pickle"])
def test_malicious_pickle_is_refused_without_running_it(container, tmp_path, digits):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(CreatesFile(control)))
    assert control.exists()  # the payload is live when unpickled normally

    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    if container == "torch.save":
        torch.save({"w": torch.ones(2), "payload": CreatesFile(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(CreatesFile(marker), protocol=2))
    with pytest.raises(ModelLoadError, match="unpickling.*Gauntlet refuses"):
        load(path, digits, arch=ARCH)
    assert not marker.exists()


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a zip archive, passing each member's name and bytes through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def edit_program(change):
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            doc = json.loads(data)
            change(doc)
            return json.dumps(doc).encode()
        return data
    return edit


def first_node(doc: dict) -> dict:
    return doc["graph_module"]["graph"]["nodes"][0]


def test_malicious_symbolic_shape_in_pt2_is_refused_without_running_it(
        tmp_path, digits, dynamic_pt2):
    marker = tmp_path / "pwned"
    symbol = "Symbol('s"

    def inject(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        text = data.decode()
        assert symbol in text  # a dynamic batch gives symbolic sizes that sympify evals
        return text.replace(symbol, f"__import__('pathlib').Path({str(marker)!r}).touch() or "
                            + symbol, 1).encode()

    path = rewrite(dynamic_pt2, tmp_path / "evil.pt2", inject)
    with pytest.raises(ModelLoadError, match="symbolic expression.*not plain arithmetic"):
        load(path, digits)
    assert not marker.exists()


@pytest.mark.parametrize("edit, reason", [
    (edit_program(lambda d: first_node(d).update(target="torch.os.system")),
     r"torch\.os\.system in node 'conv2d'.*: .*native code"),
    (edit_program(lambda d: d.update(guards_code=["__import__('os')"])),
     "guard code"),
    (lambda n, b: b.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
     if n.endswith("weights_config.json") else b,
     "pickled object, not a plain tensor"),
    (lambda n, b: None if n.endswith("byteorder") else b, None),  # benign: still loads
], ids=["operator", "guard-code", "pickled-weight", "control"])
def test_pt2_allow_list(edit, reason, tmp_path, digits, dynamic_pt2):
    path = rewrite(dynamic_pt2, tmp_path / "edited.pt2", edit)
    if reason is None:
        assert load(path, digits).n_classes == 10
    else:
        with pytest.raises(ModelLoadError, match=f"torch.export file that Gauntlet will not "
                                                 f"load: .*{reason}"):
            load(path, digits)


def test_pt2_with_native_code_is_refused(tmp_path, digits, dynamic_pt2):
    path = rewrite(dynamic_pt2, tmp_path / "aoti.pt2", lambda n, b: b)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("digits/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(ModelLoadError, match="AOTInductor-compiled native code"):
        load(path, digits)


# -- errors the user can act on ---------------------------------------------------------
def test_missing_file_names_the_path(tmp_path, digits):
    with pytest.raises(ModelLoadError, match=f"model file not found: .*{tmp_path.name}.*nope"):
        load(tmp_path / "nope.pt", digits)


def test_unreadable_file_with_a_model_extension(tmp_path, digits):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"hello")
    with pytest.raises(ModelLoadError, match="not a model format Gauntlet reads"):
        load(path, digits)


@pytest.fixture
def state_dict_file(tmp_path: Path, digits_model: Model) -> Path:
    path = tmp_path / "cnn.pt"
    torch.save(digits_model._base.state_dict(), path)
    return path


def test_weights_without_arch_ask_for_arch(state_dict_file, digits):
    with pytest.raises(ModelLoadError, match="weights only.*arch = 'package.module:factory'"):
        load(state_dict_file, digits)


@pytest.mark.parametrize("arch", ["no_such_package_xyz.nets:cnn",
                                  "gauntlet.plugins.torch_models:no_such_factory",
                                  "missing_colon"])
def test_arch_not_importable(arch, state_dict_file, digits):
    with pytest.raises(ModelLoadError, match="arch"):
        load(state_dict_file, digits, arch=arch)


def test_mismatched_keys_list_the_first_mismatches(state_dict_file, digits):
    with pytest.raises(ModelLoadError, match=r"do not match arch .*build_mlp: missing 1\.weight, "
                       r"1\.bias, 3\.weight, 3\.bias; unexpected 0\.weight, 0\.bias"):
        load(state_dict_file, digits, arch="gauntlet.plugins.torch_models:build_mlp")


def test_data_that_does_not_fit_the_model(dynamic_pt2):
    iris = load_sklearn("iris", {})
    with pytest.raises(DataError, match=r"data 'sklearn:iris' shaped \(4,\) does not fit model "
                                        "'digits.pt2'"):
        load(dynamic_pt2, iris)


def test_n_classes_option_is_checked_against_the_output(dynamic_pt2, digits):
    with pytest.raises(ModelLoadError, match="outputs 10 classes, but n_classes = 12"):
        load(dynamic_pt2, digits, n_classes=12)
