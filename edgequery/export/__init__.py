"""Exporting a query encoder for phones: TFLite and ONNX files, checked and described.

The phone runs a file, not a PyTorch model, so the export must be exact, checked every
time, and carry what an app needs to use it correctly.  One job per module:

* :mod:`.options` - :class:`ExportOptions` (the ``edgequery export`` flags) and file names;
* :mod:`.build` - ``edgequery export`` (:func:`export_query`): conversion and quantization
  of the files (through :mod:`edgequery.runtimes.convert`), the card assembled;
* :mod:`.parity` - the parity figures and gates (:data:`FP32_MIN_COSINE`);
* :mod:`.retrieval` - heterogeneous Recall@1 through each file, the dynamic-range gate;
* :mod:`.timing` - latency of each file, and a LUT's prediction beside it;
* :mod:`.fixtures` - ``test_image.png``, ``test_vector.json``, ``parity.npz`` of a folder;
* :mod:`.card` - reading an export's ``model_card.json`` (schema:
  :class:`edgequery.artifacts.card.ModelCard`) and its copy in ONNX metadata;
* :mod:`.verify` - ``edgequery verify`` (:func:`verify_export`);
* :mod:`.fixture` - the committed fixture ``export/fixture/`` (``python -m edgequery.export.fixture``).

Running a file the way an app does (ai-edge-litert, onnxruntime) and timing it is
:mod:`edgequery.runtimes.run`.  The artifact contract apps consume is ``export/README.md``.
"""

from .build import export_query, input_spec, tool_versions
from .card import read_card
from .options import ExportOptions, file_name
from .parity import FP32_MIN_COSINE, parity_figures, parity_passed
from .verify import verify_export

__all__ = ["FP32_MIN_COSINE", "ExportOptions", "export_query", "file_name", "input_spec", "parity_figures",
           "parity_passed", "read_card", "tool_versions", "verify_export"]
