"""``edgequery export``: a query checkpoint turned into files a phone can run, checked every time.

:func:`export_query` writes an export folder::

    export/<name>/
      query_encoder.tflite          float32, NCHW input         (LiteRT)
      query_encoder_nhwc.tflite     float32, NHWC pixels 0-255  (the app-facing file: normalises itself,
                                    TFLite metadata, loads in MediaPipe's ImageEmbedder; --no-nhwc skips it)
      query_encoder.onnx            float32, NCHW input         (onnxruntime)
      query_encoder_dynamic.*       dynamic-range int8          (--quantize dynamic)
      query_encoder_int8.*          static int8, calibrated     (--quantize int8)
      query_encoder[_nhwc]_fp16.tflite  float16 weights         (--quantize fp16)
      model_card.json               edgequery.artifacts.card.ModelCard
      test_image.png                the fixed test image, at the model's resolution
      test_vector.json              its model input and expected embedding per file
      parity.npz                    real images + PyTorch / per-file embeddings (verify)

and checks, in order, refusing to finish when a check fails:

1. **compatibility** - the checkpoint must carry the gallery ``model_version`` it was
   trained against (BCT); ``--allow-incompatible`` exports it anyway, marked as such.
   With ``--gallery``, the pairing is checked too
   (:func:`edgequery.artifacts.compat.check_compatible`).
2. **parity** - every float32 file, in its runtime, on real images of the query split
   (:mod:`.parity`).
3. **retrieval** (with ``--gallery``) - heterogeneous Recall@1 of each file
   (:mod:`.retrieval`); a dynamic-range file may lose at most ``max_dynamic_drop`` points.
4. **latency** - each file, batch 1, at each thread count (:mod:`.timing`).

Everything is built in a temporary sibling folder and moved into place at the end, so
an existing export is only replaced (with ``--force``) by a complete, checked one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts.card import CARD_NAME, IDENTITY_KEYS, ModelCard
from ..errors import EdgeQueryError
from ..files import sha256_file
from ..runtimes.convert import (INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, quantize_onnx, quantize_tflite_dynamic,
                                quantize_tflite_fp16, to_onnx, to_tflite, to_tflite_int8)
from .card import onnx_metadata, write_onnx_metadata
from .fixtures import fixture_entries, write_parity_file, write_test_vector
from .options import DEFAULT_EXPORT_ROOT, RUNTIME, ExportOptions, file_name, file_runner
from .parity import FP32_MIN_COSINE, float_parity, quantized_parity
from .retrieval import measure_retrieval
from .timing import lut_prediction, measure_files
from .tflite_metadata import image_embedder_metadata, read_tflite_metadata, write_tflite_metadata

log = logging.getLogger(__name__)

QUANTIZER = {("tflite", "dynamic"): "ai-edge-quantizer dynamic_wi8_afp32",
             ("tflite", "int8"): "litert-torch PT2EQuantizer (per-channel, histogram calibration)",
             ("tflite", "fp16"): "ai-edge-quantizer float casting (fp16 weights, float32 compute)",
             ("onnx", "dynamic"): "onnxruntime.quantization", ("onnx", "int8"): "onnxruntime.quantization"}


# --------------------------------------------------------------------------- the pieces of a card


def default_name(ckpt: dict[str, Any]) -> str:
    """``<arch>-<model_version[:8]>``; search-space arch strings shorten to their space name."""
    arch = ckpt["model"]["arch"]
    stem = arch.split(":", 1)[0] if ":" in arch else arch
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}-{ckpt['model_version'][:8]}"


def export_resolution(net: torch.nn.Module, data_resolution: int) -> int:
    """The input side of the exported file: a searched net's own resolution, else the data's."""
    return int(getattr(net.trunk, "resolution", data_resolution))


def input_spec(resolution: int, mean, std) -> dict[str, Any]:
    """The pre-processing contract (``export/README.md``), as written into the card's ``input``."""
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


