"""Looking, not only reading: adversarial examples as pictures, and distances to flip.

Every evasion cell keeps a few rows of its first batch in ``artifacts["examples"]``
(:func:`gauntlet.evasion._examples`): clean and adversarial inputs quantised to bytes over
the model's clip range, with their true, clean and adversarial labels. For image data
(inputs shaped ``(C, H, W)`` with one or three channels) :func:`galleries` turns them
into one small table per evasion attack: original, adversarial example and their
difference, amplified on a diverging colour scale that the table states. Images are PNGs
in ``data:`` URIs (the report's policy allows images from ``data:`` only), upscaled
nearest-neighbour so an 8x8 digit is still pixels, not a blur.

Minimal-perturbation attacks (Carlini and Wagner 2017, DeepFool, HopSkipJump) have no
budget: their per-row outcome is the L2 distance at which each row flipped.
:func:`l2_accuracy` turns that into accuracy against an L2 budget, which the report draws
(:func:`gauntlet.reports.charts.l2_charts`).
"""
from __future__ import annotations

import base64
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gauntlet.reports.tables import Key, attack_keys, cell_index, defense_keys, label

#: The budget the gallery shows when an attack sweeps eps: the value closest to it.
GALLERY_EPS = 0.1
#: Smallest side, in CSS pixels, an image is upscaled to (an 8x8 digit becomes 64x64).
MIN_SIDE = 64
#: Largest side an image is drawn at; bigger inputs are shrunk.
MAX_SIDE = 160
#: Diverging colour map of the difference: blue where the attack lowered a value, red
#: where it raised it, white where it left it alone.
DIFF_CMAP = "RdBu_r"
#: Attacks known to be minimal-perturbation ones, for results written before the attack
#: metadata said so (``result["attacks"][name]["minimal"]``).
MINIMAL_ATTACKS = ("cw-l2", "deepfool", "hopskipjump")


@dataclasses.dataclass(frozen=True)
class Image:
    """One picture: a ``data:image/png`` URI, its drawn size and its alt text."""

    src: str
    width: int
    height: int
    alt: str


@dataclasses.dataclass(frozen=True)
class GalleryRow:
    row: int
    original: Image
    adversarial: Image
    difference: Image
    true_label: str
    clean_label: str
    adv_label: str
    fooled: bool  # the adversarial prediction is not the true label
    clean_wrong: bool = False  # the prediction on the original already was not


@dataclasses.dataclass(frozen=True)
class Gallery:
    """The examples of one evasion attack, at one budget, against one defended model."""

    id: str
    attack: str
    point: str
    defense: str
    scale: str  # what the difference colours mean, in words
    low: str  # the ends of the colour bar, as text
    high: str
    colour_bar: Image
    rows: list[GalleryRow]


# -- which cell ---------------------------------------------------------------------------
def is_minimal(result: Mapping[str, Any], attack: str) -> bool:
    """Whether ``attack`` is a minimal-perturbation attack: its metadata says so, or (for
    results written before attacks declared it) it is one of :data:`MINIMAL_ATTACKS`."""
    meta = (result.get("attacks") or {}).get(attack) or {}
    if isinstance(meta.get("minimal"), bool):
        return bool(meta["minimal"])
    return attack in MINIMAL_ATTACKS


def _eps(cell: Mapping[str, Any]) -> float | None:
    eps = (cell.get("attack_params") or {}).get("eps")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps):
        return float(eps)
    return None


