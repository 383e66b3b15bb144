"""End to end through the real CLI on a real Fashion-MNIST subset, and its bad-input errors.

Commands run in-process through :func:`edgequery.commands.main` (what the ``edgequery``
script calls), which saves a torch import per command; one test runs the real script.
"""

import contextlib
import io
import json
import subprocess
import sys
import traceback
from types import SimpleNamespace

import pytest
import torch

from edgequery.checkpoint import load_checkpoint
from edgequery.commands import main

SMALL = ["--n-train", "512", "--n-val", "0", "--n-query", "100", "--n-gallery", "400", "--epochs", "1"]


def eq(*args, check=True):
    """``edgequery ARGS``: its exit code and what it printed to stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, args)))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code
        except Exception:  # --debug re-raises: what Python prints for an uncaught exception
            traceback.print_exc()
            code = 1
    proc = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"edgequery {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgequery: error:")
    for n in needles:
        assert n in last, last


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    eq("train", "gallery", "--arch", "mobilenet_v3_small", "--out", d / "gallery.pt", *SMALL)
    eq("train", "query", "--gallery", d / "gallery.pt", "--out", d / "query.pt", "--epochs", "1")
    eq("train", "query", "--gallery", d / "gallery.pt", "--out", d / "query_nobct.pt", "--epochs", "1", "--no-bct")
    return d


@pytest.mark.slow
def test_train_and_eval_end_to_end(trained):
    g = load_checkpoint(trained / "gallery.pt", "gallery")
    q = load_checkpoint(trained / "query.pt", "query")
    assert q["compatible_with"]["gallery_version"] == g["model_version"]
    assert q["model"]["embed_dim"] == g["model"]["embed_dim"] == 128
    assert q["data"] == g["data"]  # the query net inherits the gallery's data spec
    assert load_checkpoint(trained / "query_nobct.pt", "query")["compatible_with"] is None
    proc = eq("eval", "--query", trained / "query.pt", "--gallery", trained / "gallery.pt",
              "--out", trained / "eval.json")
    assert "heterogeneous (q,g)" in proc.stdout
    rep = json.loads((trained / "eval.json").read_text())
    assert rep["sizes"] == {"query": 100, "gallery": 400}
    for setting in ("paragon", "homogeneous", "heterogeneous"):
        assert 0.0 <= rep[setting]["recall@1"] <= rep[setting]["recall@10"] <= 1.0
    assert rep["paragon"]["recall@10"] > 0.5  # one epoch on 512 real images learns something


@pytest.mark.slow
def test_finished_checkpoint_is_not_overwritten(trained):
    before = (trained / "query.pt").read_bytes()
    proc = eq("train", "query", "--gallery", trained / "gallery.pt", "--out", trained / "query.pt", check=False)
    assert_one_line_error(proc, "already holds", "--force")
    assert (trained / "query.pt").read_bytes() == before


@pytest.mark.slow
def test_query_paired_with_another_gallery_is_refused(trained, tmp_path):
    eq("train", "gallery", "--arch", "mobilenet_v3_small", "--out", tmp_path / "g2.pt", *SMALL, "--seed", "1")
    proc = eq("eval", "--query", trained / "query.pt", "--gallery", tmp_path / "g2.pt", check=False)
    assert_one_line_error(proc, "model_version", "pass the gallery it was trained with")
    eq("train", "gallery", "--arch", "mobilenet_v3_small", "--out", tmp_path / "g64.pt", *SMALL,
       "--embed-dim", "64")
    proc = eq("eval", "--query", trained / "query.pt", "--gallery", tmp_path / "g64.pt", check=False)
    assert_one_line_error(proc, "128 dims", "64")


@pytest.mark.slow
def test_truncated_and_foreign_checkpoints(trained, tmp_path):
    raw = (trained / "query.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 3])
    proc = eq("eval", "--query", tmp_path / "cut.pt", "--gallery", trained / "gallery.pt", check=False)
    assert_one_line_error(proc, "truncated or corrupt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    proc = eq("eval", "--query", tmp_path / "foreign.pt", "--gallery", trained / "gallery.pt", check=False)
    assert_one_line_error(proc, "not an edgequery checkpoint")
    proc = eq("eval", "--query", trained / "gallery.pt", "--gallery", trained / "gallery.pt", check=False)
    assert_one_line_error(proc, "holds a gallery model")
    proc = eq("eval", "--query", tmp_path / "missing.pt", "--gallery", trained / "gallery.pt", check=False)
    assert_one_line_error(proc, "does not exist")


@pytest.mark.slow
def test_missing_data_and_bad_folder(tmp_path):
    proc = eq("train", "gallery", "--data-root", tmp_path, "--out", tmp_path / "g.pt", check=False)
    assert_one_line_error(proc, "Fashion-MNIST not found", "apt-get install dataset-fashion-mnist")
    proc = eq("train", "gallery", "--dataset", "folder", "--data-root", tmp_path, "--out", tmp_path / "g.pt",
              check=False)
    assert_one_line_error(proc, "no class sub-directories")
    proc = eq("--debug", "train", "gallery", "--data-root", tmp_path, "--out", tmp_path / "g.pt", check=False)
    assert "Traceback" in proc.stderr
    assert not (tmp_path / "g.pt").exists()


def test_unavailable_device_and_weights(tmp_path):
    if not torch.cuda.is_available():
        proc = eq("train", "gallery", "--device", "cuda", "--out", tmp_path / "g.pt", *SMALL, check=False)
        assert_one_line_error(proc, "CUDA is not available")
    proc = eq("train", "gallery", "--weights", "NOPE", "--out", tmp_path / "g.pt", *SMALL, check=False)
    assert_one_line_error(proc, "no torchvision weights", "IMAGENET1K_V2")


@pytest.mark.slow
def test_resnet101_gallery_from_local_weights(tmp_path):
    """The gallery trunks, started from a local torchvision state dict (the offline path): the
    ImageNet-stem ResNet-101 takes all of it; the small-input one (the default) all but conv1."""
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet101()
    torch.save(ref.state_dict(), tmp_path / "r101.pth")
    from edgequery.models import load_pretrained_trunk

    trunk, dim = load_pretrained_trunk("resnet101", str(tmp_path / "r101.pth"))
    assert dim == 2048
    assert torch.equal(trunk.conv1.weight, ref.conv1.weight)
    small, dim = load_pretrained_trunk("resnet101_small_input", str(tmp_path / "r101.pth"))
    assert dim == 2048 and small.conv1.weight.shape == (64, 3, 3, 3) and small.conv1.stride == (1, 1)
    assert torch.equal(small.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)
    eq("train", "gallery", "--weights", tmp_path / "r101.pth", "--out", tmp_path / "g.pt",
       "--n-train", "64", "--n-val", "0", "--n-query", "20", "--n-gallery", "40", "--epochs", "1",
       "--batch-size", "32")
    ck = load_checkpoint(tmp_path / "g.pt", "gallery")
    assert ck["model"]["arch"] == "resnet101_small_input" and len(ck["model_version"]) == 16


def test_help_and_data_commands(tmp_path):
    script = subprocess.run([sys.executable, "-m", "edgequery.commands", "--help"], capture_output=True, text=True)
    assert script.returncode == 0 and "train gallery" in script.stdout and "demo" in script.stdout
    assert "--bct" in eq("train", "query", "--help").stdout
    assert "present" in eq("data", "setup").stdout
    assert_one_line_error(eq("data", "setup", "--data-root", tmp_path, check=False), "Fashion-MNIST not found")
    info = eq("data", "info", "--n-train", "100", "--n-val", "10", "--n-query", "10", "--n-gallery", "20").stdout
    assert "train       100" in info and "Ankle boot" in info


@pytest.mark.slow
def test_trunk_can_start_from_an_edgequery_checkpoint(trained):
    from edgequery.models import load_pretrained_trunk, model_from_checkpoint

    net = model_from_checkpoint(load_checkpoint(trained / "gallery.pt", "gallery"))
    trunk, dim = load_pretrained_trunk("mobilenet_v3_small", str(trained / "gallery.pt"))
    assert dim == 1024
    for (k, a), (_, b) in zip(net.trunk.state_dict().items(), trunk.state_dict().items()):
        assert torch.equal(a, b), k


def test_eval_reports_the_raw_pixel_baseline_and_intervals(tiny_query, tiny_gallery, tmp_path):
    proc = eq("eval", "--query", tiny_query, "--gallery", tiny_gallery, "--out", tmp_path / "eval.json")
    assert "raw-pixel kNN (baseline)" in proc.stdout and "95 % CI" in proc.stdout
    rep = json.loads((tmp_path / "eval.json").read_text())
    raw = rep["baselines"]["raw_pixel_knn"]
    for m in (rep["paragon"], rep["homogeneous"], rep["heterogeneous"], raw):
        lo, hi = m["recall@1_ci95"]
        assert lo <= m["recall@1"] <= hi
    # the tiny gallery model (one epoch on 256 images) is no match for raw pixels: said, not hidden
    assert rep["paragon"]["recall@1"] < raw["recall@1"]
    assert rep["warnings"] and "does not beat raw pixels" in rep["warnings"][0]
    assert "does not beat raw pixels" in proc.stderr


@pytest.mark.slow
def test_a_small_image_folder_gets_a_compatible_query_net(tmp_path):
    """A user's small ImageFolder (scikit-learn's 1797 digits written as PNGs, 10 classes): BCT must lift
    heterogeneous Recall@1 far above chance, and without BCT it stays near it.  Short schedules in steps
    (``--steps``) keep it to about two minutes here; the gallery is MobileNetV3-large for the same reason (a
    gallery of the query net's own arch and seed would start from the same weights, which lifts no-BCT
    heterogeneous retrieval above chance)."""
    from PIL import Image

    from edgequery.data import load_digits

    digits = load_digits()
    root = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(digits.images, digits.labels.tolist())):
        (root / digits.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(root / digits.classes[label] / f"{i}.png")
    data = ["--dataset", "folder", "--data-root", root, "--n-val", "0", "--n-query", "300", "--n-gallery", "700"]
    eq("train", "gallery", *data, "--arch", "mobilenet_v3_large", "--steps", "300", "--batch-size", "64",
       "--out", tmp_path / "g.pt")
    for bct in (True, False):
        eq("train", "query", "--gallery", tmp_path / "g.pt", "--steps", "300", "--batch-size", "64",
           "--out", tmp_path / f"q{bct}.pt", *([] if bct else ["--no-bct"]))
    reports = {}
    for bct in (True, False):
        eq("eval", "--query", tmp_path / f"q{bct}.pt", "--gallery", tmp_path / "g.pt", "--out", tmp_path / f"e{bct}.json")
        reports[bct] = json.loads((tmp_path / f"e{bct}.json").read_text())
    chance = 0.1
    assert reports[True]["sizes"] == {"query": 300, "gallery": 700}
    het, het_nobct = reports[True]["heterogeneous"], reports[False]["heterogeneous"]
    assert het["recall@1_ci95"][0] > 5 * chance, het
    assert het_nobct["recall@1"] < 3 * chance, het_nobct
    assert het["recall@1_ci95"][0] > het_nobct["recall@1_ci95"][1]


def test_augmentation_is_explicit_and_no_flip_is_the_default_for_digits():
    """A mirrored digit is another digit (or none): --dataset digits trains with shifts only unless told."""
    import argparse

    from edgequery.commands.common import augment_from_args
    from edgequery.errors import EdgeQueryError

    assert augment_from_args(argparse.Namespace(augment=None), "digits") == ["shift"]
    assert augment_from_args(argparse.Namespace(augment=None), "folder") == ["hflip", "shift"]
    assert augment_from_args(argparse.Namespace(augment="shift,hflip"), "digits") == ["hflip", "shift"]
    assert augment_from_args(argparse.Namespace(augment="none"), "fashion-mnist") == []
    with pytest.raises(EdgeQueryError, match="--augment 'flip': unknown augmentation 'flip'"):
        augment_from_args(argparse.Namespace(augment="flip"), "folder")
