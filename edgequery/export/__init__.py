"""Exporting a query encoder for phones: TFLite and ONNX files, checked and described.

The phone runs a file, not a PyTorch model, so the export must be exact, checked every
time, and carry what an app needs to use it correctly:

* :mod:`~edgequery.runtimes.convert` - PyTorch -> ``.tflite`` (litert-torch) and ``.onnx``
  (torch.onnx, dynamo), input ``image``, output ``embedding`` (L2-normalised inside the
  graph); dynamic-range and calibrated int8 quantization with each runtime's own tool.
* :mod:`~edgequery.runtimes.run` - running a file the way an app does (ai-edge-litert,
  onnxruntime; batch 1, fixed threads) and timing it.
* :mod:`~edgequery.export.card` - ``model_card.json``: pre-processing, compatibility,
  sha256 of every file, parity, retrieval and latency figures.
* :mod:`~edgequery.export.pipeline` - ``edgequery export`` (:func:`export_query`) and
  ``edgequery verify`` (:func:`verify_export`).

The artifact contract apps consume is documented in ``export/README.md``.
"""

from .pipeline import FP32_MIN_COSINE, ExportOptions, export_query, verify_export

__all__ = ["FP32_MIN_COSINE", "ExportOptions", "export_query", "verify_export"]
