"""Running exported files the way an app does, and timing them.

Two runtimes, one small interface (:class:`Runner`):

* :class:`LiteRTRunner` - a ``.tflite`` file in ``ai_edge_litert``'s ``Interpreter``
  (the successor of ``tflite_runtime``; on a board that only has the latter, the same
  API is used from there);
* :class:`OnnxRunner` - a ``.onnx`` file in an ``onnxruntime`` CPU session.

Both take the *model input* (float32, normalised, NCHW - what
:func:`edgequery.data.to_model_input` returns) one image at a time, at batch 1 like a
phone, and return float32 embeddings.  Whatever the file itself expects is handled here
and recorded in the model card, so an app can do the same:

* an NHWC file gets the input transposed to ``N x H x W x C``;
* a fully-integer file (``int8`` quantization) has ``int8`` input and output tensors:
  the input is quantized with the file's ``(scale, zero_point)`` -
  ``q = clip(round(x / scale) + zero_point, -128, 127)`` - and the output dequantized -
  ``x = (q - zero_point) * scale`` - then re-normalised to unit length.

:func:`measure_latency` is the project's latency protocol for a whole file (the timing
loop of :mod:`.agent`): batch 1, a fixed thread count, ``warmup`` untimed runs, then
``runs`` timed runs; median with p10/p90 in milliseconds.  These are end-to-end figures
(what an app sees), so the runtime's per-invocation overhead is *included*, not subtracted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeQueryError
from ..log import quiet_converters


def _normalise(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def pixel_values(x: np.ndarray, pixel_norm: tuple) -> np.ndarray:
    """Normalised model inputs (NCHW) back to the 0-255 pixel values a file with ``pixel_norm`` takes."""
    mean, std = (np.asarray(v, dtype=np.float32).reshape(1, 3, 1, 1) for v in pixel_norm)
    return (np.asarray(x, dtype=np.float32) * std + mean) * np.float32(255.0)


class Runner:
    """One exported file loaded in its runtime (subclasses fill in the details)."""

    runtime: str
    path: Path
    layout: str           # "NCHW" or "NHWC": what the file's input tensor is
    threads: int
    pixel_norm: tuple | None = None  # (mean, std): the file takes 0-255 pixels and normalises them itself

    def io(self) -> dict[str, Any]:
        """Names, shapes, dtypes and (for integer tensors) quantization of input and output."""
        raise NotImplementedError

    def _invoke(self, feed: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def feed(self, x: np.ndarray) -> np.ndarray:
        """Model input (NCHW float32, batch 1) -> the exact tensor this file takes."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.pixel_norm is not None:
            x = pixel_values(x, self.pixel_norm)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        q = self.io()["input"].get("quantization")
        if q:
            x = np.clip(np.round(x / q["scale"]) + q["zero_point"], -128, 127).astype(np.int8)
        return x

    def read(self, out: np.ndarray) -> np.ndarray:
        """The file's raw output -> a float32, L2-normalised embedding."""
        q = self.io()["output"].get("quantization")
        out = np.asarray(out)
        if q:
            out = (out.astype(np.float32) - q["zero_point"]) * q["scale"]
        return _normalise(out.astype(np.float32).reshape(out.shape[0], -1))

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embeddings of a batch of model inputs, run one image at a time (batch 1)."""
        x = np.asarray(x, dtype=np.float32)
        return np.concatenate([self.read(self._invoke(self.feed(x[i:i + 1]))) for i in range(len(x))]) \
            if len(x) else np.zeros((0, 0), np.float32)

    def timed_call(self, x: np.ndarray):
        """A zero-argument callable running one prepared batch-1 input (for timing)."""
        feed = self.feed(x[:1])
        return lambda: self._invoke(feed)


class LiteRTRunner(Runner):
    """A ``.tflite`` file in ai-edge-litert's Interpreter (tflite_runtime as a fallback)."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 1, layout: str = "NCHW", pixel_norm: tuple | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # an older board: the same API under its former name
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                raise EdgeQueryError("no TFLite runtime is installed (ai-edge-litert or tflite-runtime)",
                                     "pip install ai-edge-litert (or `pip install edgequery[export]`)") from None
        self.path, self.threads, self.layout, self.pixel_norm = Path(path), int(threads), layout, pixel_norm
        try:
            with quiet_converters("LiteRT start-up"):  # "Created TensorFlow Lite XNNPACK delegate" on stderr
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgeQueryError(f"{self.path} is not a loadable TFLite model ({exc})",
                                 "re-create it with `edgequery export`") from None
        # The signature ("serving_default": image -> embedding) names the I/O as apps see it.
        signature = self.interpreter.get_signature_runner()
        (in_name, self._in), = signature.get_input_details().items()
        (out_name, self._out), = signature.get_output_details().items()
        self._io = {"input": _tflite_tensor(in_name, self._in), "output": _tflite_tensor(out_name, self._out)}

    def io(self) -> dict[str, Any]:
        return self._io

    def _invoke(self, feed: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in["index"], feed)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])

    @staticmethod
    def version() -> str:
        try:
            from importlib.metadata import version

            return f"ai-edge-litert {version('ai-edge-litert')}"
        except Exception:  # noqa: BLE001 - only a label
            return "tflite-runtime"


