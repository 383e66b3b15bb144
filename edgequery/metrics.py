"""Retrieval metrics: Recall@K and mAP@R, vectorised, and the three-way comparison.

A gallery item is *relevant* to a query when it has the query's label.  Similarity is
the dot product of L2-normalised embeddings (cosine), ranked high to low.

* **Recall@K** (DeepFashion2-style top-k accuracy): share of queries with at least one
  relevant item among the top K.
* **mAP@R** (Musgrave et al., "A Metric Learning Reality Check"): for a query with R
  relevant gallery items, the mean over the top-R ranks i that are relevant of the
  precision at i, divided by R.

:func:`compatibility_report` gives the three settings of heterogeneous search side by
side: *paragon* (gallery model on both sides), *homogeneous* (query model on both sides)
and *heterogeneous* (query model for queries, gallery model for the gallery).

With ``ci=True`` Recall@1 and mAP@R come with a 95 % confidence interval: a percentile
bootstrap over queries (:func:`bootstrap_ci`), i.e. how much the figure would move on
another draw of as many queries from the same distribution.  The gallery is held fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS = (1, 10)
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(values: Sequence[float] | np.ndarray | torch.Tensor, level: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of per-query ``values``.

    Deterministic for a given ``seed``; memory is bounded by resampling in batches.
    """
    from scipy.stats import bootstrap

    v = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"need a non-empty 1-d array of per-query values, got shape {v.shape}")
    if np.all(v == v[0]):  # every resample has the same mean (scipy would warn about a degenerate distribution)
        return float(v[0]), float(v[0])
    res = bootstrap((v,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                    vectorized=True, batch=max(1, 4_000_000 // len(v)), rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@torch.no_grad()
def retrieval_metrics(query_emb: torch.Tensor, query_labels: torch.Tensor,
                      gallery_emb: torch.Tensor, gallery_labels: torch.Tensor,
                      ks: tuple[int, ...] = DEFAULT_KS, chunk: int = 1024, ci: bool = False,
                      exclude_self: bool = False) -> dict:
    """Recall@K for each K in ``ks`` and mAP@R, as fractions in [0, 1].

    Queries with no relevant item in the gallery count as misses for Recall and 0 for
    mAP@R (they are rare in class-level retrieval; their number is reported).  With
    ``ci``, ``recall@1_ci95`` and ``map@r_ci95`` hold 95 % bootstrap intervals (needs 1 in ``ks``).
    ``exclude_self``: query ``i`` and gallery item ``i`` are the same image (leave-one-out:
    every image is a query against all the others), so that pair is left out of the ranking.
    """
    if query_emb.ndim != 2 or gallery_emb.ndim != 2 or query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(f"embedding shapes do not match: {tuple(query_emb.shape)} vs {tuple(gallery_emb.shape)}")
    if len(query_emb) != len(query_labels) or len(gallery_emb) != len(gallery_labels):
        raise ValueError("each embedding needs exactly one label")
    q = query_emb.float()
    g = gallery_emb.float()
    ql = query_labels.long()
    gl = gallery_labels.long()

    # R for every query: how many gallery items share its label.
    classes, counts = torch.unique(gl, return_counts=True)
    lookup = torch.zeros(int(max(ql.max(), gl.max())) + 1, dtype=torch.long)
    lookup[classes] = counts
    r = lookup[ql]
    if exclude_self:
        if len(q) != len(g) or not torch.equal(ql, gl):
            raise ValueError("exclude_self needs the same images, in the same order, as queries and gallery")
        r = r - 1  # a query is not in its own gallery
    depth = min(max(int(r.max()), max(ks)), len(g) - int(exclude_self))

    hits = {k: 0 for k in ks}
    hit1, aps = [], []
    ranks = torch.arange(1, depth + 1, dtype=torch.float32)
    for start in range(0, len(q), chunk):
        sim = q[start:start + chunk] @ g.T
        if exclude_self:
            rows = torch.arange(len(sim))
            sim[rows, start + rows] = -torch.inf
        top = sim.topk(depth, dim=1).indices
        rel = (gl[top] == ql[start:start + chunk, None])
        for k in ks:
            hits[k] += int(rel[:, :k].any(dim=1).sum())
        hit1.append(rel[:, 0])
        rc = r[start:start + chunk]
        within_r = ranks[None, :] <= rc[:, None]
        relf = (rel & within_r).float()
        precision = relf.cumsum(dim=1) / ranks
        aps.append((precision * relf).sum(dim=1) / rc.clamp(min=1))
    n = len(q)
    ap = torch.cat(aps)
    out: dict = {f"recall@{k}": hits[k] / n for k in ks}
    out["map@r"] = float(ap.sum()) / n
    out["queries_without_match"] = int((r == 0).sum())
    if ci:
        if 1 not in ks:
            raise ValueError("ci=True reports Recall@1's interval: include 1 in ks")
        out["recall@1_ci95"] = list(bootstrap_ci(torch.cat(hit1).double()))
        out["map@r_ci95"] = list(bootstrap_ci(ap.double()))
    return out


def compatibility_report(query_model_on_query: torch.Tensor, query_model_on_gallery: torch.Tensor,
                         gallery_model_on_query: torch.Tensor, gallery_model_on_gallery: torch.Tensor,
                         query_labels: torch.Tensor, gallery_labels: torch.Tensor,
                         ks: tuple[int, ...] = DEFAULT_KS, ci: bool = False,
                         paragon: dict | None = None) -> dict[str, dict]:
    """Paragon (g,g), homogeneous (q,q) and heterogeneous (q,g) metrics in one call.

    ``paragon``: the (g,g) metrics when already computed - they depend on the gallery model
    alone, so comparing several query nets computes them once.
    """
    return {
        "paragon": paragon or retrieval_metrics(gallery_model_on_query, query_labels, gallery_model_on_gallery,
                                                gallery_labels, ks, ci=ci),
        "homogeneous": retrieval_metrics(query_model_on_query, query_labels, query_model_on_gallery, gallery_labels,
                                         ks, ci=ci),
        "heterogeneous": retrieval_metrics(query_model_on_query, query_labels, gallery_model_on_gallery,
                                           gallery_labels, ks, ci=ci),
    }
