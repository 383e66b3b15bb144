"""edgequery: compatible, latency-aware query encoders for heterogeneous visual search.

A gallery is embedded on the server by a large model (ResNet-101); the phone embeds the
query with a small net trained to land in the same space (BCT, CMP-NAS).  The stages,
the layers and the file each stage passes on: ``docs/architecture.md``; the file formats
themselves: :mod:`edgequery.artifacts`.
"""

__version__ = "0.1.0"
