"""Latency measured on the target: per-block lookup tables (LUTs), validated end to end.

The search predicts any arch's latency without building it, from a table of its
blocks' latencies measured on the device that will run the query net::

    edgequery profile --device local --runtime litert --space mbv3 --resolution 32   # -> lut-local-litert.json
    edgequery profile --space mbv3 --space-option resolutions=224 --resolution 224    # a camera-sized space
    edgequery profile validate --lut lut-local-litert.json --n 100 [--calibrate]
    edgequery profile show lut-local-litert.json

In Python::

    >>> from edgequery.latency import load_lut
    >>> lut = load_lut("lut-local-litert.json", space=space)   # refuses another space / missing blocks
    >>> lut.predict("mbv3:r32,w1.0,...")                      # ms, batch 1

Modules: :mod:`.blocks` (which blocks, as model files), :mod:`.devices` (local, ssh, adb:
where and how files are timed, and what the target is), :mod:`.lut` (the table and its
prediction; the file's schema is :class:`edgequery.artifacts.lut.LUTFile`), :mod:`.build`
(profile: export and time the blocks), :mod:`.validation` (validate: whole nets end to end,
calibration).  The timing script itself is :mod:`edgequery.runtimes.agent`.
"""

from __future__ import annotations

import importlib

_LAZY = {"LUT": "lut", "load_lut": "lut", "restricted_space": "lut",
         "parse_device": "devices", "parse_benchmark_model": "devices",
         "Protocol": "build", "profile": "build", "measure_archs": "build",
         "validate": "validation", "score_calibration": "validation", "accuracy": "validation",
         "fit_calibration": "validation",
         "space_blocks": "blocks", "RUNTIME_SUFFIX": "blocks"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
