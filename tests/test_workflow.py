"""The library workflow (``edgequery.workflow``): stages reuse finished artifacts, resume unfinished
ones, refuse finished ones of other settings, and record their wall time; and the benchmark
scripts' shared flags and provenance envelope (``benchmarks/_bench.py``).

Models are tiny (MobileNetV3-small on the shared 256-image split, batch 32): each training
stage takes a few seconds.  The export stage's reuse is tested in ``test_export.py``
(conversion is slow); the demo end to end is ``edgequery demo`` itself.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgequery.errors import EdgeQueryError
from edgequery.workflow import Workflow

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model={"arch": "mobilenet_v3_small"}, batch_size=32)


def _gallery(wf: Workflow, path: Path, epochs: int = 1) -> Path:
    return wf.gallery(path, epochs, **TINY)


def test_gallery_stage_trains_then_reuses_the_finished_checkpoint(tiny_spec, tiny_splits, tmp_path, edgequery_log):
    path = tmp_path / "gallery.pt"
    wf = Workflow(tiny_spec, splits=tiny_splits)
    assert _gallery(wf, path) == path
    first = wf.stages["train_gallery"]
    assert first["status"] == "ran" and first["seconds"] > 0 and first["artifact"] == str(path)
    stamp = path.stat().st_mtime_ns

    again = Workflow(tiny_spec)  # no splits: a reused stage must not even load the data
    _gallery(again, path)
    assert again.stages["train_gallery"]["status"] == "reused"
    assert path.stat().st_mtime_ns == stamp, "a finished artifact is reused, not retrained"
    assert again._splits is None
    records = {id(r): r for r in edgequery_log.records if r.name == "edgequery.workflow"}  # (caplog may see one twice)
    lines = [r.getMessage() for r in records.values()]
    assert sum(m.startswith("stage train_gallery:") for m in lines) == 4, lines   # start + end, twice
    assert any("reused in" in m for m in lines)


def test_a_finished_checkpoint_of_other_settings_is_refused_not_reused(tiny_spec, tiny_splits, tmp_path):
    path = tmp_path / "gallery.pt"
    _gallery(Workflow(tiny_spec, splits=tiny_splits), path)
    with pytest.raises(EdgeQueryError, match="other settings.*epochs"):
        _gallery(Workflow(tiny_spec, splits=tiny_splits), path, epochs=2)
    with pytest.raises(EdgeQueryError, match="other settings.*arch"):
        Workflow(tiny_spec, splits=tiny_splits).gallery(path, 1, model={"arch": "mobilenet_v3_large"}, batch_size=32)


def test_an_unfinished_checkpoint_is_resumed(tiny_spec, tiny_splits, tmp_path, monkeypatch):
    import edgequery.train as train
    from edgequery.checkpoint import load_checkpoint

    path = tmp_path / "gallery.pt"
    real_save = train.save_checkpoint

    def save_then_die(out, payload):  # the run is killed right after its first epoch's checkpoint
        real_save(out, payload)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _gallery(Workflow(tiny_spec, splits=tiny_splits), path, epochs=2)
    monkeypatch.undo()
    assert load_checkpoint(path, "gallery")["train"]["epoch"] == 1

    wf = Workflow(tiny_spec, splits=tiny_splits)
    _gallery(wf, path, epochs=2)
    assert wf.stages["train_gallery"]["status"] == "resumed"
    ck = load_checkpoint(path, "gallery")
    assert ck["train"]["complete"] and [h["epoch"] for h in ck["train"]["history"]] == [1, 2]


def test_query_stage_reuses_per_settings_and_names_repeated_stages(tiny_spec, tiny_splits, tiny_gallery, tmp_path):
    wf = Workflow(tiny_spec, splits=tiny_splits)
    bct = wf.query(tmp_path / "q.pt", tiny_gallery, "mobilenet_v3_small", True, 1, batch_size=32)
    wf.query(bct, tiny_gallery, "mobilenet_v3_small", True, 1, batch_size=32)
    assert [wf.stages[k]["status"] for k in ("train_query_bct", "train_query_bct#2")] == ["ran", "reused"]
    assert set(wf.seconds()) == {"train_query_bct", "train_query_bct#2"}
    with pytest.raises(EdgeQueryError, match="other settings.*bct"):
        wf.query(bct, tiny_gallery, "mobilenet_v3_small", False, 1, batch_size=32)


def test_supernet_stage_reuses_its_finished_supernet_and_refuses_another_rule(tiny_spec, tiny_splits, tiny_gallery,
                                                                              tmp_path):
    """The supernet records its sampling rule in the training settings it stores; the stage compares the same."""
    from edgequery.spaces import get_space

    space = get_space("mbv3", widths=[0.5], depths=[2], kernels=[3], expands=[3])
    wf = Workflow(tiny_spec, splits=tiny_splits)
    sn = wf.supernet(tmp_path / "sn.pt", tiny_gallery, space, 1, batch_size=32)
    wf.supernet(sn, tiny_gallery, space, 1, batch_size=32)
    assert [wf.stages[k]["status"] for k in ("train_supernet", "train_supernet#2")] == ["ran", "reused"]
    with pytest.raises(EdgeQueryError, match="other settings.*sampling"):
        wf.supernet(sn, tiny_gallery, space, 1, sandwich=True, batch_size=32)


def test_search_stage_reuses_a_finished_search_and_refuses_other_settings(tmp_path):
    from edgequery.search import EvolutionSearch, SearchConfig
    from edgequery.spaces import get_space

    space = get_space("mbv3")

    def score(arch):  # deterministic stand-in scores: the stage logic, not the scorer, is under test
        v = int(hashlib.sha1(str(arch).encode()).hexdigest()[:6], 16) / 0xFFFFFF
        return {"het": {"recall@1": v, "map@r": v}, "hom": {"recall@1": 1 - v, "map@r": 1 - v}}

    def mflops(arch):
        return space.cost(arch)["flops"] / 1e6

    cfg = SearchConfig(budget=1e6, cost_unit="MFLOPs", population=4, generations=2)
    out = tmp_path / "search.json"
    wf = Workflow(None)
    result = wf.search(out, cfg, lambda: EvolutionSearch(space, cfg, mflops, score, out).run(progress=False))
    assert result["complete"] and wf.stages["search"]["status"] == "ran"

    def must_not_run():
        raise AssertionError("a finished search with the same settings is reused")

    assert wf.search(out, cfg, must_not_run)["chosen"] == result["chosen"]
    assert wf.stages["search#2"]["status"] == "reused"
    other = SearchConfig(budget=1e6, cost_unit="MFLOPs", population=4, generations=3)
    with pytest.raises(EdgeQueryError, match="other settings.*config"):
        wf.search(out, other, must_not_run)


def test_the_demo_times_the_chosen_arch_its_pareto_front_other_archs_and_the_baseline(tmp_path):
    from edgequery.search import EvolutionSearch, SearchConfig
    from edgequery.spaces import get_space
    from edgequery.workflow import DemoConfig, measured_nets

    space = get_space("mbv3")

    def score(arch):
        v = int(hashlib.sha1(str(arch).encode()).hexdigest()[:6], 16) / 0xFFFFFF
        return {"het": {"recall@1": v, "map@r": v}, "hom": {"recall@1": v ** 2, "map@r": v ** 2}}

    cfg = SearchConfig(budget=1e6, cost_unit="MFLOPs", population=8, generations=2)
    out = tmp_path / "search.json"
    result = Workflow(None).search(out, cfg, lambda: EvolutionSearch(  # a stand-in cost: the budget admits all
        space, cfg, lambda a: float(len(str(a))), score, out).run(progress=False))
    nets = measured_nets(result, space, DemoConfig(measured_nets=5))
    labels = list(nets)
    assert labels[0] == "chosen" and str(nets["chosen"]) == result["chosen"]["arch"]
    front = {c["arch"] for c in result["pareto_front"]} - {result["chosen"]["arch"]}
    assert {str(nets[k]) for k in labels if k.startswith("front")} == front
    of_space = [str(a) for k, a in nets.items() if k != "mobilenet_v3_small"]
    assert len(of_space) == len(set(of_space)) == max(5, 1 + len(front))
    assert set(of_space) <= {c["arch"] for c in result["history"]}
    assert nets["mobilenet_v3_small"] == "mobilenet_v3_small"


def test_index_stage_builds_then_reuses(tiny_gallery, tiny_spec, tmp_path):
    wf = Workflow(tiny_spec)
    first = wf.index(tiny_gallery, tmp_path / "index")
    assert first["items"] == tiny_spec.n_gallery and wf.stages["index"]["status"] == "ran"
    wf.index(tiny_gallery, tmp_path / "index")
    assert wf.stages["index#2"]["status"] == "reused"


def test_demo_command_maps_its_flags_onto_the_workflow_config():
    from edgequery import commands as cli
    from edgequery.commands.demo import config_from_args
    from edgequery.workflow import DemoConfig

    args = cli.build_parser().parse_args(["demo", "--out", "x", "--query-epochs", "2", "--no-search"])
    cfg = config_from_args(args)
    assert cfg.out == Path("x") and cfg.query_epochs == 2 and not cfg.search and cfg.deploy
    assert cfg.gallery_steps == DemoConfig().gallery_steps, "the command's defaults are the workflow's"
    assert cfg.gallery_n_train == DemoConfig().gallery_n_train


# --------------------------------------------------------------------------- benchmarks/_bench.py


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _bench

    return _bench


def test_a_preset_sets_defaults_and_explicit_flags_win(bench):
    ap = bench.parser("doc", {"quick": {"epochs": 1, "n": 5}})
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=100)
    assert (lambda a: (a.epochs, a.n, a.preset))(bench.parse(ap, [])) == (10, 100, "full")
    ap = bench.parser("doc", {"quick": {"epochs": 1, "n": 5}})
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=100)
    args = bench.parse(ap, ["--preset", "quick", "--n", "7", "--note", "from a flag"])
    assert (args.epochs, args.n) == (1, 7)
    prov = bench.start(args)
    assert prov.config["epochs"] == 1 and prov.config["n"] == 7 and prov.config["preset"] == "quick"


def test_the_result_writer_stamps_the_whole_envelope(bench, tmp_path):
    from edgequery.artifacts.provenance import BenchmarkResult

    ap = bench.parser("doc", {"quick": {"epochs": 1}})
    ap.add_argument("--epochs", type=int, default=10)
    args = bench.parse(ap, ["--preset", "quick", "--out-dir", str(tmp_path), "--note", "from a flag"])
    prov = bench.start(args)
    path = bench.write(args, "unit", {"figure": 1.5, "where": tmp_path}, prov, notes=["from code"])
    result = BenchmarkResult.load(path)
    p = result.provenance
    assert path == tmp_path / "unit.json" and result.results == {"figure": 1.5, "where": str(tmp_path)}
    assert p.git_commit and isinstance(p.git_dirty, bool) and p.command
    assert p.config == {"preset": "quick", "out_dir": str(tmp_path), "cache": str(bench.CACHE),
                        "note": ["from a flag"], "epochs": 1}
    assert p.machine.cpu and len(p.load_average.start) == 3 and len(p.load_average.end) == 3
    assert p.finished_at and p.seconds is not None
    assert result.notes[1:] == ["from code", "from a flag"] and "--preset quick" in result.notes[0]


def test_a_benchmark_times_nets_only_against_a_table_of_this_machine(bench, tmp_path):
    """measure_here asks this machine what it is before exporting anything, and refuses a table measured on
    another (a LUT's predictions and timings taken elsewhere are not comparable)."""
    from edgequery.latency import load_lut

    lut = load_lut(REPO / "benchmarks" / "results" / "lut-local-litert-r32-search.json")
    lut.fingerprint = lut.fingerprint.model_copy(update={"cpu": "a CPU this machine is not"})
    with pytest.raises(EdgeQueryError, match="cpu"):
        bench.measure_here(["mobilenet_v3_small"], lut, tmp_path / "nets", resolution=32)
    assert not any((tmp_path / "nets").glob("*")), "nothing exported before the refusal"


def test_a_claim_between_seeds_holds_only_outside_every_ci(bench):
    def runs(*cis):
        return [{"seed": i, "recall_at_1": (lo + hi) / 2, "recall_at_1_ci95": [lo, hi]} for i, (lo, hi) in enumerate(cis)]

    strong, weak = runs((0.80, 0.84), (0.82, 0.86)), runs((0.70, 0.74), (0.75, 0.79))
    assert bench.compare(strong, weak) == "higher" and bench.compare(weak, strong) == "lower"
    assert bench.compare(strong, runs((0.70, 0.74), (0.78, 0.81))) == "within the noise", "one seed's CI overlaps"
    assert bench.compare(strong, strong) == "within the noise"
    summary = bench.seed_summary(strong)
    assert summary["seeds"] == [0, 1] and summary["recall_at_1_mean"] == pytest.approx(0.83)
    assert summary["recall_at_1_range"] == pytest.approx([0.82, 0.84])
    assert bench.seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a"):
        with pytest.raises(SystemExit, match="--seeds"):
            bench.seeds(bad)


def test_the_headline_is_the_net_closest_to_the_paragon_among_those_measured_fast_enough(bench):
    """search_ablation's headline: of the nets measured >= 80x faster than the gallery model, the one with the
    smallest gap to the paragon; none that fast: the fastest, and the goal not met."""
    import search_ablation

    def net(ms, r1):
        return {"arch": f"net-{ms}", "measured_ms": ms, "het_r1": r1, "recall_at_1_ci95_per_seed": [[r1 - .02, r1 + .02]]}

    paragon = {"recall@1": 0.90, "recall@1_ci95": [0.88, 0.92]}
    by = {"searched_r3": net(0.2, 0.899), "searched_r3_x80": net(0.126, 0.880),   # 79.4x: just too slow
          "searched_r3_x100": net(0.099, 0.897), "searched_r3_x120": net(0.083, 0.870)}
    budgets = {"r3": 0.2, "r3_x80": 0.125, "r3_x100": 0.1, "r3_x120": 0.083}
    h = search_ablation.headline(by, paragon, 10.0, budgets)
    assert [p["search"] for p in h["curve"]] == ["r3_x120", "r3_x100", "r3_x80", "r3"], "fastest first"
    assert h["searched_for"] == "r3_x100" and h["latency_ratio_vs_gallery"] == 101.01
    assert h["het_gap_to_paragon_points"] == 0.3 and h["goal"]["met"]
    assert h["het_gap_to_paragon_points_interval"] == [-3.7, 4.3]   # paragon CI against the net's CI extremes
    assert h["best_ratio_within_half_a_point"] == 101.01
    slow = search_ablation.headline({k: by[k] for k in ("searched_r3", "searched_r3_x80")}, paragon, 10.0,
                                    {k: budgets[k] for k in ("r3", "r3_x80")})
    assert slow["searched_for"] == "r3_x80" and slow["latency_ratio_vs_gallery"] == 79.37 and not slow["goal"]["met"]
    assert slow["best_ratio_within_half_a_point"] == 50.0


def test_the_search_ablation_figure_draws_every_net_with_its_seeds_intervals(bench, tmp_path, monkeypatch):
    """search_ablation's first panel draws a bar per net, the curve's nets (the headline's among them) too: they
    come from the retrained rows, as the committed results are redrawn by --replot."""
    import matplotlib.axes
    import search_ablation

    stored = bench.previous(bench.HERE / "results" / "search_ablation.json", "search_ablation")
    drawn = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, yerr=None, **kw: drawn.append((x, yerr)) or real(self, x, y, yerr=yerr, **kw))
    search_ablation.plot(stored.results, tmp_path / "search_ablation.png")
    nets = {r["net"] for r in stored.results["retrained"]}
    assert len(drawn) == len(nets), "one point per retrained net"
    assert all(yerr is not None for _, yerr in drawn), "every point has its seeds' interval"
    assert (tmp_path / "search_ablation.png").read_bytes().startswith(b"\x89PNG")


