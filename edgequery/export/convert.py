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
mode       TFLite (ai-edge-quantizer, LiteRT's tool)       ONNX (onnxruntime.quantization)
=========  ==============================================  ==============================================
dynamic    ``dynamic_wi8_afp32``: int8 per-channel          ``quantize_dynamic``: int8 per-channel
           weights, activations quantized on the fly;       weights, activations quantized on the fly;
           float32 input and output                         float32 input and output
int8       ``static_wi8_ai8``: int8 weights and             ``quantize_static`` (QDQ, per-channel):
           activations calibrated on real images; the       calibrated on real images; float32 input and
           file's input and output are **int8** (scale and  output (Quantize/DequantizeLinear inside)
           zero point in the model card)
=========  ==============================================  ==============================================

Calibration images are real training images (never the evaluation split), given as
model inputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgeQueryError

ONNX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
QUANT_MODES = ("none", "dynamic", "int8")


class NamedEncoder(nn.Module):
    """``image -> {"embedding": net(image)}``: fixes the I/O names (and layout) of the converted file.

    With ``layout="NHWC"`` the input is ``N x H x W x C`` and is permuted to NCHW first.
    """

    def __init__(self, net: nn.Module, layout: str = "NCHW"):
        super().__init__()
        if layout not in ("NCHW", "NHWC"):
            raise EdgeQueryError(f"unknown layout {layout!r}", "use NCHW or NHWC")
        self.net = net
        self.layout = layout

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.layout == "NHWC":
            image = image.permute(0, 3, 1, 2)
        return {OUTPUT_NAME: self.net(image)}


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    """Silence converters' chatter on stdout/stderr (their errors still raise)."""
    if not enabled:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def input_shape(resolution: int, layout: str = "NCHW") -> tuple[int, int, int, int]:
    return (1, resolution, resolution, 3) if layout == "NHWC" else (1, 3, resolution, resolution)


def to_tflite(net: nn.Module, resolution: int, path: str | Path, layout: str = "NCHW", quiet: bool = True) -> Path:
    """Write ``net`` (eval mode, batch 1) as a float32 ``.tflite`` file with I/O ``image``/``embedding``."""
    import litert_torch

    module = NamedEncoder(net.eval(), layout).eval()
    sample = torch.zeros(input_shape(resolution, layout))
    path = Path(path)
    with _quiet(quiet), torch.no_grad():
        litert_torch.convert(module, sample_kwargs={INPUT_NAME: sample}).export(str(path))
    return path


def to_onnx(net: nn.Module, resolution: int, path: str | Path, quiet: bool = True) -> Path:
    """Write ``net`` as a single-file float32 ``.onnx`` (opset :data:`ONNX_OPSET`, symbolic batch)."""
    path = Path(path)
    sample = torch.zeros(1, 3, resolution, resolution)
    with _quiet(quiet), torch.no_grad():
        torch.onnx.export(net.eval(), (sample,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                          external_data=False, verbose=False)
    return path


# --------------------------------------------------------------------------- quantization


def quantize_tflite(float_path: str | Path, out_path: str | Path, mode: str, calibration: np.ndarray | None = None,
                    layout: str = "NCHW", quiet: bool = True) -> Path:
    """A quantized copy of a float ``.tflite`` file (see the module docstring for the modes)."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(float_path))
    if mode == "dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif mode == "int8":
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
    else:
        raise EdgeQueryError(f"unknown quantization mode {mode!r}", f"use one of: {', '.join(QUANT_MODES)}")
    calib_result = None
    with _quiet(quiet):
        if qt.need_calibration:
            batches = _calibration_feeds(calibration, layout, mode)
            calib_result = qt.calibrate({"serving_default": [{INPUT_NAME: b} for b in batches]}, num_threads=1)
        result = qt.quantize(calib_result, enable_progress_report=False)
    Path(out_path).write_bytes(bytes(result.quantized_model))
    return Path(out_path)


def quantize_onnx(float_path: str | Path, out_path: str | Path, mode: str,
                  calibration: np.ndarray | None = None) -> Path:
    """A quantized copy of a float ``.onnx`` file (see the module docstring for the modes)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in ("dynamic", "int8"):
        raise EdgeQueryError(f"unknown quantization mode {mode!r}", f"use one of: {', '.join(QUANT_MODES)}")
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
