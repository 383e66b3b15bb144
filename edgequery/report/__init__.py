"""Reports people read: self-contained HTML pages (:mod:`.page`) of a run folder (:mod:`.run`,
``edgequery report``) and, in ``benchmarks/run_all.py``, of every committed benchmark result."""

from .page import Page, external_references, figure_png, pct, pct_ci, pyplot
from .run import REPORT_NAME, run_report, write_run_report

__all__ = ["Page", "REPORT_NAME", "external_references", "figure_png", "pct", "pct_ci", "pyplot", "run_report",
           "write_run_report"]