def test_the_benchmarks_share_one_gallery_model_file(bench, tmp_path, monkeypatch):
    """paragon.py, bct_compat.py and the rest name the gallery recipe's checkpoint alike, so it trains once."""
    monkeypatch.setattr(bench, "STORED_PARAGON", tmp_path / "no-stored-paragon.pt")
    asked = []

    class Recorder:
        spec = bench.paragon_spec()

        def gallery(self, path, **train):
            asked.append((path, train))
            return path

    wf = Recorder()
    recipe = bench.paragon_checkpoint(wf, tmp_path)
    assert bench.paragon_checkpoint(wf, tmp_path, steps=None) == recipe, "None keeps the recipe's value"
    assert bench.paragon_checkpoint(wf, tmp_path, steps=bench.PARAGON_EXTRA["steps"]) == recipe
    assert bench.paragon_checkpoint(wf, tmp_path, seed=0) == recipe, "paragon.py names its seed; the others don't"
    assert bench.paragon_checkpoint(wf, tmp_path, steps=7) != recipe
    assert asked[-1][1] == {**bench.PARAGON_EXTRA, "steps": 7}, "the benchmarks' additions, then the change"
    ap = bench.parser("doc", {})
    bench.add_bct_args(ap)
    assert bench.bct_spec(ap.parse_args([])) == bench.paragon_spec(), "bct_compat's full run is the paragon's data"


