"""``edgequery export`` / ``verify`` on real checkpoints, real converters and real runtimes.

Query nets are trained for one epoch on a small real Fashion-MNIST split (the shared
fixture below), converted by litert-torch and torch.onnx, and run in ai-edge-litert and
onnxruntime.  Conversion takes 10-30 s per file on two shared cores, so everything that
converts is marked ``slow``; the fast tests cover the contract pieces that need no
conversion.  Nothing is mocked.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edgequery import commands as cli
from edgequery.artifacts.card import ModelCard
from edgequery.checkpoint import load_checkpoint, save_checkpoint
from edgequery.data import DataSpec, load_splits, to_model_input
from edgequery.errors import EdgeQueryError
from edgequery.export import ExportOptions, export_query, file_name, parity_figures, parity_passed, verify_export
from edgequery.export.card import read_onnx_metadata
from edgequery.export.fixtures import read_png
from edgequery.export.options import file_runner
from edgequery.files import sha256_file
from edgequery.runtimes.run import measure_latency, open_runner
from edgequery.train import TrainConfig

SPEC = DataSpec(resolution=32, n_train=256, n_val=0, n_query=50, n_gallery=200)
QUICK = dict(threads=(1,), runs=5, warmup=1, parity_images=32, calibration=32, progress=False)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """gallery.pt, a BCT query.pt and a non-BCT query_nobct.pt (MobileNetV3-small).

    Two epochs of batch 32 (16 steps): after only the 2 steps of one default epoch the
    BatchNorm running statistics are still near their initial values and every image
    embeds to almost the same vector (spread ~1e-6), which would make retrieval figures
    float-rounding noise.
    """
    from edgequery.recipes import train_gallery, train_query

    d = tmp_path_factory.mktemp("export")
    splits = load_splits(SPEC, progress=False)
    cfg = TrainConfig(epochs=2, batch_size=32)
    train_gallery(SPEC, cfg, d / "gallery.pt", arch="mobilenet_v3_small", splits=splits)
    train_query(d / "gallery.pt", cfg, d / "query.pt", arch="mobilenet_v3_small", bct=True, splits=splits)
    train_query(d / "gallery.pt", TrainConfig(epochs=1, seed=1), d / "query_nobct.pt", arch="mobilenet_v3_small",
                bct=False, splits=splits)
    return d


@pytest.fixture(scope="module")
def exported(trained):
    """The full export: both formats, NHWC variant, dynamic + int8 + fp16, with the gallery.

    The 1-epoch net is retrieved with 50 queries, so one query is 2 points of Recall@1:
    the 1-point gate on dynamic-range files is lifted here and tested on its own below.
    """
    out = trained / "exports" / "full"
    card = export_query(trained / "query.pt", out, trained / "gallery.pt",
                        ExportOptions(quantize=("dynamic", "int8", "fp16"), nhwc=True, max_dynamic_drop=100, **QUICK))
    return out, card


def other_gallery(trained):
    """A real gallery checkpoint with different weights (so a different model_version)."""
    g = load_checkpoint(trained / "gallery.pt", "gallery")
    g["state_dict"] = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in g["state_dict"].items()}
    path = trained / "gallery_other.pt"
    if not path.exists():
        save_checkpoint(path, g)
    return path


# --------------------------------------------------------------------------- fast: the contract pieces


def test_options_are_validated():
    with pytest.raises(EdgeQueryError, match="unknown export format"):
        ExportOptions(formats=("coreml",))
    with pytest.raises(EdgeQueryError, match="--nhwc"):
        ExportOptions(formats=("onnx",), nhwc=True)
    assert ExportOptions().nhwc is True and ExportOptions(formats=("onnx",)).nhwc is False  # app file by default
    with pytest.raises(EdgeQueryError, match="quantization mode"):
        ExportOptions(quantize=("int4",))
    with pytest.raises(EdgeQueryError, match="thread"):
        ExportOptions(threads=(0,))
    assert ExportOptions(quantize=("none",)).quantize == ()


def test_file_names_say_layout_and_quantization():
    assert file_name("tflite", "NCHW", "none") == "query_encoder.tflite"
    assert file_name("tflite", "NHWC", "int8") == "query_encoder_nhwc_int8.tflite"
    assert file_name("onnx", "NCHW", "dynamic") == "query_encoder_dynamic.onnx"


def test_parity_figures_see_past_a_shared_component():
    """Embeddings dominated by one shared direction: plain cosine stays ~1, the centred one does not."""
    rng = np.random.default_rng(0)
    common = rng.normal(size=(1, 16)) * 10
    ref = common + rng.normal(size=(8, 16)) * 0.05
    wrong = common + rng.normal(size=(8, 16)) * 0.05   # right common part, wrong image-dependent part
    par = parity_figures(wrong, ref)
    assert par["cosine_min"] > 0.999
    assert par["centred_cosine_min"] < 0.9
    assert not parity_passed(par)
    assert parity_passed(parity_figures(ref + 1e-7, ref))


def test_a_replayed_file_may_repeat_a_zero_embedding_but_not_change_it():
    """An int8 file can embed an image to the zero vector (cosine 0 even to itself): verify's replay
    passes when the numbers are the same, and still fails when they change."""
    from edgequery.export.parity import replay_passed

    rng = np.random.default_rng(1)
    recorded = rng.normal(size=(6, 16)).astype(np.float32)
    recorded[2] = 0.0
    assert replay_passed(parity_figures(recorded.copy(), recorded))
    assert not parity_passed(parity_figures(recorded.copy(), recorded), 0.9999)  # what the cosine alone says
    changed = recorded.copy()
    changed[2] = rng.normal(size=16)
    assert not replay_passed(parity_figures(changed, recorded))
    assert not replay_passed(parity_figures(recorded + rng.normal(size=recorded.shape) * 0.1, recorded))


def test_committed_fixture_matches_the_preprocessing():
    """export/fixture/ (committed for apps) equals what the code produces today."""
    from edgequery.export.fixture import FIXTURE_DIR, reference_input

    image, x, source = reference_input()
    doc = json.loads((FIXTURE_DIR / "expected.json").read_text())
    assert torch.equal(read_png(FIXTURE_DIR / "test_image.png"), image)
    assert doc["image_sha256"] == sha256_file(FIXTURE_DIR / "test_image.png")
    assert doc["source"] == source
    assert np.abs(np.asarray(doc["input"]["values"], np.float32) - x.reshape(-1)).max() < 1e-6
    assert doc["input"]["shape"] == [1, 3, 32, 32]


def example_card() -> dict:
    """The committed example card (export/fixture/model_card.json): a real `edgequery export` card."""
    from edgequery.export.fixture import FIXTURE_DIR

    return json.loads((FIXTURE_DIR / "model_card.json").read_text())


def gallery_of(card: dict, version: str | None = None) -> dict:
    """A gallery checkpoint's metadata (as load_checkpoint returns it, weights aside) fitting ``card``."""
    compat = card["compatible_with"] or {}
    return {"kind": "gallery", "model_version": version or compat.get("gallery_version", "0" * 16),
            "model": {"arch": compat.get("gallery_arch") or "mobilenet_v3_small", "embed_dim": card["embed_dim"]}}


