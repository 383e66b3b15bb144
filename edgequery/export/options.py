"""What ``edgequery export`` makes and how it checks it: :class:`ExportOptions` (the CLI flags).

Also the fixed names of an export folder's model files (:func:`file_name`) and the
default export root.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeQueryError

FORMATS = ("tflite", "onnx")
QUANTIZATIONS = ("dynamic", "int8", "fp16")  # fp16: TFLite only (weights stored as float16)
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}
RUNTIME = {"tflite": "litert", "onnx": "onnxruntime"}
DEFAULT_EXPORT_ROOT = Path("export")


@dataclass
class ExportOptions:
    """What to export and how to check it (the ``edgequery export`` flags).

    ``progress=False`` turns the progress bars off and logs the per-stage lines at debug
    level only (tests, benchmarks).
    """

    formats: tuple[str, ...] = FORMATS
    quantize: tuple[str, ...] = ()            # any of QUANTIZATIONS
    nhwc: bool | None = None                  # the app-facing NHWC .tflite (None: whenever tflite is made)
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

    def __post_init__(self):
        self.formats = tuple(self.formats)
        self.quantize = tuple(q for q in self.quantize if q != "none")
        self.threads = tuple(int(t) for t in self.threads)
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise EdgeQueryError(f"unknown export format(s) {', '.join(bad) or '(none given)'}",
                                 f"use --formats with one or more of: {', '.join(FORMATS)}")
        bad = [q for q in self.quantize if q not in QUANTIZATIONS]
        if bad:
            raise EdgeQueryError(f"unknown quantization mode(s) {', '.join(bad)}", "use --quantize none, dynamic, int8 or fp16")
        if self.nhwc is None:
            self.nhwc = "tflite" in self.formats
        if self.nhwc and "tflite" not in self.formats:
            raise EdgeQueryError("--nhwc makes an NHWC TFLite file, but tflite is not among --formats",
                                 "add tflite to --formats or drop --nhwc")
        if not self.threads or min(self.threads) < 1:
            raise EdgeQueryError(f"thread counts must be >= 1 (got {self.threads})", "pass e.g. --threads 1,2")
        for key in ("parity_images", "verify_images", "runs"):
            if getattr(self, key) < 1:
                raise EdgeQueryError(f"--{key.replace('_', '-')} must be >= 1", "pass a positive number")
        if "int8" in self.quantize and self.calibration < 1:
            raise EdgeQueryError("int8 quantization needs calibration images", "pass --calibration N with N >= 1")

    @property
    def level(self) -> int:
        """The log level of the per-stage lines (info, or debug with ``progress=False``)."""
        return logging.INFO if self.progress else logging.DEBUG

    def float_layouts(self) -> list[tuple[str, str]]:
        """``(format, layout)`` of every float32 file to make, in the order they are made."""
        return [("tflite", "NCHW")] * ("tflite" in self.formats) + [("tflite", "NHWC")] * self.nhwc \
            + [("onnx", "NCHW")] * ("onnx" in self.formats)


def file_name(fmt: str, layout: str, quantization: str) -> str:
    """``query_encoder[_nhwc][_dynamic|_int8].{tflite,onnx}``."""
    parts = ["query_encoder"]
    if layout == "NHWC":
        parts.append("nhwc")
    if quantization != "none":
        parts.append(quantization)
    return "_".join(parts) + SUFFIX[fmt]


def file_runner(folder: str | Path, entry, threads: int = 1):
    """The runner of one exported file from its card entry (a dict or a ``FileEntry``): its layout and,
    for a file that takes pixels (``pixel_input``), its own normalisation; ``embed`` takes model inputs."""
    from ..runtimes.run import open_runner

    e = entry if isinstance(entry, dict) else entry.model_dump()
    pixels = e.get("pixel_input")
    return open_runner(Path(folder) / e["file"], e["format"], threads=threads, layout=e["layout"],
                       pixel_norm=(pixels["mean"], pixels["std"]) if pixels else None)
