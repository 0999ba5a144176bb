"""The report's gallery of adversarial examples and the L2 charts of minimal attacks:
images decode to PNGs of the right size, labels match the cell's examples, the L2 curve
is the hand-computed one, non-image data has no gallery, plugin text stays escaped."""
from __future__ import annotations

import base64
import copy
import io
import re
from typing import Any

import numpy as np
import pytest

from gauntlet.reports.gallery import (
    drawn_size,
    galleries,
    gallery_cells,
    image_shape,
    l2_accuracy,
    per_row,
)
from gauntlet.reports.html import render_report
from gauntlet.rows import pack

EVIL = "<script>alert(1)</script>"
PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def audited(digits: Any, digits_model: Any) -> Any:
    """A real tiny audit: FGSM at three budgets and the noise baseline, on the undefended
    model and behind confidence-clip (where FGSM is not applicable), 12 rows."""
    import gauntlet

    return gauntlet.audit(model=digits_model, data=digits,
                          attacks={"fgsm": {"eps": [0.05, 0.2, 0.12]}, "noise": {"eps": 0.3}},
                          defenses=["confidence-clip", "none"], samples=12, seed=0)


@pytest.fixture(scope="module")
def result(audited: Any) -> dict[str, Any]:
    return audited.result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def html(result: dict[str, Any]) -> str:
    return render_report(result)


def _png(b64: str) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    img.load()
    return img


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def test_gallery_picks_the_undefended_row_and_the_eps_nearest_0_1(result: dict) -> None:
    chosen = {a[0]: (d, a) for d, a, _ in gallery_cells(result)}
    assert chosen["fgsm"] == (("none", ""), ("fgsm", "eps=0.12"))
    assert chosen["noise"] == (("none", ""), ("noise", ""))  # its only point (not swept)


def test_gallery_images_are_pngs_of_the_right_size_and_content(result: dict,
                                                              html: str) -> None:
    gallery = _section(html, "gallery")
    shown = galleries(result)
    assert [g.attack for g in shown] == ["fgsm", "noise"]
    cells = {a[0]: c for _, a, c in gallery_cells(result)}
    for g in shown:
        ex = cells[g.attack]["artifacts"]["examples"]
        assert ex["shape"] == [1, 8, 8]
        k = len(ex["rows"])
        x = np.frombuffer(base64.b64decode(ex["x"]), np.uint8).reshape(k, 8, 8)
        x_adv = np.frombuffer(base64.b64decode(ex["x_adv"]), np.uint8).reshape(k, 8, 8)
        assert len(g.rows) == k == 3
        for i, row in enumerate(g.rows):
            for image, want in ((row.original, x[i]), (row.adversarial, x_adv[i])):
                assert image.src in gallery
                img = _png(image.src.split(",", 1)[1])
                assert img.size == (64, 64) == (image.width, image.height)  # 8x8, x8
                # Nearest-neighbour upscaling: every 8x8 block is one input pixel.
                assert np.array_equal(np.asarray(img)[::8, ::8], want)
            diff = _png(row.difference.src.split(",", 1)[1])
            assert diff.size == (64, 64) and diff.mode == "RGB"
            pixels = np.asarray(diff)[::8, ::8].astype(int)
            same = x_adv[i] == x[i]
            # Unchanged pixels are white; raised ones redder than blue, lowered ones bluer.
            assert (pixels[same] >= 245).all()
            up, down = x_adv[i] > x[i], x_adv[i] < x[i]
            assert (pixels[up][:, 0] > pixels[up][:, 2]).all()
            assert (pixels[down][:, 2] > pixels[down][:, 0]).all()
    # Every image of the page is an inline PNG that decodes.
    assert len(PNG_URI.findall(gallery)) == 2 * (1 + 3 * 3)
    for b64 in PNG_URI.findall(gallery):
        _png(b64)


def test_gallery_labels_match_the_examples(result: dict, html: str) -> None:
    gallery = _section(html, "gallery")
    cells = {a[0]: c for _, a, c in gallery_cells(result)}
    for attack, cell in cells.items():
        ex = cell["artifacts"]["examples"]
        start = gallery.index(f'data-attack="{attack}"')
        block = gallery[start:gallery.index("</figure>", start)]
        shown = re.findall(r'<tr data-row="(\d+)">.*?class="true-label">([^<]*)<.*?'
                           r'class="clean-label[^"]*">([^<]*)<.*?class="adv-label[^"]*">([^<]*)<',
                           block, re.DOTALL)
        assert [tuple(int(v) for v in s) for s in shown] == list(
            zip(ex["rows"], ex["y_true"], ex["pred_clean"], ex["pred_adv"]))
        fooled = block.count('adv-label fooled"')
        assert fooled == sum(a != t for a, t in zip(ex["pred_adv"], ex["y_true"]))


def test_difference_scale_is_stated(html: str) -> None:
    gallery = _section(html, "gallery")
    # FGSM at eps 0.12 moves pixels by at most 0.12 of the [0, 1] range, give or take the
    # gallery's quantisation to 1/255 of each image.
    m = re.search(r"amplified ×([\d.]+): full blue is −([\d.]+) and full red \+([\d.]+)",
                  gallery)
    assert m and m.group(2) == m.group(3)
    assert 0.12 - 1 / 255 <= float(m.group(2)) <= 0.12 + 1 / 255 + 5e-4
    assert 'alt="colour scale of the difference' in gallery


def test_images_are_allowed_by_the_policy_and_load_nothing(html: str) -> None:
    assert "img-src data:" in html
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


