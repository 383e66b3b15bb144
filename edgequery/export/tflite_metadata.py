"""TFLite metadata for the app-facing NHWC file: what MediaPipe's ImageEmbedder and the Task Library read.

A ``.tflite`` without metadata cannot be loaded by MediaPipe Tasks' ``ImageEmbedder``
(it needs the input's normalisation) and tells an app nothing about itself.  The NHWC
float file gets a ``TFLITE_METADATA`` buffer (the TFLite metadata schema, identifier
``M001``) holding:

* the model: name, description, ``version`` = the card's ``model_version``, author;
* the input tensor ``image``: an RGB image of float32 pixel values 0-255, normalisation
  mean 0 / std 1 (the file normalises per channel itself: MediaPipe refuses per-channel
  normalisation options, "Per-channel image normalization is not available");
* the output tensor ``embedding``: a feature vector of ``embed_dim`` values, L2-normalised.

The schema classes are the flatbuffer code MediaPipe and ai-edge-litert ship
(``metadata_schema_py_generated``, ``schema_py_generated``); the model is rewritten whole
(``ModelT`` unpacked, a buffer and a ``metadata`` entry added, packed again) before its
parity check, so the file that is checked and hashed is the file with metadata.
NCHW files get none: MediaPipe reads an image input as NHWC, and an NCHW input would be
fed transposed without an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeQueryError

METADATA_NAME = "TFLITE_METADATA"
MIN_PARSER_VERSION = "1.0.0"  # what the fields written here need (ImageProperties, NormalizationOptions, Stats)


def _schemas():
    try:
        from ai_edge_litert import schema_py_generated as tfl
        from mediapipe.tasks.metadata import metadata_schema_py_generated as mds
    except ImportError as exc:
        raise EdgeQueryError(f"writing TFLite metadata needs mediapipe and ai-edge-litert ({exc})",
                             "pip install -e '.[export]'") from None
    return tfl, mds


def image_embedder_metadata(identity: dict[str, Any]) -> bytes:
    """The ``M001`` flatbuffer of an image-embedding model with the card ``identity`` (see the module docstring)."""
    import flatbuffers

    _, mds = _schemas()
    res, mean, std = identity["input"]["resolution"], identity["input"]["mean"], identity["input"]["std"]
    per_channel = ", ".join(f"(p / 255 - {m:g}) / {s:g}" for m, s in zip(mean, std))
    image = mds.TensorMetadataT()
    image.name = "image"
    image.description = (f"an RGB image, {res}x{res}, NHWC, float32 pixel values 0-255 (grey images replicated "
                         f"to 3 channels); the model normalises them itself, per channel: {per_channel}")
    image.content = mds.ContentT()
    image.content.contentPropertiesType = mds.ContentProperties.ImageProperties
    image.content.contentProperties = mds.ImagePropertiesT()
    image.content.contentProperties.colorSpace = mds.ColorSpaceType.RGB
    norm = mds.ProcessUnitT()
    norm.optionsType = mds.ProcessUnitOptions.NormalizationOptions
    norm.options = mds.NormalizationOptionsT()
    norm.options.mean = [0.0]  # pixels pass unchanged: the file normalises per channel itself (MediaPipe
    norm.options.std = [1.0]   # accepts one mean/std for all channels only)
    image.processUnits = [norm]
    image.stats = mds.StatsT()
    image.stats.min = [0.0]
    image.stats.max = [255.0]

    embedding = mds.TensorMetadataT()
    embedding.name = "embedding"
    embedding.description = (f"{identity['embed_dim']}-d L2-normalised embedding; compare by dot product with the "
                             f"gallery's embeddings (gallery model_version "
                             f"{(identity.get('compatible_with') or {}).get('gallery_version')})")
    embedding.content = mds.ContentT()
    embedding.content.contentPropertiesType = mds.ContentProperties.FeatureProperties
    embedding.content.contentProperties = mds.FeaturePropertiesT()

    graph = mds.SubGraphMetadataT()
    graph.inputTensorMetadata = [image]
    graph.outputTensorMetadata = [embedding]
    model = mds.ModelMetadataT()
    model.name = f"edgequery query encoder {identity['arch']}"
    model.description = ("Embeds a query photo into the gallery model's space (BCT-compatible); the model card "
                         "beside this file (model_card.json) is the full description")
    model.version = identity["model_version"]
    model.author = "edgequery"
    model.license = "Apache-2.0"
    model.subgraphMetadata = [graph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), b"M001")
    return bytes(builder.Output())


def write_tflite_metadata(path: str | Path, metadata: bytes) -> None:
    """Attach ``metadata`` to the model at ``path`` as its ``TFLITE_METADATA`` (replacing one already there)."""
    import flatbuffers

    tfl, _ = _schemas()
    path = Path(path)
    model = tfl.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    if any(b.offset for b in model.buffers or []):
        raise EdgeQueryError(f"{path} keeps its weights outside the flatbuffer (a model over 2 GB)",
                             "export without TFLite metadata: this writer rewrites the flatbuffer whole")
    kept = [m for m in model.metadata or [] if _text(m.name) != METADATA_NAME]
    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = kept + [entry]
    builder = flatbuffers.Builder(max(1024, path.stat().st_size + len(metadata) + 4096))
    builder.Finish(model.Pack(builder), b"TFL3")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(builder.Output())
    tmp.replace(path)


def read_tflite_metadata(path: str | Path) -> dict[str, Any] | None:
    """The model-level fields and the input normalisation of a file's ``TFLITE_METADATA`` (``None``: none)."""
    tfl, mds = _schemas()
    model = tfl.Model.GetRootAs(bytearray(Path(path).read_bytes()), 0)
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        if m.Name().decode() == METADATA_NAME:
            raw = model.Buffers(m.Buffer()).DataAsNumpy().tobytes()
            meta = mds.ModelMetadataT.InitFromPackedBuf(bytearray(raw), 0)
            image = meta.subgraphMetadata[0].inputTensorMetadata[0]
            norm = image.processUnits[0].options
            return {"name": _text(meta.name), "version": _text(meta.version), "author": _text(meta.author),
                    "min_parser_version": _text(meta.minParserVersion),
                    "input": {"name": _text(image.name), "mean": [round(float(v), 6) for v in norm.mean],
                              "std": [round(float(v), 6) for v in norm.std]},
                    "output": {"name": _text(meta.subgraphMetadata[0].outputTensorMetadata[0].name)}}
    return None


def _text(v) -> str | None:
    return v.decode() if isinstance(v, bytes) else v
