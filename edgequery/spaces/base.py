"""The contract every search space meets (DESIGN.md §3).

An *arch* is a small frozen dataclass with a canonical string (like a faiss factory
string) that round-trips through :meth:`SearchSpace.parse`; a *block* is a
:class:`BlockSpec` whose ``key`` is the latency-table key, shape-complete and
human-readable, e.g. ``mbconv|in=16x16x24|out=8x8x40|k=5|e=4|s=2|se=1|act=hswish``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn


@dataclass(frozen=True)
class BlockSpec:
    """One layer group of a built net, as the latency table sees it.

    ``key`` is canonical: two blocks with the same key build nets with identical
    latency.  ``in_shape`` / ``out_shape`` are ``(C, H, W)`` at batch 1.
    """

    key: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]


class SearchSpace(ABC):
    """Sampling, mutation, crossover, block enumeration and standalone builds."""

    name: str

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any: ...

    @abstractmethod
    def mutate(self, arch: Any, p: float, rng: np.random.Generator) -> Any: ...

    @abstractmethod
    def crossover(self, a: Any, b: Any, rng: np.random.Generator) -> Any: ...

    @abstractmethod
    def parse(self, text: str | dict) -> Any:
        """An arch from its canonical string or JSON dict; errors name the bad field."""

    @abstractmethod
    def blocks(self, arch: Any) -> list[BlockSpec]:
        """The arch's blocks in execution order (their latencies sum to the net's)."""

    @abstractmethod
    def build_block(self, block: BlockSpec) -> nn.Module:
        """A standalone module for one block (for per-block latency measurement)."""

    @abstractmethod
    def build(self, arch: Any) -> tuple[nn.Module, int]:
        """The standalone trunk for ``arch`` (images -> features) and its feature dim."""
