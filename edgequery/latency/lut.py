"""The latency table (LUT) in memory: per-block latencies measured on one device and runtime.

The file form - every field, the format version and how version 1 is read - is
:class:`edgequery.artifacts.lut.LUTFile`; :class:`LUT` is that schema plus the
behaviour, so the file has one reader and one writer.

**Prediction.**  Timing a block alone includes the runtime's per-invocation overhead
(the fixed cost of one ``invoke``), which a whole net pays once, not once per block::

    raw(arch)       = overhead + sum over blocks b of (LUT[b] - overhead)
    predicted(arch) = scale * raw(arch) + offset        # calibration: identity unless fitted
                      + per_block * blocks(arch) + per_weight_mb * weight_mb(arch)

The calibration is fitted by ``edgequery profile validate --calibrate`` on whole nets
measured end to end on the same device (relative least squares); it absorbs what
block-wise timing cannot see (cache effects between blocks, fusions across block
boundaries).  ``blocks`` is the number of blocks of the net and ``weight_mb`` its float32
weights in MB (from the blocks' modules, counted once per block key); the ``line`` model
leaves both terms at 0 (see :class:`edgequery.artifacts.lut.Calibration`).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

from pydantic import PrivateAttr

from ..artifacts.compat import check_compatible
from ..artifacts.lut import LUTFile
from ..errors import EdgeQueryError


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class LUT(LUTFile):
    """A latency table: :meth:`LUTFile.load` / :meth:`save` are its file form, the rest is prediction."""

    _path: Path | None = PrivateAttr(default=None)
    _weight_mb: dict[str, float] = PrivateAttr(default_factory=dict)   # block key -> float32 weights (MB)

    # ----------------------------------------------------------------- file form

    @property
    def path(self) -> Path | None:
        """The file this table was read from or last saved to."""
        return self._path

    @classmethod
    def load(cls, path: str | Path) -> "LUT":
        lut = super().load(path)
        lut._path = Path(path)
        return lut

    def save(self, path: str | Path) -> Path:
        """Atomic write: an interrupted save never leaves a half-written LUT."""
        self._path = super().save(path)
        return self._path

    @property
    def where(self) -> str:
        return str(self._path or "the LUT")

    # ----------------------------------------------------------------- what it covers

    @property
    def label(self) -> str:
        return f"{self.device} / {self.runtime} / {self.threads} thread(s)"

    def check_space(self, space) -> None:
        """Refuse a space this table was not measured for (another space or other choice lists)."""
        check_compatible(self, space, a_name=self.where)

    def check_runtime(self, runtime: str | None = None, threads: int | None = None) -> None:
        if runtime and runtime != self.runtime:
            raise EdgeQueryError(f"{self.where} holds {self.runtime} latencies, not {runtime}",
                                 f"profile with --runtime {runtime}, or pass the {runtime} LUT")
        if threads and int(threads) != self.threads:
            raise EdgeQueryError(f"{self.where} was measured with {self.threads} thread(s), not {threads}",
                                 f"profile with --threads {threads}")

    def check_resolution(self, resolution: int) -> None:
        if resolution not in self.resolutions:
            raise EdgeQueryError(f"{self.where} covers input resolution(s) "
                                 f"{', '.join(map(str, self.resolutions))}, not {resolution}",
                                 f"profile that resolution too: edgequery profile ... --resolution {resolution}")

    def missing(self, space) -> list[str]:
        """Block keys of ``space`` at this table's resolutions that it has no latency for."""
        from .blocks import space_blocks

        return [b.key for b in space_blocks(space, self.resolutions, self.embed_dim) if b.key not in self.blocks]

    # ----------------------------------------------------------------- prediction

    def block_ms(self, key: str) -> float:
        try:
            return self.blocks[key].median_ms
        except KeyError:
            raise EdgeQueryError(f"{self.where} has no latency for block {key!r}"
                                 + ("" if self.complete else " (the LUT is incomplete: its profiling was stopped)"),
                                 "rerun the same `edgequery profile` command to complete it (it resumes)") from None

    @property
    def overhead_ms(self) -> float:
        return self.overhead.median_ms if self.overhead else 0.0

    def raw(self, keys: list[str]) -> float:
        """Uncalibrated prediction for a net made of ``keys``: overhead once + each block's own time."""
        return self.overhead_ms + sum(self.block_ms(k) - self.overhead_ms for k in keys)

    def calibrated(self, raw_ms: float, blocks: int = 0, weight_mb: float = 0.0) -> float:
        c = self.calibration
        if c is None:
            return raw_ms
        return ((c.scale + (c.scale_per_weight_mb or 0.0) * weight_mb) * raw_ms + c.offset_ms
                + c.per_block_ms * blocks + c.per_weight_mb_ms * weight_mb)

    def weight_mb(self, space, blocks) -> float:
        """Float32 weights of ``blocks`` (BlockSpecs of ``space``) in MB, each block key counted from its module once."""
        from .blocks import block_module

        for b in blocks:
            if b.key not in self._weight_mb:
                self._weight_mb[b.key] = sum(p.numel() for p in block_module(space, b).parameters()) * 4 / 2**20
        return sum(self._weight_mb[b.key] for b in blocks)

    def terms(self, arch, space=None, weights: bool | None = None) -> tuple[float, int, float]:
        """What the prediction of ``arch`` is made of: (raw ms, number of blocks, weight MB).

        The weights are counted when ``weights`` is true, or (``None``) when the calibration uses them; else 0."""
        from ..spaces import get_space, parse_arch

        if space is None:
            space = parse_arch(arch)[0] if isinstance(arch, (str, dict)) else get_space(self.space)
        arch = space.parse(arch) if isinstance(arch, (str, dict)) else arch
        self.check_resolution(arch.resolution)
        blocks = space.blocks(arch, self.embed_dim)
        c = self.calibration
        needs_weights = weights if weights is not None else bool(c and (c.per_weight_mb_ms or c.scale_per_weight_mb))
        return (self.raw([b.key for b in blocks]), len(blocks),
                self.weight_mb(space, blocks) if needs_weights else 0.0)

    def breakdown(self, space, arch) -> dict[str, Any]:
        """Predicted latency of ``arch`` with the per-block terms (for reports and model cards)."""
        arch = space.parse(arch) if isinstance(arch, (str, dict)) else arch
        raw, n_blocks, weight_mb = self.terms(arch, space)
        keys = [b.key for b in space.blocks(arch, self.embed_dim)]
        return {"predicted_ms": round(self.calibrated(raw, n_blocks, weight_mb), 5), "raw_ms": round(raw, 5),
                "overhead_ms": round(self.overhead_ms, 5), "calibrated": bool(self.calibration),
                "blocks": [{"key": k, "ms": round(self.block_ms(k) - self.overhead_ms, 5)} for k in keys],
                "device": self.device, "runtime": self.runtime, "threads": self.threads}

    def predict(self, arch, space=None) -> float:
        """Predicted batch-1 latency (ms) of ``arch`` (arch string, JSON dict or parsed arch)."""
        return self.calibrated(*self.terms(arch, space))