def test_the_benchmarks_take_the_stored_paragon_only_when_it_is_this_model(bench, tmp_path, monkeypatch,
                                                                           tiny_gallery, tiny_splits):
    """Without the trained model in the cache, a benchmark takes the committed stored paragon - if it was
    made from the very checkpoint the benchmark asks for (its file name holds the data and recipe)."""
    import shutil

    from edgequery.models import store_gallery

    asked = []

    class Recorder:
        spec = bench.paragon_spec()

        def gallery(self, path, **train):
            asked.append(path)
            return path

    monkeypatch.setattr(bench, "STORED_PARAGON", tmp_path / "assets" / "paragon-stored.pt")
    cache, made = tmp_path / "cache", tmp_path / "made"
    made.mkdir()
    name = bench.paragon_checkpoint(Recorder(), cache).name  # nothing stored yet: the workflow is asked
    assert asked == [cache / name]
    bench.STORED_PARAGON.parent.mkdir()
    store_gallery(shutil.copy(tiny_gallery, made / name), {"query": tiny_splits.query}, bench.STORED_PARAGON)
    assert bench.paragon_checkpoint(Recorder(), cache) == bench.STORED_PARAGON and len(asked) == 1
    assert bench.paragon_checkpoint(Recorder(), cache, steps=7) != bench.STORED_PARAGON, "another recipe"
    assert bench.paragon_checkpoint(Recorder(), cache, stored=False) == cache / name, "paragon.py trains"
    cache.mkdir()
    shutil.copy(tiny_gallery, cache / name)
    assert bench.paragon_checkpoint(Recorder(), cache) == cache / name, "the trained model, where there is one"
    assert len(asked) == 4


