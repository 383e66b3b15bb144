"""Latency tables: block enumeration, real profiling on the local device (onnxruntime, litert,
torch), resume, validation, the ssh device against a real sshd on 127.0.0.1, and the adb
device's command sequence and ``benchmark_model`` parsing.

No phone is attached here: the adb tests run a fake ``adb`` executable that records its
arguments and answers with real ``benchmark_model`` output formats.  Everything else runs
for real (real converters, real runtimes, a real sshd).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgequery.cli import main
from edgequery.errors import EdgeQueryError
from edgequery.latency import LUT, load_lut, parse_benchmark_model, parse_device, profile, space_blocks, validate
from edgequery.latency.devices import AdbDevice, LocalDevice, SSHDevice
from edgequery.latency.profiler import Protocol, accuracy, fit_calibration
from edgequery.spaces import get_space

FAST = Protocol(threads=1, warmup=2, runs=5, min_seconds=0.0, rounds=2)


def tiny_space():
    """An mbv3 space with one choice per block and two depths: 15 distinct blocks, 32 archs."""
    return get_space("mbv3", resolutions=(24,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))


@pytest.fixture(scope="module")
def onnx_lut(tmp_path_factory):
    out = tmp_path_factory.mktemp("lut") / "lut.json"
    return profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, out, jobs=1, log=lambda m: None)


# --------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("name", ["mbv3", "shufflenet"])
def test_space_blocks_cover_every_sampled_arch(name):
    space = get_space(name)
    res = space.resolutions[-1]
    keys = {b.key for b in space_blocks(space, [res])}
    assert len(keys) == len(space_blocks(space, [res]))  # distinct
    rng = np.random.default_rng(1)
    for _ in range(60):
        arch = space.sample(rng)
        if arch.resolution == res:
            assert {b.key for b in space.blocks(arch)} <= keys


def test_space_blocks_refuse_a_resolution_outside_the_space():
    with pytest.raises(EdgeQueryError, match="no input resolution 64"):
        space_blocks(get_space("mbv3"), [64])


# --------------------------------------------------------------------------- local profiling


def test_local_onnxruntime_lut_is_complete_and_predicts(onnx_lut):
    space = tiny_space()
    assert onnx_lut.complete and set(onnx_lut.blocks) == {b.key for b in space_blocks(space, [24])}
    for st in [*onnx_lut.blocks.values(), onnx_lut.overhead]:
        assert 0 < st["p10_ms"] <= st["median_ms"] and st["runs"] >= 2 * FAST.runs
    d = json.loads(onnx_lut.path.read_text())
    assert d["device"]["spec"] == "local" and d["device"]["cpu"] and d["runtime_version"].startswith("onnxruntime")
    assert d["threads"] == 1 and d["protocol"]["rounds"] == 2 and d["measured_at"]
    arch = space.sample(np.random.default_rng(0))
    keys = [b.key for b in space.blocks(arch)]
    expected = onnx_lut.overhead_ms + sum(onnx_lut.blocks[k]["median_ms"] - onnx_lut.overhead_ms for k in keys)
    assert onnx_lut.predict(arch, space) == pytest.approx(expected)
    assert load_lut(onnx_lut.path, space=space).predict(str(arch), space) == pytest.approx(expected)


def test_prediction_applies_the_calibration(onnx_lut):
    lut = LUT.from_dict(onnx_lut.to_dict())
    space = tiny_space()
    arch = space.smallest()
    raw = lut.predict(arch, space)
    lut.calibration = {"scale": 1.5, "offset_ms": 0.01}
    assert lut.predict(arch, space) == pytest.approx(1.5 * raw + 0.01)
    assert lut.breakdown(space, arch)["raw_ms"] == pytest.approx(raw, abs=1e-5)


def test_profile_resumes_after_an_interruption(tmp_path, onnx_lut):
    """Kill the timing after 5 results: the LUT on disk keeps them, a rerun measures only the rest."""

    class Dying(LocalDevice):
        def time_models(self, folder, models, runtime, protocol):
            for i, rec in enumerate(super().time_models(folder, models, runtime, protocol)):
                if i == 6:  # info + overhead already done in the first call; 5 blocks here
                    raise KeyboardInterrupt
                yield rec

    out = tmp_path / "lut.json"
    shutil.copytree(onnx_lut.path.with_name(onnx_lut.path.name + ".work"), tmp_path / "lut.json.work")
    with pytest.raises(KeyboardInterrupt):
        profile(tiny_space(), [24], Dying(), "onnxruntime", FAST, out, log=lambda m: None)
    partial = load_lut(out)
    assert not partial.complete and 0 < len(partial.blocks) < 15 and partial.overhead
    with pytest.raises(EdgeQueryError, match="lacks .* block.*did not finish"):
        load_lut(out, space=tiny_space())
    logs = []
    done = profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, out, log=logs.append)
    assert any(f"{len(partial.blocks)} of 15 blocks already measured" in m for m in logs)
    assert done.complete and len(done.blocks) == 15
    assert all(done.blocks[k] == v for k, v in partial.blocks.items())  # kept, not re-measured
    # other settings over the same file are refused, nothing is lost
    with pytest.raises(EdgeQueryError, match="other settings"):
        profile(tiny_space(), [24], parse_device("local"), "onnxruntime", Protocol(threads=2), out)
    assert load_lut(out).blocks == done.blocks


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["litert", "torch"])
def test_local_profile_and_validate_other_runtimes(tmp_path, runtime):
    out = tmp_path / f"lut-{runtime}.json"
    lut = profile(tiny_space(), [24], parse_device("local"), runtime, FAST, out, jobs=2, log=lambda m: None)
    assert lut.complete and lut.runtime_version and lut.overhead_ms > 0
    report = validate(load_lut(out), tiny_space(), parse_device("local"), n=3, calibrate=True, jobs=2,
                      log=lambda m: None)
    assert report["n"] == 3 and len(report["nets"]) == 3 and all(n["measured_ms"] > 0 for n in report["nets"])
    assert load_lut(out).calibration == report["calibration"]


def test_validate_reports_accuracy_and_stores_calibration(onnx_lut, tmp_path):
    path = tmp_path / "lut.json"
    LUT.from_dict(onnx_lut.to_dict()).save(path)
    shutil.copytree(onnx_lut.path.with_name(onnx_lut.path.name + ".work"), tmp_path / "lut.json.work")
    rc = main(["profile", "validate", "--lut", str(path), "--n", "10", "--calibrate", "--runs", "5",
               "--min-seconds", "0", "--rounds", "1", "--jobs", "1"])
    assert rc == 0
    report = json.loads((tmp_path / "lut.validation.json").read_text())
    assert report["n"] == 10 and {"within_5pct", "within_10pct", "mape_pct", "spearman_rho"} <= set(
        report["uncalibrated"])
    assert "calibrated_cross_validated" in report and report["calibrated_in_sample"]["n"] == 10
    assert load_lut(path).calibration["fitted_on"] == 10


def test_nets_of_a_space_at_another_resolution_are_measured(tmp_path):
    """A space configured for an input size outside the defaults (as lut_accuracy does for 224 px)
    exports and times its whole nets; parsed in the default space the same arch is refused."""
    from edgequery.latency.profiler import measure_archs

    space = get_space("mbv3", resolutions=(48,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2,))
    arch = space.smallest()
    with pytest.raises(EdgeQueryError, match="resolution"):
        measure_archs([arch], parse_device("local"), "onnxruntime", FAST, tmp_path / "default", jobs=1)
    timed = measure_archs([arch], parse_device("local"), "onnxruntime", FAST, tmp_path / "own", jobs=1, space=space)
    assert len(timed) == 1 and timed[0]["median_ms"] > 0


def test_accuracy_and_calibration_arithmetic():
    acc = accuracy([1.0, 1.04, 1.2, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert acc["within_5pct"] == 0.5 and acc["within_10pct"] == 0.5 and acc["mape_pct"] == pytest.approx(31.0)
    cal = fit_calibration([1.0, 2.0, 3.0], [2.5, 4.5, 6.5])
    assert cal["scale"] == pytest.approx(2.0) and cal["offset_ms"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- refusals


def test_lut_refuses_another_space_runtime_resolution_or_missing_blocks(onnx_lut, tmp_path):
    path = onnx_lut.path
    with pytest.raises(EdgeQueryError, match="search space 'mbv3', not 'shufflenet'"):
        load_lut(path, space=get_space("shufflenet"))
    with pytest.raises(EdgeQueryError, match="another mbv3 space"):
        load_lut(path, space=get_space("mbv3"))
    with pytest.raises(EdgeQueryError, match="onnxruntime latencies, not litert"):
        load_lut(path, runtime="litert")
    with pytest.raises(EdgeQueryError, match="not 32"):
        load_lut(path, resolution=32)
    wider = get_space("mbv3", resolutions=(24, 32), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))
    with pytest.raises(EdgeQueryError, match="covers input resolution"):
        onnx_lut.predict("mbv3:r32,w0.5,k3e3-k3e3,k3e3-k3e3,k3e3-k3e3,k3e3-k3e3,k3e3-k3e3", wider)
    d = onnx_lut.to_dict()
    d["blocks"].pop(next(iter(d["blocks"])))
    (tmp_path / "holey.json").write_text(json.dumps(d))
    with pytest.raises(EdgeQueryError, match="lacks 1 block"):
        load_lut(tmp_path / "holey.json", space=tiny_space())
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(EdgeQueryError, match="not an edgequery latency table"):
        load_lut(tmp_path / "other.json")
    with pytest.raises(EdgeQueryError, match="does not exist"):
        load_lut(tmp_path / "nope.json")


def test_device_strings():
    assert isinstance(parse_device("local"), LocalDevice) and parse_device("local?cpus=0").cpus == "0"
    d = parse_device("ssh://pi@board.local:2222?python=/opt/py/bin/python3&identity=~/.ssh/k")
    assert isinstance(d, SSHDevice) and (d.user, d.host, d.port, d.python) == ("pi", "board.local", 2222,
                                                                              "/opt/py/bin/python3")
    a = parse_device("adb:R58M?cpumask=f0", benchmark_binary="/x/benchmark_model")
    assert isinstance(a, AdbDevice) and (a.serial, a.cpumask, a.binary) == ("R58M", "f0", "/x/benchmark_model")
    for bad, msg in [("phone", "unknown device"), ("ssh://", "names no host"), ("local?cpu=1", "unknown option"),
                     ("ssh://h:port", "bad port")]:
        with pytest.raises(EdgeQueryError, match=msg):
            parse_device(bad)


def test_cli_show_and_help(onnx_lut, capsys):
    assert main(["profile", "show", str(onnx_lut.path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "15 blocks measured, 0 missing" in out and "slowest 3 blocks" in out
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    assert "ssh://user@host" in capsys.readouterr().out


# --------------------------------------------------------------------------- ssh: a real sshd on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with keys in a temp dir (Debian openssh-server)."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.path.exists(sshd_bin), "sshd is missing: apt-get install openssh-server (the README's test command does)"
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    for f in ("host", "client", "authorized_keys"):
        os.chmod(d / f, stat.S_IRUSR | stat.S_IWUSR)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    (d / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {d / 'client'}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  LogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege-separation directory
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
    yield {"port": port, "config": d / "ssh_config", "user": getpass.getuser()}
    proc.terminate()
    proc.wait(timeout=10)


def _remote_agent_dirs(sshd) -> set[str]:
    """The agent's temp folders on the ssh host (other runs may have left some: compare before/after)."""
    ls = subprocess.run(["ssh", "-F", str(sshd["config"]), "-p", str(sshd["port"]), "127.0.0.1",
                         "ls -d /tmp/edgequery-agent.* 2>/dev/null"], capture_output=True, text=True)
    return set(ls.stdout.split())