def write_card(folder, data) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_card.json").write_text(json.dumps(data))
    return str(folder)


def test_the_committed_example_card_is_a_valid_model_card():
    """export/fixture/model_card.json was written by `edgequery export`; it still parses, key for key."""
    from edgequery.export.fixture import FIXTURE_DIR

    data = example_card()
    card = ModelCard.parse_data(data, "example card")
    assert card.to_data() == data                      # nothing dropped, nothing added by the schema
    expected = json.loads((FIXTURE_DIR / "expected.json").read_text())
    assert expected["expected_embedding"]["model_version"] == card.model_version
    assert card.fixtures["test_image.png"].sha256 == expected["image_sha256"]  # the same fixed test image
    assert set(card.identity()) == {"format", "format_version", "name", "arch", "model_version", "embed_dim",
                                    "l2_normalized", "compatible_with", "input", "output"}
    assert {e.quantization for e in card.files} == {"none", "dynamic", "int8"}


@pytest.mark.parametrize("where", ["top", "input", "files", "compatible_with", "lut_or_retrieval"])
def test_model_card_refuses_an_invented_key(where):
    data = example_card()
    target = {"top": data, "input": data["input"], "files": data["files"][0],
              "compatible_with": data["compatible_with"], "lut_or_retrieval": data["retrieval"]}[where]
    target["favourite_colour"] = "teal"
    with pytest.raises(EdgeQueryError, match="favourite_colour: unknown key") as exc:
        ModelCard.parse_data(data, "card.json")
    assert "re-create the export" in str(exc.value.fix)