@pytest.mark.slow
def test_a_benchmark_writes_the_complete_provenance_envelope(tmp_path):
    """The cheapest benchmark's quick preset, end to end (random vectors only; ~30 s here, more when loaded)."""
    from edgequery.artifacts.provenance import BenchmarkResult

    cmd = [sys.executable, "benchmarks/gallery_search.py", "--preset", "quick", "--parts", "random", "--sizes", "2000",
           "--out-dir", str(tmp_path), "--cache", str(tmp_path / "cache"), "--note", "a note from a flag", "-q"]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=300, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = BenchmarkResult.load(tmp_path / "gallery_search.json")
    p = result.provenance
    assert result.benchmark == "gallery_search"
    assert p.git_commit and len(p.git_commit) == 40 and isinstance(p.git_dirty, bool)
    assert p.command.startswith("python benchmarks/gallery_search.py --preset quick --parts random --sizes 2000")
    assert p.config["preset"] == "quick" and p.config["sizes"] == "2000" and p.config["requests"] == 40
    assert p.machine.cpu and p.machine.cores
    assert len(p.load_average.start) == 3 and len(p.load_average.end) == 3
    assert p.started_at <= p.finished_at and p.seconds is not None
    assert "a note from a flag" in result.notes and any("--preset quick" in n for n in result.notes)
    assert "random-2k" in result.results["index"]
    assert (tmp_path / "gallery_search.png").is_file()
