"""ONNX models through onnxruntime: every operator scanned first, then served as a black box.

An ONNX file is a protobuf ``ModelProto``: a graph of operators that onnxruntime runs with
its own kernels. Two things in such a file can reach past the graph onto the auditor's
machine, and the intake scan refuses both before a session exists:

- operators outside the standard domains (``ai.onnx``, ``ai.onnx.ml``): contrib kernels
  such as ``com.microsoft`` ops (``EPContext`` names a file for an execution provider to
  read) or anything a custom-op library registers. A call of a model-local function is
  allowed when the function's own body passes the same scan, unless the function is named
  like an operator onnxruntime implements itself: onnxruntime would run its own kernel.
- external tensor data (``data_location = EXTERNAL``): onnxruntime would read a file the
  model names, from the auditor's disk, into a tensor the model can then leak through its
  outputs. Checked on initializers, sparse initializers, every tensor attribute (not only
  ``Constant``'s), subgraphs (If/Loop/Scan), function bodies and training graphs.

Session options stored in the file (metadata ``ort_config``, honoured by onnxruntime when
``ORT_LOAD_CONFIG_FROM_MODEL=1``, e.g. ``enable_profiling`` writes a file) are refused too.
The session is created from the bytes already read and hashed, CPU provider only, ONNX
format forced. The model's gradients are not available, so it is a SCORES-access Model
(LABELS if the graph outputs labels only). Options under ``[model]``: ``output`` (``auto``,
``logits`` or ``probabilities``; auto takes rows that are non-negative and sum to one as
probabilities) and ``output_name`` (which graph output to read).

Needs the ``onnx`` extra (``pip install "ml-gauntlet[onnx]"``: onnx + onnxruntime).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gauntlet import (
    Access,
    ConfigError,
    DataError,
    Dataset,
    Model,
    ModelLoadError,
    ScanReport,
    hookimpl,
    read_model_file,
)

READER = "gauntlet.plugins.onnx_models"
EXTRA = 'pip install "ml-gauntlet[onnx]"'
STANDARD_DOMAINS = {"": "ai.onnx", "ai.onnx": "ai.onnx", "ai.onnx.ml": "ai.onnx.ml"}
#: Probabilities are floored here before their log is taken, so logits stay finite.
PROBABILITY_FLOOR = 1e-12
_TAG_IR_VERSION = b"\x08"  # field 1 (ir_version), varint: what every ONNX writer emits first


def _needs_extra(what: str, exc: ImportError) -> ModelLoadError:
    return ModelLoadError(f"{what} needs the onnx extra ({exc.name or exc} is not installed): "
                          f"{EXTRA}")


# -- recognising and scanning ----------------------------------------------------------
def _parse(data: bytes) -> Any:
    """The ModelProto in ``data``, or None. Parsing protobuf runs nothing from the file."""
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001 - DecodeError, recursion limits, ...: not a model
        return None
    return model if model.HasField("graph") and model.ir_version > 0 else None


def _claims(path: Path, data: bytes) -> bool:
    """True if ``data`` should be read as ONNX. Protobuf has no magic number, so a file is
    ours by its ``.onnx`` suffix, or by starting with the ir_version field and parsing."""
    if path.suffix.lower() == ".onnx":
        # A TorchScript zip or a pickle misnamed .onnx is left to the scanner of its format.
        return data[:2] != b"PK" and data[:1] != b"\x80"
    return data[:1] == _TAG_IR_VERSION


def scan_onnx(path: Path | str, data: bytes) -> tuple[ScanReport, Any]:
    """The scan of ONNX bytes and the parsed ModelProto (None if unreadable)."""
    import onnx

    report = ScanReport.of(path, data, "onnx", f"{READER} (onnx {onnx.__version__})")
    model = _parse(data)
    if model is None:  # unreadable, not refused: `gauntlet scan` exits 2, as for any format
        raise ModelLoadError(f"{path} is not a readable ONNX model (no ModelProto with a "
                             "graph could be parsed from the file)")
    try:
        _Scanner(report, model).run()
    except Exception as exc:  # noqa: BLE001 - fail closed: what cannot be read is refused
        # e.g. a name that is not valid UTF-8 comes back from protobuf as bytes.
        first = (str(exc).strip().splitlines() or [""])[0]
        report.refuse(f"not a readable ONNX model ({type(exc).__name__}: {first})")
        return report, None
    return report, model


@hookimpl(trylast=True)  # a built-in fallback: a third-party ONNX scanner is asked first
def scan_model(path: Path, data: bytes) -> ScanReport | None:
    if not _claims(Path(path), data):
        return None
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        if Path(path).suffix.lower() == ".onnx":
            raise _needs_extra(f"reading {path}", exc) from None
        return None  # cannot tell without onnx; another plugin may know the file
    try:
        report, _ = scan_onnx(path, data)
    except ModelLoadError:
        if Path(path).suffix.lower() == ".onnx":
            raise
        return None  # only the first byte looked like ONNX
    return report


class _Scanner:
    """Walks a ModelProto: operator inventory, and a refusal for everything that would
    reach outside the graph, each with where it is."""

    def __init__(self, report: ScanReport, model: Any) -> None:
        self.report, self.model = report, model
        self.operators: Counter[str] = Counter()
        self.functions = {(f.domain, f.name, getattr(f, "overload", "")): f
                          for f in model.functions}

    def run(self) -> None:
        m = self.model
        self.report.inventory.update({
            "ir_version": int(m.ir_version),
            "opsets": {STANDARD_DOMAINS.get(o.domain, o.domain): int(o.version)
                       for o in m.opset_import},
            "producer": f"{m.producer_name} {m.producer_version}".strip(),
        })
        for prop in m.metadata_props:
            if prop.key == "ort_config":
                self.report.refuse("session options in the file (metadata 'ort_config')",
                                   "the model's metadata (onnxruntime applies them when "
                                   "ORT_LOAD_CONFIG_FROM_MODEL=1; enable_profiling writes "
                                   "files)")
        self.graph(m.graph, f"graph {m.graph.name!r}")
        for f in m.functions:
            self.nodes(f.node, f"model-local function {f.domain}::{f.name}")
            for attr in f.attribute_proto:  # default attribute values
                self.attribute(attr, f"default {attr.name!r} of function {f.domain}::{f.name}")
        for i, info in enumerate(m.training_info):
            self.graph(info.initialization, f"training_info[{i}] initialization graph")
            self.graph(info.algorithm, f"training_info[{i}] algorithm graph")
        self.report.inventory["inputs"] = [_value_info(v) for v in m.graph.input
                                           if v.name not in {t.name for t in
                                                             m.graph.initializer}]
        self.report.inventory["outputs"] = [_value_info(v) for v in m.graph.output]
        self.report.inventory["operators"] = dict(sorted(self.operators.items()))

    def graph(self, g: Any, where: str) -> None:
        for t in g.initializer:
            self.tensor(t, f"initializer {t.name!r} of {where}")
        for s in g.sparse_initializer:
            self.tensor(s.values, f"sparse initializer {s.values.name!r} of {where}")
            self.tensor(s.indices, f"sparse initializer indices of {where}")
        self.nodes(g.node, where)

    def nodes(self, nodes: Any, where: str) -> None:
        import onnx.defs

        for i, node in enumerate(nodes):
            label = f"node {node.name!r}" if node.name else f"node #{i}"
            here = f"{label} of {where}"
            domain = STANDARD_DOMAINS.get(node.domain, node.domain)
            key = f"{domain}::{node.op_type}"
            self.operators[key] += 1
            local = (node.domain, node.op_type, getattr(node, "overload", "")) in self.functions
            if node.domain in STANDARD_DOMAINS:
                if not local and not onnx.defs.has(node.op_type, "" if domain == "ai.onnx"
                                                   else domain):
                    self.report.refuse(key, f"{here} (not an operator of the ONNX standard)")
            elif not local:
                self.report.refuse(key, f"{here} (custom operator domain {node.domain!r}: "
                                   "Gauntlet runs only standard ai.onnx and ai.onnx.ml "
                                   "operators)")
            elif _runtime_owns(node.domain, node.op_type):
                # onnxruntime resolves such a node to its own kernel, not to the function.
                self.report.refuse(key, f"{here} (a model-local function named like an "
                                   "operator onnxruntime implements itself, which it would "
                                   "run instead of the function's body)")
            for attr in node.attribute:
                self.attribute(attr, f"attribute {attr.name!r} of {here}")

    def attribute(self, attr: Any, where: str) -> None:
        # Every field is checked whatever attr.type says: the type is the file's claim.
        if attr.HasField("t"):
            self.tensor(attr.t, where)
        for t in attr.tensors:
            self.tensor(t, where)
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for s in [*sparse, *attr.sparse_tensors]:
            self.tensor(s.values, where)
            self.tensor(s.indices, where)
        if attr.HasField("g"):
            self.graph(attr.g, f"subgraph {attr.g.name!r} in {where}")
        for g in attr.graphs:
            self.graph(g, f"subgraph {g.name!r} in {where}")

    def tensor(self, t: Any, where: str) -> None:
        import onnx

        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            location = next((e.value for e in t.external_data if e.key == "location"), "?")
            self.report.refuse(f"external tensor data {location!r}",
                               f"{where} (onnxruntime would read that file from the "
                               "auditor's disk)")


_RUNTIME_DOMAINS = ("ai.onnx", "com.microsoft", "com.ms.", "org.pytorch")


def _runtime_owns(domain: str, op_type: str) -> bool:
    """True if onnxruntime may have its own kernel for ``domain::op_type``: a reserved
    domain, or an operator it registers (asked of onnxruntime when it is installed)."""
    if domain.startswith(_RUNTIME_DOMAINS):
        return True
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        schemas = ort_state.get_all_operator_schema()
    except Exception:  # noqa: BLE001 - not installed, or a build without schemas
        return False
    return any(s.domain == domain and s.name == op_type for s in schemas)


def _value_info(v: Any) -> dict[str, Any]:
    t = v.type
    if t.HasField("tensor_type"):
        import onnx

        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.tensor_type.shape.dim]
        elem = t.tensor_type.elem_type
        names = onnx.TensorProto.DataType
        dtype = names.Name(elem).lower() if elem in names.values() else f"type {elem}"
        return {"name": v.name, "type": dtype, "shape": dims}
    return {"name": v.name, "type": t.WhichOneof("value") or "unknown", "shape": None}


# -- loading ---------------------------------------------------------------------------
@hookimpl(trylast=True)
def load_model(spec: str, options: Mapping[str, Any]) -> Model | None:
    path = Path(spec).expanduser()
    named_onnx = path.suffix.lower() == ".onnx"
    if not path.is_file():
        if named_onnx:
            raise ModelLoadError(f"model file not found: {path}")
        return None
    if not named_onnx and _head(path) != _TAG_IR_VERSION:
        return None  # not ours; and a large model of another format is not read twice
    data = read_model_file(path)
    # The intake scan decides before onnxruntime sees a byte of the file.
    report = scan_model(path, data)
    if report is None:
        return None
    if not report.safe:
        raise report.error()
    session = _session(path, data)
    source = {"spec": spec, "path": str(path.resolve()), "format": "onnx",
              "sha256": report.sha256, "intake": report.to_dict()}
    return _wrap(session, path.name, source, options)


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(1)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None


def _session(path: Path, data: bytes) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _needs_extra(f"loading {path}", exc) from None
    opts = ort.SessionOptions()
    opts.enable_profiling = False
    opts.log_severity_level = 3  # errors only; the scan already said what the graph holds
    # The bytes were scanned as ONNX; never let onnxruntime sniff them as its ORT format.
    opts.add_session_config_entry("session.load_model_format", "ONNX")
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any onnxruntime failure means an unloadable file
        raise ModelLoadError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_SCORES = {"tensor(float)", "tensor(double)", "tensor(float16)"}
_LABELS = {"tensor(int64)", "tensor(int32)"}


def _kind(type_name: str) -> str | None:
    """How Gauntlet reads an output: scores (N, C), zipmap (sklearn-onnx's list of
    {class: probability}), labels (N,), or None (not a classifier output it can read)."""
    if type_name in _SCORES:
        return "scores"
    if type_name.startswith("seq(map(int64,"):
        return "zipmap"
    return "labels" if type_name in _LABELS else None


def _pick_output(session: Any, name: str, options: Mapping[str, Any]) -> tuple[str, str]:
    outputs = [(o.name, o.type, _kind(o.type)) for o in session.get_outputs()]
    listed = ", ".join(f"{n} {t}" for n, t, _ in outputs)
    wanted = options.get("output_name")
    if wanted is not None:
        found = [(n, k) for n, _, k in outputs if n == wanted]
        if not found or found[0][1] is None:
            raise ModelLoadError(f"model {name!r} has no readable output {wanted!r} (outputs: "
                                 f"{listed})")
        return found[0]  # type: ignore[return-value]
    # sklearn-onnx classifiers output (label, probabilities): the scores are worth more.
    for wanted_kinds in (("scores", "zipmap"), ("labels",)):
        for n, _, k in outputs:
            if k in wanted_kinds:
                return n, k
    raise ModelLoadError(f"model {name!r} has no output Gauntlet can read as class scores or "
                         f"integer labels 0..n-1 (outputs: {listed}); string class labels "
                         "need re-exporting with integer labels")


class OnnxClassifier(torch.nn.Module):
    """An onnxruntime session behind a torch module: numpy in, logits out, no gradients."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self._run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(x.detach().cpu().numpy()))


