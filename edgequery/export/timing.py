"""Latency in the card: each file timed on the exporting machine, and a LUT's prediction beside it.

Measured: every file, batch 1, at each ``--threads`` count, end to end
(:func:`~edgequery.runtimes.run.measure_latency`: median, p10, p90).  Predicted (``--lut``):
what a per-block latency table of ``edgequery profile`` says for the arch, or why it says
nothing (the card's ``lut_prediction``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeQueryError
from ..runtimes.run import measure_latency
from .options import ExportOptions, file_runner

log = logging.getLogger(__name__)


def measure_files(folder: Path, entries: list[dict[str, Any]], x: np.ndarray, opts: ExportOptions) -> dict[str, Any]:
    """Fill each entry's ``latency`` (``"threads=N"`` -> figures); returns the card's ``latency_protocol``."""
    for entry in entries:
        entry["latency"] = {}
        for threads in opts.threads:
            runner = file_runner(folder, entry, threads)
            entry["latency"][f"threads={threads}"] = measure_latency(runner, x[:1], warmup=opts.warmup, runs=opts.runs)
        first = entry["latency"][f"threads={opts.threads[0]}"]
        log.log(opts.level, "  latency %s: median %.3f ms at %d thread(s)", entry["file"], first["median_ms"],
                opts.threads[0])
    return {"batch": 1, "warmup": opts.warmup, "runs": opts.runs, "statistic": "median, p10, p90",
            "threads": list(opts.threads), "overhead": "end to end: the runtime's per-invocation overhead is included",
            "note": "measured on the exporting machine; on a shared machine timings are noisy"}


def lut_prediction(lut_path: str | None, arch: str, embed_dim: int) -> dict[str, Any] | None:
    """Latency predicted for ``arch`` by a per-block LUT (``edgequery profile``), or why there is none.

    Only searched nets (``space:...`` arch strings) are made of a LUT's blocks; for a
    baseline such as ``mobilenet_v3_small`` the card says so.  A LUT of another space or
    resolution is not an error for the export - the card records why nothing was predicted.
    """
    if not lut_path:
        return None
    from ..latency import load_lut
    from ..spaces import space_from_config

    lut = load_lut(lut_path)  # a missing or foreign file is the user's error: raise
    if ":" not in arch:
        return {"lut": str(lut_path), "status": "not predicted",
                "reason": f"{arch} is not an arch of a search space: a LUT holds the blocks of searched nets only"}
    try:
        if embed_dim != lut.embed_dim:
            raise EdgeQueryError(f"the LUT was measured for {lut.embed_dim}-d embeddings, the net has {embed_dim}",
                                 f"profile with --embed-dim {embed_dim}")
        detail = lut.breakdown(space_from_config(lut.space_config), arch)
    except EdgeQueryError as exc:
        return {"lut": str(lut_path), "status": "not predicted", "reason": str(exc)}
    return {"lut": str(lut_path), "status": "predicted", "predicted_ms": detail["predicted_ms"],
            "raw_ms": detail["raw_ms"], "calibrated": detail["calibrated"],
            **{k: detail[k] for k in ("device", "runtime", "threads") if k in detail}}
