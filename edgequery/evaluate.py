"""Embedding images and the heterogeneous-retrieval evaluation (``edgequery eval``).

Every evaluation reports, beside the three settings, the trivial baseline a trained model
must beat: raw-pixel cosine kNN (:func:`raw_pixel_baseline`) on the same query/gallery
split, and a 95 % bootstrap interval for each Recall@1 and mAP@R (:mod:`.metrics`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .data import DataSpec, ImageSet, Splits, to_model_input
from .log import progress
from .metrics import compatibility_report, retrieval_metrics
from .models.stored import StoredGallery

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(model: nn.Module, images: ImageSet | torch.Tensor, spec: DataSpec, batch_size: int = 256,
          device: str | torch.device = "cpu", desc: str | None = None, show_progress: bool = True) -> torch.Tensor:
    """Embeddings (float32, CPU) of uint8 images, in batches, model in eval mode.

    ``show_progress=False`` for the many small embeddings of a search (no bar, no log line).
    A :class:`~edgequery.models.StoredGallery` returns its stored rows.
    """
    raw = images.images if isinstance(images, ImageSet) else images
    if isinstance(model, StoredGallery):  # its outputs are stored: looked up, not computed
        return model.lookup(raw)
    was_training = model.training
    model.eval().to(device)
    out = []
    chunks = raw.split(batch_size)
    for chunk in progress(chunks, total=len(chunks), desc=desc or "embedding", unit="batch", log=log,
                          enabled=show_progress):
        out.append(model(to_model_input(chunk, spec, device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def raw_pixel_baseline(splits: Splits) -> dict[str, Any]:
    """Cosine kNN on the raw pixels (the stored uint8 images, flattened), with CIs.

    The floor every trained model must clear on this split: a gallery model below it has
    learnt less than the pixels already say.
    """
    return raw_pixel_knn(splits.query, splits.gallery)


def raw_pixel_knn(queries: ImageSet, gallery: ImageSet) -> dict[str, Any]:
    """:func:`raw_pixel_baseline` for any query and gallery images."""
    def flat(images: ImageSet) -> torch.Tensor:
        return torch.nn.functional.normalize(images.images.flatten(1).float(), dim=1)

    return retrieval_metrics(flat(queries), queries.labels, flat(gallery), gallery.labels, ci=True)


def baseline_warnings(report: dict[str, Any]) -> list[str]:
    """What a reader of ``report`` must know: a paragon that does not (clearly) beat raw pixels."""
    raw, paragon = report["baselines"]["raw_pixel_knn"], report["paragon"]
    figures = f"paragon Recall@1 {_pct(paragon)} vs raw-pixel kNN {_pct(raw)}"
    advice = ("its embeddings are not worth matching yet: train it longer or on more data (`edgequery train "
              "gallery --steps N --n-train N`, or its default recipe) before trusting heterogeneous figures")
    if paragon["recall@1"] <= raw["recall@1"]:
        return [f"the gallery model does not beat raw pixels on this split: {figures}; {advice}"]
    if paragon["recall@1_ci95"][0] <= raw["recall@1_ci95"][1]:
        return [f"the gallery model does not clearly beat raw pixels on this split (the 95 % intervals overlap: "
                f"{figures}); more queries or a stronger gallery model would tell"]
    return []


def _pct(m: dict[str, Any]) -> str:
    lo, hi = m["recall@1_ci95"]
    return f"{100 * m['recall@1']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def gallery_report(gallery_model: nn.Module, splits: Splits, device: str = "cpu",
                   gallery_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gallery model alone: paragon metrics (with CIs), ``baselines.raw_pixel_knn``, ``sizes`` and
    ``warnings`` (:func:`baseline_warnings`).  ``gallery_cache`` (a dict) keeps its embeddings and
    figures, so the query and gallery splits are embedded with ResNet-101 once per cache."""
    cache = gallery_cache if gallery_cache is not None else {}
    ql, gl = splits.query.labels, splits.gallery.labels
    if "query" not in cache:
        cache["query"] = embed(gallery_model, splits.query, splits.spec, device=device, desc="gallery model: queries")
        cache["gallery"] = embed(gallery_model, splits.gallery, splits.spec, device=device,
                                 desc="gallery model: gallery")
        cache["paragon"] = retrieval_metrics(cache["query"], ql, cache["gallery"], gl, ci=True)
        cache["raw_pixel_knn"] = raw_pixel_baseline(splits)
    report = {"paragon": dict(cache["paragon"]), "baselines": {"raw_pixel_knn": dict(cache["raw_pixel_knn"])},
              "sizes": {"query": len(splits.query), "gallery": len(splits.gallery)}}
    report["warnings"] = baseline_warnings(report)
    return report


def evaluate_pair(query_model: nn.Module, gallery_model: nn.Module, splits: Splits,
                  device: str = "cpu", gallery_cache: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Paragon / homogeneous / heterogeneous metrics on the query and gallery splits, with CIs, and
    what :func:`gallery_report` says of the gallery model (``gallery_cache`` as there)."""
    cache = gallery_cache if gallery_cache is not None else {}
    alone = gallery_report(gallery_model, splits, device, cache)
    qq = embed(query_model, splits.query, splits.spec, device=device, desc="query model: queries")
    qg = embed(query_model, splits.gallery, splits.spec, device=device, desc="query model: gallery")
    report = compatibility_report(qq, qg, cache["query"], cache["gallery"], splits.query.labels,
                                  splits.gallery.labels, ci=True, paragon=alone["paragon"])
    return {**report, **{k: alone[k] for k in ("baselines", "sizes", "warnings")}}


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A fixed-width table of the three settings (those ``report`` has: a :func:`gallery_report` has the
    paragon only) and the raw-pixel baseline (percent, R@1 with its 95 % CI)."""
    lines = [title] if title else []
    lines.append(f"{'setting':<28}{'R@1':>8}{'95 % CI':>16}{'R@10':>8}{'mAP@R':>8}")
    settings = {"paragon (g,g)": "paragon", "homogeneous (q,q)": "homogeneous", "heterogeneous (q,g)": "heterogeneous"}
    rows = {label: report[key] for label, key in settings.items() if key in report}
    if "baselines" in report:
        rows["raw-pixel kNN (baseline)"] = report["baselines"]["raw_pixel_knn"]
    for label, m in rows.items():
        ci = m.get("recall@1_ci95")
        ci_text = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
        lines.append(f"{label:<28}{100 * m['recall@1']:>8.2f}{ci_text:>16}{100 * m['recall@10']:>8.2f}"
                     f"{100 * m['map@r']:>8.2f}")
    s = report.get("sizes")
    if s:
        lines.append(f"({s['query']} queries, {s['gallery']} gallery images)")
    return "\n".join(lines)
