"""Dataset loaders: IDX directories (plain and gzip) and NPZ files round-trip; each kind of
broken input gets a DataError naming the file."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from gauntlet import ConfigError, DataError
from gauntlet.plugins.datasets import (
    FASHION_MNIST_CLASSES,
    load_dataset,
    load_idx,
    load_npz,
    read_idx,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` in IDX format, independently of the parser under test."""
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        body = gzip.compress(body)
    path.write_bytes(body)
    return path


def make_idx_dir(root: Path, gz: bool = False, sep: str = "-", n_classes: int = 4,
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    rng = rng or np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", 30), ("t10k", 12)):
        images = rng.integers(0, 256, size=(n, 5, 6), dtype=np.uint8)
        labels = (np.arange(n) % n_classes).astype(np.uint8)
        write_idx(root / f"{split}-images{sep}idx3-ubyte", images, gz)
        write_idx(root / f"{split}-labels{sep}idx1-ubyte", labels, gz)
        arrays[split] = (images, labels)
    return arrays


# -- IDX --------------------------------------------------------------------------------
@pytest.mark.parametrize("gz, sep", [(False, "-"), (True, "-"), (False, ".")],
                         ids=["plain", "gzip", "dot-names"])
def test_idx_round_trip(gz, sep, tmp_path):
    arrays = make_idx_dir(tmp_path / "toy", gz=gz, sep=sep)
    data = load_dataset(f"idx:{tmp_path / 'toy'}", {})
    (img_tr, lab_tr), (img_te, lab_te) = arrays["train"], arrays["t10k"]
    assert data.x_train.shape == (30, 1, 5, 6) and data.x_train.dtype == np.float32
    assert np.allclose(data.x_train[:, 0], img_tr / 255.0)
    assert np.allclose(data.x_test[:, 0], img_te / 255.0)
    assert np.array_equal(data.y_train, lab_tr) and np.array_equal(data.y_test, lab_te)
    assert (data.n_classes, data.class_names, data.clip_values) == (4, ("0", "1", "2", "3"),
                                                                    (0.0, 1.0))
    name = f"train-images{sep}idx3-ubyte" + (".gz" if gz else "")
    assert data.source["files"][name] == hashlib.sha256(
        (tmp_path / "toy" / name).read_bytes()).hexdigest()


def test_idx_limits_keep_the_first_rows(tmp_path):
    arrays = make_idx_dir(tmp_path / "toy", gz=True)
    data = load_idx(str(tmp_path / "toy"), {"limit_train": 10, "limit_test": 5})
    assert (len(data.x_train), len(data.y_train), len(data.x_test)) == (10, 10, 5)
    assert np.allclose(data.x_train[:, 0], arrays["train"][0][:10] / 255.0)
    assert data.n_classes == 4  # from every label, not only the kept rows


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_idx_limit_must_be_a_positive_integer(bad, tmp_path):
    make_idx_dir(tmp_path / "toy")
    with pytest.raises(ConfigError, match="limit_train must be a positive integer"):
        load_idx(str(tmp_path / "toy"), {"limit_train": bad})


def test_idx_fashion_directory_gets_fashion_class_names(tmp_path):
    make_idx_dir(tmp_path / "fashion-mini", n_classes=10)
    data = load_idx(str(tmp_path / "fashion-mini"), {})
    assert data.class_names == FASHION_MNIST_CLASSES and data.n_classes == 10


def test_read_idx_other_dtypes(tmp_path):
    floats = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    shorts = np.array([-300, 7, 32000], dtype=np.int16)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f", floats, gz=True)), floats)
    assert np.array_equal(read_idx(write_idx(tmp_path / "s", shorts)), shorts)


def test_idx_missing_directory_and_file(tmp_path):
    with pytest.raises(DataError, match="IDX data directory not found: .*nowhere"):
        load_dataset(f"idx:{tmp_path / 'nowhere'}", {})
    make_idx_dir(tmp_path / "toy")
    (tmp_path / "toy" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="has no t10k-labels-idx1-ubyte"):
        load_idx(str(tmp_path / "toy"), {})


def test_idx_bad_magic_names_the_file(tmp_path):
    make_idx_dir(tmp_path / "toy")
    (tmp_path / "toy" / "train-images-idx3-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is not an IDX file "
                                        r"\(bad magic number 89504e47\)"):
        load_idx(str(tmp_path / "toy"), {})


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_truncated_file_names_the_file(gz, tmp_path):
    make_idx_dir(tmp_path / "toy", gz=gz)
    path = tmp_path / "toy" / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_idx(str(tmp_path / "toy"), {})


@pytest.mark.parametrize("n_labels", [7, 31])
def test_idx_labels_must_match_the_images(n_labels, tmp_path):
    make_idx_dir(tmp_path / "toy")
    write_idx(tmp_path / "toy" / "train-labels-idx1-ubyte", np.zeros(n_labels, np.uint8))
    with pytest.raises(DataError, match=f"train-labels-idx1-ubyte has {n_labels} labels .* "
                                        "for 30 images"):
        load_idx(str(tmp_path / "toy"), {})


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_matches_an_independent_reader():
    data = load_dataset(f"idx:{FASHION}", {"limit_train": 200, "limit_test": 100})
    # The reader Debian ships with the package: skip the fixed 16/8-byte headers.
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    assert data.input_shape == (1, 28, 28) and data.class_names == FASHION_MNIST_CLASSES
    assert np.array_equal(np.rint(data.x_train[:, 0] * 255).astype(np.uint8), images[:200])
    assert np.array_equal(data.y_test, labels[:100])


# -- NPZ --------------------------------------------------------------------------------
def test_npz_round_trip_with_optional_keys(tmp_path, rng):
    arrays = {"x_train": rng.normal(size=(20, 3)).astype(np.float32),
              "y_train": np.arange(20) % 3, "x_test": rng.normal(size=(6, 3)),
              "y_test": np.arange(6) % 3, "class_names": np.array(["a", "b", "c"]),
              "clip_values": np.array([-5.0, 5.0])}
    np.savez(tmp_path / "tab.npz", **arrays)
    data = load_dataset(f"npz:{tmp_path / 'tab.npz'}", {"limit_test": 4})
    assert np.allclose(data.x_train, arrays["x_train"])
    assert np.allclose(data.x_test, arrays["x_test"][:4]) and len(data.y_test) == 4
    assert np.array_equal(data.y_train, arrays["y_train"])
    assert (data.class_names, data.n_classes, data.clip_values) == (("a", "b", "c"), 3,
                                                                    (-5.0, 5.0))


def test_npz_uint8_images_are_scaled_and_channels_first(tmp_path, rng):
    grey = rng.integers(0, 256, size=(8, 5, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(8, 6, 7, 3), dtype=np.uint8)
    onehot = np.eye(4)[np.arange(8) % 4]
    np.savez(tmp_path / "imgs.npz", x_train=grey, y_train=onehot, x_test=grey, y_test=onehot)
    np.savez(tmp_path / "rgb.npz", x_train=rgb, y_train=np.arange(8) % 2, x_test=rgb,
             y_test=np.arange(8) % 2)
    data = load_npz(str(tmp_path / "imgs.npz"), {})
    assert data.input_shape == (1, 5, 5) and np.allclose(data.x_train[:, 0], grey / 255.0)
    assert data.n_classes == 4 and np.array_equal(data.y_train, np.arange(8) % 4)
    data = load_npz(str(tmp_path / "rgb.npz"), {})
    assert data.input_shape == (3, 6, 7)
    assert np.allclose(data.x_test, rgb.transpose(0, 3, 1, 2) / 255.0)
    assert data.clip_values == (0.0, 1.0)


def test_npz_missing_keys_are_listed(tmp_path):
    np.savez(tmp_path / "half.npz", x_train=np.zeros((2, 2)), y_train=np.zeros(2))
    with pytest.raises(DataError, match="lacks x_test, y_test; expected keys x_train, y_train, "
                                        "x_test, y_test .* found x_train, y_train"):
        load_npz(str(tmp_path / "half.npz"), {})


class CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    payload = np.array([CreatesFile(marker)], dtype=object)
    np.savez(tmp_path / "evil.npz", x_train=payload, y_train=np.zeros(1), x_test=payload,
             y_test=np.zeros(1))
    with pytest.raises(DataError, match="object arrays .*allow_pickle=False"):
        load_npz(str(tmp_path / "evil.npz"), {})
    assert not marker.exists()


def test_npz_missing_file_and_wrong_kind(tmp_path):
    with pytest.raises(DataError, match="NPZ data file not found: .*absent.npz"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}", {})
    np.save(tmp_path / "bare.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"bare\.npy is not an \.npz archive"):
        load_npz(str(tmp_path / "bare.npy"), {})
    (tmp_path / "notes.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(DataError, match=r"notes\.npz is not an \.npz archive"):
        load_npz(str(tmp_path / "notes.npz"), {})


def test_npz_labels_must_be_integers(tmp_path):
    np.savez(tmp_path / "soft.npz", x_train=np.zeros((2, 2)), y_train=np.array([0.5, 1.0]),
             x_test=np.zeros((2, 2)), y_test=np.array([0, 1]))
    with pytest.raises(DataError, match="y_train must be integer class labels"):
        load_npz(str(tmp_path / "soft.npz"), {})


def test_hook_dispatch(digits):
    assert load_dataset("sklearn:digits", {}).name == digits.name
    assert load_dataset("hub:someone/data", {}) is None
