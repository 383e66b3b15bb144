"""``edgequery report``: one self-contained HTML page for a run folder (:mod:`edgequery.report.run`)."""

from __future__ import annotations

import argparse
import logging

from .common import HelpFormatter

log = logging.getLogger(__name__)

DESCRIPTION = ("Write one HTML file for a folder `edgequery demo` wrote: the stages (status, wall time, machine); "
               "paragon, homogeneous and heterogeneous Recall@1 of every query net with 95 % intervals beside "
               "raw-pixel kNN; the search's accuracy-vs-latency front with the nets timed end to end and the "
               "MobileNetV3 baseline; the latency table's predictions against those timings; the chosen arch's "
               "per-block latency; query images with their top hits through the exported ONNX file and the faiss "
               "index; the exported files' parity, size and latency. Plots are embedded, nothing is loaded from "
               "elsewhere: the file can be mailed or opened offline. `edgequery demo` writes it at its end.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of a run folder",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="the run folder (edgequery demo --out; default there: runs/demo)")
    p.add_argument("--out", default=None, help="HTML file to write (default: <run>/report.html)")
    p.add_argument("--queries", type=int, default=8, help="query images in the retrieval grid")
    p.add_argument("--top", type=int, default=5, help="hits shown per query")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..report import write_run_report

    path = write_run_report(args.run, args.out, args.queries, args.top)
    print(f"report: {path}")
    return 0
