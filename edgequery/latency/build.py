"""Building a LUT on a device: export the blocks as model files, time them there, save as it goes.

:func:`profile` - the ``edgequery profile`` command:

1. ask the device what it is (:meth:`~.devices.Device.fingerprint`: also refuses a runtime
   it cannot run, before anything is exported);
2. list the space's distinct blocks at the requested resolutions (:func:`space_blocks`);
3. write each block (and the identity model) as a small model file for the runtime, in a
   work folder beside the LUT (``lut-....json.work/``); files already there are reused,
   conversions run in ``jobs`` worker processes;
4. time them on the device in chunks (:mod:`.devices`: the agent locally or over ssh,
   ``benchmark_model`` over adb), saving the LUT after every result - a killed run
   resumes with the blocks still missing (with rounds spread over passes, from the rounds
   journalled so far); resuming on a device with another fingerprint is
   refused unless ``allow_other_device`` (then recorded in the LUT's ``other_devices``);
5. mark the LUT complete.  Conversion and timing are separate phases, so the timings
   are not disturbed by the converters.

:func:`measure_archs` exports and times *whole* nets the same way (validation, benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..artifacts.compat import check_compatible
from ..artifacts.fingerprint import Fingerprint
from ..artifacts.lut import OtherDeviceUse, TimingProtocol, TimingStats
from ..errors import EdgeQueryError
from ..log import progress
from ..runtimes.convert import to_runtime_file
from .blocks import IDENTITY_SHAPE, INNER_LAYOUT, RUNTIME_SUFFIX, Identity, check_runtime, export_item, space_blocks
from .devices import Device
from .lut import LUT, now

log = logging.getLogger(__name__)

CHUNK = 16
JOURNAL = "rounds.jsonl"   # in the work folder: the rounds of a table's blocks timed so far (rounds over passes)
IDENTITY = "identity"
KNOBS = ("threads", "warmup", "runs", "min_seconds", "rounds", "flush_kb", "rounds_over")
ROUNDS_OVER = ("chunk", "pass")
UNSET = {"flush_kb": 0, "rounds_over": "chunk"}   # what a LUT file's unset knob means (older files lack them)


@dataclass
class Protocol:
    """How each model file is timed (recorded in the LUT)."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 0.1
    rounds: int = 3
    flush_kb: int = 0   # > 0: the agent writes over this many KiB before each timed run (cold caches)
    # "chunk": a file's rounds follow each other within its agent run (seconds apart); "pass": each round
    # is a pass over all the files, so a file's rounds are minutes apart and a slow spell of the machine
    # hits one of them, not all (see :func:`time_files`)
    rounds_over: str = "chunk"

    def check(self) -> "Protocol":
        if (self.threads < 1 or self.warmup < 0 or self.runs < 1 or self.min_seconds < 0 or self.rounds < 1
                or self.flush_kb < 0 or self.rounds_over not in ROUNDS_OVER):
            raise EdgeQueryError(f"bad timing protocol {self}", "threads >= 1, warmup >= 0, runs >= 1 (50 or more "
                                                               "recommended), min-seconds >= 0, rounds >= 1, "
                                                               "flush-kb >= 0, rounds-over " + " or ".join(ROUNDS_OVER))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KNOBS}

    @classmethod
    def of(cls, lut: LUT, **changes: Any) -> "Protocol":
        """The protocol ``lut`` was measured with; ``changes`` that are not None override it."""
        return cls(**{**{k: getattr(lut.protocol, k) or UNSET.get(k) if k in UNSET else getattr(lut.protocol, k)
                         for k in KNOBS},
                      **{k: v for k, v in changes.items() if v is not None}}).check()

    def record(self, device: Device, runtime: str) -> TimingProtocol:
        """The protocol as the LUT file states it (with what ``device``'s statistics are and the
        layout ``runtime``'s block files take: see :data:`~.blocks.INNER_LAYOUT`)."""
        return TimingProtocol(batch=1, **{**self.to_dict(), **{k: None for k, v in UNSET.items() if getattr(self, k) == v}},
                              block_layout=INNER_LAYOUT.get(runtime),
                              statistic=device.statistic, spread=device.spread,
                              timed="invoke only, input bound once; per-invocation overhead from an identity model",
                              clock=device.clock)


def file_name(key: str, runtime: str) -> str:
    """A block's model file name: a short hash of its key (keys hold '|' and '=') and of the layout the
    runtime's block files take, when not NCHW (so a file of another layout is never reused)."""
    tag = key + (f"|layout={INNER_LAYOUT[runtime]}" if runtime in INNER_LAYOUT else "")
    return "blocks/" + hashlib.sha1(tag.encode()).hexdigest()[:16] + RUNTIME_SUFFIX[runtime]


