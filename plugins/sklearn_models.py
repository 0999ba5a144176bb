"""scikit-learn models from skops files, never from pickles; served as a black box.

A ``.skops`` file is a zip whose ``schema.json`` names every type the file would build.
The intake scan lists them and refuses any type outside skops' default trusted set (the
estimators, numpy and scipy types skops vouches for); the loader then calls
``skops.io.loads`` trusting only those defaults, never a list taken from the file. Some
scikit-learn types are outside that set on purpose: skops does not trust
``sklearn.tree._tree.Tree`` (decision trees, random forests, gradient boosting), because a
crafted node array makes ``predict`` read out of bounds; such files are refused, with
skops' reason.

A pickled estimator (``joblib.dump`` / ``pickle.dump``, usually ``.pkl`` or ``.joblib``)
is refused by its bytes (no unpickling), with how to re-save it with ``skops.io.dump``.

The Model exposes scores (the log of ``predict_proba``) when the estimator has
``predict_proba``, labels otherwise; it has no gradients and no training recipe.
Needs the ``sklearn`` extra (``pip install "ml-gauntlet[sklearn]"``: skops).
"""
from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gauntlet import (
    Access,
    DataError,
    Dataset,
    Model,
    ModelLoadError,
    ScanReport,
    hookimpl,
    read_model_file,
)

READER = "gauntlet.plugins.sklearn_models"
EXTRA = 'pip install "ml-gauntlet[sklearn]"'
RESAVE = ("re-save it with skops, skops.io.dump(model, 'model.skops'), and audit "
          "model.skops")
#: Probabilities are floored here before their log is taken, so logits stay finite.
PROBABILITY_FLOOR = 1e-12
_SCHEMA_LIMIT = 256 << 20  # a schema.json larger than this (unpacked) is refused unread
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}
# Refused even by a skops release that trusts them: their node arrays index memory unchecked
# (recent skops distrusts them too, see skops.io.exceptions.UNTRUSTED_TYPE_REASONS).
_DISTRUSTED = {"sklearn.tree._tree.Tree",
               "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}


def _needs_extra(what: str, exc: ImportError) -> ModelLoadError:
    return ModelLoadError(f"{what} needs the sklearn extra ({exc.name or exc} is not "
                          f"installed): {EXTRA}")


def _is_skops(path: Path, data: bytes) -> bool:
    if data[:4] != b"PK\x03\x04":
        return path.suffix.lower() == ".skops"
    try:
        return "schema.json" in zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError):
        return path.suffix.lower() == ".skops"


# -- scanning --------------------------------------------------------------------------
@hookimpl(tryfirst=True)
def scan_model(path: Path, data: bytes) -> ScanReport | None:
    # tryfirst: a pickled estimator must get the skops advice, not the PyTorch one.
    if _is_skops(Path(path), data):
        return scan_skops(path, data)
    return scan_sklearn_pickle(path, data)


def scan_skops(path: Path | str, data: bytes) -> ScanReport:
    """The types a skops file would construct; any outside skops' defaults is refused."""
    try:
        import skops
        import skops.io as sio
    except ImportError as exc:
        raise _needs_extra(f"reading {path}", exc) from None
    report = ScanReport.of(path, data, "skops", f"{READER} (skops {skops.__version__})")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:  # unreadable, not refused: exit 2
        raise ModelLoadError(f"{path} is not a readable skops file ({exc})") from None
    try:
        info = zf.getinfo("schema.json")
        if info.file_size > _SCHEMA_LIMIT:
            raise ValueError(f"schema.json unpacks to {info.file_size:,} bytes")
        schema = json.loads(zf.read(info))
        types: Counter[str] = Counter()
        first: dict[str, str] = {}
        _walk(schema, "root", types, first)
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - any failure to read the layout is a refusal
        report.refuse(f"not a readable skops file ({type(exc).__name__}: {exc})")
        return report
    root = f"{schema.get('__module__')}.{schema.get('__class__')}"
    report.inventory.update({"estimator": root, "types": sorted(types),
                             "type_counts": dict(sorted(types.items())),
                             "protocol": schema.get("protocol"),
                             "skops_version": schema.get("_skops_version")})
    try:
        from skops.io.exceptions import UNTRUSTED_TYPE_REASONS as reasons
    except ImportError:  # older skops: no reasons to quote
        reasons = {}
    for name in sorted({*untrusted, *(_DISTRUSTED & set(types))}):
        why = ("outside skops' default trusted types, the only ones Gauntlet lets skops build"
               if name in untrusted else "tree node storage that scikit-learn indexes without "
               "bounds checks; Gauntlet never lets skops build it")
        report.refuse(name, f"{first.get(name, 'schema.json')} ({why})")
        if name in reasons:  # skops says why it distrusts a scikit-learn type
            why = reasons[name].split(" If you ")[0]  # skops' own opt-in is not Gauntlet's
            report.note(f"skops on {name}: {why} Gauntlet has no opt-in for it; to audit "
                        "such a model, convert it to ONNX (skl2onnx) and audit the .onnx file")
    return report