def test_ssh_device_profiles_over_a_real_sshd(sshd, tmp_path, onnx_lut):
    before = _remote_agent_dirs(sshd)
    spec = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?python={sys.executable}&config={sshd['config']}"
    out = tmp_path / "lut-ssh.json"
    shutil.copytree(onnx_lut.path.with_name(onnx_lut.path.name + ".work"), tmp_path / "lut-ssh.json.work")
    lut = profile(tiny_space(), [24], parse_device(spec), "onnxruntime", FAST, out, log=lambda m: None)
    assert lut.complete and set(lut.blocks) == set(onnx_lut.blocks)
    assert lut.device["spec"] == f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}" and lut.device["cpu"]
    assert _remote_agent_dirs(sshd) == before  # the remote temp folder is removed when done


def test_ssh_device_names_what_is_missing_on_the_remote(sshd, tmp_path):
    before = _remote_agent_dirs(sshd)
    base = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?config={sshd['config']}"
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec /usr/bin/env -i {sys.executable} -I -S \"$@\"\n")  # no site-packages
    bare.chmod(0o755)
    with pytest.raises(EdgeQueryError, match="onnxruntime cannot be imported.*install it there"):
        parse_device(f"{base}&python={bare}").supports("onnxruntime")
    with pytest.raises(EdgeQueryError, match="cannot run"):
        parse_device(f"{base}&python=/nonexistent/python3").supports("onnxruntime")
    with pytest.raises(EdgeQueryError, match="ssh .* failed"):
        parse_device(f"ssh://nobody-here@127.0.0.1:{_free_port()}").supports("onnxruntime")
    assert _remote_agent_dirs(sshd) == before  # a device that cannot be used leaves nothing behind


