"""Evolutionary search: budgets, rewards, Pareto front, resume.

The unit tests here time nothing: a deterministic FLOPs-proportional function stands in
for the measured LUT so that budgets are exact (the LUT itself is tested with the
latency package).  Accuracy is real: a (random-weight) supernet's inherited subnets are
BN-recalibrated and scored on real Fashion-MNIST validation images.
"""

import json

import numpy as np
import pytest

from edgequery.artifacts.search import SearchResult
from edgequery.data import DataSpec, load_splits
from edgequery.errors import EdgeQueryError
from edgequery.models import build_embedding_net
from edgequery.search import (CandidateScorer, EvolutionSearch, SearchConfig, chosen_arch, chosen_arch_and_space,
                              load_search, pareto_front, parse_budget, reward_of)
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
    cfg = SearchConfig(budget=10, reward="r3", mix=0.25)
    assert reward_of(cfg, 0.8, 0.4, 5) == pytest.approx(0.25 * 0.8 + 0.75 * 0.4)
    assert reward_of(SearchConfig(budget=10, reward="r1"), 0.8, 0.4, 5) == 0.4
    assert reward_of(SearchConfig(budget=10, reward="r2"), 0.8, 0.4, 5) == 0.8
    soft = SearchConfig(budget=10, reward="r2", cost_weight=-0.5)
    assert reward_of(soft, 0.8, 0.4, 2.5) == pytest.approx(0.8 * 2.0)  # cheaper than the budget is rewarded
    with pytest.raises(EdgeQueryError, match="unknown reward"):
        SearchConfig(budget=1, reward="r9").check()
    # budget_ms= is the latency budget, kept for callers that say so
    assert SearchConfig(budget_ms=3) == SearchConfig(budget=3, cost_unit="ms")
    with pytest.raises(ValueError, match="budget_ms is a latency budget"):
        SearchConfig(budget_ms=3, cost_unit="MFLOPs")


def test_pareto_front():
    c = [{"cost": 1, "m_het": 0.5}, {"cost": 2, "m_het": 0.4}, {"cost": 3, "m_het": 0.7},
         {"cost": 0.5, "m_het": 0.1}]
    assert [x["cost"] for x in pareto_front(c)] == [0.5, 1, 3]


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


@pytest.mark.slow
def test_search_respects_the_budget_and_chooses_the_best(setup, tmp_path):
    space, scorer, latency, budget = setup
    cfg = SearchConfig(budget=budget, population=6, generations=2, seed=1)
    res = EvolutionSearch(space, cfg, latency, scorer, out=tmp_path / "s.json").run(progress=False)
    assert res["complete"] and len(res["history"]) >= 6 and res["notes"] == []
    assert all(c["cost"] == c["latency_ms"] <= budget for c in res["history"])
    assert res["chosen"]["reward"] == max(c["reward"] for c in res["history"])
    for c in res["history"]:
        assert 0 <= c["m_het"] <= 1 and c["flops"] > 0 and c["params"] > 0
        assert c["reward"] == pytest.approx(0.5 * c["m_het"] + 0.5 * c["m_hom"])
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["chosen"]["arch"] == res["chosen"]["arch"] == chosen_arch(tmp_path / "s.json")
    assert saved["config"]["cost_unit"] == "ms" and saved["space"] == space.config()
    arch, where = chosen_arch_and_space(tmp_path / "s.json")
    assert where.config() == space.config() and where.parse(arch) == space.parse(saved["chosen"]["arch"])
    with pytest.raises(EdgeQueryError, match="finished search"):
        EvolutionSearch(space, cfg, latency, scorer, out=tmp_path / "s.json").run(progress=False)


def test_unreachable_budget_names_the_fastest(setup):
    space, scorer, latency, _ = setup
    fastest = latency(space.smallest())
    with pytest.raises(EdgeQueryError, match=f"{fastest:.3f} ms"):
        EvolutionSearch(space, SearchConfig(budget=fastest / 2, population=4, generations=1, max_tries=20),
                        latency, scorer).run(progress=False)


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_result(setup, tmp_path):
    space, scorer, latency, budget = setup
    cfg = SearchConfig(budget=budget, population=4, generations=3, seed=5)
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
    other = SearchConfig(budget=budget, population=4, generations=3, seed=6)
    (tmp_path / "b.json").write_text((tmp_path / "b.json").read_text().replace('"complete": true', '"complete": false'))
    with pytest.raises(EdgeQueryError, match="other settings"):
        EvolutionSearch(space, other, latency, scorer, out=tmp_path / "b.json").run(progress=False)


# --------------------------------------------------------------------------- few archs, other costs


def fake_scores(arch):
    """Deterministic stand-in figures (no nets run): deeper archs score higher."""
    depth = sum(arch.depths)
    figures = {"recall@1": depth / 100, "recall@10": depth / 50, "map@r": depth / 200}
    return {"het": figures, "hom": figures}


def depth_cost(arch):
    return float(sum(arch.depths))


