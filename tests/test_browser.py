"""The demo report in a real browser: Playwright drives the system's Chromium (Debian's
``chromium``; Playwright's own browser download is never needed), loads the report under
its Content-Security-Policy and measures what it laid out.

The screenshot in README.md comes from here::

    GAUNTLET_SCREENSHOT=docs/report.png python -m pytest -q -m slow tests/test_browser.py
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

WIDE, NARROW = 1280, 420
#: The screenshot: the header and the summary, at most this many CSS pixels tall.
SHOT_HEIGHT = 1600

# Runs in the page but outside its policy (Playwright evaluates over DevTools): opening
# every <details> lays out what the report folds away, so it is measured too.
OPEN_DETAILS = "() => document.querySelectorAll('details').forEach(d => { d.open = true; })"

MEASURE = """() => {
  const box = el => { const r = el.getBoundingClientRect();
                      return {what: el.id || el.dataset.metric || el.parentElement.id,
                              width: r.width, height: r.height}; };
  return {summary: [...document.querySelectorAll('#summary')].map(box),
          matrices: [...document.querySelectorAll('table[data-metric]')].map(box),
          charts: [...document.querySelectorAll('figure.chart svg')].map(box),
          svgs: document.querySelectorAll('svg').length};
}"""

# The outermost elements that stick out of the page sideways, except inside a box that
# scrolls or clips its own overflow (the matrices' .scroll wrappers, <pre>, an SVG's own
# drawing).
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth, wide = new Set();
  const clips = el => { for (let a = el.parentElement; a; a = a.parentElement)
                          if (getComputedStyle(a).overflowX !== 'visible') return true;
                        return false; };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if ((r.right > width + 0.5 || r.left < -0.5) && r.width > 0 && !clips(el)) wide.add(el);
  }
  const name = el => `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}` +
                     `${el.classList.length ? '.' + [...el.classList].join('.') : ''}` +
                     ` ${Math.round(el.getBoundingClientRect().width)} px`;
  return {width, scrollWidth: document.documentElement.scrollWidth,
          wide: [...wide].filter(el => !wide.has(el.parentElement)).map(name)};
}"""


class _Counts(HTMLParser):
    """What the report's HTML source holds: matrices, chart figures and SVGs."""

    def __init__(self) -> None:
        super().__init__()
        self.summary = self.matrices = self.charts = self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.summary += a.get("id") == "summary"
        self.matrices += tag == "table" and "data-metric" in a
        self.charts += tag == "figure" and "chart" in (a.get("class") or "").split()
        self.svgs += tag == "svg"


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium under Playwright; the tests skip, saying why, without either."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the test extra has it)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        try:
            # No sandbox: CI runs as root, where Chromium refuses to start with one.
            chromium = playwright.chromium.launch(executable_path=executable,
                                                  args=["--no-sandbox"])
        except sync_api.Error as error:
            pytest.skip(f"{executable} did not start under Playwright: {error}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo_report(browser: Any, demo_cache: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of ``gauntlet audit`` with no arguments (the demo), run as a user runs
    it. Its content cache is the one the CLI demo test fills (tests/conftest.py,
    ``demo_cache``), so after that test, or after a first run of this one, the audit
    replays its cells in seconds instead of computing them for minutes; the report itself
    is rendered anew either way. (``browser`` first: no browser, no audit.)"""
    out = tmp_path_factory.mktemp("demo")
    # The cache by variable, not --cache: GAUNTLET_* variables are part of the key of a
    # remembered audit, so a stable one lets the next run replay the audit whole.
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "GAUNTLET_SCREENSHOT")}
    env["GAUNTLET_CACHE_DIR"] = str(demo_cache)
    proc = subprocess.run([sys.executable, "-m", "gauntlet", "audit", "--no-progress",
                           "--out", str(out)], cwd=out, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "report.html"


def _open(browser: Any, report: Path, width: int) -> tuple[Any, Any, list[str]]:
    """A fresh page ``width`` CSS pixels wide showing ``report``, and the list that
    collects every complaint: console errors and warnings (a CSP violation is one), page
    errors, failed requests, and any request for something but the report itself."""
    context = browser.new_context(viewport={"width": width, "height": 900},
                                  device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} ({r.failure})"))
    page.on("request", lambda r: None if r.url == report.as_uri() or r.url.startswith("data:")
            else problems.append(f"request: {r.url}"))
    page.goto(report.as_uri(), wait_until="load")
    return context, page, problems


def test_demo_report_renders_every_summary_matrix_and_chart(browser: Any,
                                                           demo_report: Path,
                                                           tmp_path: Path) -> None:
    context, page, problems = _open(browser, demo_report, WIDE)
    try:
        top = page.evaluate("() => document.querySelector('#summary')"
                            ".getBoundingClientRect().bottom")
        height = min(SHOT_HEIGHT, math.ceil(top) + 24)
        shot = tmp_path / "report.png"  # as a reader first sees it: nothing unfolded
        page.screenshot(path=str(shot), full_page=True,
                        clip={"x": 0, "y": 0, "width": WIDE, "height": height})
        page.evaluate(OPEN_DETAILS)
        laid_out = page.evaluate(MEASURE)
    finally:
        context.close()
    assert problems == [], "\n".join(problems)

    source = _Counts()
    source.feed(demo_report.read_text(encoding="utf-8"))
    # Every element the HTML holds is in the page (the parser dropped nothing) ...
    assert len(laid_out["summary"]) == source.summary == 1
    assert len(laid_out["matrices"]) == source.matrices > 10
    assert len(laid_out["charts"]) == source.charts > 0
    assert laid_out["svgs"] == source.svgs == source.charts  # every SVG is a chart's
    # ... and has a size: no zero-sized chart, no collapsed table.
    for kind in ("summary", "matrices", "charts"):
        empty = [b for b in laid_out[kind] if not (b["width"] > 0 and b["height"] > 0)]
        assert empty == [], f"{kind} laid out with no area: {empty}"

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wanted = os.environ.get("GAUNTLET_SCREENSHOT")
    if wanted:  # the README's picture: see this module's docstring
        Path(wanted).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, wanted)


def test_demo_report_fits_a_narrow_screen(browser: Any, demo_report: Path) -> None:
    """On a phone-sized screen nothing sticks out of the page sideways: what is too wide
    (the matrices) scrolls inside its own box."""
    context, page, problems = _open(browser, demo_report, NARROW)
    try:
        page.evaluate(OPEN_DETAILS)
        fit = page.evaluate(OVERFLOW)
    finally:
        context.close()
    assert problems == [], "\n".join(problems)
    assert fit["wide"] == [], f"wider than the {fit['width']} px page: {fit['wide'][:20]}"
    assert fit["scrollWidth"] <= fit["width"]
