"""Dataset loaders: scikit-learn's embedded sets, MNIST-format IDX files, NPZ and CSV files.

``sklearn:digits`` is the embedded default: 1,797 8x8 grey images of handwritten digits,
scaled to [0, 1] and split 75/25, stratified, with a fixed split seed.

``idx:DIR`` reads the four MNIST-layout files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
plain or ``.gz``) with a small IDX parser, e.g. Debian's dataset-fashion-mnist under
``/usr/share/datasets/fashion-mnist``. ``npz:FILE`` reads ``x_train``, ``y_train``,
``x_test``, ``y_test`` (optional ``class_names``, ``clip_values``) with
``allow_pickle=False``. ``csv:FILE`` reads a table with a header row (:func:`load_csv`).
All take ``limit_train`` / ``limit_test`` (keep the first N rows).
"""
from __future__ import annotations

import csv
import gzip
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet import ConfigError, DataError, Dataset, hookimpl, sha256_file

_TABULAR = ("iris", "wine", "breast_cancer")
MAX_CLASSES = 100_000  # as gauntlet.api.MAX_CLASSES


def _split(x: np.ndarray, y: np.ndarray, options: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    test_size, seed = options.get("test_size", 0.25), options.get("split_seed", 0)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) \
            or not 0 < test_size < 1:
        raise ConfigError(f"test_size must be a fraction between 0 and 1, got {test_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"split_seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    return tuple(train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y))


def load_sklearn(name: str, options: Mapping[str, Any]) -> Dataset:
    import sklearn.datasets as skd

    if name == "digits":
        bunch = skd.load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
        names = tuple(str(t) for t in bunch.target_names)
        features: tuple[str, ...] = ()  # image pixels, not named columns
    elif name in _TABULAR:
        bunch = getattr(skd, f"load_{name}")()
        x = bunch.data.astype(np.float64)
        lo, hi = x.min(axis=0), x.max(axis=0)
        # Min-max to [0, 1] so one clip range and one eps scale serve every set.
        x = ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
        names = tuple(str(t) for t in bunch.target_names)
        features = tuple(str(f) for f in bunch.feature_names)
    else:
        known = ", ".join(("digits",) + _TABULAR)
        raise DataError(f"unknown scikit-learn dataset {name!r}; known: {known}")
    xtr, xte, ytr, yte = _split(x, bunch.target, options)
    limit_train, limit_test = _limits(options)
    xtr, ytr, xte, yte = xtr[:limit_train], ytr[:limit_train], xte[:limit_test], yte[:limit_test]
    return Dataset.from_arrays(f"sklearn:{name}", xtr, ytr, xte, yte,
                               n_classes=len(names), class_names=names,
                               source={"spec": f"sklearn:{name}"}, feature_names=features)


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
# IDX type codes (third byte of the magic number); data is big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _limits(options: Mapping[str, Any]) -> tuple[int | None, int | None]:
    out = []
    for key in ("limit_train", "limit_test"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        out.append(value)
    return out[0], out[1]


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """Parse an IDX file (plain or gzip): the first ``limit`` rows, in the file's dtype."""
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else path.open("rb")) as f:
            return _read_idx(f, path, limit)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {exc}") from None


