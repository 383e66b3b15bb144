import pytest
import torch
import torch.nn.functional as F

from edgequery.evaluate import baseline_warnings, raw_pixel_baseline
from edgequery.metrics import bootstrap_ci, compatibility_report, retrieval_metrics


def test_hand_checked_case():
    # query 0 (label 0) ranks g0 (label 1), g1 (0), g2 (0): R=2, AP@R = (1/2)/2 = 0.25, R@1 miss.
    # query 1 (label 0) ranks g2 (0), g1 (0), g0 (1): AP@R = 1, R@1 hit.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    m = retrieval_metrics(q, torch.tensor([0, 0]), g, torch.tensor([1, 0, 0]), ks=(1, 2, 10))
    assert m["recall@1"] == 0.5
    assert m["recall@2"] == 1.0
    assert m["recall@10"] == 1.0
    assert abs(m["map@r"] - 0.625) < 1e-9
    assert m["queries_without_match"] == 0


def test_query_without_relevant_item_counts_as_miss():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(q, torch.tensor([5]), g, torch.tensor([0, 1]))
    assert m["recall@1"] == 0.0 and m["map@r"] == 0.0 and m["queries_without_match"] == 1


def _reference(q, ql, g, gl, k):
    """Loop-per-query reference of Recall@k and mAP@R."""
    hits, aps = 0, []
    for i in range(len(q)):
        order = torch.argsort(g @ q[i], descending=True, stable=True)
        rel = (gl[order] == ql[i]).tolist()
        hits += any(rel[:k])
        r = sum(rel)
        found, ap = 0, 0.0
        for rank, is_rel in enumerate(rel[:r], start=1):
            if is_rel:
                found += 1
                ap += found / rank
        aps.append(ap / r if r else 0.0)
    return hits / len(q), sum(aps) / len(aps)


def test_matches_loop_reference_on_random_data():
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(37, 8, generator=gen), dim=1)
    g = F.normalize(torch.randn(211, 8, generator=gen), dim=1)
    ql = torch.randint(0, 5, (37,), generator=gen)
    gl = torch.randint(0, 5, (211,), generator=gen)
    m = retrieval_metrics(q, ql, g, gl, ks=(1, 10), chunk=7)  # chunking must not change results
    for k in (1, 10):
        assert abs(m[f"recall@{k}"] - _reference(q, ql, g, gl, k)[0]) < 1e-9
    assert abs(m["map@r"] - _reference(q, ql, g, gl, 1)[1]) < 1e-6


def test_leave_one_out_equals_each_query_against_all_the_other_images():
    gen = torch.Generator().manual_seed(5)
    x = F.normalize(torch.randn(60, 8, generator=gen), dim=1)
    y = F.normalize(torch.randn(60, 8, generator=gen), dim=1)  # another model's embeddings of the same images
    labels = torch.randint(0, 4, (60,), generator=gen)
    for gallery in (x, y):  # homogeneous (the query itself would rank first) and heterogeneous
        m = retrieval_metrics(x, labels, gallery, labels, ks=(1, 10), chunk=7, exclude_self=True)
        r1 = r10 = ap = 0.0
        for i in range(60):
            others = torch.tensor([j for j in range(60) if j != i])
            one, mean_ap = _reference(x[i:i + 1], labels[i:i + 1], gallery[others], labels[others], 1)
            r1 += one
            r10 += _reference(x[i:i + 1], labels[i:i + 1], gallery[others], labels[others], 10)[0]
            ap += mean_ap
        assert abs(m["recall@1"] - r1 / 60) < 1e-9 and abs(m["recall@10"] - r10 / 60) < 1e-9
        assert abs(m["map@r"] - ap / 60) < 1e-6
    with pytest.raises(ValueError, match="same images"):
        retrieval_metrics(x[:5], labels[:5], x, labels, exclude_self=True)


def test_compatibility_report_settings():
    gen = torch.Generator().manual_seed(0)
    labels_q, labels_g = torch.arange(10) % 5, torch.arange(50) % 5
    centers = F.normalize(torch.randn(5, 16, generator=gen), dim=1)
    good_q, good_g = centers[labels_q], centers[labels_g]            # a perfect shared space
    other = F.normalize(torch.randn(16, 16, generator=gen), dim=1)   # an unrelated space
    rep = compatibility_report(good_q @ other, good_g @ other, good_q, good_g, labels_q, labels_g)
    assert rep["paragon"]["recall@1"] == 1.0
    assert rep["homogeneous"]["recall@1"] == 1.0
    assert rep["heterogeneous"]["map@r"] < 0.9  # rotated queries against the original gallery


def test_bootstrap_interval_is_the_binomial_spread_and_deterministic():
    hits = torch.tensor([1.0] * 200 + [0.0] * 200)  # Recall@1 0.5 over 400 queries
    lo, hi = bootstrap_ci(hits)
    assert lo < 0.5 < hi and bootstrap_ci(hits) == (lo, hi)  # the same seed, the same interval
    half = 1.96 * (0.25 / 400) ** 0.5                          # normal approximation: 0.049
    assert abs((hi - lo) / 2 - half) < 0.008
    assert bootstrap_ci(torch.ones(50)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def test_intervals_come_with_the_metrics_when_asked():
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(300, 8, generator=gen), dim=1)
    g = F.normalize(torch.randn(500, 8, generator=gen), dim=1)
    ql, gl = torch.randint(0, 5, (300,), generator=gen), torch.randint(0, 5, (500,), generator=gen)
    plain, with_ci = retrieval_metrics(q, ql, g, gl), retrieval_metrics(q, ql, g, gl, ci=True, chunk=64)
    assert "recall@1_ci95" not in plain and {k: with_ci[k] for k in plain} == plain
    for key in ("recall@1", "map@r"):
        lo, hi = with_ci[f"{key}_ci95"]
        assert lo <= with_ci[key] <= hi and hi - lo < 0.2
    with pytest.raises(ValueError, match="include 1"):
        retrieval_metrics(q, ql, g, gl, ks=(5,), ci=True)


def report_with(paragon: float, paragon_ci, raw: float, raw_ci) -> dict:
    return {"paragon": {"recall@1": paragon, "recall@1_ci95": paragon_ci},
            "baselines": {"raw_pixel_knn": {"recall@1": raw, "recall@1_ci95": raw_ci}}}


def test_a_paragon_below_raw_pixels_is_called_out():
    (weak,) = baseline_warnings(report_with(0.57, (0.52, 0.62), 0.83, (0.80, 0.86)))
    assert "does not beat raw pixels" in weak and "57.0 % [52.0, 62.0]" in weak and "83.0 %" in weak
    (close,) = baseline_warnings(report_with(0.86, (0.82, 0.90), 0.83, (0.80, 0.86)))
    assert "does not clearly beat" in close and "overlap" in close
    assert baseline_warnings(report_with(0.93, (0.91, 0.95), 0.83, (0.80, 0.86))) == []


def test_raw_pixels_retrieve_fashion_mnist_far_above_chance(tiny_splits):
    raw = raw_pixel_baseline(tiny_splits)
    assert raw["recall@1"] > 0.5 and raw["recall@1_ci95"][0] > 0.1  # ten classes: chance is 0.1