def tool_versions() -> dict[str, str]:
    """Versions of edgequery, torch and every converter / runtime package (the card's ``tools``)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"edgequery": __version__, "torch": torch.__version__}
    for pkg in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class Inputs:
    """What every step of an export works on: the net, its data, and the real images that check it."""

    net: torch.nn.Module
    spec: Any                       # edgequery.data.DataSpec of the checkpoint
    res: int                        # the exported files' input side
    splits: Any
    x_par: np.ndarray               # model inputs of the parity images (query split)
    ref_par: np.ndarray             # PyTorch's embeddings of them
    calib: np.ndarray | None        # int8 calibration inputs (training split)

    def model_input(self, images: torch.Tensor) -> np.ndarray:
        from ..data import resize_images, to_model_input

        return to_model_input(resize_images(images, self.res), self.spec).numpy()


def prepare(ckpt: dict[str, Any], opts: ExportOptions) -> Inputs:
    """Rebuild the net, load its data split, embed the parity images with PyTorch."""
    from ..data import DataSpec, load_splits
    from ..models import model_from_checkpoint

    net = model_from_checkpoint(ckpt)
    spec = DataSpec.from_dict(ckpt["data"])
    splits = load_splits(spec, progress=opts.progress)
    inputs = Inputs(net, spec, export_resolution(net, spec.resolution), splits, None, None, None)
    inputs.x_par = inputs.model_input(splits.query.images[:min(opts.parity_images, len(splits.query))])
    with torch.no_grad():
        chunks = np.array_split(inputs.x_par, max(1, len(inputs.x_par) // 128))
        inputs.ref_par = torch.cat([net(torch.from_numpy(c)) for c in chunks]).numpy()
    if "int8" in opts.quantize:
        inputs.calib = inputs.model_input(splits.train.images[:min(opts.calibration, len(splits.train))])
    return inputs


def card_identity(ckpt: dict[str, Any], name: str, inputs: Inputs) -> dict[str, Any]:
    """The identity part of the card (:data:`edgequery.artifacts.card.IDENTITY_KEYS`), as ONNX metadata carries it."""
    compat = ckpt.get("compatible_with")
    dim = inputs.net.embed_dim
    return {
        "format": ModelCard.FORMAT, "format_version": ModelCard.VERSION, "name": name,
        "arch": ckpt["model"]["arch"], "model_version": ckpt["model_version"], "embed_dim": dim, "l2_normalized": True,
        "compatible_with": ({"gallery_version": compat["gallery_version"], "gallery_arch": compat.get("gallery_arch")}
                            if compat else None),
        "input": input_spec(inputs.res, inputs.spec.mean, inputs.spec.std),
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [1, dim], "dim": dim, "l2_normalized": True,
                   "similarity": "dot product (= cosine) with the gallery's embeddings"},
    }


def model_info(ckpt: dict[str, Any], query_path: Path, inputs: Inputs) -> dict[str, Any]:
    """The card's ``model``: the checkpoint, its parameter count (classifier excluded) and data spec."""
    net = inputs.net
    classifier = {id(p) for p in net.classifier.parameters()}
    return {"arch": ckpt["model"]["arch"], "params": sum(p.numel() for p in net.parameters() if id(p) not in classifier),
            "checkpoint": str(query_path), "classes": ckpt.get("classes"), "data": inputs.spec.to_dict()}


# --------------------------------------------------------------------------- the files


