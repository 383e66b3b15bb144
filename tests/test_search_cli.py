"""``edgequery search`` end to end on real files: a tiny gallery model, a BCT supernet of a
tiny mbv3 space, and a per-block LUT measured for real on this machine (with the ``torch``
runtime, which needs no conversion; ``test_latency`` covers the converting runtimes).
Then ``edgequery train query --arch search.json`` retrains the winner.

The nets are barely trained (1 epoch, 256 images): the tests check the contract - budget
held with the LUT's own predictions, files tie together, bad combinations refused with a
message that says what to do - not accuracy, which ``benchmarks/search_ablation.py`` measures.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgequery.checkpoint import load_checkpoint
from edgequery.commands import main
from edgequery.data import DataSpec, load_splits
from edgequery.latency import Protocol, parse_device, profile, restricted_space
from edgequery.recipes import train_gallery
from edgequery.spaces import get_space
from edgequery.spaces.training import train_supernet
from edgequery.train import TrainConfig

SPEC = DataSpec(n_train=256, n_val=80, n_query=20, n_gallery=60, resolution=32)
SPACE_KW = dict(resolutions=(24, 28), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    splits = load_splits(SPEC)  # with a validation split, which the search scores candidates on
    cfg = TrainConfig(epochs=1, batch_size=64)
    train_gallery(SPEC, cfg, d / "gallery.pt", arch="mobilenet_v3_small", splits=splits)
    space = get_space("mbv3", **SPACE_KW)
    train_supernet(d / "gallery.pt", cfg, d / "supernet.pt", space=space, splits=splits)
    # The LUT covers only 24 px: the search must stay at that resolution.
    lut = profile(space, [24], parse_device("local"), "torch",
                  Protocol(threads=1, warmup=2, runs=5, min_seconds=0.0, rounds=1), d / "lut.json")
    rng = np.random.default_rng(0)
    budget = float(np.median([lut.predict(at_24().sample(rng)) for _ in range(16)]))  # binds for about half
    return d, lut, budget


def at_24():
    """The tiny space cut to the LUT's resolution."""
    return restricted_space(get_space("mbv3", **SPACE_KW), [24])


def _search(d, budget, *extra):
    return main(["search", "--supernet", str(d / "supernet.pt"), "--gallery", str(d / "gallery.pt"),
                 "--lut", str(d / "lut.json"), "--latency-budget", f"{budget}ms", "--population", "4",
                 "--generations", "2", "--recal-batches", "2", "--out", str(d / "search.json"), *extra])


@pytest.mark.slow
def test_search_holds_the_budget_and_the_winner_retrains(files, capsys):
    d, lut, budget = files
    assert _search(d, budget) == 0
    res = json.loads((d / "search.json").read_text())
    assert res["complete"] and res["config"]["budget"] == pytest.approx(budget) and res["config"]["cost_unit"] == "ms"
    assert res["space"]["resolutions"] == [24]  # cut to what the LUT measured
    for c in res["history"]:
        assert c["latency_ms"] == c["cost"] <= budget
        assert c["latency_ms"] == pytest.approx(lut.predict(c["arch"], at_24()))
        assert {"m_het", "m_hom", "reward", "flops"} <= set(c)
    assert res["chosen"]["reward"] == max(c["reward"] for c in res["history"])
    assert res["lut"]["runtime"] == "torch" and res["lut"]["device"] == "local"
    assert res["gallery"]["model_version"] == load_checkpoint(d / "gallery.pt")["model_version"]
    assert "retrain it with" in capsys.readouterr().err

    # a finished search is not silently redone
    assert _search(d, budget) == 2
    assert "finished search" in capsys.readouterr().err

    assert main(["train", "query", "--arch", str(d / "search.json"), "--gallery", str(d / "gallery.pt"),
                 "--epochs", "1", "--batch-size", "64", "--out", str(d / "query.pt")]) == 0  # data as the gallery's
    ck = load_checkpoint(d / "query.pt", "query")
    assert ck["model"]["arch"] == res["chosen"]["arch"] and ck["model"]["space"] == res["space"]
    assert ck["compatible_with"]["gallery_version"] == res["gallery"]["model_version"]