def net_file(arch, runtime: str) -> str:
    return "nets/" + hashlib.sha1(str(arch).encode()).hexdigest()[:16] + RUNTIME_SUFFIX[runtime]


def work_folder(out: Path, runtime: str) -> Path:
    return out.with_name(out.name + ".work") / runtime


# --------------------------------------------------------------------------- exporting model files


def export_files(items: list[dict], runtime: str, jobs: int = 1, space=None, desc: str = "export") -> None:
    """Write the model files ``items`` describe (see :func:`~.blocks.export_item`); existing files are kept.

    With ``jobs > 1`` the conversions run in that many worker processes
    (``python -m edgequery.latency.blocks``), each converting its share.
    """
    todo = [it for it in items if not Path(it["path"]).exists()]
    if not todo:
        return
    jobs = max(1, min(jobs, len(todo)))
    with progress(total=len(items), initial=len(items) - len(todo), desc=desc, unit="file", log=log) as bar:
        if jobs == 1:  # in this process: errors keep their traceback (--debug)
            for item in todo:
                export_item(item, runtime, space)
                bar.update()
        else:
            _export_in_workers(todo, runtime, jobs, space, bar)


def _export_in_workers(todo: list[dict], runtime: str, jobs: int, space, bar) -> None:
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="edgequery-export-") as tmp:
        try:
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
                    p.wait()


def export_blocks(space, blocks: Sequence, runtime: str, folder: Path, jobs: int = 1) -> None:
    """Every block's file (and the identity model's) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = folder / (IDENTITY + RUNTIME_SUFFIX[runtime])
    if not identity.exists():
        to_runtime_file(Identity(), IDENTITY_SHAPE, runtime, identity)
    items = [{"key": b.key, "in_shape": b.in_shape, "out_shape": b.out_shape,
              "path": str(folder / file_name(b.key, runtime))} for b in blocks]
    export_files(items, runtime, jobs, space, desc=f"export {runtime} blocks")


def export_nets(archs: Sequence, runtime: str, folder: Path, embed_dim: int = 128, jobs: int = 1,
                resolution: int | None = None, space=None) -> list[str]:
    """Each arch as a whole embedding net file under ``folder`` (as ``edgequery export`` builds it); their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [net_file(a, runtime) for a in archs]
    sides = [getattr(a, "resolution", resolution) for a in archs]
    if None in sides:
        raise EdgeQueryError("measure_archs needs resolution= for archs named without one", "pass resolution=32")
    items = [{"arch": str(a), "resolution": r, "embed_dim": embed_dim, "path": str(folder / n)}
             for a, r, n in zip(archs, sides, names)]
    export_files(items, runtime, jobs, space, desc=f"export {runtime} nets")
    return names


# --------------------------------------------------------------------------- timing


def time_files(device: Device, folder: Path, models: Sequence[str], runtime: str, protocol: Protocol,
               on_result: Callable[[str, TimingStats], None] | None = None, desc: str = "time",
               chunk: int = CHUNK, journal: Path | None = None) -> dict[str, TimingStats]:
    """Time model files (relative to ``folder``) on ``device``, ``chunk`` per agent run.

    With ``protocol.rounds_over == "pass"`` each of the ``rounds`` is a pass over all ``models``
    (one round per agent run), so a file's rounds lie minutes apart: a slow spell of the
    machine (a VM drifts by 5-10 % over minutes) hits one of them, not all.  A file's result
    is then its lowest round median, p10 and p90 being the lowest and highest of its rounds'
    ones.  ``journal`` (a JSON-lines file) keeps the rounds done so far, so a killed run
    resumes within a pass; it is cleared when done or made with another protocol.

    ``on_result(model, stats)`` is called as each file's result is complete (the profiler saves
    the LUT there).  A model the runtime cannot run is an error naming it.
    """
    passes = protocol.rounds if protocol.rounds_over == "pass" else 1
    request = {**protocol.to_dict(), **({"rounds": 1} if passes > 1 else {})}
    done = _read_journal(journal, request) if passes > 1 and journal else {}
    results: dict[str, TimingStats] = {}

    def complete(model: str) -> None:
        results[model] = _best_round(done[model][:passes])
        if on_result:
            on_result(model, results[model])

    for model in models:   # complete in the journal of a killed run
        if len(done.get(model, [])) >= passes:
            complete(model)
    with progress(total=len(models) * passes, desc=desc, unit="model" if passes == 1 else "timing", log=log) as bar:
        bar.update(sum(min(len(done.get(m, [])), passes) for m in models))
        for round_ in range(passes):
            todo = [m for m in models if len(done.get(m, [])) <= round_]
            for start in range(0, len(todo), chunk):
                for model, stats in _timed(device, folder, todo[start:start + chunk], runtime, request):
                    done.setdefault(model, []).append(stats)
                    if passes > 1 and journal:
                        _append_journal(journal, request, model, stats)
                    if len(done[model]) == passes:
                        complete(model)
                    bar.update()
    missing = [m for m in models if m not in results]
    if missing:
        raise EdgeQueryError(f"{device.describe()} returned no timing for {len(missing)} file(s), e.g. {missing[0]}",
                             "rerun to resume; check the device's free space and that it stayed reachable")
    if journal and journal.exists():
        journal.unlink()
    return results


