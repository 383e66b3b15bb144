"""The model card: ``model_card.json``, what an app (and the server) needs to use an exported encoder.

``edgequery export`` writes it beside the exported files (``export/README.md`` is the
contract apps read); ``edgequery verify``, ``edgequery serve --export`` and the demo read
it, all through :class:`ModelCard`.  Top-level keys:

==================  ===========================================================================
``format``          ``"edgequery-model-card"``, ``format_version`` 1
``name``            the export's name (its folder)
``arch``            the query net's arch (torchvision name or search-space arch string)
``model_version``   the query checkpoint's content hash: what the app sends with each embedding
``embed_dim``       embedding dimension; ``l2_normalized`` is always ``true`` (inside the graph)
``compatible_with`` :class:`~.base.Compat` of the gallery model (BCT), or ``null`` when
                    exported with ``--allow-incompatible`` (then ``warning`` says so)
``input``           :class:`InputSpec`: size, layout, channel order, grey handling, scale, mean/std
``output``          :class:`OutputSpec`: name, shape, dtype of the embedding
``model``           :class:`ModelInfo`: the checkpoint it came from, its parameters and data spec
``files``           one :class:`FileEntry` per exported file: format, runtime, layout,
                    quantization, sha256, bytes, the file's own I/O tensors, parity,
                    retrieval, latency
``fixtures``        ``test_image.png``, ``test_vector.json``, ``parity.npz`` with their sha256
``retrieval``       :class:`RetrievalProtocol` (with ``--gallery``): the heterogeneous Recall@1
                    protocol and the PyTorch reference figures
``parity_protocol``, ``latency_protocol``  how the per-file figures were measured
``lut_prediction``  :class:`LutPrediction`: latency predicted by a per-block LUT (``--lut``)
``machine``, ``tools``  where and with which library versions everything was measured
``created_at``, ``export_seconds``  when, and how long the export took
==================  ===========================================================================

The *identity* of a card (:data:`IDENTITY_KEYS`, :meth:`ModelCard.identity`) is the part
that describes the model rather than any one file; ONNX files carry it in their
``metadata_props`` (:mod:`edgequery.export.card`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from ..errors import EdgeQueryError
from .base import Artifact, Compat, Strict
from .fingerprint import Machine

CARD_NAME = "model_card.json"
# the card keys that describe the model, not any one file: copied into ONNX metadata
IDENTITY_KEYS = ("format", "format_version", "name", "arch", "model_version", "embed_dim", "l2_normalized",
                 "compatible_with", "input", "output")


class InputShapes(Strict):
    NCHW: list[int]
    NHWC: list[int]


class InputSpec(Strict):
    """The pre-processing contract: what an app must turn an image into."""

    name: str
    dtype: str
    batch: int
    resolution: int
    shape: InputShapes
    channel_order: str
    grey: str
    scale: str
    mean: list[float]
    std: list[float]
    normalize: str
    resize: str
    layout: str


class OutputSpec(Strict):
    name: str
    dtype: str
    shape: list[int]
    dim: int
    l2_normalized: bool
    similarity: str


class ModelInfo(Strict):
    """The query checkpoint the files were made from."""

    arch: str
    params: int
    checkpoint: str
    classes: list[str] | None = None
    data: dict[str, Any]          # the checkpoint's DataSpec (edgequery.data.DataSpec.to_dict())


class FileEntry(Strict):
    """One exported model file and what was measured on it."""

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("pixel_input", "tflite_metadata")  # older cards read back as they were
    file: str
    format: Literal["tflite", "onnx"]
    runtime: Literal["litert", "onnxruntime"]
    layout: Literal["NCHW", "NHWC"]
    quantization: Literal["none", "dynamic", "int8", "fp16"]
    quantized_from: str | None = None          # the float32 file a quantized file was made from
    tool: str | None = None                    # the quantizer (quantized files)
    calibration_images: int | None = None      # int8: how many training images calibrated it
    calibration_source: str | None = None
    opset: int | None = None                   # ONNX files
    convert_seconds: float
    sha256: str
    bytes: int
    io: dict[str, Any]                         # the file's own input/output tensors (Runner.io())
    parity: dict[str, Any]                     # parity_figures vs PyTorch, thresholds, passed
    retrieval: dict[str, Any] | None = None    # with --gallery: recall@1, recall@10, map@r (+ drop)
    latency: dict[str, dict[str, Any]]         # "threads=N" -> measure_latency figures
    # the file takes float32 pixel values 0-255 and normalises them itself: {"mean": [...], "std": [...]}
    # (the NHWC .tflite, for MediaPipe and TFLite apps); absent: it takes the card's normalised input
    pixel_input: dict[str, list[float]] | None = None
    tflite_metadata: dict[str, Any] | None = None  # NHWC .tflite: its TFLITE_METADATA (MediaPipe ImageEmbedder)


class FixtureFile(Strict):
    sha256: str
    bytes: int


class GalleryInfo(Strict):
    path: str
    arch: str
    model_version: str


class RetrievalProtocol(Strict):
    setting: str
    gallery: GalleryInfo
    queries: int
    gallery_images: int
    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("paragon", "baselines")

    pytorch: dict[str, Any]                    # recall@1 (+ _ci95), recall@10, map@r (+ _ci95) of the PyTorch checkpoint
    paragon: dict[str, Any] | None = None      # the same figures of the gallery model on both sides
    baselines: dict[str, Any] | None = None    # raw_pixel_knn: the same figures of cosine kNN on raw pixels


class ParityProtocol(Strict):
    images: int
    source: str
    float32_cosine_min: float
    runs_at: str


class LatencyProtocol(Strict):
    batch: int
    warmup: int
    runs: int
    statistic: str
    threads: list[int]
    overhead: str
    note: str


class LutPrediction(Strict):
    """What a per-block latency table predicts for this arch, or why it predicts nothing."""

    lut: str
    status: Literal["predicted", "not predicted"]
    reason: str | None = None                  # status "not predicted"
    predicted_ms: float | None = None          # status "predicted"
    raw_ms: float | None = None
    calibrated: bool | None = None
    device: Any = None                         # as the table records them (LUT.breakdown)
    runtime: str | None = None
    threads: int | None = None


class ModelCard(Artifact):
    """``model_card.json`` of an export folder (see the module docstring)."""

    FORMAT: ClassVar[str] = "edgequery-model-card"
    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "model card"
    FIX: ClassVar[str] = "re-create the export with `edgequery export`"

    name: str
    arch: str
    model_version: str
    embed_dim: int
    l2_normalized: Literal[True] = True
    compatible_with: Compat | None
    warning: str | None = None
    input: InputSpec
    output: OutputSpec
    model: ModelInfo
    created_at: str
    files: list[FileEntry]
    fixtures: dict[str, FixtureFile]
    retrieval: RetrievalProtocol | None = None
    parity_protocol: ParityProtocol
    latency_protocol: LatencyProtocol
    lut_prediction: LutPrediction | None = None
    tools: dict[str, str]
    machine: Machine
    export_seconds: float

    def identity(self) -> dict[str, Any]:
        """The part of the card shared by all its files (what ONNX metadata carries), as JSON data."""
        return self.model_dump(mode="json", include=set(IDENTITY_KEYS))

    def file(self, name: str) -> FileEntry:
        """The entry of the exported file ``name``."""
        for entry in self.files:
            if entry.file == name:
                return entry
        raise KeyError(name)


def load_card(path: str | Path) -> tuple[ModelCard, Path]:
    """An export's card (``path``: the export folder or the card file) and where it was read from."""
    path = Path(path)
    where = path / CARD_NAME if path.is_dir() else path
    if not where.is_file():
        raise EdgeQueryError(f"no model card at {where}",
                             f"pass an export folder holding {CARD_NAME} (written by `edgequery export`)")
    return ModelCard.load(where), where


__all__ = ["CARD_NAME", "IDENTITY_KEYS", "FileEntry", "FixtureFile", "InputSpec", "LutPrediction", "ModelCard",
           "ModelInfo", "OutputSpec", "load_card"]
