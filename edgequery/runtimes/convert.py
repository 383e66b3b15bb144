"""Converting an embedding net to TFLite and ONNX files, and quantizing those files.

Every file has one input called ``image`` (float32 ``1 x 3 x R x R``, or ``1 x R x R x 3``
for the NHWC variant) and one output called ``embedding`` (``1 x D``), and the L2
normalisation is *inside* the graph: the app gets a unit vector it can send as is.

* **TFLite** - ``litert_torch.convert`` (torch.export -> StableHLO -> LiteRT flatbuffer).
  The net is wrapped so that its signature reads ``image -> {"embedding": ...}``.  The
  NHWC variant puts an NHWC -> NCHW transpose in front of the net, so a phone can
  feed its interleaved RGB buffer directly.
* **ONNX** - ``torch.onnx.export(dynamo=True)``, opset :data:`ONNX_OPSET`, one file
  (no external weights), batch dimension symbolic.

Quantization works on the converted float file, with the runtime's own tool:

=========  ==============================================  ==============================================
mode       TFLite                                          ONNX (onnxruntime.quantization)
=========  ==============================================  ==============================================
dynamic    ai-edge-quantizer ``dynamic_wi8_afp32`` on the  ``quantize_dynamic``: int8 per-channel
           float file: int8 per-channel weights,           weights, activations quantized on the fly;
           activations quantized on the fly; float32 I/O   float32 input and output
int8       litert-torch's PT2E quantizer on the PyTorch    ``quantize_static`` (QDQ, per-channel):
           net: int8 per-channel weights, int8             calibrated on real images; float32 input and
           activations calibrated (histograms) on real     output (Quantize/DequantizeLinear inside)
           images; the file's input is **int8** (scale
           and zero point in the model card), its output
           float32
=========  ==============================================  ==============================================

(For TFLite int8, ai-edge-quantizer's ``static_wi8_ai8`` on the float file was tried
first: with min/max ranges and an int8 *output* it cost 4-5 points of heterogeneous
Recall@1 on the benchmark's MobileNetV3 nets, against < 1.5 for PT2E.)

Calibration images are real training images (never the evaluation split), given as
model inputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import EdgeQueryError
from ..log import quiet_converters

ONNX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


class NamedEncoder(nn.Module):
    """``image -> {"embedding": net(image)}``: fixes the I/O names (and layout) of the converted file.

    With ``layout="NHWC"`` the input is ``N x H x W x C`` and is permuted to NCHW first.  With
    ``pixel_norm=(mean, std)`` the file takes pixel values (0-255, float32) and normalises them
    itself, ``(pixel / 255 - mean[c]) / std[c]``: what MediaPipe and most TFLite apps feed.
    """

    def __init__(self, net: nn.Module, layout: str = "NCHW", pixel_norm: tuple | None = None):
        super().__init__()
        if layout not in ("NCHW", "NHWC"):
            raise EdgeQueryError(f"unknown layout {layout!r}", "use NCHW or NHWC")
        self.net = net
        self.layout = layout
        self.pixel_norm = pixel_norm is not None
        if pixel_norm is not None:
            shape = (1, 1, 1, 3) if layout == "NHWC" else (1, 3, 1, 1)
            mean, std = (torch.tensor([float(v) for v in vs]).view(shape) for vs in pixel_norm)
            self.register_buffer("scale", 1.0 / (255.0 * std))  # (p / 255 - m) / s = p * scale + shift
            self.register_buffer("shift", -mean / std)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.pixel_norm:
            image = image * self.scale + self.shift
        if self.layout == "NHWC":
            image = image.permute(0, 3, 1, 2)
        return {OUTPUT_NAME: self.net(image)}


def _quiet(enabled: bool = True):
    """Converters' chatter (C and Python level) kept out of the terminal unless ``--verbose``."""
    return quiet_converters("model conversion") if enabled else contextlib.nullcontext()


def input_shape(resolution: int, layout: str = "NCHW") -> tuple[int, int, int, int]:
    return (1, resolution, resolution, 3) if layout == "NHWC" else (1, 3, resolution, resolution)


def to_tflite(net: nn.Module, resolution: int, path: str | Path, layout: str = "NCHW", quiet: bool = True,
              sample_shape: tuple[int, ...] | None = None, pixel_norm: tuple | None = None) -> Path:
    """Write ``net`` (eval mode, batch 1) as a float32 ``.tflite`` file with I/O ``image``/``embedding``.

    ``sample_shape`` replaces the image shape for nets that take something else (the
    latency profiler's single blocks); ``pixel_norm`` puts the normalisation in the file
    (:class:`NamedEncoder`).
    """
    module = NamedEncoder(net.eval(), layout, pixel_norm).eval()
    sample = torch.zeros(sample_shape or input_shape(resolution, layout))
    path = Path(path)
    with _quiet(quiet), torch.no_grad():
        import litert_torch  # TensorFlow's import-time chatter (oneDNN, absl, pytree) stays in the quiet block

        litert_torch.convert(module, sample_kwargs={INPUT_NAME: sample}).export(str(path))
    return path


