"""Renderers of audit results: HTML report (with inline SVG charts), JSON and CSV."""
