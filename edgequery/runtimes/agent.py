#!/usr/bin/env python3
"""The on-target timing agent: times model files in one runtime and prints JSON lines.

This file is deliberately **self-contained** - the standard library, numpy and the
runtime being timed, nothing from edgequery - so it runs unchanged on the host
(``local`` device) and on any board reached over ssh that has Python 3 and
``ai-edge-litert`` (or the older ``tflite-runtime``), ``onnxruntime`` or ``torch``.
The profiler copies it next to the model files and runs::

    python3 agent.py request.json        # time the models the request lists
    python3 agent.py --check RUNTIME [THREADS]   # is RUNTIME importable here? (prints the info line)

``request.json``::

    {"runtime": "litert" | "onnxruntime" | "torch", "threads": 1,
     "warmup": 10, "runs": 50, "min_seconds": 0.1, "rounds": 3,
     "flush_kb": 0,                                  # > 0: evict caches of that size before each timed run
     "models": ["blocks/0001.tflite", ...]}          # relative to the request file

Output, one JSON object per line, flushed as soon as it is known (so the host can show
progress and keep what was measured if the connection drops)::

    {"type": "info", "runtime": ..., "runtime_version": ..., "threads": ..., "cpu": ..., ...}
    {"type": "result", "model": "blocks/0001.tflite", "median_ms": ..., "p10_ms": ..., "p90_ms": ...,
     "runs": ..., "round_medians_ms": [...]}
    {"type": "error", "model": ..., "error": ...}    # one model failed; the others go on
    {"type": "fatal", "error": ..., "fix": ...}      # nothing can be timed (exit status 3)

**Protocol** (the project's one latency protocol; ``run.measure_latency`` uses the same
loop): batch 1, a fixed thread count, the input tensor filled once with seeded random
values and bound before timing; ``warmup`` untimed runs, then at least ``runs`` timed runs
and at least ``min_seconds`` of them (like LiteRT's ``benchmark_model``: tiny blocks take
microseconds, so 50 runs alone would be a burst).  That is repeated for ``rounds``
rounds, round-robin over all the request's models, so a burst of load from another
process hits one round of a model, not all of it: the reported ``median_ms`` is the
lowest of the per-round medians (load only ever adds time), ``p10_ms`` / ``p90_ms`` are
over all timed runs.  Only the runtime's *invoke* is timed (TFLite ``invoke()``;
onnxruntime ``run_with_iobinding`` on pre-bound input and output buffers; torch a
forward under ``inference_mode``) - what is left of the per-invocation overhead is
measured on an identity model by the profiler.
"""

import json
import os
import platform
import statistics
import sys
import time

RUNTIMES = ("litert", "onnxruntime", "torch")
INSTALL = {"litert": "pip install ai-edge-litert (or tflite-runtime on older boards)",
           "onnxruntime": "pip install onnxruntime", "torch": "pip install torch"}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ISA features that change how fast a runtime's kernels are (x86 and ARM names, as /proc/cpuinfo spells them)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "amx_tile", "avx_vnni", "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "fphp")


def parse_cpuinfo(lines):
    """(model name, set of feature flags) from the lines of a /proc/cpuinfo (x86 or ARM spelling)."""
    model, flags = "", set()
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if not model and key in ("model name", "Hardware", "Processor", "cpu model"):
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, flags


def isa_flags(flags):
    """The ISA features of ``flags`` that a fingerprint records (sorted)."""
    return sorted(f for f in ISA_FLAGS if f in flags)


def _cpuinfo():
    """(model name, set of feature flags) of this machine; ('', set()) where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f)
    except OSError:
        return "", set()


def cpu_model():
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_caches():
    """``{"L1d": "32K", "L2": "512K", ...}`` of CPU 0 from sysfs (empty where sysfs has none)."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(base, entry, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(base, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(base, entry, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[f"L{level}{suffix}"] = size
    return out


def fingerprint(runtime=None, threads=None):
    """What a latency figure depends on: CPU, ISA flags, caches, OS and kernel, runtime and threads.

    ``host`` and ``python`` are recorded for the reader but are not part of the identity.
    """
    model, flags = _cpuinfo()
    info = {"cpu": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "machine": platform.machine(), "isa": isa_flags(flags),
            "caches": cpu_caches(), "os": platform.system(), "kernel": platform.release(),
            "host": platform.node(), "python": platform.python_version()}
    if runtime is not None:
        info.update(runtime=runtime, runtime_version=runtime_version(runtime) if runtime else None, threads=threads)
    return info


def runtime_version(runtime):
    """``name version`` of the importable runtime; ImportError when it is missing."""
    if runtime == "litert":
        try:
            import ai_edge_litert.interpreter  # noqa: F401
            from importlib.metadata import version
            return "ai-edge-litert " + version("ai-edge-litert")
        except ImportError:
            import tflite_runtime
            return "tflite-runtime " + getattr(tflite_runtime, "__version__", "?")
    if runtime == "onnxruntime":
        import onnxruntime
        return "onnxruntime " + onnxruntime.__version__
    import torch
    return "torch " + torch.__version__