def _timed(device: Device, folder: Path, models: Sequence[str], runtime: str, request: dict):
    """(model, stats) for each result of one agent run; a model the runtime cannot run is an error."""
    for rec in device.time_models(folder, models, runtime, request):
        if rec["type"] == "error":
            raise EdgeQueryError(f"{device.describe()} could not time {rec['model']}: {rec['error']}",
                                 "delete that file from the work folder and rerun to re-create it")
        if rec["type"] == "result":  # (the agent's "info" line: the fingerprint was asked for before)
            yield rec["model"], TimingStats(**{k: rec[k] for k in ("median_ms", "p10_ms", "p90_ms", "runs")})


def _best_round(rounds: Sequence[TimingStats]) -> TimingStats:
    return TimingStats(median_ms=min(r.median_ms for r in rounds), p10_ms=min(r.p10_ms for r in rounds),
                       p90_ms=max(r.p90_ms for r in rounds), runs=sum(r.runs for r in rounds))


def _read_journal(journal: Path, request: dict) -> dict[str, list[TimingStats]]:
    """The rounds a killed run timed with the same ``request`` (none from another protocol)."""
    done: dict[str, list[TimingStats]] = {}
    if not journal.exists():
        return done
    for line in journal.read_text().splitlines():
        try:
            rec = json.loads(line)
            if rec["protocol"] == request:
                done.setdefault(rec["model"], []).append(TimingStats(**rec["stats"]))
        except (ValueError, KeyError, TypeError):
            continue   # a line cut short by the kill
    if done:
        log.info(f"resuming: {sum(map(len, done.values()))} round(s) of {len(done)} file(s) already timed ({journal})")
    return done


def _append_journal(journal: Path, request: dict, model: str, stats: TimingStats) -> None:
    journal.parent.mkdir(parents=True, exist_ok=True)
    with journal.open("a") as f:
        f.write(json.dumps({"protocol": request, "model": model, "stats": stats.model_dump()}) + "\n")


def measure_archs(archs: Sequence, device: Device, runtime: str, protocol: Protocol, folder: Path,
                  embed_dim: int = 128, jobs: int = 1, desc: str = "time nets", resolution: int | None = None,
                  space=None) -> list[dict]:
    """Export each arch as a whole embedding net (as ``edgequery export`` does) and time it on ``device``.

    ``archs`` are parsed archs of a space (pass ``space`` when it is not the default one, e.g.
    configured for another input resolution), or names such as ``mobilenet_v3_small`` - then
    ``resolution`` gives their input side.  Weights are random: they do not change float32 latency.
    """
    try:
        device.fingerprint(runtime, protocol.threads)  # can it run `runtime` at all? (before exporting)
        names = export_nets(archs, runtime, folder, embed_dim, jobs, resolution, space)
        timed = time_files(device, folder, names, runtime, protocol, desc=desc)
    finally:
        device.close()
    return [{"arch": str(a), **timed[n].model_dump()} for a, n in zip(archs, names)]


# --------------------------------------------------------------------------- profile


def _settings(lut: LUT) -> dict[str, Any]:
    """What a resumed LUT must share with the command resuming it (the device aside)."""
    return {"space_config": lut.space_config, "resolutions": list(lut.resolutions), "runtime": lut.runtime,
            "threads": lut.threads, "embed_dim": lut.embed_dim,
            **{f"protocol.{k}": getattr(lut.protocol, k) for k in (*KNOBS, "block_layout")}}