def test_model_card_refuses_a_newer_format_version_another_format_and_missing_fields():
    data = example_card()
    with pytest.raises(EdgeQueryError, match="format_version 2, newer .*") as exc:
        ModelCard.parse_data({**data, "format_version": 2}, "card.json")
    assert "upgrade edgequery" in exc.value.fix
    with pytest.raises(EdgeQueryError, match="not an edgequery model card"):
        ModelCard.parse_data({**data, "format": "edgequery-checkpoint"}, "card.json")
    with pytest.raises(EdgeQueryError, match="model_version: Field required"):
        ModelCard.parse_data({k: v for k, v in data.items() if k != "model_version"}, "card.json")
    with pytest.raises(EdgeQueryError, match="embed_dim"):
        ModelCard.parse_data({**data, "embed_dim": "many"}, "card.json")


def test_the_server_takes_a_card_only_as_written_and_only_for_its_gallery(tmp_path):
    """gallery/compat reads cards through ModelCard and pairs them with check_compatible."""
    from edgequery.gallery.compat import accepted_versions

    data = example_card()
    g = gallery_of(data)
    acc = accepted_versions(g, "gallery.pt", exports=[write_card(tmp_path / "ok", data)])
    assert acc[data["model_version"]].role == "query" and acc[data["model_version"]].arch == data["arch"]
    cases = {
        "invented key": ({**data, "query_model_version": "q2"}, "query_model_version: unknown key"),
        "other gallery": ({**data, "compatible_with": {"gallery_version": "ffff", "gallery_arch": None}},
                          "compatible with gallery model_version ffff, but gallery.pt is model_version"),
        "no BCT": ({**data, "compatible_with": None}, "trained without BCT"),
        "wrong dim": ({**data, "embed_dim": 64}, "64 dims"),
        "newer format": ({**data, "format_version": 99}, "upgrade edgequery"),
    }
    for i, (body, message) in enumerate(cases.values()):
        with pytest.raises(EdgeQueryError, match=message):
            accepted_versions(g, "gallery.pt", exports=[write_card(tmp_path / f"bad{i}", body)])
    with pytest.raises(EdgeQueryError, match="compatible with gallery model_version"):
        accepted_versions(gallery_of(data, "1" * 16), "other.pt", exports=[str(tmp_path / "ok")])
    (tmp_path / "notjson").mkdir()
    (tmp_path / "notjson" / "model_card.json").write_text("{nope")
    with pytest.raises(EdgeQueryError, match="not valid JSON"):
        accepted_versions(g, "gallery.pt", exports=[str(tmp_path / "notjson")])
    with pytest.raises(EdgeQueryError, match="no model card"):
        accepted_versions(g, "gallery.pt", exports=[str(tmp_path / "missing")])


def table_of_every_block(path, space, resolution: int, ms: float = 0.01):
    """A complete LUT file of ``space`` whose blocks all take ``ms`` (the prediction logic, not a measurement)."""
    from edgequery.artifacts.lut import TimingStats
    from edgequery.latency import LUT, Protocol, parse_device, space_blocks

    device, protocol = parse_device("local"), Protocol(threads=1)
    fingerprint = device.fingerprint("onnxruntime", 1)
    stats = TimingStats(median_ms=ms, p10_ms=ms, p90_ms=ms, runs=1)
    lut = LUT(space=space.name, space_config=space.config(), resolutions=[resolution], embed_dim=128,
              device=device.describe(), fingerprint=fingerprint, runtime="onnxruntime",
              runtime_version=fingerprint.runtime_version, threads=1, protocol=protocol.record(device, "onnxruntime"),
              overhead=stats, blocks={b.key: stats for b in space_blocks(space, [resolution], 128)}, complete=True)
    lut.save(path)
    return str(path)