def _read_idx(f: Any, path: Path, limit: int | None) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {magic.hex() or 'empty'})")
    header = f.read(4 * magic[3])
    if len(header) < 4 * magic[3]:
        raise DataError(f"{path} is truncated: its header ends early")
    dims = [int.from_bytes(header[i:i + 4], "big") for i in range(0, len(header), 4)]
    if not dims:
        raise DataError(f"{path} is not an IDX array (zero dimensions)")
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    rows = dims[0] if limit is None else min(dims[0], limit)
    need = rows * math.prod(dims[1:]) * dtype.itemsize
    data = _read_up_to(f, need)
    if len(data) < need:
        raise DataError(f"{path} is truncated: {rows} rows of shape {tuple(dims[1:])} need "
                        f"{need} bytes of data, the file has {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(rows, *dims[1:]).astype(dtype.newbyteorder("="))


def _read_up_to(f: Any, need: int) -> bytes:
    """Up to ``need`` bytes, read in blocks: a corrupt header may claim more bytes than
    memory holds (f.read(need) would allocate them all first) while the file has few."""
    blocks, got = [], 0
    while got < need:
        block = f.read(min(need - got, 1 << 24))
        if not block:
            break
        blocks.append(block)
        got += len(block)
    return b"".join(blocks)


def _idx_file(root: Path, split: str, kind: str) -> Path:
    n = 3 if kind == "images" else 1
    for sep in ("-", "."):  # yann.lecun.com names use '-', some mirrors '.'
        for ext in ("", ".gz"):
            candidate = root / f"{split}-{kind}{sep}idx{n}-ubyte{ext}"
            if candidate.is_file():
                return candidate
    raise DataError(f"{root} has no {split}-{kind}-idx{n}-ubyte (or .gz) file; an IDX dataset "
                    "directory holds train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte")


def load_idx(directory: str, options: Mapping[str, Any]) -> Dataset:
    """An MNIST-layout IDX directory as a Dataset: images (N, 1, H, W) in [0, 1]."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataError(f"IDX data directory not found: {root}")
    limit_train, limit_test = _limits(options)
    limits = {"train": limit_train, "t10k": limit_test}
    arrays, files = {}, {}
    for split in ("train", "t10k"):
        img_path, lab_path = _idx_file(root, split, "images"), _idx_file(root, split, "labels")
        images = read_idx(img_path, limits[split])
        labels = read_idx(lab_path)  # all labels (they are small) so n_classes is stable
        if images.ndim != 3:
            raise DataError(f"{img_path} holds an array shaped {images.shape[1:]} per row; "
                            "IDX images must be (H, W)")
        if not images.size:
            raise DataError(f"{img_path} holds no images (or images of zero pixels)")
        short = len(labels) < len(images)
        if labels.ndim != 1 or short or (limits[split] is None and len(labels) != len(images)):
            raise DataError(f"{lab_path} has {len(labels)} labels (shape {labels.shape}) for "
                            f"{len(images)} images in {img_path.name}")
        if images.dtype == np.uint8:
            x = images.astype(np.float32) / 255.0
        else:
            x = images.astype(np.float32)
        arrays[split] = (x[:, None, :, :], labels.astype(np.int64))
        files.update({img_path.name: sha256_file(img_path), lab_path.name: sha256_file(lab_path)})
    n_classes = int(max(arrays["train"][1].max(), arrays["t10k"][1].max())) + 1
    if n_classes > MAX_CLASSES:  # one corrupt label would otherwise name 2**31 classes
        raise DataError(f"{root}: labels go up to {n_classes - 1}; Gauntlet takes at most "
                        f"{MAX_CLASSES} classes (is a label file corrupt?)")
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["t10k"]
    ytr, yte = ytr[: len(xtr)], yte[: len(xte)]
    if "fashion" in root.name.lower() and n_classes <= len(FASHION_MNIST_CLASSES):
        names: tuple[str, ...] = FASHION_MNIST_CLASSES
    else:
        names = tuple(str(i) for i in range(n_classes))
    lo, hi = float(min(xtr.min(), xte.min())), float(max(xtr.max(), xte.max()))
    clip = (0.0, 1.0) if 0.0 <= lo and hi <= 1.0 else (lo, hi)
    return Dataset.from_arrays(f"idx:{root.name}", xtr, ytr, xte, yte, n_classes=len(names),
                               clip_values=clip, class_names=names,
                               source={"spec": f"idx:{directory}", "path": str(root.resolve()),
                                       "files": files})


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(file: str, options: Mapping[str, Any]) -> Dataset:
    """A .npz of x_train, y_train, x_test, y_test (+ class_names, clip_values) as a Dataset.

    uint8 inputs are scaled to [0, 1]; uint8 (N, H, W) gains a channel axis and
    (N, H, W, C) with C in 1, 3, 4 becomes channels-first. One-hot labels become indices.
    """
    path = Path(file).expanduser()
    if not path.is_file():
        raise DataError(f"NPZ data file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would take anything else for a pickle
            raise DataError(f"{path} is not an .npz archive (numpy.savez output)")
    try:
        npz = np.load(path, allow_pickle=False)
        with npz:
            found = set(npz.files)
            missing = [k for k in _NPZ_KEYS if k not in found]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)}; expected keys "
                                f"{', '.join(_NPZ_KEYS)} (optional class_names, clip_values), "
                                f"found {', '.join(sorted(found)) or 'none'}")
            wanted = (*_NPZ_KEYS, "class_names", "clip_values")
            arrays = {k: npz[k] for k in wanted if k in found}
            # NpzFile hands back raw bytes for a member that is not a valid .npy file.
            odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
            if odd:
                raise DataError(f"{path}: {', '.join(odd)} is not a NumPy array (.npy) member")
            for k in (*_NPZ_KEYS, "clip_values"):
                if k in arrays and arrays[k].dtype.kind not in "biuf":
                    raise DataError(f"{path}: {k} holds {arrays[k].dtype} values, not numbers")
            names: tuple[str, ...] = ()
            if "class_names" in arrays:  # a corrupt string array fails here, as unreadable
                names = tuple(str(c) for c in arrays["class_names"].reshape(-1))
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path} holds object arrays (pickled Python objects); Gauntlet "
                            "reads NPZ with allow_pickle=False: save plain numeric arrays "
                            "(and class_names as a string array)") from None
        raise DataError(f"cannot read NPZ file {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - numpy's reader of a corrupt archive raises
        # anything from BadZipFile and zlib.error to SyntaxError (the .npy header is parsed
        # as a Python literal) and MemoryError (a header claiming a huge shape).
        raise DataError(f"cannot read NPZ file {path}: {type(exc).__name__}: {exc}") from None
    limit_train, limit_test = _limits(options)
    xtr, xte = (_npz_inputs(arrays["x_train"])[:limit_train],
                _npz_inputs(arrays["x_test"])[:limit_test])
    ytr, yte = arrays["y_train"][:limit_train], arrays["y_test"][:limit_test]
    n_classes = None
    if ytr.ndim == 2 and yte.ndim == 2:  # one-hot
        n_classes = ytr.shape[1]
        ytr, yte = ytr.argmax(axis=1), yte.argmax(axis=1)
    if "class_names" in arrays:
        n_classes = len(names)
    if "clip_values" in arrays:
        clip_arr = arrays["clip_values"].astype(np.float64).reshape(-1)
        if clip_arr.shape != (2,) or not clip_arr[0] < clip_arr[1]:
            raise DataError(f"{path}: clip_values must be [low, high], got {clip_arr.tolist()}")
        clip = (float(clip_arr[0]), float(clip_arr[1]))
    else:
        lo, hi = float(min(xtr.min(initial=0), xte.min(initial=0))), float(
            max(xtr.max(initial=1), xte.max(initial=1)))
        clip = (lo, hi)
    for split, y in (("y_train", ytr), ("y_test", yte)):
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
            raise DataError(f"{path}: {split} must be integer class labels (or one-hot), got "
                            f"{y.dtype} shaped {y.shape}")
    return Dataset.from_arrays(f"npz:{path.name}", xtr, ytr, xte, yte, n_classes=n_classes,
                               clip_values=clip, class_names=names,
                               source={"spec": f"npz:{file}", "path": str(path.resolve()),
                                       "sha256": sha256_file(path)})


def _npz_inputs(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
        if x.ndim == 3:  # grey images without a channel axis
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)  # channels-last to channels-first
    return np.ascontiguousarray(x, dtype=np.float32)


# -- CSV --------------------------------------------------------------------------------
# Past this many distinct values in as many as half the training rows, a column found to be
# categorical (not listed in ``categorical``) is an id or free text: one-hot encoding it
# would make a feature per row and could exhaust memory.
_MAX_AUTO_CATEGORIES = 100


def load_csv(file: str, options: Mapping[str, Any]) -> Dataset:
    """A CSV file with a header row as a tabular Dataset: (N, F) float32 features in [0, 1].

    Options: ``label`` (required) names the class column: its distinct values, sorted
    (numerically when all are numbers), are classes 0..K-1 and their spellings the class
    names. ``drop`` lists columns to ignore (ids). ``categorical`` lists columns to one-hot
    encode even if they hold numbers (zip codes); any other column is categorical when one
    of its values is not a number. Rows are split stratified by class with ``test_size``
    (0.25) and ``split_seed`` (0), or by a ``split`` column whose values are ``train`` or
    ``test`` (any case).

    Encodings are fitted on the training rows only (after ``limit_train``), so nothing of
    the test rows leaks into the features. A categorical column becomes one feature
    ``column=value`` per value seen in training, sorted; a test value never seen in
    training sets all of that column's features to 0. A numeric column is min-max scaled
    to its training range and clipped to [0, 1] (a test value beyond the range becomes 0 or
    1), so ``clip_values`` (0, 1) hold; a constant column is 0. Features keep the file's
    column order, each categorical expanded in place. An empty cell is a missing value: in
    a numeric column it becomes the training mean before scaling; in a categorical column
    it is a category of its own, ``column=`` (that a value is missing often carries signal).

    Two columns are refused rather than guessed at (list them in ``categorical`` to one-hot
    them anyway): numbers with a few non-numbers among them (``NA``: write a missing value
    as an empty cell), and text with a distinct value in most training rows (an id).
    """
    path = Path(file).expanduser()
    if not path.is_file():
        raise DataError(f"CSV data file not found: {path}")
    header, rows, lines = _read_csv(path)
    label, split, drop, categorical = _csv_options(options, header, path)
    limit_train, limit_test = _limits(options)
    table = np.array(rows, dtype=object).reshape(len(rows), len(header))
    column = {name: table[:, i] for i, name in enumerate(header)}
    features = [h for h in header if h not in drop and h not in (label, split)]
    if not features:
        raise DataError(f"{path}: no feature columns are left once the label ({label!r}), "
                        "split and drop columns are set aside; a dataset needs at least one")
    # A column's kind is a property of the whole column (not fitted), so all rows decide it.
    one_hot = {name: name in categorical or _is_categorical(name, column[name], lines, path)
               for name in features}
    y, class_names = _csv_labels(column[label], label, lines, path)
    train, test = _csv_split(y, split, column.get(split or ""), lines, options, path)
    train, test = train[:limit_train], test[:limit_test]
    blocks, names = [], []
    for name in features:
        if one_hot[name]:
            block, cats = _one_hot(name, column[name], train, auto=name not in categorical,
                                   path=path)
            names += [f"{name}={c}" for c in cats]
        else:
            block = _min_max(column[name], train)
            names.append(name)
        blocks.append(block)
    x = np.concatenate(blocks, axis=1)
    return Dataset.from_arrays(f"csv:{path.name}", x[train], y[train], x[test], y[test],
                               n_classes=len(class_names), clip_values=(0.0, 1.0),
                               class_names=class_names, feature_names=tuple(names),
                               source={"spec": f"csv:{file}", "path": str(path.resolve()),
                                       "sha256": sha256_file(path)})


def _read_csv(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the data rows (cells stripped, blank lines skipped) and each row's line."""
    header: list[str] = []
    rows, lines = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.reader(f)
            for row in reader:
                cells = [cell.strip() for cell in row]
                if not any(cells):
                    continue
                if not header:
                    header = _csv_header(cells, path)
                elif len(cells) != len(header):
                    raise DataError(f"{path}, line {reader.line_num}: {len(cells)} fields, "
                                    f"but the header has {len(header)}; every row needs one "
                                    "value per column (an empty cell for a missing one)")
                else:
                    rows.append(cells)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "save the CSV as UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"cannot read CSV file {path}: {exc}") from None
    if not header:
        raise DataError(f"{path} is empty; a CSV dataset starts with a header row naming "
                        "its columns")
    if not rows:
        raise DataError(f"{path} has a header row but no data rows")
    return header, rows, lines


def _csv_header(cells: list[str], path: Path) -> list[str]:
    if all(_number(c) is not None for c in cells):
        raise DataError(f"{path}: the first row ({', '.join(cells[:5])}"
                        f"{', ...' if len(cells) > 5 else ''}) is all numbers, so the file "
                        "has no header row; add one naming the columns")
    for i, name in enumerate(cells):
        if not name:
            raise DataError(f"{path}: column {i + 1} of the header has no name; name every "
                            "column")
        if name in cells[:i]:
            raise DataError(f"{path}: the header names column {name!r} twice; column "
                            "names must be unique")
    return cells


def _csv_options(options: Mapping[str, Any], header: list[str],
                 path: Path) -> tuple[str, str | None, set[str], set[str]]:
    """label, split, drop and categorical, each naming columns the header has."""
    found = ", ".join(header)

    def column(key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a column name (a string), got {value!r}")
        if value not in header:
            raise ConfigError(f"{key} names column {value!r}, which {path} lacks; its "
                              f"columns: {found}")
        return value

    def columns(key: str) -> set[str]:
        value = options.get(key, ())
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of column names, e.g. {key} = "
                              f"[\"{header[0]}\"], got {value!r}")
        return {column(key, v) for v in value}

    if options.get("label") is None:
        raise ConfigError(f"csv data needs the label option naming the class column "
                          f"(label = \"...\" in [data]); {path} has columns {found}")
    label = column("label", options["label"])
    split = column("split", options["split"]) if options.get("split") is not None else None
    drop, categorical = columns("drop"), columns("categorical")
    for key, name in (("label", label), ("split", split)):
        clash = [k for k, cols in (("drop", drop), ("categorical", categorical)) if name in cols]
        if clash or (key == "split" and name == label):
            where = f"in {clash[0]}" if clash else "the label column"
            raise ConfigError(f"column {name!r} is the {key} column, so it cannot also be "
                              f"{where}")
    if drop & categorical:
        raise ConfigError(f"column {sorted(drop & categorical)[0]!r} is in both drop and "
                          "categorical; keep it in one")
    unused = [k for k in ("test_size", "split_seed") if split is not None and k in options]
    if unused:
        raise ConfigError(f"{' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} not "
                          f"apply with split = {split!r} (that column assigns each row); "
                          "remove it, or the split option")
    return label, split, drop, categorical


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _sorted_values(values: set[str]) -> list[str]:
    """Numerically when every non-empty value is a number, else as strings; "" first."""
    numbers = {v: _number(v) for v in values if v}
    if all(n is not None for n in numbers.values()):
        return sorted(values, key=lambda v: (v != "", numbers.get(v) or 0.0, v))
    return sorted(values)


def _csv_labels(values: np.ndarray, label: str, lines: list[int],
                path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise DataError(f"{path}, line {lines[empty[0]]}: the label column {label!r} is "
                        f"empty ({empty.size} rows have no label); give every row a class "
                        "or remove the unlabelled rows")
    names = _sorted_values(set(values.tolist()))
    if len(names) < 2:
        raise DataError(f"{path}: the label column {label!r} holds one class ({names[0]!r}) "
                        f"in all {len(values)} rows; a classifier needs at least two")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{path}: the label column {label!r} holds {len(names)} distinct "
                        f"values; Gauntlet takes at most {MAX_CLASSES} classes")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in values.tolist()], dtype=np.int64), tuple(names)