def test_unreachable_budget_names_the_fastest_latency(files, capsys):
    d, lut, _ = files
    fastest = lut.predict(at_24().smallest())
    assert _search(d, fastest / 3, "--out", str(d / "never.json")) == 2
    err = capsys.readouterr().err
    assert f"{fastest:.3f} ms" in err and "--latency-budget" in err
    assert not (d / "never.json").exists()


@pytest.mark.slow
def test_search_refuses_a_lut_of_another_space_and_a_foreign_gallery(files, tmp_path, capsys):
    d, lut, budget = files
    other = lut.to_data()
    other["space_config"]["kernels"] = [3, 5]
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["search", "--supernet", str(d / "supernet.pt"), "--gallery", str(d / "gallery.pt"),
                 "--lut", str(tmp_path / "other.json"), "--latency-budget", "1ms",
                 "--out", str(tmp_path / "s.json")]) == 2
    assert "another mbv3 space" in capsys.readouterr().err

    train_gallery(SPEC, TrainConfig(epochs=1, batch_size=64, seed=1), tmp_path / "g2.pt", arch="mobilenet_v3_small")
    assert main(["search", "--supernet", str(d / "supernet.pt"), "--gallery", str(tmp_path / "g2.pt"),
                 "--lut", str(d / "lut.json"), "--latency-budget", "1ms", "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "supernet" in err and "is compatible with gallery model_version" in err

    assert main(["search", "--supernet", str(d / "supernet.pt"), "--gallery", str(d / "gallery.pt"),
                 "--lut", str(d / "lut.json"), "--latency-budget", "fast", "--out", str(tmp_path / "s.json")]) == 2
    assert "30ms" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_train_query_reads_a_search_space_arch_in_the_space_the_flags_configure(files, capsys):
    d, _, _ = files
    arch = "mbv3:r40,w0.5," + ",".join(["k3e3-k3e3"] * 5)
    base = ["train", "query", "--gallery", str(d / "gallery.pt"), "--epochs", "1", "--batch-size", "64",
            "--n-train", "128"]
    assert main([*base, "--arch", arch, "--out", str(d / "q40.pt")]) == 2  # not in the default space
    assert "resolution" in capsys.readouterr().err
    assert main([*base, "--arch", arch, "--space-option", "resolutions=40", "--space-option", "widths=0.5",
                 "--out", str(d / "q40.pt")]) == 0
    ck = load_checkpoint(d / "q40.pt", "query")
    assert ck["model"]["arch"] == arch and ck["model"]["space"]["resolutions"] == [40]
    assert ck["model"]["space"]["widths"] == [0.5] and ck["identity"]["space"] == ck["model"]["space"]
    for flags, message in [(["--arch", str(d / "search.json"), "--space-option", "resolutions=40"],
                            "records its own space"),
                           (["--arch", "mobilenet_v3_small", "--space-option", "resolutions=40"],
                            "apply to search-space archs"),
                           (["--arch", arch, "--space", "shufflenet"], "is of space 'mbv3'")]:
        assert main([*base, *flags, "--out", str(d / "never.pt")]) == 2
        assert message in capsys.readouterr().err


def test_a_table_measured_under_emulation_is_searched_with_a_warning(files, tmp_path, capsys):
    d, lut, budget = files
    data = lut.to_data()
    data["fingerprint"] = {**data["fingerprint"], "machine": "aarch64", "emulated": "qemu-aarch64 10.0.13 -cpu cortex-a76"}
    (tmp_path / "lut.json").write_text(json.dumps(data))
    assert main(["search", "--supernet", str(d / "supernet.pt"), "--gallery", str(d / "gallery.pt"),
                 "--lut", str(tmp_path / "lut.json"), "--latency-budget", f"{budget}ms", "--population", "4",
                 "--generations", "1", "--recal-batches", "1", "--out", str(tmp_path / "search.json")]) == 0
    assert "measured under emulation (qemu-aarch64 10.0.13" in capsys.readouterr().err
    notes = json.loads((tmp_path / "search.json").read_text())["notes"]
    assert any("not an ARM CPU's" in n for n in notes)
