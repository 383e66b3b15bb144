"""Heterogeneous retrieval through each exported file, and the gate on dynamic-range files.

Each file embeds the query split (batch 1, in its runtime); the gallery model embeds the
gallery split; Recall@1 / Recall@10 / mAP@R of that pairing, with 95 % bootstrap intervals,
go into the file's ``retrieval`` entry.  The card's retrieval protocol puts them in context:
the PyTorch checkpoint's figures, the paragon's (the gallery model on both sides) and the
raw-pixel kNN baseline, on the same queries and gallery.  A quantized file also records how many points of Recall@1 it loses
against the float file it was made from; a dynamic-range file may lose at most
``max_dynamic_drop`` (``--max-dynamic-drop``, default 1), an int8 one is reported only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import EdgeQueryError
from .options import ExportOptions, file_runner
from .parity import embed_all

log = logging.getLogger(__name__)


def _metrics(q: torch.Tensor, q_lab, g_emb: torch.Tensor, g_lab) -> dict[str, Any]:
    """Recall@1 / @10 and mAP@R, with the 95 % bootstrap intervals of Recall@1 and mAP@R."""
    from ..metrics import retrieval_metrics

    return _metrics_of(retrieval_metrics(q, q_lab, g_emb, g_lab, ci=True))


def _metrics_of(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("recall@1", "recall@1_ci95", "recall@10", "map@r", "map@r_ci95")}


def measure_retrieval(folder: Path, entries: list[dict[str, Any]], net, gallery: dict, gallery_path, splits, spec,
                      model_input: Callable[[torch.Tensor], np.ndarray], opts: ExportOptions) -> dict[str, Any]:
    """Fill each entry's ``retrieval``, gate dynamic-range files; returns the card's ``retrieval`` protocol."""
    from ..evaluate import embed, raw_pixel_knn
    from ..models import model_from_checkpoint

    n_q = len(splits.query) if opts.eval_queries is None else min(opts.eval_queries, len(splits.query))
    log.log(opts.level, "embedding the gallery split (%d images) with the gallery model ...", len(splits.gallery))
    gallery_model = model_from_checkpoint(gallery)
    g_emb = embed(gallery_model, splits.gallery, spec, desc="gallery model: gallery")
    g_lab, q_lab = splits.gallery.labels, splits.query.labels[:n_q]
    queries = splits.query.subset(torch.arange(n_q))
    x_q = model_input(splits.query.images[:n_q])
    with torch.no_grad():
        ref = torch.cat([net(torch.from_numpy(c)) for c in np.array_split(x_q, max(1, n_q // 128))])
    protocol = {"setting": "heterogeneous: queries by this file, gallery by the gallery model",
                "gallery": {"path": str(gallery_path), "arch": gallery["model"]["arch"],
                            "model_version": gallery["model_version"]},
                "queries": n_q, "gallery_images": len(splits.gallery), "pytorch": _metrics(ref, q_lab, g_emb, g_lab),
                "paragon": _metrics(embed(gallery_model, queries, spec, desc="gallery model: queries"), q_lab, g_emb,
                                    g_lab),
                "baselines": {"raw_pixel_knn": _metrics_of(raw_pixel_knn(queries, splits.gallery))}}
    for entry in entries:
        runner = file_runner(folder, entry)
        q = torch.from_numpy(embed_all(runner, x_q, f"queries {entry['file']}", opts.progress))
        entry["retrieval"] = _metrics(q, q_lab, g_emb, g_lab)
    gate_quantized(entries, opts)
    for entry in entries:
        if entry["quantization"] == "none":
            log.log(opts.level, "  %s: het Recall@1 %.2f (PyTorch %.2f)", entry["file"],
                    100 * entry["retrieval"]["recall@1"], 100 * protocol["pytorch"]["recall@1"])
    log.log(opts.level, "  on the same %d queries: paragon Recall@1 %.2f, raw-pixel kNN %.2f", n_q,
            100 * protocol["paragon"]["recall@1"], 100 * protocol["baselines"]["raw_pixel_knn"]["recall@1"])
    return protocol


def gate_quantized(entries: list[dict[str, Any]], opts: ExportOptions) -> None:
    """Record each quantized file's Recall@1 drop against its float file; refuse a dynamic-range file beyond the allowance."""
    by_file = {e["file"]: e for e in entries}
    for entry in entries:
        if entry["quantization"] == "none":
            continue
        r = entry["retrieval"]
        drop = round(100 * (by_file[entry["quantized_from"]]["retrieval"]["recall@1"] - r["recall@1"]), 2)
        r["recall@1_drop_points"] = drop
        if entry["quantization"] == "dynamic":
            r["max_drop_points"] = opts.max_dynamic_drop
            r["passed"] = drop <= opts.max_dynamic_drop
            if not r["passed"]:
                raise EdgeQueryError(
                    f"{entry['file']} loses {drop:.2f} points of heterogeneous Recall@1 against "
                    f"{entry['quantized_from']} (allowed: {opts.max_dynamic_drop})",
                    "ship the float32 file, or raise --max-dynamic-drop if that loss is acceptable")
        log.log(opts.level, "  %s: het Recall@1 %.2f (%+.2f points vs %s)", entry["file"], 100 * r["recall@1"],
                0.0 - drop, entry["quantized_from"])