def test_a_budget_admitting_fewer_archs_than_the_population_shrinks_it(tmp_path, caplog):
    """The bug: initialisation looped forever when fewer distinct archs fit the budget than the population."""
    space = get_space("mbv3", resolutions=(24,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))
    # 32 archs; depth sum <= 11 admits the shallowest one and the 5 with one deeper stage: 6 archs
    cfg = SearchConfig(budget=11, cost_unit="MFLOPs", population=10, generations=2, seed=0, max_tries=200)
    with caplog.at_level("WARNING", logger="edgequery.search"):
        res = EvolutionSearch(space, cfg, depth_cost, fake_scores, out=tmp_path / "few.json").run(progress=False)
    assert res["complete"] and res["state"]["population_size"] == 6 and len(res["history"]) == 6
    assert res["config"]["population"] == 10
    assert res["notes"] and "population shrunk from 10 to 6" in res["notes"][0]
    assert "population shrunk from 10 to 6" in caplog.text
    assert res["chosen"]["cost"] == 11.0 and all(c["cost"] <= 11 for c in res["history"])
    # a budget that admits one arch only: a search of one
    one = SearchConfig(budget=10, cost_unit="MFLOPs", population=4, generations=1, max_tries=50)
    res = EvolutionSearch(space, one, depth_cost, fake_scores).run(progress=False)
    assert res["state"]["population_size"] == 1 and res["chosen"]["arch"] == str(space.smallest())


def test_a_budget_that_does_not_bind_is_said(tmp_path, caplog):
    """--latency-budget 30ms on a table whose slowest arch predicts ~1 ms: a search by accuracy alone, said so."""
    space = get_space("mbv3", resolutions=(24,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))
    slowest = depth_cost(space.largest())
    cfg = SearchConfig(budget=30 * slowest, population=4, generations=1, seed=0)
    with caplog.at_level("WARNING", logger="edgequery.search"):
        res = EvolutionSearch(space, cfg, depth_cost, fake_scores, out=tmp_path / "loose.json").run(progress=False)
    said = f"does not bind: the largest arch of this space predicts {slowest:.4g} ms"
    assert any(said in n for n in res["notes"]) and said in caplog.text
    binding = SearchConfig(budget=slowest - 1, population=4, generations=1, seed=0)
    res = EvolutionSearch(space, binding, depth_cost, fake_scores).run(progress=False)
    assert not any("does not bind" in n for n in res["notes"])


def test_a_flops_constrained_search_names_its_cost(tmp_path):
    space = get_space("mbv3", resolutions=(24,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))
    cfg = SearchConfig(budget=12, cost_unit="MFLOPs", population=4, generations=2, seed=3)
    res = EvolutionSearch(space, cfg, depth_cost, fake_scores, out=tmp_path / "f.json").run(progress=False)
    assert all(c["latency_ms"] is None and c["cost"] <= 12 for c in res["history"])  # nothing was timed
    assert load_search(tmp_path / "f.json").config.cost_unit == "MFLOPs"
    with pytest.raises(EdgeQueryError, match=r"within the 9 MFLOPs budget.*costs 10\.000 MFLOPs"):
        EvolutionSearch(space, SearchConfig(budget=9, cost_unit="MFLOPs", population=2, generations=1, max_tries=5),
                        depth_cost, fake_scores).run(progress=False)


# --------------------------------------------------------------------------- the search.json schema


def _result(tmp_path):
    space = get_space("mbv3", resolutions=(24,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))
    cfg = SearchConfig(budget=14, population=3, generations=1, seed=1)
    EvolutionSearch(space, cfg, depth_cost, fake_scores, out=tmp_path / "r.json",
                    meta={"lut": {"path": "lut.json", "device": "local", "runtime": "onnxruntime", "threads": 1,
                                 "calibrated": False}}).run(progress=False)
    return json.loads((tmp_path / "r.json").read_text())


def test_search_result_schema_refuses_invented_keys_and_newer_versions(tmp_path):
    data = _result(tmp_path)
    assert SearchResult.parse_data(data).lut.runtime == "onnxruntime"
    for where, bad in [("top level", {**data, "winner": "mbv3:..."}),
                       ("config", {**data, "config": {**data["config"], "budget_us": 3}}),
                       ("candidate", {**data, "history": [{**data["history"][0], "speed": 1}]})]:
        with pytest.raises(EdgeQueryError, match="unknown key"):
            SearchResult.parse_data(bad, where)
    with pytest.raises(EdgeQueryError, match="upgrade edgequery"):
        SearchResult.parse_data({**data, "format_version": SearchResult.VERSION + 1})
    with pytest.raises(EdgeQueryError, match="not an edgequery search result"):
        SearchResult.parse_data({**data, "format": "edgequery-lut"})
    with pytest.raises(EdgeQueryError, match="space config needs the space's name"):
        SearchResult.parse_data({**data, "space": {"resolutions": [24]}})
    with pytest.raises(ValueError, match="lut"):  # meta in another shape is refused at once
        EvolutionSearch(get_space("mbv3"), SearchConfig(budget=1), depth_cost, fake_scores, meta={"lut": "x.json"})


def test_a_version_1_search_result_still_loads(tmp_path):
    data = _result(tmp_path)
    v1 = {**data, "format_version": 1, "notes": None}
    del v1["notes"]
    cfg = dict(v1["config"], budget_ms=v1["config"]["budget"], latency_weight=0.0)
    for k in ("budget", "cost_unit", "cost_weight"):
        del cfg[k]
    v1["config"] = cfg
    strip = lambda c: {k: v for k, v in c.items() if k != "cost"}  # noqa: E731
    v1.update(history=[strip(c) for c in v1["history"]], pareto_front=[strip(c) for c in v1["pareto_front"]],
              chosen=strip(v1["chosen"]), state={k: v for k, v in v1["state"].items() if k != "population_size"})
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    old = load_search(tmp_path / "v1.json")
    assert old.config.budget == 14 and old.config.cost_unit == "ms" and old.lut.runtime == "onnxruntime"
    assert old.chosen.cost == old.chosen.latency_ms and old.state.population_size == 3
    assert chosen_arch(tmp_path / "v1.json") == data["chosen"]["arch"]