def convert_float_files(folder: Path, inputs: Inputs, identity: dict[str, Any],
                        opts: ExportOptions) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every float32 file, each checked against PyTorch on real images; returns the entries and their outputs."""
    entries, outputs = [], {}
    for fmt, layout in opts.float_layouts():
        fname = file_name(fmt, layout, "none")
        log.log(opts.level, "converting to %s ...", fname)
        t = time.time()
        # The app-facing file (NHWC .tflite) takes 0-255 pixels and normalises them itself: MediaPipe's
        # ImageEmbedder, like most TFLite apps, feeds pixels and cannot normalise per channel.
        pixels = {"mean": list(inputs.spec.mean), "std": list(inputs.spec.std)} if layout == "NHWC" else None
        if fmt == "tflite":
            to_tflite(inputs.net, inputs.res, folder / fname, layout=layout,
                      pixel_norm=pixels and (pixels["mean"], pixels["std"]))
        else:
            to_onnx(inputs.net, inputs.res, folder / fname)
        entry = {"file": fname, "format": fmt, "runtime": RUNTIME[fmt], "layout": layout, "quantization": "none",
                 "convert_seconds": round(time.time() - t, 1), "pixel_input": pixels}
        if fmt == "onnx":
            entry["opset"] = ONNX_OPSET
            write_onnx_metadata(folder / fname, onnx_metadata(identity, entry))
        elif pixels:
            write_tflite_metadata(folder / fname, image_embedder_metadata(identity))
            entry["tflite_metadata"] = read_tflite_metadata(folder / fname)
        runner = file_runner(folder, entry)
        outputs[fname], par = float_parity(runner, fname, inputs.x_par, inputs.ref_par, identity["arch"], fmt,
                                           opts.progress)
        entry.update(io=runner.io(), parity=par)
        log.log(opts.level, "  parity %s: min cosine %.7f over %d real images", fname, par["cosine_min"], par["images"])
        entries.append(entry)
    return entries, outputs


def _quantize_one(folder: Path, base: dict[str, Any], mode: str, fname: str, inputs: Inputs) -> None:
    fmt = base["format"]
    if fmt == "tflite" and mode == "dynamic":
        quantize_tflite_dynamic(folder / base["file"], folder / fname)
    elif fmt == "tflite" and mode == "fp16":
        quantize_tflite_fp16(folder / base["file"], folder / fname)
    elif fmt == "tflite":
        pixels = base.get("pixel_input")
        to_tflite_int8(inputs.net, inputs.res, folder / fname, inputs.calib, layout=base["layout"],
                       pixel_norm=pixels and (pixels["mean"], pixels["std"]))
    else:
        quantize_onnx(folder / base["file"], folder / fname, mode, inputs.calib)


def quantize_files(folder: Path, floats: list[dict[str, Any]], outputs: dict[str, np.ndarray], inputs: Inputs,
                   identity: dict[str, Any], opts: ExportOptions) -> list[dict[str, Any]]:
    """The quantized files made from each float file (parity reported, not gated); adds to ``outputs``."""
    entries = []
    for base in floats:
        for mode in opts.quantize:
            if (base["format"], mode) not in QUANTIZER:  # fp16: TFLite files only
                continue
            fname = file_name(base["format"], base["layout"], mode)
            log.log(opts.level, "quantizing %s -> %s (%s) ...", base["file"], fname, mode)
            t = time.time()
            _quantize_one(folder, base, mode, fname, inputs)
            entry = {"file": fname, "format": base["format"], "runtime": base["runtime"], "layout": base["layout"],
                     "quantization": mode, "quantized_from": base["file"], "convert_seconds": round(time.time() - t, 1),
                     "tool": QUANTIZER[base["format"], mode], "pixel_input": base.get("pixel_input")}
            if mode == "int8":
                entry["calibration_images"] = int(len(inputs.calib))
                entry["calibration_source"] = "the first images of the training split (never the evaluation splits)"
            if base["format"] == "onnx":
                entry["opset"] = ONNX_OPSET
                write_onnx_metadata(folder / fname, onnx_metadata(identity, entry))
            runner = file_runner(folder, entry)
            outputs[fname], par = quantized_parity(runner, fname, inputs.x_par, inputs.ref_par, opts.progress)
            entry.update(io=runner.io(), parity=par)
            log.log(opts.level, "  %s: min cosine to float32 PyTorch %.5f", fname, par["cosine_min"])
            entries.append(entry)
    return entries


def write_fixtures(folder: Path, entries: list[dict[str, Any]], outputs: dict[str, np.ndarray], inputs: Inputs,
                   opts: ExportOptions) -> dict[str, Any]:
    """``test_image.png``, ``test_vector.json``, ``parity.npz``; returns the card's ``fixtures``."""
    from ..data import resize_images

    query = inputs.splits.query
    label = inputs.splits.classes[int(query.labels[0])]
    source = (f"{inputs.spec.dataset}: the first image of the query split (label {label!r}), resized to "
              f"{inputs.res}x{inputs.res}")
    write_test_vector(folder, resize_images(query.images[:1], inputs.res), source, inputs.net, inputs.spec, entries)
    n_ver = min(opts.verify_images, len(inputs.x_par))
    write_parity_file(folder, resize_images(query.images[:n_ver], inputs.res), inputs.ref_par, outputs)
    return fixture_entries(folder)


# --------------------------------------------------------------------------- the export


def _check_query(ckpt: dict[str, Any], query_path, gallery_path, opts: ExportOptions) -> dict[str, Any] | None:
    """Refuse an unfinished or (unless allowed) non-BCT query net; returns the gallery checkpoint, if any."""
    from ..artifacts.compat import check_compatible
    from ..checkpoint import load_checkpoint

    if not ckpt.get("train", {}).get("complete", True):
        tr = ckpt["train"]
        raise EdgeQueryError(f"{query_path} is an unfinished training run (epoch {tr.get('epoch')}/{tr.get('epochs')})",
                             "finish it first by rerunning `edgequery train query` with the same settings")
    if ckpt.get("compatible_with") is None and not opts.allow_incompatible:
        raise EdgeQueryError(
            f"{query_path} was trained without BCT: it records no gallery model_version, so its embeddings are not "
            "in any gallery model's space and a server would retrieve garbage with them",
            "retrain it compatible (`edgequery train query --bct --gallery gallery.pt`), or pass "
            "--allow-incompatible to export it anyway (the card then says compatible_with: null and servers "
            "refuse its embeddings)")
    if gallery_path is None:
        if opts.quantize:
            raise EdgeQueryError("quantized exports are checked by the change in heterogeneous Recall@1, which needs "
                                 "the gallery model", "pass --gallery gallery.pt (the gallery the query net was "
                                                      "trained with)")
        return None
    gallery = load_checkpoint(gallery_path, "gallery")
    check_compatible(ckpt, gallery, a_name=str(query_path), b_name=str(gallery_path))
    return gallery


