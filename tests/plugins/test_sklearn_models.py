"""scikit-learn models: skops files of real estimators load and predict as the estimator does;
files naming untrusted types, and pickles, are refused without running anything."""
from __future__ import annotations

import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sio = pytest.importorskip("skops.io")
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

import gauntlet  # noqa: E402
from gauntlet import Access, AccessDenied, DataError, Dataset, ModelLoadError  # noqa: E402
from gauntlet.cli import main  # noqa: E402
from gauntlet.intake import scan  # noqa: E402
from gauntlet.plugins import sklearn_models  # noqa: E402
from gauntlet.plugins.datasets import load_sklearn  # noqa: E402
from gauntlet.registry import make_registry  # noqa: E402

LOGISTIC = "sklearn.linear_model._logistic.LogisticRegression"


@pytest.fixture(scope="module")
def registry():
    return make_registry()


@pytest.fixture(scope="module")
def wine() -> Dataset:
    return load_sklearn("wine", {})


@pytest.fixture(scope="module")
def logistic(wine: Dataset) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(wine.x_train, wine.y_train)


def dump(estimator: object, path: Path) -> Path:
    sio.dump(estimator, path)
    return path


def load(path: Path, data: Dataset):
    model = sklearn_models.load_model(str(path), {"dataset": data})
    assert model is not None
    return model


# -- models that load -------------------------------------------------------------------
def test_logistic_regression_predicts_its_own_probabilities(tmp_path, wine, logistic, registry):
    path = dump(logistic, tmp_path / "logistic.skops")
    report = scan(registry, path)
    assert report.safe and report.format == "skops"
    assert report.inventory["estimator"] == LOGISTIC
    assert LOGISTIC in report.inventory["types"] and "numpy.ndarray" in report.inventory["types"]
    model = load(path, wine)
    assert (model.access, model.recipe, model.input_shape, model.n_classes) == \
        (Access.SCORES, None, (13,), 3)
    np.testing.assert_allclose(model.predict(wine.x_test), logistic.predict_proba(wine.x_test),
                               atol=1e-6)
    intake = model.source.pop("intake")
    assert intake["safe"] and intake["sha256"] == model.source["sha256"]
    assert model.source["format"] == "skops" and model.source["output"] == "predict_proba"


def test_a_classifier_without_probabilities_exposes_labels_only(tmp_path, wine):
    svc = SVC().fit(wine.x_train, wine.y_train)
    model = load(dump(svc, tmp_path / "svc.skops"), wine)
    assert model.access == Access.LABELS
    np.testing.assert_array_equal(model.labels(wine.x_test), svc.predict(wine.x_test))
    with pytest.raises(AccessDenied, match="exposes labels only"):
        model.predict(wine.x_test)


def test_images_are_flattened_for_an_estimator_fitted_on_pixels(tmp_path, digits):
    flat = digits.x_train.reshape(len(digits.x_train), -1)
    est = LogisticRegression(max_iter=300).fit(flat, digits.y_train)
    model = load(dump(est, tmp_path / "digits.skops"), digits)
    assert model.input_shape == (1, 8, 8)
    np.testing.assert_allclose(model.predict(digits.x_test[:50]),
                               est.predict_proba(digits.x_test[:50].reshape(50, -1)), atol=1e-6)


def test_labels_and_features_must_fit_the_data(tmp_path, wine, logistic):
    shifted = LogisticRegression(max_iter=1000).fit(wine.x_train, wine.y_train + 1)
    with pytest.raises(DataError, match=r"classes \[1, 2, 3\]; Gauntlet needs integer classes"):
        load(dump(shifted, tmp_path / "shifted.skops"), wine)
    named = LogisticRegression(max_iter=1000).fit(
        wine.x_train, np.array(["a", "b", "c"])[wine.y_train])
    with pytest.raises(DataError, match=r"classes \['a', 'b', 'c'\]"):
        load(dump(named, tmp_path / "named.skops"), wine)
    with pytest.raises(DataError, match=r"data 'sklearn:iris' shaped \(4,\) \(4 features\) "
                                        r"does not fit model 'wine.skops', which was fitted on 13"):
        load(dump(logistic, tmp_path / "wine.skops"), load_sklearn("iris", {}))


