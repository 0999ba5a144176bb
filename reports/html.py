"""The self-contained HTML report of an audit result.

    from gauntlet.reports.html import render_report, write_report
    write_report(result, Path("out/report.html"), sections=plugin_sections)

The page needs nothing from the network: CSS is inlined, charts are inline SVG, and no
script is loaded. All plugin-supplied text (names, descriptions, reasons, tracebacks,
plugin sections) is escaped by the template environment.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.reports.context import ReportContext, build_context

if TYPE_CHECKING:
    import jinja2

TEMPLATE = "report.html"


def _environment() -> jinja2.Environment:
    # Built per render, never at import: no shared state, and a template edit shows up
    # on the next render.
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_context(context: ReportContext) -> str:
    """Render an already built :class:`ReportContext` to HTML."""
    return _environment().get_template(TEMPLATE).render(report=context)


def render_report(result: Mapping[str, Any],
                  sections: Sequence[Mapping[str, str]] = ()) -> str:
    """The report of ``result`` (a results.json object) as one HTML document.

    :param result: the audit result, as loaded from results.json.
    :param sections: extra sections from plugins, each ``{"title": ..., "text": ...}``;
        their text is shown as plain (escaped) text.
    """
    return render_context(build_context(result, sections))


def write_report(result: Mapping[str, Any], path: Path,
                 sections: Sequence[Mapping[str, str]] = ()) -> Path:
    """Render the report of ``result`` and write it to ``path`` (UTF-8); return the path."""
    path = Path(path)
    html = render_report(result, sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