def _examples(cell: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not cell or cell.get("status") != "ok" or cell.get("family") != "evasion":
        return None
    ex = (cell.get("artifacts") or {}).get("examples")
    return ex if isinstance(ex, Mapping) else None


def _defense_order(result: Mapping[str, Any]) -> list[Key]:
    """The undefended model first, then every other defense in the report's order."""
    keys = defense_keys(result)
    return [k for k in keys if k[0] == "none"] + [k for k in keys if k[0] != "none"]


def gallery_cells(result: Mapping[str, Any]) -> list[tuple[Key, Key, Mapping[str, Any]]]:
    """Per evasion attack, the cell its gallery shows: ``((defense, point), (attack,
    point), cell)``.

    The defense is ``none`` where that has usable examples, else the first defense that
    has. The budget is the eps closest to :data:`GALLERY_EPS` (the smaller one on a tie);
    a minimal-perturbation attack, or one without eps, shows its first point.
    """
    index = cell_index(result)
    points: dict[str, list[str]] = {}
    for a, ap in attack_keys(result):
        points.setdefault(a, []).append(ap)
    chosen = []
    for attack, aps in points.items():
        for d in _defense_order(result):
            usable = [(ap, c) for ap in aps if _examples(c := index.get((*d, attack, ap)))]
            if not usable:
                continue
            with_eps = [(ap, c) for ap, c in usable if _eps(c) is not None]
            if with_eps and not is_minimal(result, attack):
                ap, cell = min(with_eps, key=lambda pc: (abs(_eps(pc[1]) - GALLERY_EPS),  # type: ignore[operator]
                                                         _eps(pc[1])))
            else:
                ap, cell = usable[0]
            chosen.append((d, (attack, ap), cell))
            break
    return chosen


# -- pictures -----------------------------------------------------------------------------
def image_shape(shape: Any) -> tuple[int, int, int] | None:
    """``(C, H, W)`` when ``shape`` is an image with one or three channels, else None."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        return None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        return None
    c, h, w = shape
    return (c, h, w) if c in (1, 3) and h > 1 and w > 1 else None


def _decode(data: Any, k: int, shape: tuple[int, int, int]) -> np.ndarray | None:
    """``k`` rows of quantised bytes, shaped ``(k, C, H, W)``; None if they do not fit."""
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        return None
    if len(raw) != k * math.prod(shape):
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(k, *shape)


def drawn_size(h: int, w: int) -> tuple[int, int]:
    """The (height, width) an ``h`` x ``w`` image is drawn at: upscaled by a whole factor
    to at least :data:`MIN_SIDE` on its longer side, shrunk to :data:`MAX_SIDE` at most."""
    side = max(h, w)
    if side > MAX_SIDE:
        f = MAX_SIDE / side
        return max(1, round(h * f)), max(1, round(w * f))
    factor = max(1, math.ceil(MIN_SIDE / side))
    return h * factor, w * factor


def png_uri(pixels: np.ndarray) -> str:
    """A ``data:image/png;base64`` URI of ``pixels``, (H, W) grey or (H, W, 3) RGB bytes,
    drawn at :func:`drawn_size` (nearest-neighbour when enlarged)."""
    from PIL import Image as PILImage

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = pixels.shape[:2]
    img = PILImage.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    dh, dw = drawn_size(h, w)
    if (dh, dw) != (h, w):
        img = img.resize((dw, dh), PILImage.NEAREST if dh >= h else PILImage.BOX)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")  # no timestamp or other metadata: same bytes each time
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(chw: np.ndarray) -> np.ndarray:
    """One ``(C, H, W)`` byte image as PIL wants it: (H, W) grey or (H, W, 3) RGB."""
    return chw[0] if chw.shape[0] == 1 else np.transpose(chw, (1, 2, 0))


def _diverging(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] as RGB bytes on :data:`DIFF_CMAP` (0 is white)."""
    import matplotlib

    cmap = matplotlib.colormaps[DIFF_CMAP]
    rgba = cmap((np.clip(values, -1.0, 1.0) + 1.0) / 2.0)
    return np.rint(rgba[..., :3] * 255).astype(np.uint8)


def difference(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """Signed per-pixel change, adversarial minus original, in byte steps (1/255 of the
    clip range): ``(k, H, W)``, averaged over channels for colour images."""
    return (x_adv.astype(np.float64) - x.astype(np.float64)).mean(axis=1)


def _class_name(value: Any, names: Sequence[Any]) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return "?"
    if 0 <= value < len(names) and isinstance(names[value], str) and names[value] != str(value):
        return f"{value} ({names[value]})"
    return str(value)


def _labels(ex: Mapping[str, Any], key: str, k: int) -> list[Any]:
    values = ex.get(key)
    values = list(values) if isinstance(values, (list, tuple)) else []
    return (values + [None] * k)[:k]


def _gallery(result: Mapping[str, Any], d: Key, a: Key, ex: Mapping[str, Any],
             shape: tuple[int, int, int], number: int) -> Gallery | None:
    rows = ex.get("rows")
    k = len(rows) if isinstance(rows, (list, tuple)) else 0
    x, x_adv = _decode(ex.get("x"), k, shape), _decode(ex.get("x_adv"), k, shape)
    if not k or x is None or x_adv is None:
        return None
    names = ((result.get("provenance") or {}).get("data") or {}).get("class_names") or []
    names = names if isinstance(names, (list, tuple)) else []
    diff = difference(x, x_adv)
    peak = float(np.abs(diff).max())
    scaled = diff / peak if peak > 0 else diff
    what = f"{label(*a)} against {label(*d)}"
    if peak > 0:
        share = peak / 255
        scale = (f"Difference = adversarial − original, amplified ×{255 / peak:.3g}: full "
                 f"blue is −{share:.3g} and full red +{share:.3g} of the input range (the "
                 "largest change among these rows); white is no change.")
        low, high = f"−{share:.3g}", f"+{share:.3g}"
    else:
        scale = "The attack changed no pixel of these rows (at the gallery's 1/255 resolution)."
        low, high = "0", "0"
    bar = _diverging(np.tile(np.linspace(-1.0, 1.0, 128), (8, 1)))
    gallery_rows = []
    truth, clean, adv = (_labels(ex, key, k) for key in ("y_true", "pred_clean", "pred_adv"))
    for i in range(k):
        row = rows[i] if isinstance(rows[i], int) else i
        h, w = drawn_size(shape[1], shape[2])
        alt = f"test row {row}, true class {_class_name(truth[i], names)}"
        gallery_rows.append(GalleryRow(
            row,
            Image(png_uri(_picture(x[i])), w, h, f"original: {alt}"),
            Image(png_uri(_picture(x_adv[i])), w, h,
                  f"adversarial: {alt}, predicted {_class_name(adv[i], names)}"),
            Image(png_uri(_diverging(scaled[i])), w, h, f"difference: {alt}"),
            _class_name(truth[i], names), _class_name(clean[i], names),
            _class_name(adv[i], names), adv[i] is not None and adv[i] != truth[i],
            clean[i] is not None and clean[i] != truth[i]))
    return Gallery(f"gallery-{number}", a[0], a[1], label(*d), scale, low, high,
                   Image(png_uri(bar), 128, 8, f"colour scale of the difference for {what}"),
                   gallery_rows)


def galleries(result: Mapping[str, Any]) -> list[Gallery]:
    """One gallery per evasion attack, for image data only (see :func:`gallery_cells`)."""
    out: list[Gallery] = []
    for d, a, cell in gallery_cells(result):
        ex = _examples(cell)
        assert ex is not None
        shape = image_shape(ex.get("shape"))
        if shape is None:
            continue
        built = _gallery(result, d, a, ex, shape, len(out))
        if built is not None:
            out.append(built)
    return out


# -- minimal-perturbation attacks ---------------------------------------------------------
def per_row(cell: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The per-row ``correct_before``, ``correct_after`` and ``l2`` of a cell: from its
    ``rows`` (a cells.jsonl record) or from ``artifacts["rows"]`` (results.json), both
    packed by :func:`gauntlet.rows.pack`; None when the cell keeps neither."""
    from gauntlet.rows import unpack

    for packed in (cell.get("rows"), (cell.get("artifacts") or {}).get("rows")):
        if not isinstance(packed, Mapping) or not packed:
            continue
        try:
            arrays = unpack(packed)
        except (KeyError, TypeError, ValueError):
            continue
        need = ("correct_before", "correct_after", "l2")
        if all(k in arrays for k in need) and len({len(arrays[k]) for k in need}) == 1:
            return {k: arrays[k] for k in need}
    return None


def l2_accuracy(correct_before: np.ndarray, correct_after: np.ndarray, l2: np.ndarray,
                budgets: Sequence[float] | np.ndarray) -> np.ndarray:
    """Accuracy at each L2 budget b: the share of rows right on the clean input and either
    never flipped by the attack or flipped only at a distance above b.

    A minimal-perturbation attack's ``l2`` is the distance at which it flipped the row, so
    an attacker held to a budget b flips exactly the rows with ``l2 <= b``. The curve
    falls as the budget grows, from about the clean accuracy at 0 to the robust accuracy
    the attack itself reports when the budget is unbounded.
    """
    before = np.asarray(correct_before, dtype=bool)
    after = np.asarray(correct_after, dtype=bool)
    dist = np.asarray(l2, dtype=np.float64)
    if not len(before):
        return np.full(len(budgets), np.nan)
    b = np.asarray(budgets, dtype=np.float64)[:, None]
    survives = before & (after | (dist > b))
    return np.asarray(survives.mean(axis=1), dtype=np.float64)


def flipped_l2(rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """The L2 distances of the rows the attack flipped (right before, wrong after)."""
    flipped = rows["correct_before"].astype(bool) & ~rows["correct_after"].astype(bool)
    return np.asarray(rows["l2"], dtype=np.float64)[flipped]
