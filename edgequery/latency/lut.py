"""The latency lookup table (LUT): per-block latencies measured on one device and runtime.

A LUT file (``lut-<device>-<runtime>.json``, DESIGN.md §3)::

    {"format": "edgequery-lut", "version": 1,
     "space": "mbv3", "space_config": {...}, "resolutions": [32], "embed_dim": 128,
     "device": {"spec": "local", "cpu": ..., "cores": ..., "os": ..., ...},
     "runtime": "litert", "runtime_version": "ai-edge-litert 2.3.0", "threads": 1,
     "protocol": {"batch": 1, "warmup": 10, "runs": 50, "min_seconds": 0.1, "statistic": "median", ...},
     "overhead": {"median_ms": ..., "p10_ms": ..., "p90_ms": ...},       # identity model
     "blocks": {"mbconv|in=16x16x16|out=8x8x24|k=3|e=4|s=2|se=0|act=relu": {"median_ms": ..., ...}, ...},
     "calibration": null | {"scale": a, "offset_ms": b, ...},
     "complete": true, "measured_at": "...", "build_seconds": ...}

**Prediction.**  Timing a block alone includes the runtime's per-invocation overhead
(the fixed cost of one ``invoke``), which a whole net pays once, not once per block::

    raw(arch)       = overhead + sum over blocks b of (LUT[b] - overhead)
    predicted(arch) = scale * raw(arch) + offset        # calibration: identity unless fitted

The calibration is a least-squares line fitted by ``edgequery profile validate
--calibrate`` on whole nets measured end to end on the same device; it absorbs what
block-wise timing cannot see (cache effects between blocks, fusions across block
boundaries).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgeQueryError

FORMAT, VERSION = "edgequery-lut", 1


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class LUT:
    """A latency table in memory; :meth:`save` / :func:`load_lut` are its file form."""

    space: str
    space_config: dict[str, Any]
    resolutions: tuple[int, ...]
    runtime: str
    threads: int
    embed_dim: int = 128
    device: dict[str, Any] = field(default_factory=dict)
    runtime_version: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    overhead: dict[str, Any] | None = None
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    complete: bool = False
    measured_at: str = ""
    build_seconds: float = 0.0
    path: Path | None = field(default=None, repr=False, compare=False)

    # ----------------------------------------------------------------- file form

    def to_dict(self) -> dict[str, Any]:
        """The file form (a deep copy: changing it never changes this LUT)."""
        return copy.deepcopy({"format": FORMAT, "version": VERSION, "space": self.space, "space_config": self.space_config,
                "resolutions": list(self.resolutions), "embed_dim": self.embed_dim, "device": self.device,
                "runtime": self.runtime, "runtime_version": self.runtime_version, "threads": self.threads,
                "protocol": self.protocol, "overhead": self.overhead, "blocks": self.blocks,
                "calibration": self.calibration, "complete": self.complete, "measured_at": self.measured_at,
                "build_seconds": round(self.build_seconds, 1)})

    def save(self, path: str | Path) -> Path:
        """Atomic write: an interrupted save never leaves a half-written LUT."""
        from ..commands.common import write_json

        write_json(path, self.to_dict())
        self.path = Path(path)
        return self.path

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> "LUT":
        where = str(path or "the LUT")
        if d.get("format") != FORMAT:
            raise EdgeQueryError(f"{where} is not an edgequery latency table (format {d.get('format')!r})",
                                 "pass a file written by `edgequery profile`")
        if d.get("version") != VERSION:
            raise EdgeQueryError(f"{where} has LUT format version {d.get('version')}, this edgequery reads {VERSION}",
                                 "re-create it with this version's `edgequery profile`")
        try:
            return cls(space=d["space"], space_config=d["space_config"], resolutions=tuple(d["resolutions"]),
                       runtime=d["runtime"], threads=int(d["threads"]), embed_dim=int(d.get("embed_dim", 128)),
                       device=d.get("device", {}), runtime_version=d.get("runtime_version", ""),
                       protocol=d.get("protocol", {}), overhead=d.get("overhead"), blocks=d.get("blocks", {}),
                       calibration=d.get("calibration"), complete=bool(d.get("complete")),
                       measured_at=d.get("measured_at", ""), build_seconds=float(d.get("build_seconds", 0)),
                       path=path)
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeQueryError(f"{where} lacks or has a bad field ({exc})",
                                 "re-create it with `edgequery profile`") from None

    # ----------------------------------------------------------------- what it covers

    @property
    def label(self) -> str:
        return f"{self.device.get('spec', '?')} / {self.runtime} / {self.threads} thread(s)"

    def check_space(self, space) -> None:
        """Refuse a space this table was not measured for (another space or other choice lists)."""
        where = str(self.path or "the LUT")
        if space.name != self.space:
            raise EdgeQueryError(f"{where} was measured for search space {self.space!r}, not {space.name!r}",
                                 f"profile this space: edgequery profile --space {space.name} ...")
        theirs = {k: v for k, v in self.space_config.items() if k != "resolutions"}
        ours = {k: v for k, v in space.config().items() if k != "resolutions"}
        if theirs != ours:
            diff = ", ".join(f"{k}: LUT {theirs.get(k)} vs {ours.get(k)}" for k in sorted(set(theirs) | set(ours))
                             if theirs.get(k) != ours.get(k))
            raise EdgeQueryError(f"{where} was measured for another {space.name} space ({diff})",
                                 "re-profile with the supernet's space, or search the space the LUT was made for")

    def check_runtime(self, runtime: str | None = None, threads: int | None = None) -> None:
        where = str(self.path or "the LUT")
        if runtime and runtime != self.runtime:
            raise EdgeQueryError(f"{where} holds {self.runtime} latencies, not {runtime}",
                                 f"profile with --runtime {runtime}, or pass the {runtime} LUT")
        if threads and int(threads) != self.threads:
            raise EdgeQueryError(f"{where} was measured with {self.threads} thread(s), not {threads}",
                                 f"profile with --threads {threads}")

    def check_resolution(self, resolution: int) -> None:
        if resolution not in self.resolutions:
            raise EdgeQueryError(f"{self.path or 'the LUT'} covers input resolution(s) "
                                 f"{', '.join(map(str, self.resolutions))}, not {resolution}",
                                 f"profile that resolution too: edgequery profile ... --resolution {resolution}")

    # ----------------------------------------------------------------- prediction

    def block_ms(self, key: str) -> float:
        try:
            return float(self.blocks[key]["median_ms"])
        except KeyError:
            raise EdgeQueryError(f"{self.path or 'the LUT'} has no latency for block {key!r}"
                                 + ("" if self.complete else " (the LUT is incomplete: its profiling was stopped)"),
                                 "rerun the same `edgequery profile` command to complete it (it resumes)") from None

    @property
    def overhead_ms(self) -> float:
        return float(self.overhead["median_ms"]) if self.overhead else 0.0

    def raw(self, keys: list[str]) -> float:
        """Uncalibrated prediction for a net made of ``keys``: overhead once + each block's own time."""
        return self.overhead_ms + sum(self.block_ms(k) - self.overhead_ms for k in keys)

    def calibrated(self, raw_ms: float) -> float:
        c = self.calibration
        return c["scale"] * raw_ms + c["offset_ms"] if c else raw_ms

    def breakdown(self, space, arch) -> dict[str, Any]:
        """Predicted latency of ``arch`` with the per-block terms (for reports and model cards)."""
        arch = space.parse(arch) if isinstance(arch, (str, dict)) else arch
        self.check_resolution(arch.resolution)
        keys = [b.key for b in space.blocks(arch, self.embed_dim)]
        raw = self.raw(keys)
        return {"predicted_ms": round(self.calibrated(raw), 5), "raw_ms": round(raw, 5),
                "overhead_ms": round(self.overhead_ms, 5), "calibrated": bool(self.calibration),
                "blocks": [{"key": k, "ms": round(self.block_ms(k) - self.overhead_ms, 5)} for k in keys],
                "device": self.device.get("spec"), "runtime": self.runtime, "threads": self.threads}

    def predict(self, arch, space=None) -> float:
        """Predicted batch-1 latency (ms) of ``arch`` (arch string, JSON dict or parsed arch)."""
        from ..spaces import get_space, parse_arch

        if space is None:
            space = parse_arch(arch)[0] if isinstance(arch, (str, dict)) else get_space(self.space)
        arch = space.parse(arch) if isinstance(arch, (str, dict)) else arch
        self.check_resolution(arch.resolution)
        return self.calibrated(self.raw([b.key for b in space.blocks(arch, self.embed_dim)]))

    def missing(self, space) -> list[str]:
        """Block keys of ``space`` at this table's resolutions that it has no latency for."""
        from .blocks import space_blocks

        return [b.key for b in space_blocks(space, self.resolutions, self.embed_dim) if b.key not in self.blocks]


def load_lut(path: str | Path, *, space=None, runtime: str | None = None, threads: int | None = None,
             resolution: int | None = None) -> LUT:
    """Read a LUT and refuse it, with a clear error, if it does not fit what the caller asks for.

    ``space`` - a :class:`~edgequery.spaces.base.SearchSpace`: the LUT must be of that space,
    with the same choice lists, and hold every block of it at the LUT's resolutions.
    ``runtime`` / ``threads`` / ``resolution`` - checked when given.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeQueryError(f"latency table {path} does not exist",
                             "make one: edgequery profile --device local --runtime litert --space mbv3")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeQueryError(f"{path} is not valid JSON ({exc})", "pass a file written by `edgequery profile`") from None
    lut = LUT.from_dict(d, path)
    lut.check_runtime(runtime, threads)
    if resolution is not None:
        lut.check_resolution(resolution)
    if space is not None:
        lut.check_space(space)
        missing = lut.missing(space)
        if missing:
            raise EdgeQueryError(f"{path} lacks {len(missing)} block(s) of the {space.name} space, e.g. {missing[0]!r}"
                                 + ("" if lut.complete else " - its profiling did not finish"),
                                 "rerun the `edgequery profile` command that made it (it resumes where it stopped)")
    return lut