def _csv_split(y: np.ndarray, split: str | None, values: np.ndarray | None, lines: list[int],
               options: Mapping[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and test rows."""
    if split is None or values is None:
        try:
            train, test, _, _ = _split(np.arange(len(y)), y, options)
        except ValueError as exc:  # sklearn: too few rows of a class, or for test_size
            rarest = int(np.bincount(y).min())
            raise DataError(f"{path}: cannot split {len(y)} rows stratified by class (the "
                            f"rarest class has {rarest} row{'s' if rarest != 1 else ''}): "
                            f"{exc}; give each class more rows, change test_size, or name a "
                            "split column") from None
        return train, test
    kind = np.array([v.lower() for v in values.tolist()], dtype=object)
    odd = np.flatnonzero((kind != "train") & (kind != "test"))
    if odd.size:
        raise DataError(f"{path}, line {lines[odd[0]]}: the split column {split!r} holds "
                        f"{values[odd[0]]!r}; its values must be train or test")
    train, test = np.flatnonzero(kind == "train"), np.flatnonzero(kind == "test")
    for name, rows in (("train", train), ("test", test)):
        if not rows.size:
            raise DataError(f"{path}: no row of the split column {split!r} is {name}; mark "
                            f"some rows {name}")
    return train, test


def _is_categorical(name: str, values: np.ndarray, lines: list[int], path: Path) -> bool:
    odd = [i for i, v in enumerate(values.tolist()) if v and _number(v) is None]
    given = int(np.count_nonzero(values != ""))
    if odd and 2 * len(odd) < given:  # mostly numbers: an "NA" is likelier than a category
        raise DataError(f"{path}, line {lines[odd[0]]}: column {name!r} holds "
                        f"{values[odd[0]]!r} among numbers ({len(odd)} of its {given} values "
                        "are not numbers); write a missing value as an empty cell, or list "
                        "the column in categorical to one-hot encode it")
    return bool(odd)


def _one_hot(name: str, values: np.ndarray, train: np.ndarray, *, auto: bool,
             path: Path) -> tuple[np.ndarray, list[str]]:
    categories = _sorted_values(set(values[train].tolist()))
    if auto and len(categories) > _MAX_AUTO_CATEGORIES and 2 * len(categories) > len(train):
        raise DataError(f"{path}: column {name!r} holds {len(categories)} distinct values in "
                        f"{len(train)} training rows, like an id or free text; list it in "
                        "drop, or in categorical to one-hot encode it anyway")
    return np.stack([values == c for c in categories], axis=1).astype(np.float32), categories


def _min_max(values: np.ndarray, train: np.ndarray) -> np.ndarray:
    x = np.array([_number(v) if v else np.nan for v in values.tolist()], dtype=np.float64)
    known = x[train][~np.isnan(x[train])]
    x = np.where(np.isnan(x), known.mean() if known.size else 0.0, x)
    lo, hi = x[train].min(), x[train].max()
    scaled = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)[:, None]


@hookimpl(trylast=True)
def load_dataset(spec: str, options: Mapping[str, Any]) -> Dataset | None:
    scheme, _, rest = spec.partition(":")
    if scheme == "sklearn":
        return load_sklearn(rest, options)
    if scheme == "idx":
        return load_idx(rest, options)
    if scheme == "npz":
        return load_npz(rest, options)
    if scheme == "csv":
        return load_csv(rest, options)
    return None
