"""examples/fashion-mnist-mlp.toml end to end, on a tiny IDX set written here: the training
script writes safetensors weights, the real loaders read them into the sigmoid MLP factory,
and the audit's report carries the classic FGSM table and a gallery of 28x28 images."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG = EXAMPLES / "fashion-mnist-mlp.toml"


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (magic 0x08, then the number of dimensions)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                   *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_idx(tmp_path: Path) -> Path:
    """A learnable 28x28, 10-class IDX set: class c lights up row band c."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny-mnist"
    root.mkdir()
    for split, n in (("train", 200), ("t10k", 40)):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c + 4: 2 * c + 6, 4:24] = 230
        _write_idx(root / f"{split}-images-idx3-ubyte", x)
        _write_idx(root / f"{split}-labels-idx1-ubyte", y)
    return root


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "sigmoid_mlp", raising=False)
    monkeypatch.delitem(sys.modules, "train_sigmoid_mlp", raising=False)


def test_factory_is_784_200_10_sigmoid(examples_on_path: None) -> None:
    import torch
    from sigmoid_mlp import make_mlp

    net = make_mlp(input_shape=(1, 28, 28), n_classes=10)
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 200), (200, 10)]
    assert any(isinstance(m, torch.nn.Sigmoid) for m in net)


def test_trained_weights_load_and_audit_with_the_classic_table(
        tmp_path: Path, tiny_idx: Path, examples_on_path: None) -> None:
    from train_sigmoid_mlp import train

    import gauntlet
    from gauntlet.reports.html import render_report

    weights, accuracy = train(str(tiny_idx), tmp_path / "w" / "mlp.safetensors", epochs=8,
                              lr=1e-2)
    assert weights.exists() and accuracy > 0.9
    audit = gauntlet.audit(model=str(weights), data=f"idx:{tiny_idx}", config=CONFIG,
                           samples=20)
    result = audit.result
    model = result["provenance"]["model"]
    assert model.get("format") == "safetensors" or "safetensors" in str(model)
    assert result["config"]["model"]["arch"] == "sigmoid_mlp:make_mlp"
    cells = {(c["attack"], c["attack_point"]): c for c in result["cells"]}
    assert set(cells) == {("clean", ""), ("fgsm", "eps=0.1"), ("fgsm", "eps=0.2"),
                          ("fgsm", "eps=0.3")}
    assert all(c["status"] == "ok" for c in cells.values())
    assert cells[("clean", "")]["metrics"]["clean_accuracy"]["value"] > 0.9
    html = render_report(result)
    assert '<section id="classic">' in html
    classic = html[html.index('<section id="classic">'):]
    f1 = cells[("fgsm", "eps=0.3")]["metrics"]["f1"]["value"]
    assert f"{f1:.3f}" in classic[:classic.index("</section>")]
    assert '<section id="gallery">' in html  # 28x28 grey images: a gallery
    assert 'width="84" height="84"' in html