@pytest.mark.parametrize("shape", [[64], [2, 8, 8], [1, 1, 8], [8, 8], [1, 8, 8, 1]])
def test_non_image_data_gets_no_gallery(result: dict, shape: list[int]) -> None:
    changed = copy.deepcopy(result)
    for cell in changed["cells"]:
        ex = (cell.get("artifacts") or {}).get("examples")
        if ex:
            ex["shape"] = shape
    assert galleries(changed) == []
    html = render_report(changed)
    assert 'id="gallery"' not in html and "<img" not in html


def test_tabular_audit_has_no_gallery() -> None:
    import gauntlet

    audit = gauntlet.audit(model="builtin:mlp", data="sklearn:iris",
                           attacks={"fgsm": {"eps": 0.1}}, defenses=["none"], samples=10,
                           seed=0)
    examples = [c["artifacts"]["examples"] for c in audit.cells if c["attack"] == "fgsm"]
    assert examples and image_shape(examples[0]["shape"]) is None
    assert 'id="gallery"' not in render_report(audit.result)


def test_damaged_examples_are_left_out(result: dict) -> None:
    changed = copy.deepcopy(result)
    for cell in changed["cells"]:
        ex = (cell.get("artifacts") or {}).get("examples")
        if ex and cell["attack"] == "noise":
            ex["x_adv"] = ex["x_adv"][:-8]  # too short for three 8x8 rows
    assert [g.attack for g in galleries(changed)] == ["fgsm"]


def test_plugin_names_in_the_gallery_are_escaped(result: dict) -> None:
    changed = copy.deepcopy(result)
    changed["attacks"][EVIL] = changed["attacks"].pop("noise")
    for cell in changed["cells"]:
        if cell["attack"] == "noise":
            cell["attack"] = EVIL
    changed["provenance"]["data"]["class_names"] = [EVIL] * 10
    html = render_report(changed)
    gallery = _section(html, "gallery")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in gallery
    assert 'data-attack="&lt;script&gt;' in gallery


def test_drawn_size() -> None:
    assert drawn_size(8, 8) == (64, 64)
    assert drawn_size(28, 28) == (84, 84)
    assert drawn_size(32, 20) == (64, 40)
    assert drawn_size(64, 64) == (64, 64)
    assert drawn_size(320, 160) == (160, 80)


# -- minimal-perturbation attacks ---------------------------------------------------------
def test_l2_accuracy_equals_a_hand_computation() -> None:
    before = np.array([True, True, True, False, True])
    after = np.array([False, False, True, False, False])  # row 2 never flipped
    l2 = np.array([0.5, 1.0, 2.0, 0.3, 1.0], np.float32)
    budgets = [0.0, 0.5, 0.75, 1.0, 5.0]
    # b=0: rows 0, 1, 2, 4 hold (row 3 was wrong clean); b=0.5: row 0 flips; b=1: 1 and 4.
    assert l2_accuracy(before, after, l2, budgets).tolist() == pytest.approx(
        [0.8, 0.6, 0.6, 0.2, 0.2])


def test_l2_accuracy_falls_as_the_budget_grows() -> None:
    rng = np.random.default_rng(0)
    before = rng.random(200) < 0.9
    after = before & (rng.random(200) < 0.2)
    l2 = rng.exponential(1.0, 200)
    budgets = np.linspace(0, 6, 61)
    acc = l2_accuracy(before, after, l2, budgets)
    assert (np.diff(acc) <= 0).all()  # more budget never helps the defender
    assert acc[0] == pytest.approx(before.mean())
    assert acc[-1] == pytest.approx((before & after).mean())  # the attack's own number


def _minimal_result(result: dict, where: str) -> dict[str, Any]:
    """``result`` plus a hopskipjump cell per defense carrying per-row distances, in the
    cell's ``rows`` (a cells.jsonl record) or in ``artifacts["rows"]``."""
    changed = copy.deepcopy(result)
    changed["attacks"]["hopskipjump"] = {**changed["attacks"]["noise"], "minimal": True}
    rng = np.random.default_rng(1)
    for defense, name in (("none", "none"), ("confidence-clip", EVIL)):
        before = rng.random(40) < 0.9
        after = before & (rng.random(40) < 0.1)
        packed = pack({"row": np.arange(40), "correct_before": before,
                       "correct_after": after,
                       "l2": rng.exponential(0.8, 40).astype(np.float32)})
        base = next(c for c in changed["cells"] if c["attack"] == "noise"
                    and c["defense"] == "none")
        cell = {**copy.deepcopy(base), "id": f"{defense}|hopskipjump|", "defense": name,
                "attack": "hopskipjump", "attack_params": {}, "attack_point": ""}
        if where == "rows":
            cell["rows"] = packed
        else:
            cell["artifacts"] = {**cell["artifacts"], "rows": packed}
        changed["cells"].append(cell)
    return changed


@pytest.mark.parametrize("where", ["rows", "artifacts"])
def test_minimal_attack_gets_l2_histogram_and_budget_curve(result: dict, where: str) -> None:
    changed = _minimal_result(result, where)
    cell = changed["cells"][-1]
    rows = per_row(cell)
    assert rows is not None and len(rows["l2"]) == 40
    html = render_report(changed)
    charts = _section(html, "charts")
    assert 'id="charts-l2"' in charts
    assert "hopskipjump: distance to flip" in charts
    assert "hopskipjump: accuracy vs L2 budget" in charts
    assert "<script" not in html.lower() and "&lt;script&gt;" in charts


def test_minimal_attack_without_per_row_data_draws_nothing(result: dict) -> None:
    changed = _minimal_result(result, "rows")
    for cell in changed["cells"]:
        cell.pop("rows", None)
    assert 'id="charts-l2"' not in render_report(changed)
