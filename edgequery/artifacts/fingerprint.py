"""The machine a figure was measured on: what a latency depends on, recorded in LUTs and results.

The facts come from :func:`edgequery.runtimes.agent.fingerprint`, which runs on the target
itself (locally, or on a board over ssh); an adb device reports the same fields from
``getprop`` and ``/proc/cpuinfo``.  Two fingerprints describe the same device when their
identity fields agree; ``host`` and ``python`` are kept for the reader only.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Strict


class Fingerprint(Strict):
    cpu: str
    cores: int | None = None
    machine: str | None = None           # x86_64, aarch64, ...
    isa: list[str] = []                  # avx2, avx512f, neon/asimd, asimddp (dotprod), i8mm, sve ...
    caches: dict[str, str] = {}          # {"L1d": "48K", "L2": "2048K", ...}
    os: str | None = None
    kernel: str | None = None
    device_model: str | None = None      # a phone's ro.product.model / SoC (adb), else None
    host: str | None = None
    python: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    threads: int | None = None
    emulated: str | None = None          # the emulator the target ran under ("qemu-aarch64 10.0.7"), else None:
                                         # its timings are the emulator's on the host CPU, not the target's

    IDENTITY: ClassVar[tuple[str, ...]] = ("cpu", "cores", "machine", "isa", "caches", "os", "kernel",
                                           "device_model", "runtime", "runtime_version", "threads", "emulated")
    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("emulated",)  # a real device's reads as before the field

    def differences(self, other: "Fingerprint") -> list[str]:
        """``["cpu: 'A' vs 'B'", ...]`` for every identity field that differs (empty: the same device)."""
        out = []
        for key in self.IDENTITY:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                out.append(f"{key}: {mine!r} vs {theirs!r}")
        return out

    @classmethod
    def local(cls, runtime: str | None = None, threads: int | None = None) -> "Fingerprint":
        """This machine's fingerprint (for ``runtime`` at ``threads`` when given)."""
        from ..runtimes.agent import fingerprint

        return cls.model_validate(fingerprint(runtime, threads))


class Machine(Fingerprint):
    """A fingerprint plus the host-side software (torch) that results were produced with."""

    torch: str | None = None
    torch_threads: int | None = None
    cuda: bool | None = None
    gpu: str | None = None

    @classmethod
    def here(cls) -> "Machine":
        from ..sysinfo import machine_info

        return cls.model_validate(machine_info())
