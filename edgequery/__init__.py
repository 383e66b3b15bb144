"""edgequery: compatible, latency-aware query encoders for heterogeneous visual search.

A gallery is embedded on the server by a large model (ResNet-101); the phone embeds the
query with a small net trained to land in the same space (BCT, CMP-NAS).  See
``../shared/DESIGN.md`` and the README for the stages and the files they exchange.
"""

__version__ = "0.1.0"