def _output_folder(out: Path, opts: ExportOptions) -> None:
    """Refuse to write over a file, a non-empty folder without ``--force``, or a folder that is not an export."""
    if out.exists() and not out.is_dir():
        raise EdgeQueryError(f"{out} is a file, not an export folder", "choose another --out")
    if out.exists() and any(out.iterdir()):
        if not opts.force:
            raise EdgeQueryError(f"{out} already exists and is not empty",
                                 "pass --force to replace it (the old export is kept until the new one is "
                                 "complete), or choose another --out")
        if not (out / CARD_NAME).is_file():
            raise EdgeQueryError(f"{out} is not an export folder (no {CARD_NAME}); refusing to replace it",
                                 "choose another --out")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder onto ``out`` (an old ``out`` is removed only afterwards)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_card(folder: Path, ckpt: dict[str, Any], query_path: Path, gallery: dict | None, gallery_path, name: str,
               opts: ExportOptions) -> dict[str, Any]:
    """Make and check every file in ``folder``; returns the card's fields (all but ``machine``/``export_seconds``)."""
    inputs = prepare(ckpt, opts)
    identity = card_identity(ckpt, name, inputs)
    fields: dict[str, Any] = {**identity, "model": model_info(ckpt, query_path, inputs),
                              "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if identity["compatible_with"] is None:
        fields["warning"] = ("exported with --allow-incompatible: trained without BCT, its embeddings are not in the "
                             "gallery model's space")
    entries, outputs = convert_float_files(folder, inputs, identity, opts)
    entries += quantize_files(folder, entries, outputs, inputs, identity, opts)
    if gallery is not None:
        fields["retrieval"] = measure_retrieval(folder, entries, inputs.net, gallery, gallery_path, inputs.splits,
                                                inputs.spec, inputs.model_input, opts)
    fields["latency_protocol"] = measure_files(folder, entries, inputs.x_par, opts)
    fields["lut_prediction"] = lut_prediction(opts.lut, identity["arch"], inputs.net.embed_dim)
    fields["fixtures"] = write_fixtures(folder, entries, outputs, inputs, opts)
    for entry in entries:
        entry["sha256"] = sha256_file(folder / entry["file"])
        entry["bytes"] = (folder / entry["file"]).stat().st_size
    n_par = len(inputs.x_par)
    fields["files"] = entries
    fields["parity_protocol"] = {"images": n_par, "float32_cosine_min": FP32_MIN_COSINE, "runs_at": "batch 1, 1 thread",
                                 "source": f"{inputs.spec.dataset} query split (real images), first {n_par}"}
    fields["tools"] = tool_versions()
    return fields


def export_query(query_path: str | Path, out: str | Path | None = None, gallery_path: str | Path | None = None,
                 options: ExportOptions | None = None) -> dict[str, Any]:
    """Export, check and describe a query checkpoint (see the module docstring).

    Returns the model card as written (``ModelCard.to_data()``) plus ``path``, the export folder.
    """
    from ..checkpoint import load_checkpoint
    from ..sysinfo import machine_info

    opts = options or ExportOptions()
    t_start = time.time()
    ckpt = load_checkpoint(query_path, "query")
    gallery = _check_query(ckpt, query_path, gallery_path, opts)
    name = opts.name or (Path(out).name if out else default_name(ckpt))
    out = Path(out) if out else DEFAULT_EXPORT_ROOT / name
    _output_folder(out, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fields = build_card(tmp, ckpt, Path(query_path), gallery, gallery_path, name, opts)
        card = ModelCard(**fields, export_seconds=round(time.time() - t_start, 1), machine=machine_info())
        if card.identity() != json.loads(json.dumps({k: fields[k] for k in IDENTITY_KEYS})):
            raise AssertionError("the card's identity differs from the one written into the ONNX files")
        card.save(tmp / CARD_NAME)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**card.to_data(), "path": str(out)}
