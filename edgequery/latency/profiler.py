"""Building a LUT on a device, and checking it against whole nets measured end to end.

:func:`profile` - the ``edgequery profile`` command:

1. list the space's distinct blocks at the requested resolutions (:func:`space_blocks`);
2. write each block (and the identity model) as a small model file for the runtime, in a
   work folder beside the LUT (``lut-....json.work/``); files already there are reused,
   conversions run in ``jobs`` worker processes;
3. time them on the device in chunks (:mod:`.devices`: the agent locally or over ssh,
   ``benchmark_model`` over adb), saving the LUT after every chunk - a killed run
   resumes with the blocks still missing;
4. mark the LUT complete.  Conversion and timing are separate phases, so the timings
   are not disturbed by the converters.

:func:`validate` - ``edgequery profile validate``: samples N random archs at the LUT's
resolutions, exports each *whole* net the way ``edgequery export`` does, times it on
the same device/runtime/threads and compares with the LUT's prediction: share within
±5 % and ±10 %, mean absolute percentage error, Spearman rho.  With ``calibrate`` it
fits ``measured = scale * raw + offset`` by least squares and stores it in the LUT.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import EdgeQueryError
from .blocks import IDENTITY_SHAPE, RUNTIME_SUFFIX, Identity, check_runtime, export_item, export_model, space_blocks
from .devices import Device
from .lut import LUT, now

CHUNK = 16
IDENTITY = "identity"


@dataclass
class Protocol:
    """How each model file is timed (recorded in the LUT)."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 0.1
    rounds: int = 3

    def check(self) -> "Protocol":
        if self.threads < 1 or self.warmup < 0 or self.runs < 1 or self.min_seconds < 0 or self.rounds < 1:
            raise EdgeQueryError(f"bad timing protocol {self}", "threads >= 1, warmup >= 0, runs >= 1 (50 or more "
                                                               "recommended), min-seconds >= 0, rounds >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "warmup": self.warmup, "runs": self.runs, "min_seconds": self.min_seconds,
                "rounds": self.rounds}


def file_name(key: str, runtime: str) -> str:
    """A block's model file name: a short hash of its key (keys hold '|' and '=')."""
    return "blocks/" + hashlib.sha1(key.encode()).hexdigest()[:16] + RUNTIME_SUFFIX[runtime]


def _progress(total: int, desc: str, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="model", dynamic_ncols=True, disable=None)


# --------------------------------------------------------------------------- exporting model files