def _walk(node: Any, where: str, types: Counter[str], first: dict[str, str]) -> None:
    """Every ``module.Class`` named in a skops schema, with where each first appears."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{where}[{i}]", types, first)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("__module__"), str) and isinstance(node.get("__class__"), str):
        name = f"{node['__module__']}.{node['__class__']}"
        content = node.get("content")
        if node.get("__loader__") == "MethodNode" and isinstance(content, dict):
            name += f".{content.get('func')}"
        types[name] += 1
        first.setdefault(name, where)
    for key, value in node.items():
        if key not in ("__module__", "__class__", "__loader__"):
            _walk(value, f"{where}.{key}" if key != "content" else where, types, first)


def scan_sklearn_pickle(path: Path | str, data: bytes) -> ScanReport | None:
    """A refused report for a pickle that imports scikit-learn, else None (not ours)."""
    suffix = Path(path).suffix.lower()
    if data[:1] != b"\x80":  # not a pickle (protocol 2+)
        if suffix not in _PICKLE_SUFFIXES or data[:4] == b"PK\x03\x04":
            return None
        # Compressed (joblib's compress=) or an old pickle protocol: never unpickled either.
        report = ScanReport.of(path, data, "pickle", READER)
        report.refuse(f"a {suffix} file (a compressed or old-protocol pickle): Gauntlet never "
                      f"unpickles; if it holds a scikit-learn model, {RESAVE}")
        return report
    from picklescan.scanner import scan_bytes

    try:
        found = scan_bytes(io.BytesIO(data), str(path), ".pkl").globals
    except Exception:  # noqa: BLE001 - unlistable: leave the file to the pickle scanner
        return None
    modules = sorted({g.module for g in found})
    if not any(m.split(".")[0] in ("sklearn", "joblib") for m in modules):
        return None
    report = ScanReport.of(path, data, "pickle", f"{READER} (picklescan)")
    report.inventory["globals"] = [{"module": g.module, "name": g.name,
                                    "safety": g.safety.value} for g in found]
    est = next((f"{g.module}.{g.name}" for g in found if g.module.startswith("sklearn.")),
               "joblib")
    report.refuse(f"a pickled scikit-learn model ({est}): loading it means unpickling, which "
                  f"can run arbitrary code, so Gauntlet refuses; {RESAVE}")
    return report


# -- loading ---------------------------------------------------------------------------
# trylast: a built-in fallback, so any third-party loader is asked first. Among built-in
# fallbacks pluggy asks the earliest registered first (entry points load in name order:
# onnx_models, sklearn_models, torch_models), so a pickled estimator gets the skops
# advice here before the PyTorch loader sees it; tests/test_registry.py pins that order.
@hookimpl(trylast=True)
def load_model(spec: str, options: Mapping[str, Any]) -> Model | None:
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if not path.is_file():
        if suffix == ".skops":
            raise ModelLoadError(f"model file not found: {path}")
        return None
    head = _head(path)
    if suffix not in {".skops", *_PICKLE_SUFFIXES} and head[:1] != b"\x80" and not (
            head == b"PK" and _zip_has_schema(path)):
        return None  # not ours: a large model of another format is not read twice
    data = read_model_file(path)
    if not _is_skops(path, data):
        report = scan_sklearn_pickle(path, data)
        if report is not None:
            raise report.error()
        return None
    report = scan_skops(path, data)
    if not report.safe:
        raise report.error()
    import skops.io as sio

    try:
        # Only skops' default trusted types: the scan above refused everything else.
        estimator = sio.loads(data)
    except Exception as exc:  # noqa: BLE001 - any failure to build it means a bad file
        raise ModelLoadError(f"skops cannot load {path}: {type(exc).__name__}: {exc}") from None
    source = {"spec": spec, "path": str(path.resolve()), "format": "skops",
              "sha256": report.sha256, "intake": report.to_dict(),
              "estimator": type(estimator).__name__}
    return wrap_estimator(estimator, options, name=path.name, source=source)


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(2)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None


def _zip_has_schema(path: Path) -> bool:
    try:  # reads the zip's central directory only
        with zipfile.ZipFile(path) as zf:
            return "schema.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


class EstimatorClassifier(torch.nn.Module):
    """A fitted scikit-learn classifier behind a torch module: logits, no gradients."""

    def __init__(self, estimator: Any, n_classes: int, scores: bool) -> None:
        super().__init__()
        self.estimator, self.n_classes, self.scores = estimator, n_classes, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().numpy().reshape(len(x), -1)
        if len(rows) == 0:
            return torch.zeros((0, self.n_classes))
        with warnings.catch_warnings():
            # Fitted on a DataFrame, served an array: the columns are the same, in order.
            warnings.filterwarnings("ignore", "X does not have valid feature names")
            if self.scores:
                p = np.asarray(self.estimator.predict_proba(rows), dtype=np.float64)
            else:
                labels = np.asarray(self.estimator.predict(rows)).astype(np.int64)
                p = np.eye(self.n_classes)[labels]
        return torch.from_numpy(np.log(np.clip(p, PROBABILITY_FLOOR, None)).astype(np.float32))


def wrap_estimator(estimator: Any, options: Mapping[str, Any], *, name: str,
                   source: dict[str, Any]) -> Model:
    """A black-box Model around a fitted classifier whose classes are 0..n-1."""
    dataset = options.get("dataset")
    dataset = dataset if isinstance(dataset, Dataset) else None
    if not callable(getattr(estimator, "predict", None)):
        raise ModelLoadError(f"{name} holds a {type(estimator).__name__}, not a classifier "
                             "with predict()")
    classes = np.asarray(getattr(estimator, "classes_", []))
    if classes.ndim != 1 or classes.dtype.kind not in "iu" or \
            not np.array_equal(classes, np.arange(len(classes))) or len(classes) < 2:
        raise DataError(f"model {name!r} has classes {classes.tolist()[:10]}; Gauntlet needs "
                        "integer classes 0..n-1 (train it on the data's integer labels)")
    shape = tuple(int(d) for d in (options.get("input_shape") or
                                   (dataset.input_shape if dataset else ())))
    if not shape:
        raise ModelLoadError(f"cannot tell what {name} takes as input: give input_shape under "
                             "[model], or data")
    features = getattr(estimator, "n_features_in_", None)
    what = f"data {dataset.name!r}" if dataset else "input_shape"
    if features is not None and int(features) != int(np.prod(shape)):
        raise DataError(f"{what} shaped {shape} ({int(np.prod(shape))} features) does not fit "
                        f"model {name!r}, which was fitted on {features} features")
    if dataset is not None and dataset.n_classes > len(classes):
        raise DataError(f"data {dataset.name!r} has {dataset.n_classes} classes, but model "
                        f"{name!r} knows classes 0..{len(classes) - 1}")
    scores = callable(getattr(estimator, "predict_proba", None))
    module = EstimatorClassifier(estimator, len(classes), scores)
    model = Model(module, input_shape=shape, n_classes=len(classes),
                  clip_values=dataset.clip_values if dataset else
                  tuple(options.get("clip_values", (0.0, 1.0))),
                  access=Access.SCORES if scores else Access.LABELS, name=name,
                  source={**source, "output": "predict_proba" if scores else "predict"})
    if dataset is not None:
        model.check_data(dataset)
    return model