def test_lut_prediction_fits_the_card_schema(tmp_path):
    """--lut: a searched arch is predicted; a baseline, another resolution or embedding size say why not."""
    from edgequery.artifacts.card import LutPrediction
    from edgequery.export.timing import lut_prediction
    from edgequery.spaces import get_space

    lut = table_of_every_block(tmp_path / "lut.json", get_space("mbv3"), 32)  # measured at 32 px only
    blocks = "w0.5,k3e3-k5e4,k7e6-k3e3,k3e3-k3e3,k5e6-k3e3,k3e3-k3e4"
    got = {case: LutPrediction.model_validate(lut_prediction(lut, arch, dim)) for case, arch, dim in [
        ("searched", f"mbv3:r32,{blocks}", 128), ("baseline", "mobilenet_v3_small", 128),
        ("other resolution", f"mbv3:r24,{blocks}", 128), ("other dim", f"mbv3:r32,{blocks}", 64)]}
    assert got["searched"].status == "predicted" and got["searched"].predicted_ms > 0
    assert got["baseline"].status == "not predicted" and "not an arch of a search space" in got["baseline"].reason
    assert "not 24" in got["other resolution"].reason and "--embed-dim 64" in got["other dim"].reason
    assert lut_prediction(None, "mobilenet_v3_small", 128) is None


def test_verify_refuses_a_card_with_an_invented_key(tmp_path):
    write_card(tmp_path, {**example_card(), "signed_by": "me"})
    with pytest.raises(EdgeQueryError, match="signed_by: unknown key"):
        verify_export(tmp_path, progress=False)


def test_verify_refuses_a_folder_without_a_card(tmp_path):
    with pytest.raises(EdgeQueryError, match="no model card"):
        verify_export(tmp_path, progress=False)
    (tmp_path / "model_card.json").write_text('{"format": "something-else"}')
    with pytest.raises(EdgeQueryError, match="not an edgequery model card"):
        verify_export(tmp_path, progress=False)


# --------------------------------------------------------------------------- slow: real exports


