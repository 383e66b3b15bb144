"""How closely an exported file follows PyTorch: the figures, the thresholds and the gate.

The contract (``export/README.md``): every float32 file, in its runtime, on real images of
the query split, has cosine >= :data:`FP32_MIN_COSINE` to PyTorch's embedding for every
image, and its image-dependent part (see :func:`parity_figures`) cosine >=
:data:`FP32_MIN_CENTRED_COSINE`.  ``edgequery verify`` replays quantized files against
their own recorded outputs at :data:`REPLAY_MIN_COSINE`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import EdgeQueryError
from ..log import progress
from ..runtimes.run import Runner

FP32_MIN_COSINE = 0.9999          # float files vs PyTorch, every image
FP32_MIN_CENTRED_COSINE = 0.999   # float files vs PyTorch, image-dependent part (see parity_figures)
# The centred cosine is gated only when embeddings vary across images by clearly more than
# float32 conversion noise (~1e-6 per vector, relative): below this mean spread a correct
# export's image-dependent part is itself mostly rounding noise, and only the plain cosine holds.
MIN_SPREAD = 1e-3
REPLAY_MIN_COSINE = 0.9999        # verify: a file vs its own outputs recorded at export time
# ... or the same numbers to within rounding: a quantized file can embed an image to the zero vector
# (every output at its zero point), whose cosine to anything, itself included, is 0.
REPLAY_MAX_ABS_DIFF = 1e-6
FLOAT_REFERENCE = "PyTorch (the checkpoint, eval mode) on the same real query-split images"
QUANTIZED_REFERENCE = ("PyTorch float32 on the same real images (reported; quantized files are judged by "
                       "retrieval)")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def parity_figures(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """How closely a file's embeddings follow PyTorch's on the same images.

    ``cosine_*`` is the contract's figure.  Embeddings of a net can share a large common
    component (an undertrained net's often do), which keeps the plain cosine near 1 even
    when the image-dependent part is wrong; ``centred_cosine_min`` compares that part -
    both sides minus PyTorch's mean embedding over these images.
    """
    cos = _cosines(got, ref)
    mean = ref.mean(axis=0, keepdims=True)
    spread = float(np.linalg.norm(ref - mean, axis=1).mean())
    out = {"images": int(len(cos)), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
           "max_abs_diff": float(np.abs(got - ref).max()), "spread": spread}
    if len(cos) > 1 and spread > MIN_SPREAD:
        out["centred_cosine_min"] = float(_cosines(got - mean, ref - mean).min())
    return out


def parity_passed(par: dict[str, Any], min_cosine: float = FP32_MIN_COSINE) -> bool:
    """The float32 contract: every image's cosine and the image-dependent part both close to the reference."""
    return bool(par["cosine_min"] >= min_cosine and par.get("centred_cosine_min", 1.0) >= FP32_MIN_CENTRED_COSINE)


def replay_passed(par: dict[str, Any]) -> bool:
    """A file against its own outputs recorded at export time: the same numbers, or cosines as close as
    :data:`REPLAY_MIN_COSINE` (another build of the runtime may round differently)."""
    return par["max_abs_diff"] <= REPLAY_MAX_ABS_DIFF or parity_passed(par, REPLAY_MIN_COSINE)


def describe_shortfall(par: dict[str, Any], min_cosine: float = FP32_MIN_COSINE) -> str:
    """``cosine as low as ..., image-dependent part ... (needed >= ... and >= ...)`` for an error message."""
    return (f"cosine as low as {par['cosine_min']:.6f}, image-dependent part "
            f"{par.get('centred_cosine_min', float('nan')):.4f} (needed >= {min_cosine} and >= "
            f"{FP32_MIN_CENTRED_COSINE})")


def embed_all(runner: Runner, x: np.ndarray, desc: str, show: bool = True) -> np.ndarray:
    """Embed ``x`` one image at a time (batch 1, as an app does), with a progress bar."""
    out = [runner.embed(x[i:i + 1]) for i in progress(range(len(x)), total=len(x), desc=desc, unit="img",
                                                       enabled=show)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def float_parity(runner: Runner, fname: str, x: np.ndarray, ref: np.ndarray, arch: str, fmt: str,
                 show: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """A float32 file's embeddings of ``x`` and its parity figures; raises when the contract fails."""
    got = embed_all(runner, x, f"parity {fname}", show)
    par = parity_figures(got, ref)
    par.update(threshold_cosine_min=FP32_MIN_COSINE, threshold_centred_cosine_min=FP32_MIN_CENTRED_COSINE,
               reference=FLOAT_REFERENCE)
    par["passed"] = parity_passed(par)
    if not par["passed"]:
        raise EdgeQueryError(
            f"{fname} does not match PyTorch on {par['images']} real images: {describe_shortfall(par)}",
            f"this is a conversion problem for arch {arch}; export the other format "
            f"(--formats {'onnx' if fmt == 'tflite' else 'tflite'}) and report the arch")
    return got, par


def quantized_parity(runner: Runner, fname: str, x: np.ndarray, ref: np.ndarray,
                     show: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """A quantized file's embeddings of ``x`` and its parity figures (reported, not gated)."""
    got = embed_all(runner, x, f"parity {fname}", show)
    par = parity_figures(got, ref)
    par["reference"] = QUANTIZED_REFERENCE
    return got, par