def _tflite_tensor(name: str, d: dict) -> dict[str, Any]:
    """A TFLite signature tensor's name/shape/dtype, and its (scale, zero_point) when it is an integer tensor."""
    out = {"name": name, "tensor": d["name"], "shape": [int(s) for s in d["shape"]],
           "dtype": np.dtype(d["dtype"]).name}
    scale, zero = d.get("quantization", (0.0, 0))
    if np.dtype(d["dtype"]).kind in "iu" and scale:
        out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
    return out


class OnnxRunner(Runner):
    """A ``.onnx`` file in an onnxruntime CPU session with a fixed intra-op thread count."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, layout: str = "NCHW", pixel_norm: tuple | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgeQueryError("onnxruntime is not installed",
                                 "pip install onnxruntime (or `pip install edgequery[export]`)") from None
        self.path, self.threads, self.layout, self.pixel_norm = Path(path), int(threads), layout, pixel_norm
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EdgeQueryError(f"{self.path} is not a loadable ONNX model ({str(exc).splitlines()[0]})",
                                 "re-create it with `edgequery export`") from None
        i, o = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self._in_name, self._out_name = i.name, o.name
        self._io = {"input": {"name": i.name, "shape": list(i.shape), "dtype": _ort_dtype(i.type)},
                    "output": {"name": o.name, "shape": list(o.shape), "dtype": _ort_dtype(o.type)}}

    def io(self) -> dict[str, Any]:
        return self._io

    def _invoke(self, feed: np.ndarray) -> np.ndarray:
        return self.session.run([self._out_name], {self._in_name: feed})[0]

    @staticmethod
    def version() -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"


def _ort_dtype(t: str) -> str:
    return {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}.get(t, t)


RUNNERS = {"tflite": LiteRTRunner, "onnx": OnnxRunner}


def open_runner(path: str | Path, fmt: str, threads: int = 1, layout: str = "NCHW",
                pixel_norm: tuple | None = None) -> Runner:
    """The runner for an exported file of format ``tflite`` or ``onnx`` (``embed`` always takes normalised
    NCHW inputs; ``layout`` and ``pixel_norm`` say what the file itself takes)."""
    if fmt not in RUNNERS:
        raise EdgeQueryError(f"unknown export format {fmt!r}", f"use one of: {', '.join(RUNNERS)}")
    return RUNNERS[fmt](path, threads=threads, layout=layout, pixel_norm=pixel_norm)


def measure_latency(runner: Runner, x: np.ndarray, warmup: int = 10, runs: int = 50) -> dict[str, Any]:
    """Batch-1 latency of ``runner`` in ms: ``warmup`` untimed runs, then ``runs`` timed ones.

    Returns the median and the 10th/90th percentiles, with the protocol recorded beside
    them (threads, runs, warm-up, clock).
    """
    if runs < 1 or warmup < 0:
        raise EdgeQueryError(f"latency protocol needs runs >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})",
                             "pass --runs 50 --warmup 10 or similar")
    from .agent import summarise, time_call  # the one timing loop (the on-device agent's)

    call = runner.timed_call(x)
    for _ in range(warmup):
        call()
    stats = summarise([time_call(call, runs, 0.0)])
    return {"median_ms": round(stats["median_ms"], 4), "p10_ms": round(stats["p10_ms"], 4),
            "p90_ms": round(stats["p90_ms"], 4), "threads": runner.threads, "runs": runs,
            "warmup": warmup, "batch": 1, "clock": "time.perf_counter, end to end incl. invocation overhead"}
