"""Where models are timed: a device is *data* - a transport plus the same timing procedure.

A device string picks the transport (like nn-Meter's connectors, separated from the
profiling logic)::

    local                              this machine, a subprocess running the agent
    local?cpus=1                       ... pinned to CPU 1 with taskset (a CPU list: 0,2 or 2-3)
    ssh://user@host[:port]             a Linux board over the system ssh/scp: the remote needs
                                       Python 3 and the runtime (ai-edge-litert / onnxruntime / torch)
        ?python=/usr/bin/python3       the remote interpreter (default python3)
        &identity=~/.ssh/id_ed25519    an ssh key; &config=FILE an ssh_config file
        &cpus=4-7                      taskset on the remote (big cores of a big.LITTLE SoC)
    qemu-aarch64[:DIR]                 an aarch64 Linux board emulated here: the agent runs on an arm64
        ?cpu=cortex-a76                Python under qemu user mode, from DIR as
                                       ``scripts/setup_aarch64_emulation.sh DIR`` prepares it (default
                                       ~/.cache/edgequery/aarch64), emulating ``cpu`` (default cortex-a76,
                                       a Raspberry Pi 5 core: NEON + dot product; qemu's ``max`` has
                                       SVE2/SME, whose kernels run ~8x slower under emulation).  It runs
                                       the ARM builds of the runtimes (their aarch64 kernels), but its
                                       timings are the emulator's on this CPU, not an ARM CPU's: the
                                       fingerprint says ``emulated``
    adb[:serial]                       an Android phone over adb, timed by LiteRT's own
        ?binary=PATH&cpumask=f0        ``benchmark_model`` binary (a file *you* provide: built
                                       from LiteRT or downloaded from its releases); cpumask is
                                       taskset's hex mask on the phone

``local``, ``qemu-aarch64`` and ``ssh`` run :mod:`edgequery.runtimes.agent` (one self-contained script)
and read its JSON lines; ``adb`` runs ``benchmark_model`` per file and parses its log
(:func:`parse_benchmark_model`).  Every device yields the same records, one per model::

    {"type": "result", "model": NAME, "median_ms": ..., "p10_ms": ..., "p90_ms": ..., "runs": ...}

and tells what it is: :meth:`Device.fingerprint` - the agent's ``info`` line on the
target for ``local`` and ``ssh`` (CPU, ISA flags, caches, OS/kernel, runtime version),
``getprop`` / ``/proc/cpuinfo`` / ``uname`` and the ``benchmark_model`` binary's digest
for ``adb`` - which a LUT records and is checked against when it is resumed or validated.

No phone is attached to the machines this project is developed and tested on: the adb
path is exercised by tests that check the command sequence and parse real
``benchmark_model`` output formats with a fake ``adb`` executable - it has not timed a
real phone here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

from ..artifacts.fingerprint import Fingerprint
from ..errors import EdgeQueryError
from ..files import sha256_file
from ..runtimes.agent import isa_flags, parse_cpuinfo

AGENT = Path(__file__).parent.parent / "runtimes" / "agent.py"
DEVICE_HELP = ("local, local?cpus=1, qemu-aarch64[:DIR][?cpu=cortex-a76], ssh://user@host[:port][?python=...&identity=...&config=...&cpus=...], "
               "adb[:serial]")
EMULATION_DIR = Path("~/.cache/edgequery/aarch64")
EMULATION_SETUP = Path(__file__).parent.parent.parent / "scripts" / "setup_aarch64_emulation.sh"


def _options(query: str, allowed: Sequence[str], spec: str) -> dict[str, str]:
    opts = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise EdgeQueryError(f"device {spec!r}: unknown option(s) {', '.join(unknown)}",
                             f"this device takes: {', '.join(allowed) or 'no options'}")
    return opts


def parse_device(spec: str, *, benchmark_binary: str | None = None) -> "Device":
    """The device a string names (see the module docstring); errors say what a valid string looks like."""
    spec = (spec or "").strip()
    if spec == "local" or spec.startswith("local?"):
        opts = _options(spec.partition("?")[2], ["cpus"], spec)
        return LocalDevice(cpus=opts.get("cpus"))
    if spec == "qemu-aarch64" or spec.startswith(("qemu-aarch64:", "qemu-aarch64?")):
        head, _, query = spec.partition("?")
        opts = _options(query, ["cpu"], spec)
        cpu = opts.get("cpu", "cortex-a76")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", cpu):
            raise EdgeQueryError(f"device {spec!r}: cpu={cpu!r} is not a qemu CPU model",
                                 "write e.g. cpu=cortex-a76, cpu=cortex-a53 or cpu=neoverse-n1 (qemu-aarch64 -cpu help)")
        return EmulatedDevice(root=Path(head.partition(":")[2] or EMULATION_DIR).expanduser(), cpu=cpu)
    if spec.startswith("ssh://"):
        url = urlsplit(spec)
        if not url.hostname:
            raise EdgeQueryError(f"device {spec!r} names no host", "write ssh://user@host or ssh://user@host:2222")
        opts = _options(url.query, ["python", "identity", "config", "cpus"], spec)
        try:
            port = url.port
        except ValueError:
            raise EdgeQueryError(f"device {spec!r} has a bad port", "write ssh://user@host:PORT with a number") from None
        return SSHDevice(host=url.hostname, user=url.username, port=port, python=opts.get("python", "python3"),
                         identity=opts.get("identity"), config=opts.get("config"), cpus=opts.get("cpus"))
    if spec == "adb" or spec.startswith(("adb:", "adb?")):
        head, _, query = spec.partition("?")
        opts = _options(query, ["binary", "cpumask"], spec)
        binary = benchmark_binary or opts.get("binary")
        return AdbDevice(serial=head.partition(":")[2] or None, binary=binary, cpumask=opts.get("cpumask"))
    raise EdgeQueryError(f"unknown device {spec!r}", f"use one of: {DEVICE_HELP}")


def _taskset(cpus: str | None) -> list[str]:
    if not cpus:
        return []
    if not re.fullmatch(r"[0-9,\-]+", cpus):
        raise EdgeQueryError(f"cpus={cpus!r} is not a CPU list", "write e.g. cpus=0, cpus=0,2 or cpus=4-7")
    return ["taskset", "-c", cpus]


def _agent_records(proc: subprocess.Popen, where: str) -> Iterator[dict]:
    """JSON records from a running agent's stdout; a fatal record or a crash becomes an EdgeQueryError."""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("type") == "fatal":
                raise EdgeQueryError(f"the timing agent on {where} stopped: {rec['error']}", rec.get("fix"))
            yield rec
    finally:
        try:
            proc.stdout.close()
        finally:
            err = proc.stderr.read() if proc.stderr else ""
            code = proc.wait()
    if code not in (0, 3):
        raise EdgeQueryError(f"the timing agent on {where} failed (exit {code}): {err.strip()[-500:]}",
                             "check that the device is reachable and has Python 3 and the runtime")