def _wrap(session: Any, name: str, source: dict[str, Any],
          options: Mapping[str, Any]) -> Model:
    dataset = options.get("dataset")
    dataset = dataset if isinstance(dataset, Dataset) else None
    shape = tuple(int(d) for d in (options.get("input_shape") or
                                   (dataset.input_shape if dataset else ())))
    if not shape:
        raise ModelLoadError(f"cannot tell what {name} takes as input: give input_shape under "
                             "[model], or data")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"model {name!r} takes {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); Gauntlet feeds one batch")
    inp = inputs[0]
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64}.get(inp.type)
    if dtype is None:
        raise ModelLoadError(f"model {name!r} takes {inp.type} input {inp.name!r}; Gauntlet "
                             "feeds float32 or float64")
    dims = list(inp.shape or [])
    what = f"data {dataset.name!r}" if dataset else "input_shape"
    if dims and (len(dims) != len(shape) + 1 or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(dims[1:], shape))):
        raise DataError(f"{what} shaped {shape} does not fit model {name!r}, whose input "
                        f"{inp.name!r} is declared {['N' if d is None else d for d in dims]}")
    batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None

    output, kind = _pick_output(session, name, options)
    n_labels = options.get("n_classes") or (dataset.n_classes if dataset else None)
    if kind == "labels" and not n_labels:
        raise ModelLoadError(f"model {name!r} outputs labels only; give n_classes under [model]")

    def raw(x: np.ndarray) -> np.ndarray:
        """The output as float64 (N, C): scores, or one-hot labels."""
        x = np.ascontiguousarray(x, dtype=dtype)
        step = batch or max(len(x), 1)
        parts = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            n = len(chunk)
            if batch and n < batch:  # a graph exported for a fixed batch: pad the last one
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            (out,) = session.run([output], {inp.name: chunk})
            parts.append(_as_matrix(out, kind, n_labels)[:n])
        return np.concatenate(parts) if parts else np.zeros((0, 0))

    sample = (dataset.x_test[:64] if len(dataset.x_test) else dataset.x_train[:64]) \
        if dataset else np.zeros((2, *shape), np.float32)
    try:
        probe = raw(sample)
    except ModelLoadError:
        raise  # the outputs are unreadable, whatever the data
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises, the data misfits
        raise DataError(f"{what} shaped {shape} does not fit model {name!r}: "
                        f"{_first_line(exc)}") from None
    mode = _output_mode(probe, kind, name, options.get("output", "auto"))
    n_classes = probe.shape[1]
    if options.get("n_classes") is not None and int(options["n_classes"]) != n_classes:
        raise ModelLoadError(f"model {name!r} outputs {n_classes} classes, but n_classes = "
                             f"{options['n_classes']} was given")

    def logits(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, n_classes), np.float32)
        out = raw(x)
        if mode != "logits":  # softmax(log p) = p: Model.predict returns the model's own p
            out = np.log(np.clip(out, PROBABILITY_FLOOR, None))
        return out.astype(np.float32)

    source = {**source, "output": f"{output} ({mode})"}
    model = Model(OnnxClassifier(logits), input_shape=shape, n_classes=n_classes,
                  clip_values=dataset.clip_values if dataset else
                  tuple(options.get("clip_values", (0.0, 1.0))),
                  access=Access.LABELS if kind == "labels" else Access.SCORES,
                  name=name, source=source)
    if dataset is not None:
        model.check_data(dataset)
    return model