# --------------------------------------------------------------------------- adb (no phone here: a fake adb)

NEW_LOG = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/edgequery/blocks_x.tflite]
INFO: Loaded model /data/local/tmp/edgequery/blocks_x.tflite
INFO: The input model file size (MB): 0.012
INFO: Initialized session in 3.1ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=1012 first=640 curr=450 min=441 max=905 avg=470.2 std=31

INFO: Running benchmark for at least 50 iterations and at least 0.1 seconds but terminate if exceeding 150 seconds.
INFO: count=220 first=455 curr=452 min=440 max=610 avg=456.5 std=12

INFO: Inference timings in us: Init: 3100, First inference: 640, Warmup (avg): 470.2, Inference (avg): 456.5
INFO: Memory footprint delta from the start of the tool (MB): init=2.1 overall=3.4
"""
OLD_LOG = """\
STARTING!
Num runs: [50]
count=50 first=1064 curr=1004 min=990 max=1100 avg=1007.03 std=20
Average inference timings in us: Warmup: 1046.21, Init: 5685, no stats: 1007.03
"""
ALL_SAME_LOG = "INFO: count=1 curr=77(all same)\nINFO: count=50 curr=80(all same)\n"


def test_parse_benchmark_model_formats():
    new = parse_benchmark_model(NEW_LOG)
    assert new["median_ms"] == pytest.approx(0.4565) and new["runs"] == 220
    assert new["p10_ms"] == pytest.approx(0.440) and new["p90_ms"] == pytest.approx(0.610)
    assert parse_benchmark_model(OLD_LOG)["median_ms"] == pytest.approx(1.00703)
    same = parse_benchmark_model(ALL_SAME_LOG)
    assert same["median_ms"] == pytest.approx(0.080) and same["runs"] == 50
    with pytest.raises(EdgeQueryError, match="(?s)printed no timings.*Failed to apply"):
        parse_benchmark_model("ERROR: Failed to apply delegate.\nBenchmarking failed.\n")


FAKE_ADB = r"""#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_ADB_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
if args[0] == "shell" and "benchmark_model" in args[1] and "--graph=" in args[1]:
    sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"]).read())