@pytest.mark.slow
def test_export_writes_checked_files_and_a_card(trained, exported):
    out, card = exported
    q = load_checkpoint(trained / "query.pt", "query")
    g = load_checkpoint(trained / "gallery.pt", "gallery")
    assert card["model_version"] == q["model_version"]
    assert card["compatible_with"]["gallery_version"] == g["model_version"]
    assert card["embed_dim"] == 128 and card["l2_normalized"] is True
    assert card["input"]["resolution"] == 32 and card["input"]["mean"] == list(SPEC.mean)

    names = {e["file"] for e in card["files"]}
    assert names == {"query_encoder.tflite", "query_encoder_nhwc.tflite", "query_encoder.onnx",
                     "query_encoder_dynamic.tflite", "query_encoder_int8.tflite",
                     "query_encoder_nhwc_dynamic.tflite", "query_encoder_nhwc_int8.tflite",
                     "query_encoder_dynamic.onnx", "query_encoder_int8.onnx",
                     "query_encoder_fp16.tflite", "query_encoder_nhwc_fp16.tflite"}  # fp16: TFLite only
    on_disk = json.loads((out / "model_card.json").read_text())
    assert ModelCard.parse_data(on_disk).to_data() == on_disk            # the schema, key for key
    assert {**on_disk, "path": str(out)} == card                          # what export_query returned
    assert set(on_disk) == set(example_card())                            # the committed example has today's shape
    assert set(on_disk["files"][0]) == set(example_card()["files"][0])
    for e in card["files"]:
        assert sha256_file(out / e["file"]) == e["sha256"]
        assert e["io"]["input"]["name"] == "image" and e["io"]["output"]["name"] == "embedding"
        assert set(e["latency"]) == {"threads=1"}
        lat = e["latency"]["threads=1"]
        assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"] and lat["runs"] == 5
        assert 0.0 <= e["retrieval"]["recall@1"] <= 1.0
        if e["quantization"] == "none":  # the contract: float files match PyTorch on real images
            assert e["parity"]["passed"] and e["parity"]["cosine_min"] >= 0.9999
            assert e["parity"]["images"] == 32 and e["parity"]["spread"] > 1e-3
            assert e["parity"]["centred_cosine_min"] >= 0.999
            # and so they retrieve what PyTorch retrieves (one query of 50 may flip on a near-tie)
            assert abs(e["retrieval"]["recall@1"] - card["retrieval"]["pytorch"]["recall@1"]) <= 0.02 + 1e-9
    r = card["retrieval"]  # every Recall@1 with its interval, beside the paragon's and raw pixels' on the same split
    for fig in (r["pytorch"], r["paragon"], r["baselines"]["raw_pixel_knn"], *(e["retrieval"] for e in card["files"])):
        lo, hi = fig["recall@1_ci95"]
        assert 0.0 <= lo <= fig["recall@1"] <= hi <= 1.0 and len(fig["map@r_ci95"]) == 2
    assert r["paragon"]["recall@1"] != r["baselines"]["raw_pixel_knn"]["recall@1"] or r["queries"] < 10
    by = {e["file"]: e for e in card["files"]}
    assert by["query_encoder_nhwc.tflite"]["io"]["input"]["shape"] == [1, 32, 32, 3]
    assert by["query_encoder.tflite"]["io"]["input"]["shape"] == [1, 3, 32, 32]
    # quantized: the change in heterogeneous Recall@1 is reported; dynamic is gated at 1 point
    for f in ("query_encoder_dynamic.tflite", "query_encoder_dynamic.onnx"):
        r = by[f]["retrieval"]
        assert r["passed"] and r["max_drop_points"] == 100
        assert r["recall@1_drop_points"] == pytest.approx(100 * (by[f.replace("_dynamic", "")]["retrieval"]["recall@1"]
                                                                 - r["recall@1"]))
    assert "recall@1_drop_points" in by["query_encoder_int8.onnx"]["retrieval"]
    io8 = by["query_encoder_int8.tflite"]["io"]
    assert io8["input"]["dtype"] == "int8" and io8["input"]["quantization"]["scale"] > 0
    assert by["query_encoder_int8.tflite"]["calibration_images"] == 32
    # quantized files are smaller than their float file
    assert by["query_encoder_dynamic.tflite"]["bytes"] < 0.5 * by["query_encoder.tflite"]["bytes"]
    assert by["query_encoder_fp16.tflite"]["bytes"] < 0.6 * by["query_encoder.tflite"]["bytes"]
    assert by["query_encoder_fp16.tflite"]["parity"]["cosine_min"] > 0.999  # float16 weights, float32 compute
    assert by["query_encoder_nhwc_fp16.tflite"]["pixel_input"] == by["query_encoder_nhwc.tflite"]["pixel_input"]
    assert card["lut_prediction"] is None


@pytest.mark.slow
def test_onnx_metadata_and_the_server_accept_the_card(trained, exported):
    from edgequery.gallery.compat import accepted_versions

    out, card = exported
    meta = read_onnx_metadata(out / "query_encoder.onnx")
    assert meta["model_version"] == card["model_version"]
    assert meta["gallery_version"] == card["compatible_with"]["gallery_version"]
    assert json.loads(meta["edgequery.model_card"])["input"] == card["input"]
    g = load_checkpoint(trained / "gallery.pt", "gallery")
    accepted = accepted_versions(g, str(trained / "gallery.pt"), exports=[str(out)])
    assert accepted[card["model_version"]].role == "query"