def _resume(out: Path, fresh: LUT, allow_other_device: bool) -> LUT:
    """The LUT at ``out`` if it was made with ``fresh``'s settings on ``fresh``'s device (see :func:`profile`)."""
    old = LUT.load(out)
    theirs, ours = _settings(old), _settings(fresh)
    diff = [f"{k}: {theirs[k]} vs {ours[k]}" for k in ours if theirs[k] != ours[k]]
    if diff:
        raise EdgeQueryError(f"{out} holds a LUT made with other settings ({'; '.join(diff)})",
                             "pass another --out, or --force to measure it again from scratch")
    notes = check_compatible(old, fresh.fingerprint, a_name=str(out), allow_other_device=allow_other_device)
    if old.device != fresh.device:
        if not allow_other_device:
            raise EdgeQueryError(f"{out} was measured on device {old.device}, not {fresh.device}",
                                 f"pass --device {old.device}, or --allow-other-device to go on with this one "
                                 "(recorded in the LUT)")
        notes.append(f"--allow-other-device: {out} was measured on {old.device}, resumed on {fresh.device}")
    if notes:
        for note in notes:
            log.warning(note)
        old.other_devices.append(OtherDeviceUse(action="resume", at=now(), device=fresh.device,
                                                fingerprint=fresh.fingerprint, notes=notes))
    return old


def _measure(lut: LUT, space, blocks: Sequence, device: Device, protocol: Protocol, out: Path, folder: Path,
             jobs: int) -> None:
    """Export and time the blocks ``lut`` lacks, saving it after every result."""
    runtime = lut.runtime
    t0 = time.time()
    todo = [b for b in blocks if b.key not in lut.blocks]
    log.info(f"{len(blocks)} distinct blocks in {space.name} at resolution(s) "
             f"{', '.join(map(str, lut.resolutions))}; {len(todo)} to measure on {device.describe()} with {runtime}, "
             f"{protocol.threads} thread(s)")
    export_blocks(space, todo, runtime, folder, jobs=jobs)
    by_file = {file_name(b.key, runtime): b.key for b in todo}
    identity = IDENTITY + RUNTIME_SUFFIX[runtime]

    def on_result(model: str, stats: TimingStats) -> None:
        if model == identity:
            lut.overhead = stats
        else:
            lut.blocks[by_file[model]] = stats
        lut.measured_at = now()
        lut.save(out)  # after every result: a killed run loses at most the chunk in flight

    lut.save(out)   # from here on a killed run resumes (with protocol.rounds_over "pass": within a pass, see JOURNAL)
    try:
        if lut.overhead is None:
            time_files(device, folder, [identity], runtime, protocol, on_result, desc="overhead")
        time_files(device, folder, list(by_file), runtime, protocol, on_result, desc=f"time on {device.name}",
                   journal=folder / JOURNAL)
    finally:
        lut.build_seconds = round(lut.build_seconds + time.time() - t0, 1)
        lut.measured_at = now()
        lut.save(out)


def profile(space, resolutions: Sequence[int], device: Device, runtime: str, protocol: Protocol, out: str | Path,
            embed_dim: int = 128, jobs: int = 1, force: bool = False, workdir: str | Path | None = None,
            allow_other_device: bool = False) -> LUT:
    """Measure (or finish measuring) the LUT of ``space`` at ``resolutions`` on ``device`` into ``out``.

    Model files go to ``workdir`` (default ``<out>.work/<runtime>/``) and are reused by a rerun.
    An existing ``out`` is resumed when it was made with the same settings on a device with
    the same fingerprint; ``allow_other_device`` resumes it on another one (recorded in it).
    """
    check_runtime(runtime)
    protocol.check()
    out = Path(out)
    resolutions = sorted({int(r) for r in resolutions})
    blocks = space_blocks(space, resolutions, embed_dim)
    try:
        fingerprint: Fingerprint = device.fingerprint(runtime, protocol.threads)
        lut = LUT(space=space.name, space_config=space.config(), resolutions=resolutions, embed_dim=embed_dim,
                  device=device.describe(), fingerprint=fingerprint, runtime=runtime,
                  runtime_version=fingerprint.runtime_version or "", threads=protocol.threads,
                  protocol=protocol.record(device, runtime))
        folder = Path(workdir) if workdir else work_folder(out, runtime)
        if out.exists() and not force:
            lut = _resume(out, lut, allow_other_device)
            done = sum(b.key in lut.blocks for b in blocks)
            if lut.complete and done == len(blocks):
                log.info(f"{out} is already complete ({done} blocks); pass --force to measure again")
                return lut
            log.info(f"resuming {out}: {done} of {len(blocks)} blocks already measured")
        else:
            (folder / JOURNAL).unlink(missing_ok=True)   # rounds of an earlier table are not this one's
        _measure(lut, space, blocks, device, protocol, out, folder, jobs)
    finally:
        device.close()
    lut.complete = not lut.missing(space)
    lut.save(out)
    log.info(f"wrote {out}: {len(lut.blocks)} blocks, overhead {lut.overhead_ms:.4f} ms, "
             f"{lut.build_seconds:.0f} s in all")
    return lut
