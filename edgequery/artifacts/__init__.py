"""Artifact schemas: the one place where each file passed between stages is defined.

==========================  =====================================  ==============================
artifact                    schema                                 written by
==========================  =====================================  ==============================
checkpoint metadata         :class:`.checkpoint.CheckpointMeta`    ``edgequery train ...``
model card                  :class:`.card.ModelCard`               ``edgequery export``
latency table (LUT)         :class:`.lut.LUTFile`                  ``edgequery profile``
search result               :class:`.search.SearchResult`          ``edgequery search``
benchmark result            :class:`.provenance.BenchmarkResult`   ``benchmarks/*.py``
device fingerprint          :class:`.fingerprint.Fingerprint`      (inside LUTs and results)
==========================  =====================================  ==============================

Conventions and the format rule: :mod:`.base`.  Which artifacts belong together:
:func:`.compat.check_compatible`.
"""

from .base import Artifact, Compat, Strict
from .compat import GalleryRef, check_compatible
from .fingerprint import Fingerprint, Machine
from .provenance import BenchmarkResult, Provenance, write_result

__all__ = ["Artifact", "BenchmarkResult", "Compat", "Fingerprint", "GalleryRef", "Machine", "Provenance", "Strict",
           "check_compatible", "write_result"]
