"""A non-default search space at a larger input size goes the whole way through the CLI:
train gallery -> train supernet -> profile -> search -> retrain -> export -> verify.

The ``mbv3`` space is configured for 64 px inputs (the default space has 24/28/32 px only, so
nothing here can be parsed in it): the configuration must travel from the supernet checkpoint to
the latency table, the search result, the retrained query checkpoint and the export.  Budgets are
tiny (a few hundred images, one epoch, a handful of candidates, the LUT timed and the net exported with onnxruntime only:
TFLite conversion of both spaces is tested in test_export and test_spaces_export): the test checks
that the files tie together and rebuild, not accuracy.
"""

import json

import numpy as np
import pytest

from edgequery.checkpoint import load_checkpoint
from edgequery.commands import main
from edgequery.errors import EdgeQueryError
from edgequery.latency import load_lut
from edgequery.spaces import parse_arch, space_from_config

RES = 64
SPACE = ["--space", "mbv3", "--space-option", f"resolutions={RES}", "--space-option", "widths=0.5,1.0",
         "--space-option", "depths=2", "--space-option", "kernels=3", "--space-option", "expands=3,4"]
TRAIN = ["--epochs", "1", "--batch-size", "64"]


def run(*argv):
    code = main(["-q", *map(str, argv)])
    assert code == 0, f"edgequery {' '.join(map(str, argv))} exited {code}"


@pytest.mark.slow
def test_a_64px_space_goes_train_search_retrain_export_verify(tmp_path):
    d = tmp_path
    run("train", "gallery", "--arch", "mobilenet_v3_small", "--out", d / "gallery.pt", "--resolution", RES,
        "--n-train", 256, "--n-val", 100, "--n-query", 40, "--n-gallery", 100, *TRAIN)
    run("train", "supernet", *SPACE, "--gallery", d / "gallery.pt", "--out", d / "supernet.pt", *TRAIN)
    sck = load_checkpoint(d / "supernet.pt", "supernet")
    space = space_from_config(sck["model"]["space"])
    assert space.resolutions == (RES,) and space.widths == (0.5, 1.0) and space.expands == (3, 4)

    run("profile", "--supernet", d / "supernet.pt", "--runtime", "onnxruntime", "--resolution", RES,
        "--threads", 1, "--warmup", 2, "--runs", 5, "--min-seconds", 0, "--rounds", 1, "--out", d / "lut.json")
    lut = load_lut(d / "lut.json", space=space)
    assert lut.resolutions == [RES] and lut.space_config == space.config()
    rng = np.random.default_rng(0)
    # binds for about half the archs; never below the cheapest (5 timed runs per block are noisy)
    budget = max(float(np.median([lut.predict(space.sample(rng), space) for _ in range(16)])),
                 lut.predict(space.smallest(), space))

    run("search", "--supernet", d / "supernet.pt", "--gallery", d / "gallery.pt", "--lut", d / "lut.json",
        "--latency-budget", f"{budget}ms", "--population", 4, "--generations", 2, "--recal-batches", 2,
        "--out", d / "search.json")
    result = json.loads((d / "search.json").read_text())
    chosen = result["chosen"]["arch"]
    assert chosen.startswith(f"mbv3:r{RES},") and result["space"] == space.config()
    assert all(c["latency_ms"] <= budget for c in result["history"])
    with pytest.raises(EdgeQueryError, match="resolution"):
        parse_arch(chosen)  # the default space cannot even read it

    run("train", "query", "--arch", d / "search.json", "--gallery", d / "gallery.pt", "--out", d / "query.pt",
        *TRAIN)
    qck = load_checkpoint(d / "query.pt", "query")
    assert qck["model"]["arch"] == chosen and qck["model"]["space"] == space.config()
    assert qck["compatible_with"]["gallery_version"] == load_checkpoint(d / "gallery.pt")["model_version"]

    run("export", "--query", d / "query.pt", "--gallery", d / "gallery.pt", "--formats", "onnx", "--threads", 1,
        "--runs", 5, "--warmup", 2, "--parity-images", 32, "--lut", d / "lut.json", "--out", d / "export")
    card = json.loads((d / "export" / "model_card.json").read_text())
    assert card["arch"] == chosen and card["model_version"] == qck["model_version"]
    assert card["input"]["resolution"] == RES and card["input"]["shape"]["NCHW"] == [1, 3, RES, RES]
    run("verify", d / "export", "--gallery", d / "gallery.pt")