def to_onnx(net: nn.Module, resolution: int, path: str | Path, quiet: bool = True,
            sample_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``net`` as a single-file float32 ``.onnx`` (opset :data:`ONNX_OPSET`, symbolic batch).

    ``sample_shape`` replaces the image shape (as in :func:`to_tflite`).
    """
    path = Path(path)
    sample = torch.zeros(sample_shape or (1, 3, resolution, resolution))
    with _quiet(quiet), torch.no_grad():
        torch.onnx.export(net.eval(), (sample,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                          external_data=False, verbose=False)
    return path


# --------------------------------------------------------------------------- quantization


def quantize_tflite_dynamic(float_path: str | Path, out_path: str | Path, quiet: bool = True) -> Path:
    """A dynamic-range copy of a float ``.tflite`` file (ai-edge-quantizer ``dynamic_wi8_afp32``)."""
    with _quiet(quiet):
        from ai_edge_quantizer import quantizer, recipe

        qt = quantizer.Quantizer(str(float_path))
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        result = qt.quantize(None, enable_progress_report=False)
    Path(out_path).write_bytes(bytes(result.quantized_model))
    return Path(out_path)


def quantize_tflite_fp16(float_path: str | Path, out_path: str | Path, quiet: bool = True) -> Path:
    """A float16-weight copy of a float ``.tflite`` file (ai-edge-quantizer float casting, weight-only:
    weights stored as fp16 and dequantized to float32 for compute; half the size, float32 I/O)."""
    with _quiet(quiet):
        from ai_edge_quantizer import quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.qtyping import TFLOperationName

        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
        qt = quantizer.Quantizer(str(float_path))
        qt.load_quantization_recipe(rm.get_quantization_recipe())
        result = qt.quantize(None, enable_progress_report=False)
    Path(out_path).write_bytes(bytes(result.quantized_model))
    return Path(out_path)


def to_tflite_int8(net: nn.Module, resolution: int, path: str | Path, calibration: np.ndarray | None,
                   layout: str = "NCHW", quiet: bool = True, pixel_norm: tuple | None = None) -> Path:
    """A statically quantized int8 ``.tflite`` file, calibrated on ``calibration`` (model inputs, NCHW).

    PyTorch 2 export quantization with litert-torch's ``PT2EQuantizer``: symmetric
    per-channel int8 weights, int8 activations whose ranges come from histogram
    observers over the calibration images; the converter then lowers the quantized graph.
    """
    if pixel_norm is not None and calibration is not None:
        from .run import pixel_values

        calibration = pixel_values(calibration, pixel_norm)
    feeds = _calibration_feeds(calibration, layout, "int8")
    module = NamedEncoder(net.eval(), layout, pixel_norm).eval()
    sample = {INPUT_NAME: torch.zeros(input_shape(resolution, layout))}
    with _quiet(quiet), torch.no_grad():
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer, quant_config
        from torchao.quantization.pt2e import quantize_pt2e

        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
        graph = torch.export.export(module, (), sample).module()
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for x in feeds:
            prepared(**{INPUT_NAME: torch.from_numpy(x)})
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(quantized, sample_kwargs=sample,
                             quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return Path(path)


def quantize_onnx(float_path: str | Path, out_path: str | Path, mode: str,
                  calibration: np.ndarray | None = None) -> Path:
    """A quantized copy of a float ``.onnx`` file (see the module docstring for the modes)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in ("dynamic", "int8"):
        raise EdgeQueryError(f"ONNX files cannot be quantized as {mode!r}", "use dynamic or int8 (fp16: TFLite only)")
    with tempfile.TemporaryDirectory(prefix="edgequery-onnxq-") as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        # onnxruntime's recommended pre-processing (graph optimisation + shape inference);
        # its symbolic shape inference cannot follow the normalisation's Expand, and the
        # ONNX shape inference it runs as well is enough here.
        quant_pre_process(str(float_path), pre, skip_symbolic_shape=True)
        if mode == "dynamic":
            quantize_dynamic(pre, str(out_path), weight_type=QuantType.QInt8, per_channel=True)
        else:
            batches = _calibration_feeds(calibration, "NCHW", mode)

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self._it = iter(batches)

                def get_next(self):
                    b = next(self._it, None)
                    return None if b is None else {INPUT_NAME: b}

            quantize_static(pre, str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return Path(out_path)


def _calibration_feeds(calibration: np.ndarray | None, layout: str, mode: str) -> list[np.ndarray]:
    if calibration is None or len(calibration) == 0:
        raise EdgeQueryError(f"{mode} quantization needs calibration images", "pass --calibration N with N >= 1")
    x = np.asarray(calibration, dtype=np.float32)
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return [np.ascontiguousarray(x[i:i + 1]) for i in range(len(x))]


def to_runtime_file(module: nn.Module, in_shape: Sequence[int], runtime: str, path: str | Path) -> Path:
    """Write ``module`` (batch-1 input of ``in_shape``, batch dim included) for ``runtime`` at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    if runtime == "litert":
        to_tflite(module, 0, tmp, sample_shape=tuple(in_shape))
    elif runtime == "onnxruntime":
        to_onnx(module, 0, tmp, sample_shape=tuple(in_shape))
    elif runtime == "torch":
        with torch.no_grad():
            program = torch.export.export(module, (torch.zeros(tuple(in_shape)),))
        torch.export.save(program, str(tmp))
    else:
        raise EdgeQueryError(f"unknown runtime {runtime!r}", "use litert, onnxruntime or torch")
    tmp.replace(path)  # a killed conversion never leaves a file that looks finished
    return path
