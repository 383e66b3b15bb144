"""Where every result file came from: the one envelope of benchmark results.

A results file is a :class:`BenchmarkResult`::

    {"format": "edgequery-benchmark", "format_version": 1, "benchmark": "bct_compat",
     "provenance": {"git_commit": ..., "git_dirty": ..., "command": "python benchmarks/...",
                    "config": {...the configuration actually used...}, "machine": {...fingerprint...},
                    "load_average": {"start": [1, 5, 15 min], "end": [...]},
                    "started_at": ..., "finished_at": ..., "seconds": ..., "edgequery_version": ...},
     "notes": [...],            # from flags or code, never typed into the file
     "results": {...}}

Use::

    prov = Provenance.start(config=vars(args))
    ...                                   # the benchmark's work
    write_result(out / "bct_compat.json", "bct_compat", results, prov, notes=args.note)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from pydantic import Field, PrivateAttr

from .base import Artifact, Strict
from .fingerprint import Machine

REPO = Path(__file__).resolve().parents[2]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# What benchmarks write: a rerun's own results (committed) do not make the code it ran "dirty".
RESULT_PATHS = ("benchmarks/results",)


def git_state(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout ``repo``; (None, None) outside a git checkout.

    Dirty means a tracked file other than the benchmark results (:data:`RESULT_PATHS`)
    differs from the commit.
    """
    exclude = [f":(exclude){p}" for p in RESULT_PATHS]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                 ".", *exclude], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def _jsonable(value: Any) -> Any:
    """The configuration as plain JSON (paths, tuples, namespaces turned into str/list/dict)."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class LoadAverage(Strict):
    start: list[float] | None = None
    end: list[float] | None = None


class Provenance(Strict):
    git_commit: str | None
    git_dirty: bool | None
    command: str
    config: dict[str, Any]
    machine: Machine
    load_average: LoadAverage
    started_at: str
    finished_at: str | None = None
    seconds: float | None = None
    edgequery_version: str
    _t0: float | None = PrivateAttr(default=None)

    @classmethod
    def start(cls, config: Any, command: str | None = None) -> "Provenance":
        """Record what is known before the work: commit, command, config, machine, load."""
        from .. import __version__

        commit, dirty = git_state()
        argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith("edgequery") else sys.argv[0],
                *sys.argv[1:]] if sys.argv else []
        if command is None:
            script = argv[0] if argv else ""
            command = shlex.join(["python", _relative(script), *argv[1:]]) if script.endswith(".py") \
                else shlex.join(argv)
        prov = cls(git_commit=commit, git_dirty=dirty, command=command, config=_jsonable(config),
                   machine=Machine.here(), load_average=LoadAverage(start=_loadavg()), started_at=_now(),
                   edgequery_version=__version__)
        prov._t0 = time.time()
        return prov

    def finish(self) -> "Provenance":
        """Stamp the end: time, duration, load average."""
        self.finished_at = _now()
        if self._t0 is not None:
            self.seconds = round(time.time() - self._t0, 1)
        self.load_average.end = _loadavg()
        return self


def _relative(script: str) -> str:
    try:
        return str(Path(script).resolve().relative_to(REPO))
    except ValueError:
        return script


class BenchmarkResult(Artifact):
    FORMAT = "edgequery-benchmark"
    VERSION = 1
    KIND = "benchmark result"
    FIX = "regenerate it by running its script in benchmarks/"

    benchmark: str
    provenance: Provenance
    notes: list[str] = Field(default_factory=list)
    results: dict[str, Any]


def write_result(path: str | Path, benchmark: str, results: dict[str, Any], provenance: Provenance,
                 notes: Iterable[str] = ()) -> Path:
    """Write a whole results file (the only way benchmark scripts write results)."""
    if provenance.finished_at is None:
        provenance.finish()
    return BenchmarkResult(benchmark=benchmark, provenance=provenance, notes=[str(n) for n in notes if n],
                           results=_jsonable(results)).save(path)