# -- hostile and refused files ------------------------------------------------------------
class Implant:
    """Not a scikit-learn type: restoring it writes a file, as any custom class could."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("ran")
        self.__dict__.update(state)


def test_a_custom_type_is_refused_and_never_built(tmp_path, wine, logistic, registry,
                                                  monkeypatch):
    marker = tmp_path / "implant-ran"
    path = dump({"model": logistic, "extra": Implant(str(marker))}, tmp_path / "implant.skops")
    name = f"{Implant.__module__}.Implant"
    # The danger is real: trusting the file's own list of types runs the implant.
    sio.loads(path.read_bytes(), trusted=sio.get_untrusted_types(data=path.read_bytes()))
    assert marker.exists()
    marker.unlink()

    report = scan(registry, path)
    assert report.verdict == (f"refused: {name} in root.extra (outside skops' default trusted "
                              "types, the only ones Gauntlet lets skops build)")
    calls: list = []
    monkeypatch.setattr(sio, "loads", lambda *a, **k: calls.append(a))
    with pytest.raises(ModelLoadError, match=f"skops file that Gauntlet will not load: {name}"):
        load(path, wine)
    assert calls == [] and not marker.exists()


@pytest.mark.parametrize("target", ["builtins.eval", "posix.system"])
def test_a_function_smuggled_into_the_schema_is_refused(target, tmp_path, logistic, registry):
    data = sio.dumps(logistic)
    zin = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(zin.read("schema.json"))
    module, name = target.rsplit(".", 1)
    schema["content"]["content"]["C"] = {"__class__": name, "__module__": module,
                                         "__loader__": "TypeNode"}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for item in zin.namelist():
            zout.writestr(item, json.dumps(schema) if item == "schema.json" else zin.read(item))
    path = tmp_path / "smuggled.skops"
    path.write_bytes(out.getvalue())
    report = scan(registry, path)
    assert f"refused: {target} in root.C" in report.verdict
    with pytest.raises(ModelLoadError, match=target):
        sklearn_models.load_model(str(path), {})


def test_trees_are_refused_with_skops_reason(tmp_path, wine, registry):
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(wine.x_train,
                                                                         wine.y_train)
    report = scan(registry, dump(forest, tmp_path / "forest.skops"))
    assert report.verdict.startswith("refused: sklearn.tree._tree.Tree in root.estimators_[0]")
    notes = [f.what for f in report.findings if not f.refused]
    assert any("without bounds checking" in n and "skl2onnx" in n for n in notes), notes


def touch(path: str) -> None:
    Path(path).write_text("ran")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return touch, (str(self.marker),)


@pytest.mark.parametrize("suffix", [".pkl", ".joblib"])
def test_pickled_estimators_are_refused_with_how_to_resave(suffix, tmp_path, wine, logistic,
                                                           registry):
    marker = tmp_path / "payload-ran"
    data = pickle.dumps([logistic, Payload(marker)])
    pickle.loads(data)  # the danger is real: unpickling runs the payload
    assert marker.exists()
    marker.unlink()
    path = tmp_path / f"model{suffix}"
    path.write_bytes(data)
    report = scan(registry, path)
    assert report.format == "pickle" and not report.safe
    assert f"a pickled scikit-learn model ({LOGISTIC})" in report.verdict
    assert "skops.io.dump(model, 'model.skops')" in report.verdict
    # Through the audit's loader chain, whichever plugin asks first.
    with pytest.raises(ModelLoadError, match=r"re-save it with skops, skops\.io\.dump"):
        gauntlet.audit(model=str(path), data=wine, attacks=["noise"], defenses=["none"])
    assert not marker.exists()


def test_compressed_joblib_is_refused(tmp_path, logistic, registry):
    import joblib

    path = tmp_path / "model.joblib"
    joblib.dump(logistic, path, compress=3)
    assert "skops.io.dump" in scan(registry, path).verdict


def test_without_the_extra_the_cli_says_what_to_install(tmp_path, logistic, monkeypatch,
                                                        capsys):
    path = dump(logistic, tmp_path / "logistic.skops")
    monkeypatch.setitem(sys.modules, "skops", None)
    monkeypatch.setitem(sys.modules, "skops.io", None)
    for argv in (["scan", str(path)],
                 ["audit", "--model", str(path), "--data", "sklearn:wine", "--attacks",
                  "noise", "--defenses", "none", "--out", str(tmp_path / "out"),
                  "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "needs the sklearn extra" in err and 'pip install "ml-gauntlet[sklearn]"' in err
        assert "Traceback" not in err


# -- audits -------------------------------------------------------------------------------
ATTACKS = {"fgsm": {"eps": [0.1]}, "noise": {"eps": [0.1]}, "mia-threshold": {},
           "trash-bucket": {"probes": 200}}


@pytest.mark.parametrize("kind", ["logistic", "svc"])
def test_audit_of_a_skops_classifier(kind, tmp_path, wine, logistic):
    est = logistic if kind == "logistic" else SVC().fit(wine.x_train, wine.y_train)
    path = dump(est, tmp_path / f"{kind}.skops")
    result = gauntlet.audit(model=str(path), data="sklearn:wine", attacks=ATTACKS,
                            defenses=["none", "confidence-noise"], seed=0)
    status = {(c["defense"], c["attack"]): (c["status"], c["reason"]) for c in result.cells}
    access = "scores" if kind == "logistic" else "labels"
    for defense in ("none", "confidence-noise"):
        assert status[(defense, "fgsm")] == (
            "not_applicable", f"needs gradients access; this model exposes {access} only")
        assert status[(defense, "clean")][0] == status[(defense, "noise")][0] == "ok"
        for attack in ("mia-threshold", "trash-bucket"):
            expected = "ok" if kind == "logistic" else "not_applicable"
            assert status[(defense, attack)][0] == expected, status[(defense, attack)]
    assert result.result["provenance"]["model"]["access"] == access
