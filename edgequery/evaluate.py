"""Embedding images and the heterogeneous-retrieval evaluation (``edgequery eval``)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .data import DataSpec, ImageSet, Splits, to_model_input
from .log import progress
from .metrics import compatibility_report

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(model: nn.Module, images: ImageSet | torch.Tensor, spec: DataSpec, batch_size: int = 256,
          device: str | torch.device = "cpu", desc: str | None = None, show_progress: bool = True) -> torch.Tensor:
    """Embeddings (float32, CPU) of uint8 images, in batches, model in eval mode.

    ``show_progress=False`` for the many small embeddings of a search (no bar, no log line).
    """
    raw = images.images if isinstance(images, ImageSet) else images
    was_training = model.training
    model.eval().to(device)
    out = []
    chunks = raw.split(batch_size)
    for chunk in progress(chunks, total=len(chunks), desc=desc or "embedding", unit="batch", log=log,
                          enabled=show_progress):
        out.append(model(to_model_input(chunk, spec, device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate_pair(query_model: nn.Module, gallery_model: nn.Module, splits: Splits,
                  device: str = "cpu", gallery_cache: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Paragon / homogeneous / heterogeneous metrics on the query and gallery splits.

    ``gallery_cache`` (a dict) keeps the gallery model's embeddings between calls, so
    comparing several query nets embeds the gallery with ResNet-101 only once.
    """
    cache = gallery_cache if gallery_cache is not None else {}
    if "query" not in cache:
        cache["query"] = embed(gallery_model, splits.query, splits.spec, device=device, desc="gallery model: queries")
        cache["gallery"] = embed(gallery_model, splits.gallery, splits.spec, device=device,
                                 desc="gallery model: gallery")
    qq = embed(query_model, splits.query, splits.spec, device=device, desc="query model: queries")
    qg = embed(query_model, splits.gallery, splits.spec, device=device, desc="query model: gallery")
    report = compatibility_report(qq, qg, cache["query"], cache["gallery"],
                                  splits.query.labels, splits.gallery.labels)
    report["sizes"] = {"query": len(splits.query), "gallery": len(splits.gallery)}
    return report


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A fixed-width table of the three settings (percent)."""
    lines = [title] if title else []
    lines.append(f"{'setting':<28}{'R@1':>8}{'R@10':>8}{'mAP@R':>8}")
    names = {"paragon": "paragon (g,g)", "homogeneous": "homogeneous (q,q)", "heterogeneous": "heterogeneous (q,g)"}
    for key, label in names.items():
        m = report[key]
        lines.append(f"{label:<28}{100 * m['recall@1']:>8.2f}{100 * m['recall@10']:>8.2f}{100 * m['map@r']:>8.2f}")
    s = report.get("sizes")
    if s:
        lines.append(f"({s['query']} queries, {s['gallery']} gallery images)")
    return "\n".join(lines)