def _check_record(proc: subprocess.CompletedProcess, where: str, python: str) -> Fingerprint:
    """The fingerprint in the output of ``agent.py --check RUNTIME THREADS``, or why there is none."""
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode == 127 or not lines:
        raise EdgeQueryError(f"{where} cannot run {python!r} ({proc.stderr.strip()[-200:]})",
                             "install Python 3 there, or name the interpreter: ?python=/path/to/python3")
    if lines[0].get("type") == "fatal":
        raise EdgeQueryError(f"{where}: {lines[0]['error']}", lines[0].get("fix"))
    return Fingerprint.model_validate({k: v for k, v in lines[0].items() if k != "type"})


@dataclass
class Device:
    """A target that can time model files (subclasses: local, ssh, adb)."""

    # what the timing statistics of this device's results are (recorded in the LUT's protocol)
    statistic = "median (lowest of the rounds' medians)"
    spread = "p10, p90 over all timed runs"
    clock = "time.perf_counter on the device"

    @property
    def name(self) -> str:
        """A file-name-safe label (used in ``lut-<device>-<runtime>.json``)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def fingerprint(self, runtime: str, threads: int = 1) -> Fingerprint:
        """What the target is (CPU, ISA, caches, OS, ``runtime`` and its version, ``threads``).

        Raises if this device cannot time ``runtime`` at all: called before anything is exported.
        """
        raise NotImplementedError

    def time_models(self, folder: Path, models: Sequence[str], runtime: str, protocol: dict) -> Iterator[dict]:
        """Yield one ``result`` / ``error`` record per model, in order (the agent also sends an ``info`` first)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and remote files."""


def _request(folder: Path, models: Sequence[str], runtime: str, protocol: dict) -> Path:
    req = folder / "request.json"
    req.write_text(json.dumps({"runtime": runtime, "threads": protocol["threads"], "warmup": protocol["warmup"],
                               "runs": protocol["runs"], "min_seconds": protocol["min_seconds"],
                               "rounds": protocol.get("rounds", 1), "flush_kb": protocol.get("flush_kb", 0),
                               "models": list(models)}))
    return req


@dataclass
class LocalDevice(Device):
    """This machine: the agent in a subprocess of the current Python, optionally pinned with taskset."""

    cpus: str | None = None

    @property
    def name(self) -> str:
        return "local" + (f"-cpus{self.cpus.replace(',', '_')}" if self.cpus else "")

    def describe(self) -> str:
        return "local" + (f"?cpus={self.cpus}" if self.cpus else "")

    def _python(self) -> list[str]:
        """The command that runs a Python script on the target."""
        return [sys.executable]

    def fingerprint(self, runtime, threads=1):
        cmd = [*_taskset(self.cpus), *self._python(), str(AGENT), "--check", runtime, str(int(threads))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return _check_record(proc, self.describe(), self._python()[-1])

    def time_models(self, folder, models, runtime, protocol):
        req = _request(folder, models, runtime, protocol)
        cmd = [*_taskset(self.cpus), *self._python(), str(AGENT), str(req)]
        env = {**os.environ, "OMP_NUM_THREADS": str(protocol["threads"])}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        yield from _agent_records(proc, self.describe())


@dataclass
class EmulatedDevice(LocalDevice):
    """An aarch64 Linux board emulated on this machine: the agent on an arm64 Python under ``qemu-aarch64``.

    ``root`` holds ``qemu-aarch64`` (a static qemu user-mode binary) and ``rootfs/`` (arm64 Debian with
    Python 3 and the aarch64 wheels of the runtimes), as ``scripts/setup_aarch64_emulation.sh`` makes them.
    The runtimes run their ARM kernels (NEON/XNNPACK paths, ARM graph optimisations), so this tests the
    whole ARM path; the timings are the emulator's, which is why the fingerprint records ``emulated``.
    """

    root: Path = EMULATION_DIR
    cpu: str = "cortex-a76"

    @property
    def name(self) -> str:
        return f"qemu-aarch64-{self.cpu}"

    def describe(self) -> str:
        return f"qemu-aarch64:{self.root}?cpu={self.cpu}"

    def _python(self) -> list[str]:
        qemu, rootfs = self.root / "qemu-aarch64", self.root / "rootfs"
        python = rootfs / "usr" / "bin" / "python3"
        if not (qemu.is_file() and python.exists()):
            raise EdgeQueryError(f"{self.root} holds no aarch64 emulation (looked for {qemu} and {python})",
                                 f"prepare it with: bash {EMULATION_SETUP} {self.root}   (downloads arm64 Debian "
                                 "packages and wheels; a real ARM board needs none of it: use ssh://user@board)")
        return [str(qemu), "-cpu", self.cpu, "-L", str(rootfs), str(python)]

    def fingerprint(self, runtime, threads=1):
        fp = super().fingerprint(runtime, threads)
        version = subprocess.run([self._python()[0], "--version"], capture_output=True, text=True).stdout
        found = re.search(r"version (\S+)", version)
        return fp.model_copy(update={"emulated": f"qemu-aarch64 {found.group(1) if found else '?'} -cpu {self.cpu}"})


@dataclass
class SSHDevice(Device):
    """A Linux board over the system ``ssh``/``scp`` (one multiplexed connection)."""

    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"
    identity: str | None = None
    config: str | None = None
    cpus: str | None = None
    _control: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    _remote_dir: str | None = field(default=None, repr=False)
    _copied: set = field(default_factory=set, repr=False)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"ssh-{self.host}" + (f"-{self.port}" if self.port else ""))

    def describe(self) -> str:
        return f"ssh://{self.target}" + (f":{self.port}" if self.port else "")

    def _opts(self, scp: bool = False) -> list[str]:
        if self._control is None:
            self._control = tempfile.TemporaryDirectory(prefix="edgequery-ssh-")
        opts = ["-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", "ControlPersist=60",
                "-o", f"ControlPath={self._control.name}/cm"]
        if self.config:
            opts += ["-F", os.path.expanduser(self.config)]
        if self.identity:
            opts += ["-i", os.path.expanduser(self.identity)]
        if self.port:
            opts += ["-P" if scp else "-p", str(self.port)]
        return opts

    def _ssh(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        if not shutil.which("ssh"):
            raise EdgeQueryError("the ssh client is not installed here", "apt-get install openssh-client")
        proc = subprocess.run(["ssh", *self._opts(), self.target, command], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise EdgeQueryError(f"ssh {self.describe()} failed (exit {proc.returncode}): "
                                 f"{proc.stderr.strip()[-400:]}",
                                 "check host, port, user and key (ssh -p PORT user@host must log in without a "
                                 "password prompt; pass identity=... or config=... in the device string)")
        return proc

    def _remote(self) -> str:
        if self._remote_dir is None:
            self._remote_dir = self._ssh("mktemp -d /tmp/edgequery-agent.XXXXXX").stdout.strip()
        return self._remote_dir

    def _copy(self, files: Sequence[Path], dest: str) -> None:
        files = [f for f in files if (str(f), dest) not in self._copied]
        if not files:
            return
        proc = subprocess.run(["scp", "-q", *self._opts(scp=True), *map(str, files), f"{self.target}:{dest}/"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise EdgeQueryError(f"scp to {self.describe()} failed: {proc.stderr.strip()[-400:]}",
                                 "check free space in /tmp on the device and the ssh settings")
        self._copied.update((str(f), dest) for f in files)

    def fingerprint(self, runtime, threads=1):
        try:
            remote = self._remote()
            self._copy([AGENT], remote)
            pin = " ".join(_taskset(self.cpus))
            proc = self._ssh(f"{pin} {shlex.quote(self.python)} {remote}/agent.py --check {shlex.quote(runtime)} "
                             f"{int(threads)}".strip(), check=False)
            return _check_record(proc, self.describe(), self.python)
        except EdgeQueryError:
            self.close()  # nothing is left behind on a device that cannot be used
            raise

    def time_models(self, folder, models, runtime, protocol):
        remote = self._remote()
        subdirs = sorted({str(Path(m).parent) for m in models} - {"."})
        if subdirs:
            self._ssh("mkdir -p " + " ".join(shlex.quote(f"{remote}/{d}") for d in subdirs))
        req = _request(folder, models, runtime, protocol)
        self._copy([AGENT, req], remote)
        self._copied.discard((str(req), remote))  # the request changes every call
        by_dir: dict[str, list[Path]] = {}
        for m in models:
            by_dir.setdefault(str(Path(m).parent), []).append(folder / m)
        for d, files in by_dir.items():
            self._copy(files, remote if d == "." else f"{remote}/{d}")
        pin = " ".join(_taskset(self.cpus))
        command = f"{pin} {shlex.quote(self.python)} {remote}/agent.py {remote}/request.json".strip()
        proc = subprocess.Popen(["ssh", *self._opts(), self.target, command], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        yield from _agent_records(proc, self.describe())

    def close(self):
        if self._remote_dir:
            self._ssh(f"rm -rf {shlex.quote(self._remote_dir)}", check=False)
            self._remote_dir = None
            self._copied.clear()
        if self._control is not None:
            subprocess.run(["ssh", *self._opts(), "-O", "exit", self.target], capture_output=True)
            self._control.cleanup()
            self._control = None


# --------------------------------------------------------------------------- adb + benchmark_model

_COUNT = re.compile(r"count=(\d+)(?: first=(\d+))? curr=(\d+)(?: min=(\d+) max=(\d+) avg=([0-9.eE+-]+) std=(\d+))?")
_SUMMARY = re.compile(r"Inference timings in us: .*?Inference \(avg\): ([0-9.eE+-]+)")
_OLD_SUMMARY = re.compile(r"Average inference timings in us: .*?no stats: ([0-9.eE+-]+)")


def parse_benchmark_model(log: str) -> dict:
    """Timing of the timed runs from LiteRT ``benchmark_model``'s log.

    The tool prints a ``count=... first=... curr=... min=... max=... avg=... std=...``
    line for the warm-up runs and one for the timed runs (``count=N curr=X(all same)``
    when every run took equally long), then a summary line - ``Inference timings in us:
    Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...`` (older
    TensorFlow builds: ``Average inference timings in us: Warmup: ..., no stats: ...``).
    The tool reports no median or percentiles, so the LUT records the **mean** (and
    min/max as the spread) for adb devices - said in the file's protocol.
    """
    counts = _COUNT.findall(log)
    summary = _SUMMARY.search(log) or _OLD_SUMMARY.search(log)
    if not counts and not summary:
        tail = "\n".join(log.strip().splitlines()[-5:])
        raise EdgeQueryError(f"benchmark_model printed no timings; its last lines:\n{tail}",
                             "run it by hand with the same --graph to see why (a missing op, a bad file?)")
    out: dict = {}
    if counts:
        n, _first, curr, lo, hi, avg, std = counts[-1]   # the last count= line is the timed runs
        mean = float(avg) if avg else float(curr)
        out = {"mean_ms": mean / 1e3, "min_ms": float(lo or curr) / 1e3, "max_ms": float(hi or curr) / 1e3,
               "std_ms": float(std or 0) / 1e3, "runs": int(n)}
    if summary:
        out["mean_ms"] = float(summary.group(1)) / 1e3
    out.setdefault("runs", 0)
    out["median_ms"] = round(out["mean_ms"], 5)       # the statistic the LUT uses (see docstring)
    out["p10_ms"] = round(out.get("min_ms", out["mean_ms"]), 5)
    out["p90_ms"] = round(out.get("max_ms", out["mean_ms"]), 5)
    return out


@dataclass
class AdbDevice(Device):
    """An Android device over ``adb``: LiteRT ``benchmark_model`` times each pushed ``.tflite``."""

    statistic = "mean of benchmark_model's timed runs (lowest of the rounds' means; it reports no median)"
    spread = "min, max of benchmark_model's timed runs"
    clock = "benchmark_model's own timer on the phone"

    serial: str | None = None
    binary: str | None = None
    cpumask: str | None = None
    remote_dir: str = "/data/local/tmp/edgequery"
    adb: str = "adb"
    _pushed: set = field(default_factory=set, repr=False)

    @property
    def name(self) -> str:
        return "adb" + (f"-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.serial)}" if self.serial else "")

    def describe(self) -> str:
        return "adb" + (f":{self.serial}" if self.serial else "")

    def _cmd(self, *args: str) -> list[str]:
        return [self.adb, *(["-s", self.serial] if self.serial else []), *args]

    def _run(self, *args: str, check: bool = True) -> str:
        if not shutil.which(self.adb):
            raise EdgeQueryError("adb is not installed here", "apt-get install adb (Android platform tools)")
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise EdgeQueryError(f"adb {' '.join(args[:2])} on {self.describe()} failed: "
                                 f"{(proc.stderr or proc.stdout).strip()[-400:]}",
                                 "check `adb devices` lists the phone (authorised), or pass adb:SERIAL")
        return proc.stdout

    def _prepare(self, runtime: str) -> None:
        """Refuse what adb cannot time; push ``benchmark_model`` (once)."""
        if runtime != "litert":
            raise EdgeQueryError(f"adb devices time with LiteRT's benchmark_model; runtime {runtime!r} is not "
                                 "supported there", "use --runtime litert for adb devices")
        if not self.binary:
            raise EdgeQueryError("adb profiling needs LiteRT's benchmark_model binary for the phone's CPU",
                                 "pass --benchmark-binary PATH (android_aarch64 build of LiteRT's benchmark_model)")
        if not Path(self.binary).is_file():
            raise EdgeQueryError(f"--benchmark-binary {self.binary} does not exist", "give the path of the binary")
        if f"{self.remote_dir}/benchmark_model" not in self._pushed:
            self._run("shell", f"mkdir -p {self.remote_dir}")
            self._push(Path(self.binary), "benchmark_model")
            self._run("shell", f"chmod 755 {self.remote_dir}/benchmark_model")

    def _push(self, local: Path, remote_name: str) -> str:
        dest = f"{self.remote_dir}/{remote_name}"
        if dest not in self._pushed:
            self._run("push", str(local), dest)
            self._pushed.add(dest)
        return dest

    def _caches(self) -> dict[str, str]:
        """CPU 0's cache sizes from the phone's sysfs (``{}`` where it has none)."""
        out = self._run("shell", "for d in /sys/devices/system/cpu/cpu0/cache/index*; do "
                                 "echo $(cat $d/level) $(cat $d/type) $(cat $d/size); done", check=False)
        caches = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].isdigit():
                caches[f"L{parts[0]}" + {"Data": "d", "Instruction": "i"}.get(parts[1], "")] = parts[2]
        return caches

    def fingerprint(self, runtime, threads=1):
        """From what the phone tells: ``getprop``, ``/proc/cpuinfo``, ``nproc``, ``uname``; the runtime is
        the ``benchmark_model`` binary, named by its SHA-256 (another build is another runtime)."""
        self._prepare(runtime)
        prop = {k: self._run("shell", f"getprop {p}").strip() for k, p in
                {"model": "ro.product.model", "soc": "ro.soc.model", "platform": "ro.board.platform",
                 "android": "ro.build.version.release"}.items()}
        hardware, flags = parse_cpuinfo(self._run("shell", "cat /proc/cpuinfo").splitlines())
        cores = self._run("shell", "nproc", check=False).strip()
        return Fingerprint(cpu=prop["soc"] or prop["platform"] or hardware or prop["model"] or "unknown",
                           cores=int(cores) if cores.isdigit() else None,
                           machine=self._run("shell", "uname -m").strip() or None, isa=isa_flags(flags),
                           caches=self._caches(), os=f"Android {prop['android']}".strip(),
                           kernel=self._run("shell", "uname -r").strip() or None,
                           device_model=prop["model"] or None, host=self.serial, python=None, runtime="litert",
                           runtime_version=f"benchmark_model sha256:{sha256_file(self.binary)[:16]}",
                           threads=int(threads))

    def time_models(self, folder, models, runtime, protocol):
        if protocol.get("flush_kb"):
            raise EdgeQueryError("benchmark_model (the adb device's timer) cannot flush caches between runs",
                                 "profile the phone without --flush-kb")
        self._prepare(runtime)
        pin = f"taskset {self.cpumask} " if self.cpumask else ""
        remote = {m: self._push(folder / m, m.replace("/", "_")) for m in models}
        rounds: dict[str, list[dict]] = {m: [] for m in models}
        failed: dict[str, str] = {}
        for _ in range(max(1, int(protocol.get("rounds", 1)))):  # round-robin, as the agent does
            for model in models:
                if model in failed:
                    continue
                log = self._run("shell", f"{pin}{self.remote_dir}/benchmark_model --graph={remote[model]} "
                                         f"--num_threads={protocol['threads']} --warmup_runs={protocol['warmup']} "
                                         f"--num_runs={protocol['runs']} --min_secs={protocol['min_seconds']}")
                try:
                    rounds[model].append(parse_benchmark_model(log))
                except EdgeQueryError as exc:
                    failed[model] = str(exc)
        for model in models:
            if model in failed:
                yield {"type": "error", "model": model, "error": failed[model]}
                continue
            best = min(rounds[model], key=lambda r: r["median_ms"])
            yield {"type": "result", "model": model, **best, "runs": sum(r["runs"] for r in rounds[model]),
                   "round_medians_ms": [r["median_ms"] for r in rounds[model]]}

    def close(self):
        if self._pushed:
            subprocess.run(self._cmd("shell", f"rm -rf {self.remote_dir}"), capture_output=True)
            self._pushed.clear()
