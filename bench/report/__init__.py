"""Suite report: Markdown summary table and the accuracy/compute trade-off plot."""
from bench.report.table import build_report, render_markdown, summarize

__all__ = ["build_report", "render_markdown", "summarize"]