@pytest.mark.slow
def test_test_vector_lets_an_app_check_itself(exported):
    """Re-do an app's work from the README: decode the PNG, pre-process, run, compare."""
    out, card = exported
    vector = json.loads((out / "test_vector.json").read_text())
    from PIL import Image

    img = np.asarray(Image.open(out / vector["image"]), np.float32)
    rgb = np.repeat(img[None], 3, axis=0) / 255.0                           # grey -> RGB, [0, 1]
    mean, std = np.asarray(card["input"]["mean"]), np.asarray(card["input"]["std"])
    x = ((rgb - mean[:, None, None]) / std[:, None, None])[None].astype(np.float32)
    assert np.abs(x.reshape(-1) - np.asarray(vector["input"]["values"])).max() < 1e-4
    for e in card["files"]:
        runner = file_runner(out, e)  # the NHWC .tflite is fed pixels: it normalises them itself
        got = runner.embed(x)[0]
        assert float(got @ np.asarray(vector["expected_embedding"][e["file"]])) > 0.9999
    assert float(np.asarray(vector["expected_embedding"]["pytorch"])
                 @ np.asarray(vector["expected_embedding"]["query_encoder.tflite"])) > 0.9999


@pytest.mark.slow
def test_the_app_facing_tflite_loads_in_mediapipes_image_embedder(exported):
    """NHWC, 0-255 pixels, TFLite metadata: MediaPipe Tasks embeds the test image to the expected vector."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    from edgequery.export.tflite_metadata import read_tflite_metadata

    out, card = exported
    entry = next(e for e in card["files"] if e["file"] == "query_encoder_nhwc.tflite")
    assert entry["pixel_input"] == {"mean": card["input"]["mean"], "std": card["input"]["std"]}
    meta = read_tflite_metadata(out / entry["file"])
    assert meta == entry["tflite_metadata"] and meta["version"] == card["model_version"]
    assert meta["input"] == {"name": "image", "mean": [0.0], "std": [1.0]}  # pixels in: the file normalises
    assert read_tflite_metadata(out / "query_encoder.tflite") is None  # NCHW: no image metadata to mislead apps
    grey = np.asarray(Image.open(out / "test_image.png"))
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(np.stack([grey] * 3, axis=-1)))
    options = vision.ImageEmbedderOptions(base_options=BaseOptions(model_asset_path=str(out / entry["file"])),
                                          l2_normalize=False, quantize=False)
    with vision.ImageEmbedder.create_from_options(options) as embedder:
        got = np.asarray(embedder.embed(image).embeddings[0].embedding)
    expected = np.asarray(json.loads((out / "test_vector.json").read_text())["expected_embedding"][entry["file"]])
    assert float(got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)) >= 0.9999


@pytest.mark.slow
def test_verify_passes_then_catches_tampering(trained, exported, tmp_path, capsys):
    out, _ = exported
    report = verify_export(out, trained / "gallery.pt", progress=False)
    assert report["passed"] and any(c["check"] == "compatibility" for c in report["checks"])
    assert cli.main(["verify", str(out), "--gallery", str(trained / "gallery.pt")]) == 0

    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    data = bytearray((bad / "query_encoder.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "query_encoder.tflite").write_bytes(bytes(data))
    with pytest.raises(EdgeQueryError, match="query_encoder.tflite was modified after export"):
        verify_export(bad, progress=False)
    capsys.readouterr()
    assert cli.main(["verify", str(bad)]) == 2
    assert "modified after export" in capsys.readouterr().err

    (bad / "query_encoder.tflite").unlink()
    with pytest.raises(EdgeQueryError, match="missing"):
        verify_export(bad, progress=False)


@pytest.mark.slow
def test_verify_refuses_another_gallery(trained, exported, capsys):
    out, card = exported
    other = other_gallery(trained)
    with pytest.raises(EdgeQueryError, match="compatible with gallery model_version"):
        verify_export(out, other, progress=False)
    capsys.readouterr()
    assert cli.main(["verify", str(out), "--gallery", str(other)]) == 2
    assert card["compatible_with"]["gallery_version"] in capsys.readouterr().err


@pytest.mark.slow
def test_verify_catches_a_swapped_model_even_with_rehashed_card(trained, exported, tmp_path):
    """Someone drops another net's file in and fixes the hash and metadata: parity still fails."""
    from edgequery.export.card import write_onnx_metadata
    from edgequery.runtimes.convert import to_onnx
    from edgequery.models import model_from_checkpoint

    out, _ = exported
    bad = tmp_path / "swapped"
    shutil.copytree(out, bad)
    meta = read_onnx_metadata(bad / "query_encoder.onnx")
    to_onnx(model_from_checkpoint(load_checkpoint(trained / "query_nobct.pt", "query")), 32, bad / "query_encoder.onnx")
    write_onnx_metadata(bad / "query_encoder.onnx", meta)
    card = json.loads((bad / "model_card.json").read_text())
    for e in card["files"]:
        if e["file"] == "query_encoder.onnx":
            e["sha256"] = sha256_file(bad / "query_encoder.onnx")
    (bad / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(EdgeQueryError, match="query_encoder.onnx no longer reproduces PyTorch"):
        verify_export(bad, progress=False)


@pytest.mark.slow
def test_parity_gate_catches_an_app_preprocessing_bug(trained, exported):
    """Feeding 0..1 pixels without mean/std (a classic app bug) fails the float32 parity gate."""
    out, card = exported
    splits = load_splits(SPEC, progress=False)
    imgs = splits.query.images[:16]
    from edgequery.models import model_from_checkpoint

    net = model_from_checkpoint(load_checkpoint(trained / "query.pt", "query"))
    with torch.no_grad():
        ref = net(to_model_input(imgs, SPEC)).numpy()
    runner = open_runner(out / "query_encoder.tflite", "tflite")
    right = runner.embed(to_model_input(imgs, SPEC).numpy())
    wrong = runner.embed((imgs.float() / 255).expand(-1, 3, -1, -1).numpy())
    assert parity_passed(parity_figures(right, ref))
    assert not parity_passed(parity_figures(wrong, ref))


@pytest.mark.slow
def test_refuses_a_query_net_without_gallery_version(trained, capsys):
    with pytest.raises(EdgeQueryError, match="trained without BCT.*--allow-incompatible"):
        export_query(trained / "query_nobct.pt", trained / "exports" / "nobct", options=ExportOptions(**QUICK))
    assert not (trained / "exports" / "nobct").exists()
    capsys.readouterr()
    rc = cli.main(["export", "--query", str(trained / "query_nobct.pt"), "--out", str(trained / "exports" / "x")])
    assert rc == 2 and "--allow-incompatible" in capsys.readouterr().err

    # forced: the card says so, and neither verify --gallery nor the server accept it
    from edgequery.artifacts.card import load_card
    from edgequery.gallery.compat import accepted_from_card

    out = trained / "exports" / "nobct"
    rc = cli.main(["export", "--query", str(trained / "query_nobct.pt"), "--out", str(out), "--formats", "onnx",
                   "--allow-incompatible", "--threads", "1", "--runs", "3", "--parity-images", "16"])
    assert rc == 0
    card = ModelCard.load(out / "model_card.json")
    assert card.compatible_with is None and "BCT" in card.warning
    assert [e.file for e in card.files] == ["query_encoder.onnx"]
    with pytest.raises(EdgeQueryError, match="without BCT"):
        verify_export(out, trained / "gallery.pt", progress=False)
    g = load_checkpoint(trained / "gallery.pt", "gallery")
    with pytest.raises(EdgeQueryError, match="compatible"):
        accepted_from_card(*load_card(out), g, str(trained / "gallery.pt"))


@pytest.mark.slow
def test_refuses_wrong_gallery_missing_gallery_and_existing_output(trained, exported):
    out, card = exported
    with pytest.raises(EdgeQueryError, match="compatible with gallery model_version"):
        export_query(trained / "query.pt", trained / "exports" / "w", other_gallery(trained),
                     ExportOptions(**QUICK))
    with pytest.raises(EdgeQueryError, match="--gallery"):
        export_query(trained / "query.pt", trained / "exports" / "w", None,
                     ExportOptions(quantize=("dynamic",), **QUICK))
    before = (out / "model_card.json").read_bytes()
    with pytest.raises(EdgeQueryError, match="--force"):
        export_query(trained / "query.pt", out, trained / "gallery.pt", ExportOptions(**QUICK))
    assert (out / "model_card.json").read_bytes() == before
    assert not list((trained / "exports").glob(".*tmp*"))


@pytest.mark.slow
def test_dynamic_range_gate_refuses_a_recall_drop_beyond_the_allowance(trained):
    out = trained / "exports" / "gate"
    with pytest.raises(EdgeQueryError, match="query_encoder_dynamic.onnx loses .* points of heterogeneous Recall@1"):
        # an allowance no file can meet (-100 points), so the gate must fire whatever the drop is
        export_query(trained / "query.pt", out, trained / "gallery.pt",
                     ExportOptions(formats=("onnx",), quantize=("dynamic",), max_dynamic_drop=-100, **QUICK))
    assert not out.exists()


@pytest.mark.slow
def test_latency_protocol_on_a_real_file(exported):
    out, _ = exported
    runner = open_runner(out / "query_encoder.onnx", "onnx", threads=2)
    x = np.zeros((1, 3, 32, 32), np.float32)
    lat = measure_latency(runner, x, warmup=2, runs=20)
    assert lat["threads"] == 2 and lat["runs"] == 20 and lat["batch"] == 1
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    with pytest.raises(EdgeQueryError, match="runs >= 1"):
        measure_latency(runner, x, runs=0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [
    "mobilenet_v3_large",
    "mbv3:r24,w0.5,k3e3-k5e4,k7e6-k3e3,k3e3-k3e3,k5e6-k3e3,k3e3-k3e4",   # lower resolution than the data
    "shufflenet:r32,k3c0.5-k5c0.5-x3c0.5-k7c0.5,k3c0.5-k3c0.5-k3c0.5-k3c0.5,"
    "k3c0.5-k3c0.5-k3c0.5-k3c0.5-k3c0.5-k3c0.5-k3c0.5-k3c0.5,k3c0.5-k3c0.5-k3c0.5-k3c0.5",
])
def test_baselines_and_both_spaces_export_with_parity(trained, arch):
    from edgequery.recipes import train_query

    ck = trained / f"query-{arch.split(':')[0]}.pt"
    # a few real steps: a net trained for two steps embeds every image almost alike, and its tiny
    # image-dependent part is then below float32 conversion noise (see parity_figures)
    train_query(trained / "gallery.pt", TrainConfig(epochs=2, batch_size=32), ck, arch=arch, bct=True)
    out = trained / "exports" / arch.split(":")[0]
    card = export_query(ck, out, None, ExportOptions(**{**QUICK, "parity_images": 16}))
    res = 24 if arch.startswith("mbv3:r24") else 32
    assert card["arch"] == arch and card["input"]["resolution"] == res
    for e in card["files"]:
        assert e["parity"]["passed"], (arch, e["file"], e["parity"])
        shape = [1, res, res, 3] if e["layout"] == "NHWC" else [1, 3, res, res]
        assert e["io"]["input"]["shape"] == shape or e["format"] == "onnx"
    assert verify_export(out, trained / "gallery.pt", progress=False)["passed"]


@pytest.mark.slow
def test_demo_deploy_stage_exports_indexes_and_reuses_the_export(trained, tmp_path):
    from edgequery.workflow import Workflow, demo_deploy

    wf = Workflow(SPEC)
    first = demo_deploy(wf, tmp_path, trained / "query.pt", trained / "gallery.pt", None)
    assert wf.stages["export"]["status"] == "ran" and first["items"] == SPEC.n_gallery
    assert set(first["files"]) == {"query_encoder.tflite", "query_encoder_nhwc.tflite", "query_encoder.onnx"}
    assert min(first["files"].values()) >= 0.9999
    report = verify_export(first["export"], trained / "gallery.pt", progress=False)
    assert report["model_version"] == first["query_model_version"]

    wf = Workflow(SPEC)
    again = demo_deploy(wf, tmp_path, trained / "query.pt", trained / "gallery.pt", None)
    assert wf.stages["export"]["status"] == "reused", "an export of the same query model_version is reused"
    assert again == first