elif args[0] == "shell" and args[1].startswith("getprop"):
    print({"ro.product.model": "Pixel 7", "ro.soc.model": "Tensor G2", "ro.build.version.release": "14",
           "ro.product.cpu.abi": "arm64-v8a"}[args[1].split()[1]])
elif args[0] == "shell" and "cpu/possible" in args[1]:
    print("0-7")
"""


def test_adb_device_command_sequence(tmp_path, monkeypatch, onnx_lut):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "adb").write_text(FAKE_ADB.replace("/usr/bin/env python3", sys.executable))
    (bindir / "adb").chmod(0o755)
    (tmp_path / "out.txt").write_text(NEW_LOG)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(tmp_path / "out.txt"))
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    folder = tmp_path / "files"
    (folder / "blocks").mkdir(parents=True)
    for name in ("a", "b"):
        (folder / "blocks" / f"{name}.tflite").write_bytes(b"TFL3")
    dev = parse_device("adb:SERIAL1?cpumask=f0", benchmark_binary=str(binary))
    with pytest.raises(EdgeQueryError, match="use --runtime litert"):
        dev.supports("onnxruntime")
    recs = list(dev.time_models(folder, ["blocks/a.tflite", "blocks/b.tflite"], "litert",
                                {"threads": 2, "warmup": 5, "runs": 60, "min_seconds": 0.1, "rounds": 2}))
    dev.close()
    assert recs[0]["type"] == "info" and recs[0]["device_model"] == "Pixel 7" and recs[0]["cores"] == "0-7"
    assert [r["model"] for r in recs[1:]] == ["blocks/a.tflite", "blocks/b.tflite"]
    assert all(r["median_ms"] == pytest.approx(0.4565) and r["runs"] == 440 for r in recs[1:])
    calls = [json.loads(x) for x in (tmp_path / "adb.log").read_text().splitlines()]
    assert all(c[:2] == ["-s", "SERIAL1"] for c in calls)
    cmds = [" ".join(c[2:]) for c in calls]
    assert cmds.index(f"push {binary} /data/local/tmp/edgequery/benchmark_model") < \
        cmds.index("shell chmod 755 /data/local/tmp/edgequery/benchmark_model")
    assert f"push {folder / 'blocks/a.tflite'} /data/local/tmp/edgequery/blocks_a.tflite" in cmds
    runs = [c for c in cmds if "--graph=" in c]
    assert len(runs) == 4  # 2 files x 2 rounds, round-robin
    assert runs[0] == ("shell taskset f0 /data/local/tmp/edgequery/benchmark_model "
                       "--graph=/data/local/tmp/edgequery/blocks_a.tflite --num_threads=2 --warmup_runs=5 "
                       "--num_runs=60 --min_secs=0.1")
    assert cmds[-1] == "shell rm -rf /data/local/tmp/edgequery"


def test_adb_device_without_binary_or_adb_says_how(tmp_path, monkeypatch):
    with pytest.raises(EdgeQueryError, match="--benchmark-binary"):
        parse_device("adb").supports("litert")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgeQueryError, match="adb is not installed"):
        parse_device("adb", benchmark_binary=__file__).supports("litert")