def machine_info(runtime, threads):
    return {"type": "info", **fingerprint(runtime, threads)}


# --------------------------------------------------------------------------- one callable per runtime


def litert_call(path, threads, rng):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], random_input(d["shape"], d["dtype"], rng))
    return interp.invoke


def onnxruntime_call(path, threads, rng):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]  # symbolic dims (batch) -> 1
        dtype = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}[i.type]
        feeds[i.name] = random_input(shape, dtype, rng)
    outputs = sess.run(None, feeds)  # once, for the output shapes
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
    for o, value in zip(sess.get_outputs(), outputs):
        binding.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)))
    return lambda: sess.run_with_iobinding(binding)


def torch_call(path, threads, rng):
    import torch

    torch.set_num_threads(threads)
    program = torch.export.load(path)
    module = program.module()
    args = [torch.from_numpy(random_input(tuple(a.shape), "float32", rng))
            for a in program.example_inputs[0]] if program.example_inputs else []

    def call():
        with torch.inference_mode():
            module(*args)
    return call


CALLS = {"litert": litert_call, "onnxruntime": onnxruntime_call, "torch": torch_call}


def random_input(shape, dtype, rng):
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=tuple(shape), dtype=dtype)
    return rng.standard_normal(tuple(shape)).astype(dtype)


# --------------------------------------------------------------------------- the protocol


def time_call(call, runs, min_seconds, flush=None):
    """Milliseconds of each of >= ``runs`` calls of ``call()`` lasting >= ``min_seconds`` in all.

    ``flush`` (untimed) runs before each call: see :func:`cache_flusher`."""
    times = []
    clock = time.perf_counter
    start = clock()
    while len(times) < runs or clock() - start < min_seconds:
        if flush is not None:
            flush()
        t0 = clock()
        call()
        times.append((clock() - t0) * 1e3)
    return times


def cache_flusher(kib):
    """A function that writes over ``kib`` KiB of memory (every cache line), or None for 0: called before
    each timed invocation, it evicts what the model left in caches of that size, so each invocation
    starts with its weights and input where a cold start finds them, not hot from the previous run."""
    if not kib:
        return None
    import numpy as np

    buf = np.zeros(int(kib) * 1024 // 8)

    def flush():
        np.add(buf, 1.0, out=buf)
    return flush


def summarise(rounds_ms):
    """Best per-round median, p10 and p90 over all runs (ms) of a list of rounds of timings."""
    pooled = sorted(t for r in rounds_ms for t in r)
    deciles = statistics.quantiles(pooled, n=10, method="inclusive") if len(pooled) > 1 else pooled * 9
    medians = [statistics.median(r) for r in rounds_ms]
    return {"median_ms": round(min(medians), 5), "p10_ms": round(deciles[0], 5), "p90_ms": round(deciles[-1], 5),
            "runs": len(pooled), "round_medians_ms": [round(m, 5) for m in medians]}


def run_request(path):
    with open(path) as f:
        req = json.load(f)
    runtime, threads = req["runtime"], int(req["threads"])
    if runtime not in RUNTIMES:
        emit({"type": "fatal", "error": "unknown runtime %r" % runtime, "fix": "use one of " + ", ".join(RUNTIMES)})
        return 3
    try:
        import numpy as np
        emit(machine_info(runtime, threads))
    except ImportError as exc:
        emit({"type": "fatal", "error": "%s cannot be imported on %s (%s)" % (runtime, platform.node(), exc),
              "fix": "install it there: " + INSTALL[runtime]})
        return 3
    rng = np.random.default_rng(0)
    base = os.path.dirname(os.path.abspath(path))
    warmup, runs = int(req.get("warmup", 10)), int(req.get("runs", 50))
    min_seconds, rounds = float(req.get("min_seconds", 0.1)), max(1, int(req.get("rounds", 1)))
    flush = cache_flusher(int(req.get("flush_kb") or 0))
    calls, timings = {}, {}
    for model in req["models"]:
        try:
            calls[model] = CALLS[runtime](os.path.join(base, model), threads, rng)
            for _ in range(warmup):
                calls[model]()
            timings[model] = []
        except Exception as exc:  # noqa: BLE001 - reported per model, the run goes on
            emit({"type": "error", "model": model, "error": "%s: %s" % (type(exc).__name__, exc)})
    for _ in range(rounds):
        for model, call in calls.items():
            timings[model].append(time_call(call, runs, min_seconds, flush))
    for model in calls:
        emit({"type": "result", "model": model, **summarise(timings[model])})
    return 0


def check(runtime, threads=1):
    try:
        emit(machine_info(runtime, threads))
        return 0
    except ImportError as exc:
        emit({"type": "fatal", "error": "%s cannot be imported on %s (%s)" % (runtime, platform.node(), exc),
              "fix": "install it there: " + INSTALL.get(runtime, runtime)})
        return 3


def main(argv):
    if len(argv) in (3, 4) and argv[1] == "--check":
        return check(argv[2], int(argv[3]) if len(argv) == 4 else 1)
    if len(argv) == 2 and argv[1] in ("-h", "--help"):
        sys.stdout.write(__doc__)
        return 0
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    return run_request(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
