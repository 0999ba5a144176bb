"""ONNX models: real graphs load and predict as onnxruntime computes them; hostile graphs are
refused by the intake scan before an onnxruntime session exists."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gauntlet import Access, AccessDenied, ConfigError, DataError, Dataset, ModelLoadError  # noqa: E402
from gauntlet.cli import main  # noqa: E402
from gauntlet.intake import scan  # noqa: E402
from gauntlet.plugins import onnx_models  # noqa: E402
from gauntlet.plugins.datasets import load_sklearn  # noqa: E402
from gauntlet.plugins.torch_models import build_mlp  # noqa: E402
from gauntlet.registry import make_registry  # noqa: E402

OPSETS = [helper.make_opsetid("", 17)]


@pytest.fixture(scope="module")
def iris() -> Dataset:
    return load_sklearn("iris", {})


@pytest.fixture(scope="module")
def registry():
    return make_registry()


@pytest.fixture(scope="module")
def mlp(iris: Dataset) -> torch.nn.Module:
    """gauntlet's built-in MLP architecture, trained briefly on iris."""
    from gauntlet import train_classifier

    torch.manual_seed(0)
    module = build_mlp(iris.input_shape, iris.n_classes)
    train_classifier(module, iris.x_train, iris.y_train, 0, epochs=30)
    return module.eval()


def reference(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.as_tensor(x)).numpy()


