"""Suite report: tables (Markdown, LaTeX, CSV), trade-off and paper figures, matched budgets, gallery, index."""

from bench.report.build import build_report
from bench.report.summary import summarize
from bench.report.table import render_markdown

__all__ = ["build_report", "render_markdown", "summarize"]