def load_lut(path: str | Path, *, space=None, runtime: str | None = None, threads: int | None = None,
             resolution: int | None = None) -> LUT:
    """Read a LUT and refuse it, with a clear error, if it does not fit what the caller asks for.

    ``space`` - a :class:`~edgequery.spaces.base.SearchSpace`: the LUT must be of that space,
    with the same choice lists, and hold every block of it at the LUT's resolutions.
    ``runtime`` / ``threads`` / ``resolution`` - checked when given.  Which *device* the
    table fits is checked where a device is at hand (:func:`edgequery.latency.build.profile`,
    :func:`edgequery.latency.validation.validate`).
    """
    if not Path(path).is_file():
        raise EdgeQueryError(f"latency table {path} does not exist",
                             "make one: edgequery profile --device local --runtime litert --space mbv3")
    lut = LUT.load(path)
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


def restricted_space(space, resolutions: Sequence[int]):
    """``space`` with its resolution choices cut to ``resolutions`` (the ones a LUT covers)."""
    from ..spaces import space_from_config

    keep = [r for r in space.resolutions if r in set(resolutions)]
    if not keep:
        raise EdgeQueryError(f"the LUT covers resolution(s) {list(resolutions)}, none of which the {space.name} "
                             f"space has ({list(space.resolutions)})",
                             "profile one of the space's resolutions: edgequery profile --resolution R")
    return space_from_config({**space.config(), "resolutions": keep})