def mlp_graph(module: torch.nn.Module, *, softmax: bool = False, batch: int | None = None,
              extra: tuple = ()) -> onnx.ModelProto:
    """The MLP as a hand-built graph: MatMul, Add, Relu, MatMul, Add (and Softmax)."""
    sd = {k: v.numpy() for k, v in module.state_dict().items()}
    w1, b1, w2, b2 = sd["1.weight"].T, sd["1.bias"], sd["3.weight"].T, sd["3.bias"]
    inits = [numpy_helper.from_array(np.ascontiguousarray(a), n)
             for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "B1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "W2"], ["z0"], name="fc2"),
             helper.make_node("Add", ["z0", "B2"], ["z" if softmax else "y"], name="fc2_bias")]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], axis=1, name="softmax"))
    graph = helper.make_graph([*nodes, *extra], "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [batch, w1.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [batch, w2.shape[1]])], inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def load(path: Path, data: Dataset, **options: object):
    model = onnx_models.load_model(str(path), {"dataset": data, **options})
    assert model is not None
    return model


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def no_session(monkeypatch: pytest.MonkeyPatch) -> list:
    """Any onnxruntime session created while the test runs is recorded here (and fails)."""
    created: list = []

    def spy(*args: object, **kwargs: object) -> None:
        created.append(args)
        raise AssertionError("an onnxruntime session was created for a refused file")

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return created


# -- models that load -------------------------------------------------------------------
@pytest.mark.parametrize("softmax_out", [False, True], ids=["logits", "probabilities"])
def test_hand_built_mlp_predicts_like_the_torch_module(softmax_out, tmp_path, iris, mlp,
                                                       registry):
    path = save(mlp_graph(mlp, softmax=softmax_out), tmp_path / "mlp.onnx")
    report = scan(registry, path)
    assert report.safe and report.format == "onnx"
    expected_ops = {"ai.onnx::MatMul": 2, "ai.onnx::Add": 2, "ai.onnx::Relu": 1}
    if softmax_out:
        expected_ops["ai.onnx::Softmax"] = 1
    assert report.inventory["operators"] == dict(sorted(expected_ops.items()))

    model = load(path, iris)
    assert (model.access, model.recipe, model.input_shape, model.n_classes) == \
        (Access.SCORES, None, (4,), 3)
    expected = softmax(reference(mlp, iris.x_test))
    np.testing.assert_allclose(model.predict(iris.x_test), expected, atol=1e-5)
    assert model.source["output"] == f"y ({'probabilities' if softmax_out else 'logits'})"
    intake = model.source.pop("intake")
    assert intake["safe"] and intake["sha256"] == model.source["sha256"]
    assert model.source["format"] == "onnx" and model.source["path"] == str(path.resolve())


def test_torch_onnx_export_of_the_builtin_mlp(tmp_path, iris, mlp, registry):
    path = tmp_path / "exported.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(mlp, (torch.as_tensor(iris.x_test[:2]),), str(path),
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - the exporter may need packages absent here
        pytest.skip(f"torch.onnx.export does not work here: {exc}")
    assert "ai.onnx::Gemm" in scan(registry, path).inventory["operators"]
    model = load(path, iris)  # a black box: its scores are the softmax of the graph's logits
    np.testing.assert_allclose(model.predict(iris.x_test), softmax(reference(mlp, iris.x_test)),
                               atol=1e-5)


def test_output_option_and_fixed_batch(tmp_path, iris, mlp):
    path = save(mlp_graph(mlp, softmax=True, batch=1), tmp_path / "batch1.onnx")
    z = reference(mlp, iris.x_test)
    # A graph exported for batch 1 still serves any batch (run row by row).
    np.testing.assert_allclose(load(path, iris).predict(iris.x_test), softmax(z), atol=1e-5)
    # Told its probabilities are logits, Gauntlet takes them as logits (and softmaxes them).
    as_logits = load(path, iris, output="logits")
    np.testing.assert_allclose(as_logits.predict(iris.x_test), softmax(softmax(z)), atol=1e-5)
    with pytest.raises(ConfigError, match="output must be"):
        load(path, iris, output="scores")
    with pytest.raises(ModelLoadError, match="negative"):
        load(save(mlp_graph(mlp), tmp_path / "z.onnx"), iris, output="probabilities")


def sklearn_style(coef: np.ndarray, zipmap: bool = True, labels_only: bool = False):
    """sklearn-onnx's classifier layout: a label output, then probabilities (ZipMap)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, coef.shape[1]])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    nodes = [helper.make_node("LinearClassifier", ["x"], ["label", "scores"],
                              domain="ai.onnx.ml", classlabels_ints=[0, 1, 2],
                              coefficients=coef.reshape(-1).tolist(), intercepts=[0.0] * 3,
                              post_transform="SOFTMAX", multi_class=1, name="linear")]
    outputs = [label]
    if zipmap and not labels_only:
        nodes.append(helper.make_node("ZipMap", ["scores"], ["probabilities"],
                                      domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]))
        outputs.append(helper.make_value_info("probabilities", helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64,
                                       helper.make_tensor_type_proto(TensorProto.FLOAT, [])))))
    elif not labels_only:
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3]))
    graph = helper.make_graph(nodes, "sklearn", [x], outputs)
    return helper.make_model(graph, opset_imports=[*OPSETS, helper.make_opsetid("ai.onnx.ml",
                                                                                3)])


@pytest.mark.parametrize("layout", ["zipmap", "tensor", "labels"])
def test_sklearn_onnx_layouts(layout, tmp_path, iris, registry):
    coef = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    path = save(sklearn_style(coef, zipmap=layout == "zipmap", labels_only=layout == "labels"),
                tmp_path / "skl.onnx")
    assert "ai.onnx.ml::LinearClassifier" in scan(registry, path).inventory["operators"]
    model = load(path, iris)
    p = softmax(iris.x_test @ coef.T)
    if layout == "labels":  # labels only: a decision-only black box, which has no scores
        assert model.access == Access.LABELS
        np.testing.assert_array_equal(model.labels(iris.x_test), p.argmax(1))
        with pytest.raises(AccessDenied, match="exposes labels only"):
            model.predict(iris.x_test)
    else:
        assert model.access == Access.SCORES
        assert model.source["output"].endswith("(probabilities)")
        np.testing.assert_allclose(model.predict(iris.x_test), p, atol=1e-5)


def test_subgraphs_and_local_functions_are_inventoried_and_run(tmp_path, iris, mlp, registry):
    # y = If(cond, then: Relu(y0), else: Neg(y0)) after the MLP; a local function doubles.
    branch = {name: helper.make_graph(
        [helper.make_node(op, ["y0"], [f"{name}_out"], name=f"{name}_{op.lower()}")], name, [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [None, 3])])
        for name, op in (("then", "Relu"), ("else", "Neg"))}
    double = helper.make_function("local.ops", "Double", ["a"], ["b"],
                                  [helper.make_node("Add", ["a", "a"], ["b"])], OPSETS)
    extra = (helper.make_node("Constant", [], ["cond"], name="cond",
                              value=numpy_helper.from_array(np.array(True))),
             helper.make_node("If", ["cond"], ["y1"], name="gate",
                              then_branch=branch["then"], else_branch=branch["else"]),
             helper.make_node("Double", ["y1"], ["y"], domain="local.ops", name="double"))
    proto = mlp_graph(mlp, extra=extra)
    proto.graph.node[4].output[0] = "y0"
    proto.functions.append(double)
    proto.opset_import.append(helper.make_opsetid("local.ops", 1))
    path = save(proto, tmp_path / "nested.onnx")
    report = scan(registry, path)
    ops = report.inventory["operators"]
    assert report.safe, report.verdict
    assert ops["ai.onnx::Relu"] == 2 and ops["ai.onnx::Neg"] == 1 and ops["ai.onnx::If"] == 1
    assert ops["local.ops::Double"] == 1 and ops["ai.onnx::Add"] == 3  # 2 + the function's
    expected = 2 * np.maximum(reference(mlp, iris.x_test), 0)
    np.testing.assert_allclose(load(path, iris).predict(iris.x_test), softmax(expected),
                               atol=1e-5)

    # The same function, whose body now calls a contrib operator: refused where it is.
    double.node[0].domain = "com.microsoft"
    proto.functions[0].CopyFrom(double)
    report = scan(registry, save(proto, tmp_path / "nested_bad.onnx"))
    assert not report.safe
    assert "com.microsoft::Add in node #0 of model-local function local.ops::Double" \
        in report.verdict


# -- hostile files ------------------------------------------------------------------------
def test_custom_operator_domains_are_refused_before_a_session(tmp_path, iris, mlp, registry,
                                                              no_session):
    fused = helper.make_node("FusedMatMul", ["y0", "y0"], ["y"], domain="com.microsoft",
                             name="contrib", transB=1)
    proto = mlp_graph(mlp, extra=(fused,))
    proto.graph.node[4].output[0] = "y0"
    path = save(proto, tmp_path / "contrib.onnx")
    report = scan(registry, path)
    assert report.inventory["operators"]["com.microsoft::FusedMatMul"] == 1
    assert report.verdict == ("refused: com.microsoft::FusedMatMul in node 'contrib' of graph "
                              "'mlp' (custom operator domain 'com.microsoft': Gauntlet runs only "
                              "standard ai.onnx and ai.onnx.ml operators)")
    with pytest.raises(ModelLoadError, match="com.microsoft::FusedMatMul in node 'contrib'"):
        load(path, iris)
    attacker = helper.make_node("Exfiltrate", ["x"], ["y"], domain="evil.ops", name="x")
    unknown = helper.make_node("Teleport", ["x"], ["y"], name="t")  # no such standard op
    for node, what in ((attacker, "evil.ops::Exfiltrate"), (unknown, "ai.onnx::Teleport")):
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [None, 4])],
                              [helper.make_tensor_value_info("y", 1, [None, 3])])
        with pytest.raises(ModelLoadError, match=what):
            load(save(helper.make_model(g, opset_imports=OPSETS), tmp_path / "op.onnx"), iris)
    assert no_session == []


def test_a_local_function_cannot_borrow_a_runtime_operator_name(tmp_path, iris, registry,
                                                                monkeypatch):
    # A benign body under the name of a contrib kernel: onnxruntime runs the kernel instead.
    decoy = helper.make_function("com.microsoft", "FusedMatMul", ["a", "b"], ["c"],
                                 [helper.make_node("Add", ["a", "b"], ["c"])], OPSETS)
    node = helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft",
                            name="decoy")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [2, 2])],
                              [helper.make_tensor_value_info("y", 1, [2, 2])])
    proto = helper.make_model(graph, functions=[decoy], opset_imports=[
        *OPSETS, helper.make_opsetid("com.microsoft", 1)])
    x = np.array([[1, 2], [3, 4]], np.float32)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x @ x)  # not x + x

    path = save(proto, tmp_path / "decoy.onnx")
    report = scan(registry, path)
    assert "com.microsoft::FusedMatMul in node 'decoy' of graph 'g' (a model-local function " \
        "named like an operator onnxruntime implements itself" in report.verdict
    created: list = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(a))
    with pytest.raises(ModelLoadError, match="FusedMatMul in node 'decoy'"):
        load(path, iris)
    assert created == []


def external(name: str, location: str, dims: tuple[int, ...] = (2,)) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims),
                    data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * dims[0]))):
        t.external_data.add(key=key, value=value)
    return t


def leaking_graph(tensor: TensorProto) -> onnx.ModelProto:
    """y = x * 0 + W: the file's bytes come straight back out as the model's scores."""
    nodes = [helper.make_node("Mul", ["x", "zero"], ["x0"], name="mul"),
             helper.make_node("Add", ["x0", "W"], ["y"], name="leak")]
    graph = helper.make_graph(nodes, "leak",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(np.float32(0), "zero"), tensor])
    return helper.make_model(graph, opset_imports=OPSETS)


def test_external_data_is_refused_and_never_read(tmp_path, registry, monkeypatch):
    secret = np.array([1234.5, -42.0], dtype=np.float32)
    (tmp_path / "secret.bin").write_bytes(secret.tobytes())
    path = save(leaking_graph(external("W", "secret.bin")), tmp_path / "leak.onnx")
    # The danger is real: onnxruntime reads the file beside the model and hands it back.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    leaked = session.run(None, {"x": np.zeros((1, 2), np.float32)})[0]
    np.testing.assert_array_equal(leaked[0], secret)

    report = scan(registry, path)
    assert report.verdict == ("refused: external tensor data 'secret.bin' in initializer 'W' of "
                              "graph 'leak' (onnxruntime would read that file from the "
                              "auditor's disk)")
    created: list = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(a))
    with pytest.raises(ModelLoadError, match="external tensor data 'secret.bin'"):
        load(path, Dataset.from_arrays("two", np.zeros((4, 2)), [0, 1, 0, 1],
                                       np.zeros((2, 2)), [0, 1]))
    assert created == []  # refused before any session could read a byte of it


@pytest.mark.parametrize("place", ["constant", "sparse", "subgraph", "function"])
def test_external_data_is_found_everywhere(place, tmp_path, registry):
    target = "/etc/hostname"
    proto = leaking_graph(numpy_helper.from_array(np.zeros(2, np.float32), "W"))
    if place == "constant":
        proto.graph.node.append(helper.make_node("Constant", [], ["c"], name="const",
                                                 value=external("v", target)))
        where = "attribute 'value' of node 'const' of graph 'leak'"
    elif place == "sparse":
        values = external("sv", target, (1,))
        indices = numpy_helper.from_array(np.array([0], np.int64), "si")
        proto.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2]))
        where = "sparse initializer 'sv' of graph 'leak'"
    elif place == "subgraph":
        inner = helper.make_graph(
            [helper.make_node("Constant", [], ["b"], name="inner", value=external("v", target))],
            "then", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
        proto.graph.node.append(helper.make_node("If", ["cond"], ["o"], name="gate",
                                                 then_branch=inner, else_branch=inner))
        where = ("attribute 'value' of node 'inner' of subgraph 'then' in attribute "
                 "'then_branch' of node 'gate' of graph 'leak'")
    else:
        proto.functions.append(helper.make_function(
            "local", "F", [], ["o"], [helper.make_node("Constant", [], ["o"], name="k",
                                                       value=external("v", target))], OPSETS))
        where = "attribute 'value' of node 'k' of model-local function local::F"
    report = scan(registry, save(proto, tmp_path / f"{place}.onnx"))
    refused = [str(f) for f in report.findings if f.refused]
    assert f"external tensor data '/etc/hostname' in {where} (onnxruntime would read that " \
           "file from the auditor's disk)" in refused, refused


def test_session_options_in_the_file_are_refused(tmp_path, iris, mlp, registry, monkeypatch):
    proto = mlp_graph(mlp)
    helper.set_model_props(proto, {"ort_config": json.dumps(
        {"session_options": {"enable_profiling": 1}})})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")
    # The danger is real: with the variable set, onnxruntime writes a profile file here.
    ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    written = sorted(tmp_path.glob("onnxruntime_profile*"))
    assert written
    for p in written:
        p.unlink()
    path = save(proto, tmp_path / "profiling.onnx")
    with pytest.raises(ModelLoadError, match="session options in the file"):
        load(path, iris)
    assert not list(tmp_path.glob("onnxruntime_profile*"))
    assert not scan(registry, path).safe


def test_what_is_not_onnx_is_not_claimed(tmp_path, registry):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not a protobuf \x00\x01")
    with pytest.raises(ModelLoadError, match="garbage.onnx is not a readable ONNX model"):
        scan(registry, garbage)  # unreadable (gauntlet scan exits 2), not refused
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        onnx_models.load_model(str(garbage), {})
    # Without the suffix, bytes that merely start like ONNX are left to other readers.
    for data in (b"\x08\x07\x12", b"PK\x03\x04", b"\x80\x04K\x01."):
        assert onnx_models.scan_model(tmp_path / "f.bin", data) is None
    assert onnx_models.load_model("builtin:mlp", {}) is None
    with pytest.raises(ModelLoadError, match="model file not found"):
        onnx_models.load_model(str(tmp_path / "missing.onnx"), {})


def test_data_that_does_not_fit_is_a_data_error(tmp_path, iris, mlp):
    path = save(mlp_graph(mlp), tmp_path / "iris.onnx")
    wine = load_sklearn("wine", {})
    with pytest.raises(DataError, match=r"shaped \(13,\) does not fit model 'iris.onnx', whose "
                                        r"input 'x' is declared \['N', 4\]"):
        load(path, wine)


def test_without_the_extra_the_cli_says_what_to_install(tmp_path, iris, mlp, monkeypatch,
                                                        capsys):
    path = save(mlp_graph(mlp), tmp_path / "mlp.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError, match=r'pip install "ml-gauntlet\[onnx\]"'):
        load(path, iris)
    monkeypatch.setitem(sys.modules, "onnx", None)
    for argv in (["scan", str(path)],
                 ["audit", "--model", str(path), "--data", "sklearn:iris", "--attacks", "noise",
                  "--defenses", "none", "--out", str(tmp_path / "out"), "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "needs the onnx extra" in err and 'pip install "ml-gauntlet[onnx]"' in err
        assert "Traceback" not in err


def test_audit_runs_score_attacks_and_marks_gradient_attacks_not_applicable(tmp_path, mlp):
    import gauntlet

    path = save(mlp_graph(mlp, softmax=True), tmp_path / "mlp.onnx")
    result = gauntlet.audit(model=str(path), data="sklearn:iris",
                            attacks={"fgsm": {"eps": [0.1]}, "noise": {"eps": [0.1]},
                                     "mia-threshold": {}, "trash-bucket": {"probes": 200}},
                            defenses=["none", "confidence-noise"], seed=0)
    status = {(c["defense"], c["attack"]): (c["status"], c["reason"]) for c in result.cells}
    for defense in ("none", "confidence-noise"):
        assert status[(defense, "fgsm")] == (
            "not_applicable", "needs gradients access; this model exposes scores only")
        for attack in ("clean", "noise", "mia-threshold", "trash-bucket"):
            assert status[(defense, attack)][0] == "ok", status[(defense, attack)]
    model = result.result["provenance"]["model"]
    assert (model["access"], model["format"], model["recipe"]) == ("scores", "onnx", None)
    # No visible weights: no hash of nothing; the file's own sha256 identifies the model.
    assert model["weights_sha256"] is None and len(model["sha256"]) == 64