def export_files(items: list[dict], runtime: str, jobs: int = 1, space=None, desc: str = "export") -> None:
    """Write the model files ``items`` describe (see :func:`~.blocks.export_item`); existing files are kept.

    With ``jobs > 1`` the conversions run in that many worker processes
    (``python -m edgequery.latency.blocks``), each converting its share.
    """
    import json
    import subprocess
    import sys
    import tempfile

    todo = [it for it in items if not Path(it["path"]).exists()]
    if not todo:
        return
    bar = _progress(len(items), desc, initial=len(items) - len(todo))
    jobs = max(1, min(jobs, len(todo)))
    procs = []
    try:
        if jobs == 1:  # in this process: errors keep their traceback (--debug)
            for item in todo:
                export_item(item, runtime, space)
                bar.update()
            return
        with tempfile.TemporaryDirectory(prefix="edgequery-export-") as tmp:
            for i in range(jobs):
                job = Path(tmp) / f"job{i}.json"
                job.write_text(json.dumps({"space": space.config() if space else None, "runtime": runtime,
                                           "items": todo[i::jobs]}))
                with open(Path(tmp) / f"job{i}.log", "w") as err:  # converters are chatty: a file, not a pipe
                    procs.append(subprocess.Popen([sys.executable, "-m", "edgequery.latency.blocks", str(job)],
                                                  stdout=subprocess.DEVNULL, stderr=err,
                                                  env={**os.environ, "OMP_NUM_THREADS": "1"}))
            done = 0
            while True:
                running = any(p.poll() is None for p in procs)
                now_done = sum(Path(t["path"]).exists() for t in todo)
                bar.update(now_done - done)
                done = now_done
                if not running:
                    break
                time.sleep(0.5)
            failed = [i for i, p in enumerate(procs) if p.returncode != 0]
            if failed:
                err = (Path(tmp) / f"job{failed[0]}.log").read_text(errors="replace").strip().splitlines()
                raise EdgeQueryError(f"converting model files for {runtime} failed: {err[-1] if err else 'no message'}",
                                     "rerun with --jobs 1 --debug to see the full error (converted files are kept)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        bar.close()


def export_blocks(space, blocks: Sequence, runtime: str, folder: Path, jobs: int = 1) -> None:
    """Every block's file (and the identity model's) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = folder / (IDENTITY + RUNTIME_SUFFIX[runtime])
    if not identity.exists():
        export_model(Identity(), IDENTITY_SHAPE, runtime, identity)
    items = [{"key": b.key, "in_shape": b.in_shape, "out_shape": b.out_shape,
              "path": str(folder / file_name(b.key, runtime))} for b in blocks]
    export_files(items, runtime, jobs, space, desc=f"export {runtime} blocks")


# --------------------------------------------------------------------------- timing


def time_files(device: Device, folder: Path, models: Sequence[str], runtime: str, protocol: Protocol,
               on_result: Callable[[str, dict], None] | None = None, on_info: Callable[[dict], None] | None = None,
               desc: str = "time", chunk: int = CHUNK) -> dict[str, dict]:
    """Time model files (relative to ``folder``) on ``device``, ``chunk`` per agent run.

    ``on_result(model, stats)`` is called as each result arrives (the profiler saves the
    LUT there).  A model the runtime cannot run is an error naming it.
    """
    results: dict[str, dict] = {}
    bar = _progress(len(models), desc)
    try:
        for start in range(0, len(models), chunk):
            part = models[start:start + chunk]
            for rec in device.time_models(folder, part, runtime, protocol.to_dict()):
                if rec["type"] == "info":
                    if on_info:
                        on_info(rec)
                elif rec["type"] == "error":
                    raise EdgeQueryError(f"{device.describe()} could not time {rec['model']}: {rec['error']}",
                                         "delete that file from the work folder and rerun to re-create it")
                elif rec["type"] == "result":
                    stats = {k: rec[k] for k in ("median_ms", "p10_ms", "p90_ms", "runs")}
                    results[rec["model"]] = stats
                    if on_result:
                        on_result(rec["model"], stats)
                    bar.update()
    finally:
        bar.close()
    missing = [m for m in models if m not in results]
    if missing:
        raise EdgeQueryError(f"{device.describe()} returned no timing for {len(missing)} file(s), e.g. {missing[0]}",
                             "rerun to resume; check the device's free space and that it stayed reachable")
    return results


# --------------------------------------------------------------------------- profile


def work_folder(out: Path, runtime: str) -> Path:
    return out.with_name(out.name + ".work") / runtime


def profile(space, resolutions: Sequence[int], device: Device, runtime: str, protocol: Protocol, out: str | Path,
            embed_dim: int = 128, jobs: int = 1, force: bool = False, workdir: str | Path | None = None,
            log: Callable[[str], None] = print) -> LUT:
    """Measure (or finish measuring) the LUT of ``space`` at ``resolutions`` on ``device`` into ``out``.

    Model files go to ``workdir`` (default ``<out>.work/<runtime>/``) and are reused by a rerun.
    """
    check_runtime(runtime)
    protocol.check()
    out = Path(out)
    resolutions = tuple(sorted({int(r) for r in resolutions}))
    blocks = space_blocks(space, resolutions, embed_dim)
    fresh = LUT(space=space.name, space_config=space.config(), resolutions=resolutions, runtime=runtime,
                threads=protocol.threads, embed_dim=embed_dim, device={"spec": device.describe()},
                protocol={"batch": 1, **protocol.to_dict(), "statistic": "median (lowest of the rounds' medians)",
                          "spread": "p10, p90 over all timed runs",
                          "timed": "invoke only, input bound once; per-invocation overhead from an identity model",
                          "clock": "time.perf_counter on the device"})
    lut = fresh
    if out.exists() and not force:
        from .lut import load_lut

        old = load_lut(out)
        same = (old.space_config, old.resolutions, old.runtime, old.threads, old.embed_dim, old.device.get("spec"),
                {k: old.protocol.get(k) for k in protocol.to_dict()}) == \
               (fresh.space_config, fresh.resolutions, fresh.runtime, fresh.threads, fresh.embed_dim,
                fresh.device["spec"], protocol.to_dict())
        if not same:
            raise EdgeQueryError(f"{out} holds a LUT made with other settings ({old.label}, "
                                 f"resolutions {list(old.resolutions)})",
                                 "pass another --out, or --force to measure it again from scratch")
        lut = old
        done = sum(b.key in lut.blocks for b in blocks)
        if lut.complete and done == len(blocks):
            log(f"{out} is already complete ({done} blocks); pass --force to measure again")
            return lut
        log(f"resuming {out}: {done} of {len(blocks)} blocks already measured")
    t0 = time.time()
    device.supports(runtime)
    folder = Path(workdir) if workdir else work_folder(out, runtime)
    todo = [b for b in blocks if b.key not in lut.blocks]
    log(f"{len(blocks)} distinct blocks in {space.name} at resolution(s) {', '.join(map(str, resolutions))}; "
        f"{len(todo)} to measure on {device.describe()} with {runtime}, {protocol.threads} thread(s)")
    export_blocks(space, todo, runtime, folder, jobs=jobs)
    by_file = {file_name(b.key, runtime): b.key for b in todo}

    def on_info(info: dict) -> None:
        lut.device = {"spec": device.describe(), **{k: v for k, v in info.items() if k not in ("type", "runtime",
                                                                                           "runtime_version",
                                                                                           "threads")}}
        lut.runtime_version = info.get("runtime_version", "")

    def on_result(model: str, stats: dict) -> None:
        if model == IDENTITY + RUNTIME_SUFFIX[runtime]:
            lut.overhead = stats
        else:
            lut.blocks[by_file[model]] = stats
        lut.measured_at = now()
        lut.save(out)  # after every result: a killed run loses at most the chunk in flight

    try:
        if lut.overhead is None:
            time_files(device, folder, [IDENTITY + RUNTIME_SUFFIX[runtime]], runtime, protocol, on_result, on_info,
                       desc="overhead")
        time_files(device, folder, list(by_file), runtime, protocol, on_result, on_info, desc=f"time on {device.name}")
    finally:
        lut.build_seconds += time.time() - t0
        lut.measured_at = now()
        lut.save(out)
        device.close()
    lut.complete = not lut.missing(space)
    lut.save(out)
    log(f"wrote {out}: {len(lut.blocks)} blocks, overhead {lut.overhead_ms:.4f} ms, "
        f"{lut.build_seconds:.0f} s in all")
    return lut


# --------------------------------------------------------------------------- validate


def restricted_space(space, resolutions: Sequence[int]):
    """``space`` with its resolution choices cut to ``resolutions`` (the ones a LUT covers)."""
    from ..spaces import space_from_config

    keep = [r for r in space.resolutions if r in set(resolutions)]
    if not keep:
        raise EdgeQueryError(f"the LUT covers resolution(s) {list(resolutions)}, none of which the {space.name} "
                             f"space has ({list(space.resolutions)})",
                             "profile one of the space's resolutions: edgequery profile --resolution R")
    return space_from_config({**space.config(), "resolutions": keep})


def net_file(arch, runtime: str) -> str:
    return "nets/" + hashlib.sha1(str(arch).encode()).hexdigest()[:16] + RUNTIME_SUFFIX[runtime]


def measure_archs(archs: Sequence, device: Device, runtime: str, protocol: Protocol, folder: Path,
                  embed_dim: int = 128, jobs: int = 1, desc: str = "time nets", resolution: int | None = None,
                  space=None) -> list[dict]:
    """Export each arch as a whole embedding net (as ``edgequery export`` does) and time it on ``device``.

    ``archs`` are parsed archs of a space (pass ``space`` when it is not the default one, e.g.
    configured for another input resolution), or names such as ``mobilenet_v3_small`` - then
    ``resolution`` gives their input side.  Weights are random: they do not change float32 latency.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [net_file(a, runtime) for a in archs]
    sides = [getattr(a, "resolution", resolution) for a in archs]
    if None in sides:
        raise EdgeQueryError("measure_archs needs resolution= for archs named without one", "pass resolution=32")
    items = [{"arch": str(a), "resolution": r, "embed_dim": embed_dim, "path": str(folder / n)}
             for a, r, n in zip(archs, sides, names)]
    export_files(items, runtime, jobs, space, desc=f"export {runtime} nets")
    device.supports(runtime)
    try:
        timed = time_files(device, folder, names, runtime, protocol, desc=desc)
    finally:
        device.close()
    return [{"arch": str(a), **timed[n]} for a, n in zip(archs, names)]


def accuracy(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Share within ±5 % / ±10 %, mean absolute % error, Spearman rho (predicted vs measured)."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = (p - m) / m
    rho = spearmanr(p, m).statistic if len(p) > 2 and np.ptp(p) > 0 and np.ptp(m) > 0 else float("nan")
    return {"n": len(p), "within_5pct": round(float(np.mean(np.abs(err) <= 0.05)), 4),
            "within_10pct": round(float(np.mean(np.abs(err) <= 0.10)), 4),
            "mape_pct": round(float(np.mean(np.abs(err)) * 100), 3),
            "mean_error_pct": round(float(np.mean(err) * 100), 3), "spearman_rho": round(float(rho), 4)}


def _fit_line(raw: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """``measured ~ scale * raw + offset``, minimising the *relative* error (what the ±5 % goal counts)."""
    design = np.stack([raw / measured, 1.0 / measured], axis=1)
    (scale, offset), *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
    return float(scale), float(offset)


def fit_calibration(raw: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """The line ``measured = scale * raw + offset`` that ``--calibrate`` stores (relative least squares)."""
    raw_a, m = np.asarray(raw, float), np.asarray(measured, float)
    if len(raw_a) < 3:
        raise EdgeQueryError(f"calibration needs at least 3 measured nets, got {len(raw_a)}", "pass --n 20 or more")
    scale, offset = _fit_line(raw_a, m)
    return {"scale": round(scale, 6), "offset_ms": round(offset, 6), "fit": "relative least squares",
            "fitted_on": len(raw_a), "fitted_at": now()}


def cross_validated(raw: Sequence[float], measured: Sequence[float], folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Accuracy of the calibrated prediction out of sample: each fold predicted by a line fitted on the others."""
    raw_a, m = np.asarray(raw, float), np.asarray(measured, float)
    order = np.random.default_rng(seed).permutation(len(raw_a))
    pred = np.empty_like(m)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        scale, offset = _fit_line(raw_a[train], m[train])
        pred[test] = scale * raw_a[test] + offset
    return {**accuracy(pred, m), "folds": folds, "predicted_ms": [round(float(p), 5) for p in pred]}


def score_calibration(lut: LUT, raw: Sequence[float], measured: Sequence[float], calibrate: bool) -> dict[str, Any]:
    """The calibration figures of a validation from its raw predictions and measurements (no timing here).

    With ``calibrate`` the fitted line is stored in ``lut`` (and saved to its file).
    """
    report: dict[str, Any] = {}
    if lut.calibration:
        report["with_stored_calibration"] = accuracy([lut.calibrated(r) for r in raw], measured)
    if len(raw) >= 10:
        report["calibrated_cross_validated"] = cross_validated(raw, measured)
    if calibrate:
        lut.calibration = fit_calibration(raw, measured)
        if lut.path:
            lut.save(lut.path)
        report["calibration"] = lut.calibration
        report["calibrated_in_sample"] = accuracy([lut.calibrated(r) for r in raw], measured)
    return report


def validate(lut: LUT, space, device: Device, n: int = 100, seed: int = 0, calibrate: bool = False,
             protocol: Protocol | None = None, workdir: str | Path | None = None, jobs: int = 1,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure ``n`` random whole nets and compare with ``lut``'s predictions (see the module docstring).

    With ``calibrate`` the fitted correction is stored in ``lut`` (and saved to its file);
    the report then holds the figures before *and* after it.  Fitting and scoring on the
    same nets flatters the calibrated figures, so they are labelled in-sample; the honest
    figure for a calibrated LUT is ``calibrated_cross_validated`` (5-fold: each net
    predicted by a line fitted on the other folds), present from 10 nets on.
    """
    if n < 1:
        raise EdgeQueryError(f"--n must be >= 1 (got {n})", "pass --n 100")
    if device.describe() != lut.device.get("spec"):
        log(f"note: validating a LUT measured on {lut.device.get('spec')} on {device.describe()}")
    protocol = protocol or Protocol(**{k: lut.protocol[k] for k in Protocol().to_dict() if k in lut.protocol})
    if protocol.threads != lut.threads:
        raise EdgeQueryError(f"the LUT was measured with {lut.threads} thread(s), validation asks {protocol.threads}",
                             f"validate with --threads {lut.threads}")
    sub = restricted_space(space, lut.resolutions)
    lut.check_space(space)
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    for _ in range(100 * n):  # distinct archs; a tiny space may have fewer than n
        a = sub.sample(rng)
        if str(a) not in seen:
            seen.add(str(a))
            archs.append(a)
            if len(archs) == n:
                break
    if len(archs) < n:
        log(f"note: the space yielded only {len(archs)} distinct archs; validating on those")
    folder = Path(workdir) if workdir else work_folder(lut.path or Path("lut.json"), lut.runtime)
    t0 = time.time()
    measured = measure_archs(archs, device, lut.runtime, protocol, folder, lut.embed_dim, jobs=jobs, space=sub)
    keys = [[b.key for b in sub.blocks(a, lut.embed_dim)] for a in archs]
    raw = [lut.raw(k) for k in keys]
    flops = [sub.cost(a, lut.embed_dim)["flops"] for a in archs]
    meas = [m["median_ms"] for m in measured]
    uncal = accuracy(raw, meas)
    report: dict[str, Any] = {
        "lut": str(lut.path), "device": lut.device, "runtime": lut.runtime, "runtime_version": lut.runtime_version,
        "threads": lut.threads, "resolutions": list(lut.resolutions), "n": len(archs), "seed": seed,
        "protocol": protocol.to_dict(), "seconds": round(time.time() - t0, 1),
        "uncalibrated": uncal, "previous_calibration": lut.calibration,
        "nets": [{"arch": str(a), "flops": f, "raw_ms": round(r, 5), "measured_ms": m["median_ms"],
                  "measured_p10_ms": m["p10_ms"], "measured_p90_ms": m["p90_ms"]}
                 for a, f, r, m in zip(archs, flops, raw, measured)]}
    report.update(score_calibration(lut, raw, meas, calibrate))
    return report
