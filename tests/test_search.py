"""Evolutionary search: budgets, rewards, Pareto front, resume.

The unit tests here time nothing: a deterministic FLOPs-proportional function stands in
for the measured LUT so that budgets are exact (the LUT itself is tested with the
latency package).  Accuracy is real: a (random-weight) supernet's inherited subnets are
BN-recalibrated and scored on real Fashion-MNIST validation images.
"""

import json

import numpy as np
import pytest

from edgequery.data import DataSpec, load_splits
from edgequery.errors import EdgeQueryError
from edgequery.models import build_embedding_net
from edgequery.search import (CandidateScorer, EvolutionSearch, SearchConfig, chosen_arch, pareto_front,
                              parse_budget, reward_of)
from edgequery.spaces import Supernet, get_space


def test_parse_budget():
    assert parse_budget("30ms") == 30.0
    assert parse_budget("800us") == pytest.approx(0.8)
    assert parse_budget("0.03s") == pytest.approx(30.0)
    assert parse_budget("12") == 12.0
    for bad in ("fast", "-3ms", "0ms", "30 parsecs"):
        with pytest.raises(EdgeQueryError, match="budget"):
            parse_budget(bad)


def test_rewards():
    cfg = SearchConfig(budget_ms=10, reward="r3", mix=0.25)
    assert reward_of(cfg, 0.8, 0.4, 5) == pytest.approx(0.25 * 0.8 + 0.75 * 0.4)
    assert reward_of(SearchConfig(budget_ms=10, reward="r1"), 0.8, 0.4, 5) == 0.4
    assert reward_of(SearchConfig(budget_ms=10, reward="r2"), 0.8, 0.4, 5) == 0.8
    soft = SearchConfig(budget_ms=10, reward="r2", latency_weight=-0.5)
    assert reward_of(soft, 0.8, 0.4, 2.5) == pytest.approx(0.8 * 2.0)  # faster than budget is rewarded
    with pytest.raises(EdgeQueryError, match="unknown reward"):
        SearchConfig(budget_ms=1, reward="r9").check()


def test_pareto_front():
    c = [{"latency_ms": 1, "m_het": 0.5}, {"latency_ms": 2, "m_het": 0.4}, {"latency_ms": 3, "m_het": 0.7},
         {"latency_ms": 0.5, "m_het": 0.1}]
    assert [x["latency_ms"] for x in pareto_front(c)] == [0.5, 1, 3]


@pytest.fixture(scope="module")
def setup():
    space = get_space("mbv3")
    splits = load_splits(DataSpec(n_train=256, n_val=60, n_query=10, n_gallery=10))
    supernet = Supernet(space, 128, 10)
    gallery = build_embedding_net("mobilenet_v3_small", 128, 10).eval()
    scorer = CandidateScorer(supernet, gallery, splits, recal_batches=2, recal_batch_size=32)
    costs = {}

    def latency(arch):  # a stand-in LUT: 1 ms per MFLOP
        key = str(arch)
        if key not in costs:
            costs[key] = space.cost(arch)["flops"] / 1e6
        return costs[key]

    flops = sorted(latency(space.sample(np.random.default_rng(i))) for i in range(12))
    return space, scorer, latency, float(np.median(flops))


def test_search_respects_the_budget_and_chooses_the_best(setup, tmp_path):
    space, scorer, latency, budget = setup
    cfg = SearchConfig(budget_ms=budget, population=6, generations=2, seed=1)
    res = EvolutionSearch(space, cfg, latency, scorer, out=tmp_path / "s.json").run(progress=False)
    assert res["complete"] and len(res["history"]) >= 6
    assert all(c["latency_ms"] <= budget for c in res["history"])
    assert res["chosen"]["reward"] == max(c["reward"] for c in res["history"])
    for c in res["history"]:
        assert 0 <= c["m_het"] <= 1 and c["flops"] > 0 and c["params"] > 0
        assert c["reward"] == pytest.approx(0.5 * c["m_het"] + 0.5 * c["m_hom"])
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["chosen"]["arch"] == res["chosen"]["arch"] == chosen_arch(tmp_path / "s.json")
    space.parse(saved["chosen"]["arch"])
    with pytest.raises(EdgeQueryError, match="finished search"):
        EvolutionSearch(space, cfg, latency, scorer, out=tmp_path / "s.json").run(progress=False)


def test_unreachable_budget_names_the_fastest(setup):
    space, scorer, latency, _ = setup
    fastest = latency(space.smallest())
    with pytest.raises(EdgeQueryError, match=f"{fastest:.3f} ms"):
        EvolutionSearch(space, SearchConfig(budget_ms=fastest / 2, population=4, generations=1, max_tries=20),
                        latency, scorer).run(progress=False)


def test_killed_search_resumes_to_the_same_result(setup, tmp_path):
    space, scorer, latency, budget = setup
    cfg = SearchConfig(budget_ms=budget, population=4, generations=3, seed=5)
    straight = EvolutionSearch(space, cfg, latency, scorer, out=tmp_path / "a.json").run(progress=False)
    calls = {"n": 0}

    def dying(arch):
        calls["n"] += 1
        if calls["n"] == 5:  # the first new arch after generation 1
            raise KeyboardInterrupt
        return scorer(arch)

    with pytest.raises(KeyboardInterrupt):
        EvolutionSearch(space, cfg, latency, dying, out=tmp_path / "b.json").run(progress=False)
    assert 1 <= json.loads((tmp_path / "b.json").read_text())["state"]["generation"] < 3
    resumed = EvolutionSearch(space, cfg, latency, scorer, out=tmp_path / "b.json").run(progress=False)
    assert [c["arch"] for c in resumed["history"]] == [c["arch"] for c in straight["history"]]
    assert resumed["chosen"]["arch"] == straight["chosen"]["arch"]
    other = SearchConfig(budget_ms=budget, population=4, generations=3, seed=6)
    (tmp_path / "b.json").write_text((tmp_path / "b.json").read_text().replace('"complete": true', '"complete": false'))
    with pytest.raises(EdgeQueryError, match="other settings"):
        EvolutionSearch(space, other, latency, scorer, out=tmp_path / "b.json").run(progress=False)
