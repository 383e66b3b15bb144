"""The latency table (LUT) file: per-block latencies measured on one device, runtime and thread count.

Written by ``edgequery profile`` (``lut-<device>-<runtime>.json``), read by ``edgequery
search``, ``edgequery export --lut`` and ``edgequery profile validate|show``; the
behaviour (prediction, coverage) is :class:`edgequery.latency.lut.LUT`, a subclass::

    {"format": "edgequery-lut", "format_version": 2,
     "space": "mbv3", "space_config": {...}, "resolutions": [32], "embed_dim": 128,
     "device": "local",                                  # the device string it was measured with
     "fingerprint": {"cpu": ..., "cores": ..., "isa": [...], "caches": {...}, "os": ..., "kernel": ...,
                     "runtime": "litert", "runtime_version": ..., "threads": 1, ...},   # or null: unknown
     "runtime": "litert", "runtime_version": "ai-edge-litert 2.3.0", "threads": 1,
     "protocol": {"batch": 1, "threads": 1, "warmup": 10, "runs": 50, "min_seconds": 0.1, "rounds": 3,
                  "block_layout": "NHWC",           # litert: blocks in the runtime's inner layout; absent: NCHW
                  "statistic": ..., "spread": ..., "timed": ..., "clock": ...},
     "overhead": {"median_ms": ..., "p10_ms": ..., "p90_ms": ..., "runs": ...},     # identity model
     "blocks": {"mbconv|in=16x16x16|out=8x8x24|k=3|e=4|s=2|se=0|act=relu": {"median_ms": ..., ...}, ...},
     "calibration": null | {"scale": a, "offset_ms": b, "fit": ..., "fitted_on": n, "fitted_at": ..., ...},
     "other_devices": [],          # uses on a device with another fingerprint (--allow-other-device)
     "complete": true, "measured_at": "...", "build_seconds": ...}

Version 1 (before device fingerprints) named the version key ``version`` and kept a few
machine facts in a ``device`` object; :meth:`LUTFile.migrate` reads it with
``fingerprint: null``, which :func:`~edgequery.artifacts.compat.check_compatible`
treats as an unknown device.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from .base import Artifact, Strict
from .fingerprint import Fingerprint


class TimingStats(Strict):
    """One model file's timing on the device (ms)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int


class TimingProtocol(Strict):
    """How every file of the table was timed."""

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("flush_kb", "block_layout", "rounds_over")

    batch: int = 1
    threads: int
    warmup: int
    runs: int
    min_seconds: float
    rounds: int = 1
    flush_kb: int | None = None   # KiB written over before each timed run (cold caches); unset: none
    block_layout: str | None = None  # "NHWC": block files take/give the runtime's inner layout; unset: NCHW files
    rounds_over: str | None = None   # "pass": each round is a pass over all the files; unset: rounds within a chunk
    statistic: str
    spread: str
    timed: str
    clock: str


class Calibration(Strict):
    """A correction of the block sum fitted on whole nets by ``edgequery profile validate --calibrate``::

        measured = (scale + scale_per_weight_mb * weight_mb) * raw + offset_ms
                   + per_block_ms * blocks + per_weight_mb_ms * weight_mb

    ``model`` names the terms fitted: ``scale`` (a factor alone), ``line`` (scale, offset),
    ``blocks+weights`` (scale, a cost per block - what isolated block files run that a net does
    not - and a cost per MB of float32 weights - streaming weights that a block timed alone keeps
    in cache) or ``weight-scaled`` (a factor that grows with the net's weights: every block of a
    net with more weights runs with less of the cache to itself).  Terms not fitted are 0."""

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("scale_per_weight_mb",)

    scale: float
    offset_ms: float
    per_block_ms: float = 0.0
    per_weight_mb_ms: float = 0.0
    scale_per_weight_mb: float | None = None  # weight-scaled model only (absent from older files)
    model: str = "line"
    fit: str
    fitted_on: int
    fitted_at: str
    device: str | None = None                 # where the nets were measured (absent in version 1)
    notes: list[str] = []                     # --allow-other-device: how that device differs from the table's

    def formula(self) -> str:
        """The fitted correction as a person reads it."""
        if self.model == "weight-scaled":
            return f"({self.scale:.4f} {self.scale_per_weight_mb or 0.0:+.5f} x weight MB) x raw"
        text = f"{self.scale:.4f} x raw"
        if self.model != "scale":
            text += f" {self.offset_ms:+.4f} ms"
        if self.model == "blocks+weights":
            text += f" {self.per_block_ms:+.4f} ms/block {self.per_weight_mb_ms:+.4f} ms/MB of weights"
        return text


class OtherDeviceUse(Strict):
    """The table was resumed or calibrated on a device whose fingerprint differs (``--allow-other-device``)."""

    action: str                               # "resume" or "calibrate"
    at: str
    device: str
    fingerprint: Fingerprint
    notes: list[str]


class LUTFile(Artifact):
    """A latency table's file (see the module docstring); :class:`edgequery.latency.lut.LUT` adds the behaviour."""

    FORMAT: ClassVar[str] = "edgequery-lut"
    VERSION: ClassVar[int] = 2                # 1: no fingerprint, "version" key (see migrate)
    KIND: ClassVar[str] = "latency table"
    FIX: ClassVar[str] = "pass a file written by `edgequery profile`, or re-create it with `edgequery profile`"

    space_config: dict[str, Any]              # the space's choice lists (space.config()): it rebuilds anywhere
    space: str
    resolutions: list[int]
    embed_dim: int = 128
    device: str
    fingerprint: Fingerprint | None
    runtime: str
    runtime_version: str = ""
    threads: int
    protocol: TimingProtocol
    overhead: TimingStats | None = None
    blocks: dict[str, TimingStats] = Field(default_factory=dict)
    calibration: Calibration | None = None
    other_devices: list[OtherDeviceUse] = Field(default_factory=list)
    complete: bool = False
    measured_at: str = ""
    build_seconds: float = 0.0

    @classmethod
    def check_format(cls, data: Any, where: str, version_key: str = "format_version") -> dict[str, Any]:
        if isinstance(data, dict) and "format_version" not in data and "version" in data:
            data = {k: v for k, v in data.items() if k != "version"} | {"format_version": data["version"]}
        return super().check_format(data, where, version_key)

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any] | None:
        """Version 1 -> 2: ``device`` becomes the device string, ``fingerprint`` null (unknown device)."""
        if version != 1:
            return None
        device = data.get("device")
        spec = device.get("spec", "unknown") if isinstance(device, dict) else str(device or "unknown")
        return {**data, "format_version": 2, "device": spec, "fingerprint": None, "other_devices": []}