def _as_matrix(out: Any, kind: str, n_labels: int | None) -> np.ndarray:
    if kind == "zipmap":
        rows = list(out)
        keys = sorted(rows[0]) if rows else []
        if keys != list(range(len(keys))):
            raise ModelLoadError(f"the model's class labels are {keys[:10]}; Gauntlet needs "
                                 "0..n-1")
        return np.array([[row[k] for k in keys] for row in rows], dtype=np.float64)
    arr = np.asarray(out)
    if kind == "labels":
        labels = arr.reshape(-1).astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= int(n_labels or 0)):
            raise ModelLoadError(f"the model output label {int(labels.max())}, outside "
                                 f"0..{int(n_labels or 0) - 1}")
        return np.eye(int(n_labels or 0), dtype=np.float64)[labels]
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ModelLoadError(f"the model returned scores shaped {arr.shape}; Gauntlet needs "
                             "(N, n_classes) with at least 2 classes")
    return arr.astype(np.float64)


def _output_mode(probe: np.ndarray, kind: str, name: str, wanted: Any) -> str:
    """``logits`` or ``probabilities``: as configured, else found on the sample batch."""
    if kind == "labels":
        return "labels"
    if wanted not in ("auto", "logits", "probabilities"):
        raise ConfigError(f"[model] output must be 'logits' or 'probabilities', got {wanted!r}")
    finite = bool(np.isfinite(probe).all())
    looks = finite and probe.min() >= -1e-6 and bool(np.allclose(probe.sum(axis=1), 1.0,
                                                                  atol=1e-3))
    if wanted == "probabilities" and not (finite and probe.min() >= 0):
        raise ModelLoadError(f"output = 'probabilities' for model {name!r}, but it returned "
                             "negative or non-finite scores")
    if wanted == "auto":
        return "probabilities" if looks else "logits"
    return str(wanted)
