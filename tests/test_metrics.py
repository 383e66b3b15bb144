import torch
import torch.nn.functional as F

from edgequery.metrics import compatibility_report, retrieval_metrics


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
