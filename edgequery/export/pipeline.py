"""``edgequery export`` and ``edgequery verify``: files a phone can run, checked every time.

:func:`export_query` turns a query checkpoint into an export folder::

    export/<name>/
      query_encoder.tflite          float32, NCHW input         (LiteRT)
      query_encoder_nhwc.tflite     float32, NHWC input         (--nhwc)
      query_encoder.onnx            float32, NCHW input         (onnxruntime)
      query_encoder_dynamic.*       dynamic-range int8          (--quantize dynamic)
      query_encoder_int8.*          static int8, calibrated     (--quantize int8)
      model_card.json               see edgequery.export.card
      test_image.png                the fixed test image, at the model's resolution
      test_vector.json              its model input and expected embedding per file
      parity.npz                    real images + PyTorch / per-file embeddings (verify)

and checks, in order, refusing to finish when a check fails:

1. **compatibility** - the checkpoint must carry the gallery ``model_version`` it was
   trained against (BCT); ``--allow-incompatible`` exports it anyway, marked as such.
   With ``--gallery``, the pairing is checked too.
2. **parity** - every float32 file, in its runtime, on real images of the query split:
   cosine to PyTorch's embedding >= :data:`FP32_MIN_COSINE` for every image.
3. **retrieval** (with ``--gallery``) - heterogeneous Recall@1 of each file's embeddings
   of the query split against the gallery model's embeddings of the gallery split; a
   dynamic-range file may lose at most ``max_dynamic_drop`` points against its float
   file (default 1); int8 is reported.
4. **latency** - each file, batch 1, at each thread count (:func:`measure_latency`).

Everything is built in a temporary sibling folder and moved into place at the end, so
an existing export is only replaced (with ``--force``) by a complete, checked one.

:func:`verify_export` re-checks a folder: sha256 of every file, the ONNX metadata
against the card, parity of every file on the stored real images and test vector, and
(with ``--gallery``) that the gallery is the one the encoder is compatible with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EdgeQueryError
from . import card as cards
from ..runtimes.convert import (INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, quantize_onnx, quantize_tflite_dynamic, to_onnx,
                      to_tflite, to_tflite_int8)
from ..runtimes.run import Runner, measure_latency, open_runner

FP32_MIN_COSINE = 0.9999          # float files vs PyTorch, every image
FP32_MIN_CENTRED_COSINE = 0.999   # float files vs PyTorch, image-dependent part (see parity_figures)
# The centred cosine is gated only when embeddings vary across images by clearly more than
# float32 conversion noise (~1e-6 per vector, relative): below this mean spread a correct
# export's image-dependent part is itself mostly rounding noise, and only the plain cosine holds.
MIN_SPREAD = 1e-3
REPLAY_MIN_COSINE = 0.9999        # verify: a file vs its own outputs recorded at export time
FORMATS = ("tflite", "onnx")
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}
RUNTIME = {"tflite": "litert", "onnx": "onnxruntime"}
TEST_IMAGE = "test_image.png"
TEST_VECTOR = "test_vector.json"
PARITY_FILE = "parity.npz"
DEFAULT_EXPORT_ROOT = Path("export")


@dataclass
class ExportOptions:
    """What to export and how to check it (the ``edgequery export`` flags)."""

    formats: tuple[str, ...] = FORMATS
    quantize: tuple[str, ...] = ()            # any of "dynamic", "int8"
    nhwc: bool = False                        # also a TFLite file with NHWC input
    calibration: int = 200                    # training images for int8 calibration
    parity_images: int = 256                  # query-split images for the parity check
    verify_images: int = 16                   # of those, stored in parity.npz for `verify`
    eval_queries: int | None = None           # query images for Recall@1 (None: the whole split)
    threads: tuple[int, ...] = (1, 2)
    warmup: int = 10
    runs: int = 50
    allow_incompatible: bool = False
    max_dynamic_drop: float = 1.0             # Recall@1 points a dynamic-range file may lose
    lut: str | None = None
    name: str | None = None
    force: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.formats = tuple(self.formats)
        self.quantize = tuple(q for q in self.quantize if q != "none")
        self.threads = tuple(int(t) for t in self.threads)
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise EdgeQueryError(f"unknown export format(s) {', '.join(bad) or '(none given)'}",
                                 f"use --formats with one or more of: {', '.join(FORMATS)}")
        bad = [q for q in self.quantize if q not in ("dynamic", "int8")]
        if bad:
            raise EdgeQueryError(f"unknown quantization mode(s) {', '.join(bad)}", "use --quantize none, dynamic or int8")
        if self.nhwc and "tflite" not in self.formats:
            raise EdgeQueryError("--nhwc makes an NHWC TFLite file, but tflite is not among --formats",
                                 "add tflite to --formats or drop --nhwc")
        if not self.threads or min(self.threads) < 1:
            raise EdgeQueryError(f"thread counts must be >= 1 (got {self.threads})", "pass e.g. --threads 1,2")
        for key in ("parity_images", "verify_images", "runs"):
            if getattr(self, key) < 1:
                raise EdgeQueryError(f"--{key.replace('_', '-')} must be >= 1", "pass a positive number")
        if self.quantize and "int8" in self.quantize and self.calibration < 1:
            raise EdgeQueryError("int8 quantization needs calibration images", "pass --calibration N with N >= 1")


# --------------------------------------------------------------------------- helpers


def default_name(ckpt: dict[str, Any]) -> str:
    """``<arch>-<model_version[:8]>``; search-space arch strings shorten to their space name."""
    arch = ckpt["model"]["arch"]
    stem = arch.split(":", 1)[0] if ":" in arch else arch
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}-{ckpt['model_version'][:8]}"


def export_resolution(net: torch.nn.Module, data_resolution: int) -> int:
    """The input side of the exported file: a searched net's own resolution, else the data's."""
    return int(getattr(net.trunk, "resolution", data_resolution))


def file_name(fmt: str, layout: str, quantization: str) -> str:
    parts = ["query_encoder"]
    if layout == "NHWC":
        parts.append("nhwc")
    if quantization != "none":
        parts.append(quantization)
    return "_".join(parts) + SUFFIX[fmt]


def input_spec(resolution: int, mean, std) -> dict[str, Any]:
    """The pre-processing contract (DESIGN.md §3), as written into the card."""
    return {
        "name": INPUT_NAME, "dtype": "float32", "batch": 1, "resolution": resolution,
        "shape": {"NCHW": [1, 3, resolution, resolution], "NHWC": [1, resolution, resolution, 3]},
        "channel_order": "RGB",
        "grey": "replicate the single grey channel to R, G and B",
        "scale": "pixel / 255, so values are in [0, 1]",
        "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "normalize": "(x - mean[c]) / std[c] per channel c",
        "resize": (f"to {resolution}x{resolution}: bilinear (antialiased when shrinking), rounded back to uint8 "
                   "before scaling (edgequery.data.resize_images); non-square photos: shorter side to "
                   f"{resolution}, then a centre crop"),
        "layout": "per file: see files[].layout (NCHW = 1x3xRxR, NHWC = 1xRxRx3)",
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def parity_figures(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """How closely a file's embeddings follow PyTorch's on the same images.

    ``cosine_*`` is the contract's figure.  Embeddings of a net can share a large common
    component (an undertrained net's often do), which keeps the plain cosine near 1 even
    when the image-dependent part is wrong; ``centred_cosine_min`` compares that part -
    both sides minus PyTorch's mean embedding over these images.
    """
    cos = _cosines(got, ref)
    mean = ref.mean(axis=0, keepdims=True)
    spread = float(np.linalg.norm(ref - mean, axis=1).mean())
    out = {"images": int(len(cos)), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
           "max_abs_diff": float(np.abs(got - ref).max()), "spread": spread}
    if len(cos) > 1 and spread > MIN_SPREAD:
        out["centred_cosine_min"] = float(_cosines(got - mean, ref - mean).min())
    return out


def parity_passed(par: dict[str, Any], min_cosine: float = FP32_MIN_COSINE) -> bool:
    """The float32 contract: every image's cosine and the image-dependent part both close to the reference."""
    return bool(par["cosine_min"] >= min_cosine and par.get("centred_cosine_min", 1.0) >= FP32_MIN_CENTRED_COSINE)


def _embed(runner: Runner, x: np.ndarray, desc: str, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    out = [runner.embed(x[i:i + 1]) for i in tqdm(range(len(x)), desc=desc, unit="img", leave=False,
                                                   disable=None if progress else True)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _say(msg: str, progress: bool = True) -> None:
    if progress:
        from ..commands.common import say

        say(msg)


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"edgequery": __version__, "torch": torch.__version__}
    for pkg in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def lut_prediction(lut_path: str | None, arch: str, embed_dim: int) -> dict[str, Any] | None:
    """Latency predicted for ``arch`` by a per-block LUT (``edgequery profile``), or why there is none.

    Only searched nets (``space:...`` arch strings) are made of a LUT's blocks; for a
    baseline such as ``mobilenet_v3_small`` the card says so.  A LUT of another space or
    resolution is not an error for the export - the card records why nothing was predicted.
    """
    if not lut_path:
        return None
    from ..latency import load_lut
    from ..spaces import space_from_config

    lut = load_lut(lut_path)  # a missing or foreign file is the user's error: raise
    out: dict[str, Any] = {"lut": str(lut_path), "device": lut.device.get("spec"), "runtime": lut.runtime,
                           "threads": lut.threads}
    if ":" not in arch:
        return {**out, "status": "not predicted", "reason": f"{arch} is not an arch of a search space: a LUT holds "
                                                            "the blocks of searched nets only"}
    try:
        space = space_from_config(lut.space_config)
        detail = lut.breakdown(space, arch)
        if embed_dim != lut.embed_dim:
            raise EdgeQueryError(f"the LUT was measured for {lut.embed_dim}-d embeddings, the net has {embed_dim}",
                                 f"profile with --embed-dim {embed_dim}")
    except EdgeQueryError as exc:
        return {**out, "status": "not predicted", "reason": str(exc)}
    return {**out, "status": "predicted", "predicted_ms": detail["predicted_ms"], "raw_ms": detail["raw_ms"],
            "calibrated": detail["calibrated"]}


def _write_png(path: Path, image: torch.Tensor) -> None:
    """A uint8 ``C x H x W`` image (C = 1 or 3) as an 8-bit grey or RGB PNG."""
    from PIL import Image

    arr = image.numpy()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path, format="PNG")


def read_png(path: str | Path) -> torch.Tensor:
    """A PNG written by :func:`_write_png` back to uint8 ``1 x C x H x W``."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()).unsqueeze(0)


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder onto ``out`` (an old ``out`` is removed only afterwards)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- export


def export_query(query_path: str | Path, out: str | Path | None = None, gallery_path: str | Path | None = None,
                 options: ExportOptions | None = None) -> dict[str, Any]:
    """Export, check and describe a query checkpoint; returns the model card (see the module docstring)."""
    from ..checkpoint import load_checkpoint, require_compatible
    from ..sysinfo import machine_info

    opts = options or ExportOptions()
    t_start = time.time()
    ckpt = load_checkpoint(query_path, "query")
    if not ckpt.get("train", {}).get("complete", True):
        tr = ckpt["train"]
        raise EdgeQueryError(f"{query_path} is an unfinished training run (epoch {tr.get('epoch')}/{tr.get('epochs')})",
                             "finish it first by rerunning `edgequery train query` with the same settings")
    compat = ckpt.get("compatible_with")
    if compat is None and not opts.allow_incompatible:
        raise EdgeQueryError(
            f"{query_path} was trained without BCT: it records no gallery model_version, so its embeddings are not "
            "in any gallery model's space and a server would retrieve garbage with them",
            "retrain it compatible (`edgequery train query --bct --gallery gallery.pt`), or pass "
            "--allow-incompatible to export it anyway (the card then says compatible_with: null and servers "
            "refuse its embeddings)")
    gallery = None
    if gallery_path is not None:
        gallery = load_checkpoint(gallery_path, "gallery")
        require_compatible(ckpt, gallery, query_path, gallery_path)
    elif opts.quantize:
        raise EdgeQueryError("quantized exports are checked by the change in heterogeneous Recall@1, which needs the "
                             "gallery model", "pass --gallery gallery.pt (the gallery the query net was trained with)")

    name = opts.name or (Path(out).name if out else default_name(ckpt))
    out = Path(out) if out else DEFAULT_EXPORT_ROOT / name
    if out.exists() and not out.is_dir():
        raise EdgeQueryError(f"{out} is a file, not an export folder", "choose another --out")
    if out.exists() and any(out.iterdir()):
        if not opts.force:
            raise EdgeQueryError(f"{out} already exists and is not empty",
                                 "pass --force to replace it (the old export is kept until the new one is "
                                 "complete), or choose another --out")
        if not (out / cards.CARD_NAME).is_file():
            raise EdgeQueryError(f"{out} is not an export folder (no {cards.CARD_NAME}); refusing to replace it",
                                 "choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        card = _export_into(tmp, ckpt, Path(query_path), gallery, gallery_path, name, opts)
        card["export_seconds"] = round(time.time() - t_start, 1)
        card["machine"] = machine_info()
        from ..commands.common import write_json

        write_json(tmp / cards.CARD_NAME, card)
        os.chmod(tmp / cards.CARD_NAME, 0o644)  # readable like the files beside it (atomic_write makes 0600)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    card["path"] = str(out)
    return card


def _export_into(folder: Path, ckpt: dict, query_path: Path, gallery: dict | None, gallery_path, name: str,
                 opts: ExportOptions) -> dict[str, Any]:
    from ..data import DataSpec, load_splits, resize_images, to_model_input
    from ..models import model_from_checkpoint

    say = lambda m: _say(m, opts.progress)  # noqa: E731
    net = model_from_checkpoint(ckpt)
    spec = DataSpec.from_dict(ckpt["data"])
    res = export_resolution(net, spec.resolution)
    splits = load_splits(spec, progress=opts.progress)

    def model_input(images: torch.Tensor) -> np.ndarray:
        return to_model_input(resize_images(images, res), spec).numpy()

    with torch.no_grad():
        def reference(x: np.ndarray) -> np.ndarray:
            return torch.cat([net(torch.from_numpy(c)) for c in np.array_split(x, max(1, len(x) // 128))]).numpy() \
                if len(x) else np.zeros((0, net.embed_dim), np.float32)

        n_par = min(opts.parity_images, len(splits.query))
        x_par = model_input(splits.query.images[:n_par])
        ref_par = reference(x_par)
        calib = None
        if "int8" in opts.quantize:
            calib = model_input(splits.train.images[:min(opts.calibration, len(splits.train))])

    compat = ckpt.get("compatible_with")
    card: dict[str, Any] = {
        "format": cards.CARD_FORMAT, "format_version": cards.CARD_VERSION, "name": name,
        "arch": ckpt["model"]["arch"], "model_version": ckpt["model_version"], "embed_dim": net.embed_dim,
        "l2_normalized": True,
        "compatible_with": ({"gallery_version": compat["gallery_version"], "gallery_arch": compat.get("gallery_arch")}
                            if compat else None),
        "input": input_spec(res, spec.mean, spec.std),
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [1, net.embed_dim], "dim": net.embed_dim,
                   "l2_normalized": True, "similarity": "dot product (= cosine) with the gallery's embeddings"},
        "model": {"arch": ckpt["model"]["arch"], "params": sum(p.numel() for p in net.parameters()
                                                                if not _is_classifier(net, p)),
                  "checkpoint": str(query_path), "classes": ckpt.get("classes"), "data": spec.to_dict()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if compat is None:
        card["warning"] = ("exported with --allow-incompatible: trained without BCT, its embeddings are not in the "
                           "gallery model's space")

    # ---- float files, each checked against PyTorch on real images
    layouts = [("tflite", "NCHW")] * ("tflite" in opts.formats) + [("tflite", "NHWC")] * opts.nhwc \
        + [("onnx", "NCHW")] * ("onnx" in opts.formats)
    entries: list[dict[str, Any]] = []
    outputs: dict[str, np.ndarray] = {}
    for fmt, layout in layouts:
        fname = file_name(fmt, layout, "none")
        say(f"converting to {fname} ...")
        t = time.time()
        if fmt == "tflite":
            to_tflite(net, res, folder / fname, layout=layout)
        else:
            to_onnx(net, res, folder / fname)
        entry = {"file": fname, "format": fmt, "runtime": RUNTIME[fmt], "layout": layout, "quantization": "none",
                 "convert_seconds": round(time.time() - t, 1)}
        if fmt == "onnx":
            entry["opset"] = ONNX_OPSET
            cards.write_onnx_metadata(folder / fname, cards.onnx_metadata(card, entry))
        runner = open_runner(folder / fname, fmt, threads=1, layout=layout)
        got = _embed(runner, x_par, f"parity {fname}", opts.progress)
        par = parity_figures(got, ref_par)
        par.update(threshold_cosine_min=FP32_MIN_COSINE, threshold_centred_cosine_min=FP32_MIN_CENTRED_COSINE,
                   reference="PyTorch (the checkpoint, eval mode) on the same real query-split images")
        par["passed"] = parity_passed(par)
        if not par["passed"]:
            raise EdgeQueryError(
                f"{fname} does not match PyTorch on {par['images']} real images: cosine as low as "
                f"{par['cosine_min']:.6f} (needed >= {FP32_MIN_COSINE}), image-dependent part "
                f"{par.get('centred_cosine_min', float('nan')):.4f} (needed >= {FP32_MIN_CENTRED_COSINE})",
                f"this is a conversion problem for arch {card['arch']}; export the other format "
                f"(--formats {'onnx' if fmt == 'tflite' else 'tflite'}) and report the arch")
        entry.update(io=runner.io(), parity=par)
        say(f"  parity {fname}: min cosine {par['cosine_min']:.7f} over {par['images']} real images")
        entries.append(entry)
        outputs[fname] = got

    # ---- quantized files, made from each float file
    for base in list(entries):
        for mode in opts.quantize:
            fname = file_name(base["format"], base["layout"], mode)
            say(f"quantizing {base['file']} -> {fname} ({mode}) ...")
            t = time.time()
            if base["format"] == "tflite" and mode == "dynamic":
                quantize_tflite_dynamic(folder / base["file"], folder / fname)
            elif base["format"] == "tflite":
                to_tflite_int8(net, res, folder / fname, calib, layout=base["layout"])
            else:
                quantize_onnx(folder / base["file"], folder / fname, mode, calib)
            entry = {"file": fname, "format": base["format"], "runtime": base["runtime"], "layout": base["layout"],
                     "quantization": mode, "quantized_from": base["file"], "convert_seconds": round(time.time() - t, 1)}
            if mode == "int8":
                entry["calibration_images"] = int(len(calib))
                entry["calibration_source"] = "the first images of the training split (never the evaluation splits)"
            entry["tool"] = {("tflite", "dynamic"): "ai-edge-quantizer dynamic_wi8_afp32",
                             ("tflite", "int8"): "litert-torch PT2EQuantizer (per-channel, histogram calibration)",
                             }.get((base["format"], mode), "onnxruntime.quantization")
            if base["format"] == "onnx":
                entry["opset"] = ONNX_OPSET
                cards.write_onnx_metadata(folder / fname, cards.onnx_metadata(card, entry))
            runner = open_runner(folder / fname, base["format"], threads=1, layout=base["layout"])
            got = _embed(runner, x_par, f"parity {fname}", opts.progress)
            par = parity_figures(got, ref_par)
            par.update(reference="PyTorch float32 on the same real images (reported; quantized files are judged "
                                 "by retrieval)")
            entry.update(io=runner.io(), parity=par)
            say(f"  {fname}: min cosine to float32 PyTorch {par['cosine_min']:.5f}")
            entries.append(entry)
            outputs[fname] = got

    # ---- heterogeneous retrieval through each file
    if gallery is not None:
        _retrieval(card, entries, folder, net, gallery, gallery_path, splits, spec, model_input, opts, say)

    # ---- latency of each file
    for entry in entries:
        entry["latency"] = {}
        for threads in opts.threads:
            runner = open_runner(folder / entry["file"], entry["format"], threads=threads, layout=entry["layout"])
            lat = measure_latency(runner, x_par[:1], warmup=opts.warmup, runs=opts.runs)
            entry["latency"][f"threads={threads}"] = lat
        lat1 = entry["latency"][f"threads={opts.threads[0]}"]
        say(f"  latency {entry['file']}: median {lat1['median_ms']:.3f} ms at {opts.threads[0]} thread(s)")
    card["latency_protocol"] = {"batch": 1, "warmup": opts.warmup, "runs": opts.runs, "statistic": "median, p10, p90",
                                "threads": list(opts.threads),
                                "overhead": "end to end: the runtime's per-invocation overhead is included",
                                "note": "measured on the exporting machine; on a shared machine timings are noisy"}
    card["lut_prediction"] = lut_prediction(opts.lut, card["arch"], net.embed_dim)

    # ---- fixtures: the fixed test image, its expected embeddings, real images for verify
    test_image = resize_images(splits.query.images[:1], res)
    _write_png(folder / TEST_IMAGE, test_image[0])
    x_test = to_model_input(read_png(folder / TEST_IMAGE), spec).numpy()
    with torch.no_grad():
        ref_test = net(torch.from_numpy(x_test)).numpy()
    vector = {
        "image": TEST_IMAGE, "image_sha256": cards.sha256_file(folder / TEST_IMAGE),
        "source": f"{spec.dataset}: the first image of the query split (label "
                  f"{splits.classes[int(splits.query.labels[0])]!r}), resized to {res}x{res}",
        "input": {"layout": "NCHW", "shape": list(x_test.shape), "dtype": "float32",
                  "values": [round(float(v), 7) for v in x_test.reshape(-1)]},
        "expected_embedding": {"pytorch": [float(v) for v in ref_test[0]]},
        "tolerance": {"cosine_min": FP32_MIN_COSINE, "applies_to": "float32 files; a quantized file is compared "
                                                                    "with its own entry"},
    }
    for entry in entries:
        runner = open_runner(folder / entry["file"], entry["format"], threads=1, layout=entry["layout"])
        vector["expected_embedding"][entry["file"]] = [float(v) for v in runner.embed(x_test)[0]]
    (folder / TEST_VECTOR).write_text(json.dumps(vector, indent=1) + "\n")
    n_ver = min(opts.verify_images, len(x_par))
    np.savez(folder / PARITY_FILE, images=resize_images(splits.query.images[:n_ver], res).numpy(),
             pytorch=ref_par[:n_ver], **{f"file:{k}": v[:n_ver] for k, v in outputs.items()})

    for entry in entries:
        entry["sha256"] = cards.sha256_file(folder / entry["file"])
        entry["bytes"] = (folder / entry["file"]).stat().st_size
    card["files"] = entries
    card["fixtures"] = {n: {"sha256": cards.sha256_file(folder / n), "bytes": (folder / n).stat().st_size}
                        for n in (TEST_IMAGE, TEST_VECTOR, PARITY_FILE)}
    card["parity_protocol"] = {"images": n_par, "source": f"{spec.dataset} query split (real images), first {n_par}",
                               "float32_cosine_min": FP32_MIN_COSINE, "runs_at": "batch 1, 1 thread"}
    card["tools"] = tool_versions()
    return card


def _is_classifier(net, p) -> bool:
    return any(p is q for q in net.classifier.parameters())


def _retrieval(card, entries, folder, net, gallery, gallery_path, splits, spec, model_input, opts, say) -> None:
    """Heterogeneous Recall@1 / mAP@R of each file (queries) against the gallery model (gallery split)."""
    from ..evaluate import embed
    from ..metrics import retrieval_metrics
    from ..models import model_from_checkpoint

    n_q = len(splits.query) if opts.eval_queries is None else min(opts.eval_queries, len(splits.query))
    say(f"embedding the gallery split ({len(splits.gallery)} images) with the gallery model ...")
    g_emb = embed(model_from_checkpoint(gallery), splits.gallery, spec, desc="gallery model: gallery")
    g_lab = splits.gallery.labels
    q_lab = splits.query.labels[:n_q]
    x_q = model_input(splits.query.images[:n_q])
    with torch.no_grad():
        ref = torch.cat([net(torch.from_numpy(c)) for c in np.array_split(x_q, max(1, n_q // 128))])

    def metrics(q: torch.Tensor) -> dict[str, float]:
        m = retrieval_metrics(q, q_lab, g_emb, g_lab)
        return {"recall@1": m["recall@1"], "recall@10": m["recall@10"], "map@r": m["map@r"]}

    card["retrieval"] = {"setting": "heterogeneous: queries by this file, gallery by the gallery model",
                         "gallery": {"path": str(gallery_path), "arch": gallery["model"]["arch"],
                                     "model_version": gallery["model_version"]},
                         "queries": n_q, "gallery_images": len(splits.gallery),
                         "pytorch": metrics(ref)}
    by_file: dict[str, dict] = {}
    for entry in entries:
        runner = open_runner(folder / entry["file"], entry["format"], threads=1, layout=entry["layout"])
        q = torch.from_numpy(_embed(runner, x_q, f"queries {entry['file']}", opts.progress))
        entry["retrieval"] = metrics(q)
        by_file[entry["file"]] = entry
    for entry in entries:
        if entry["quantization"] == "none":
            continue
        base = by_file[entry["quantized_from"]]["retrieval"]["recall@1"]
        drop = round(100 * (base - entry["retrieval"]["recall@1"]), 2)
        entry["retrieval"]["recall@1_drop_points"] = drop
        if entry["quantization"] == "dynamic":
            entry["retrieval"]["max_drop_points"] = opts.max_dynamic_drop
            entry["retrieval"]["passed"] = drop <= opts.max_dynamic_drop
            if drop > opts.max_dynamic_drop:
                raise EdgeQueryError(
                    f"{entry['file']} loses {drop:.2f} points of heterogeneous Recall@1 against "
                    f"{entry['quantized_from']} (allowed: {opts.max_dynamic_drop})",
                    "ship the float32 file, or raise --max-dynamic-drop if that loss is acceptable")
        say(f"  {entry['file']}: het Recall@1 {100 * entry['retrieval']['recall@1']:.2f} "
            f"({0.0 - drop:+.2f} points vs {entry['quantized_from']})")
    for entry in entries:
        if entry["quantization"] == "none":
            say(f"  {entry['file']}: het Recall@1 {100 * entry['retrieval']['recall@1']:.2f} "
                f"(PyTorch {100 * card['retrieval']['pytorch']['recall@1']:.2f})")


# --------------------------------------------------------------------------- verify


def verify_export(folder: str | Path, gallery_path: str | Path | None = None, threads: int = 1,
                  progress: bool = True) -> dict[str, Any]:
    """Re-check an export folder; raises :class:`EdgeQueryError` on the first failed check."""
    from ..checkpoint import load_checkpoint
    from ..data import DataSpec, to_model_input

    folder = Path(folder)
    card, card_path = cards.read_card(folder)
    report: dict[str, Any] = {"export": str(folder), "model_version": card["model_version"], "checks": []}

    def ok(check: str, detail: str) -> None:
        report["checks"].append({"check": check, "detail": detail})
        _say(f"ok  {check}: {detail}", progress)

    # 1. hashes of every file the card lists
    listed = [(e["file"], e.get("sha256")) for e in card["files"]] + \
             [(n, f.get("sha256")) for n, f in card["fixtures"].items()]
    for fname, digest in listed:
        path = folder / fname
        if not path.is_file():
            raise EdgeQueryError(f"{path} is listed in {card_path.name} but missing",
                                 "copy the whole export folder, or re-create it with `edgequery export`")
        actual = cards.sha256_file(path)
        if actual != digest:
            raise EdgeQueryError(f"{path} was modified after export: sha256 {actual[:16]}... but the model card "
                                 f"records {str(digest)[:16]}...",
                                 "restore the original file, or re-create the export with `edgequery export`")
    ok("sha256", f"{len(listed)} files match the model card")

    # 2. ONNX metadata agrees with the card
    ident = cards.identity(card)
    for e in card["files"]:
        if e["format"] != "onnx":
            continue
        meta = cards.read_onnx_metadata(folder / e["file"])
        try:
            embedded = json.loads(meta.get(cards.ONNX_CARD_KEY, "null"))
        except json.JSONDecodeError:
            embedded = None
        if not isinstance(embedded, dict) or {k: embedded.get(k) for k in ident} != \
                json.loads(json.dumps(ident)):
            raise EdgeQueryError(f"{e['file']}'s metadata_props do not match {card_path.name}",
                                 "re-create the export with `edgequery export` (the card and files come from "
                                 "different exports)")
    if any(e["format"] == "onnx" for e in card["files"]):
        ok("onnx metadata", "agrees with the model card")

    # 3. parity on the stored real images and the test vector
    inp = card["input"]
    spec = DataSpec(resolution=inp["resolution"], mean=tuple(inp["mean"]), std=tuple(inp["std"]))
    stored = np.load(folder / PARITY_FILE, allow_pickle=False)
    x = to_model_input(torch.from_numpy(stored["images"]), spec).numpy()
    vector = json.loads((folder / TEST_VECTOR).read_text())
    x_test = to_model_input(read_png(folder / TEST_IMAGE), spec).numpy()
    if not np.allclose(x_test.reshape(-1), np.asarray(vector["input"]["values"], np.float32), atol=1e-5):
        raise EdgeQueryError(f"{TEST_IMAGE} does not pre-process to the input recorded in {TEST_VECTOR}",
                             "re-create the export with `edgequery export`")
    for e in card["files"]:
        runner = open_runner(folder / e["file"], e["format"], threads=threads, layout=e["layout"])
        got = np.concatenate([runner.embed(x_test), runner.embed(x)])
        if e["quantization"] == "none":
            want, against = stored["pytorch"], "PyTorch"
        else:
            want, against = stored[f"file:{e['file']}"], "its own outputs at export time"
        want = np.concatenate([np.asarray([vector["expected_embedding"][e["file"]]], np.float32), want])
        par = parity_figures(got, want)
        if not parity_passed(par, REPLAY_MIN_COSINE if e["quantization"] != "none" else FP32_MIN_COSINE):
            raise EdgeQueryError(
                f"{e['file']} no longer reproduces {against} on the stored real images: cosine as low as "
                f"{par['cosine_min']:.6f}, image-dependent part {par.get('centred_cosine_min', float('nan')):.4f} "
                f"(needed >= {FP32_MIN_COSINE} and >= {FP32_MIN_CENTRED_COSINE})",
                f"check the installed {e['runtime']} against the card's tools ({card.get('tools', {})}), or re-export")
        ok(f"parity {e['file']}", f"min cosine {par['cosine_min']:.7f} vs {against} on {par['images']} real images "
                                  f"({e['runtime']}, {threads} thread(s))")

    # 4. compatibility with the gallery being served
    compat = card.get("compatible_with")
    if gallery_path is not None:
        gallery = load_checkpoint(gallery_path, "gallery")
        if not compat:
            raise EdgeQueryError(f"{folder} was exported from a query net trained without BCT; it is not compatible "
                                 f"with gallery {gallery_path} (nor any other)",
                                 "export a query net trained with `edgequery train query --bct --gallery "
                                 f"{gallery_path}`")
        if compat.get("gallery_version") != gallery["model_version"]:
            raise EdgeQueryError(
                f"{folder} is compatible with gallery model_version {compat.get('gallery_version')}, but "
                f"{gallery_path} is model_version {gallery['model_version']}",
                "serve it with the gallery it was trained against, or retrain and re-export the query net "
                f"against {gallery_path}")
        if int(card["embed_dim"]) != int(gallery["model"]["embed_dim"]):
            raise EdgeQueryError(f"{folder} embeds to {card['embed_dim']} dims, gallery {gallery_path} to "
                                 f"{gallery['model']['embed_dim']}", "pair it with the gallery it was trained against")
        ok("compatibility", f"gallery {gallery_path} is model_version {gallery['model_version']}, as the card says")
    else:
        report["compatibility"] = "not checked (no --gallery)"
    report["compatible_with"] = compat
    report["passed"] = True
    return report


__all__ = ["ExportOptions", "export_query", "verify_export", "FP32_MIN_COSINE", "default_name", "file_name",
           "input_spec", "read_png", "lut_prediction"]
