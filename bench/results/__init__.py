"""Collected results: one flat table per suite (``results/<suite>/table.parquet``)."""
from bench.results.collect import RESULT_COLUMNS, collect, load_results

__all__ = ["RESULT_COLUMNS", "collect", "load_results"]
