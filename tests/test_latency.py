"""Latency tables: block enumeration, real profiling on the local device (onnxruntime, litert,
torch), resume, validation, the device fingerprint (a LUT of another device is refused
unless --allow-other-device, and that is recorded), the LUT file format (version 1
migrates), a non-default space from the CLI, the ssh device against a real sshd on
127.0.0.1, an emulated aarch64 board (qemu user mode, the arm64 builds of the runtimes), and the adb device's command sequence, fingerprint and ``benchmark_model`` parsing.

No phone is attached here: the adb tests run a fake ``adb`` executable that records its
arguments and answers with real ``benchmark_model`` output formats.  Everything else runs
for real (real converters, real runtimes, a real sshd).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgequery.artifacts.compat import check_compatible
from edgequery.artifacts.fingerprint import Fingerprint
from edgequery.artifacts.lut import Calibration
from edgequery.commands import main
from edgequery.errors import EdgeQueryError
from edgequery.latency import (LUT, Protocol, accuracy, fit_calibration, load_lut, measure_archs, parse_benchmark_model,
                               parse_device, profile, score_calibration, space_blocks, validate)
from edgequery.latency.build import IDENTITY, file_name
from edgequery.latency.devices import AdbDevice, LocalDevice, SSHDevice
from edgequery.spaces import get_space

FAST = Protocol(threads=1, warmup=2, runs=5, min_seconds=0.0, rounds=2)


def tiny_space():
    """An mbv3 space with one choice per block and two depths: 15 distinct blocks, 32 archs."""
    return get_space("mbv3", resolutions=(24,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2, 3))


@pytest.fixture(scope="module")
def onnx_lut(tmp_path_factory):
    out = tmp_path_factory.mktemp("lut") / "lut.json"
    return profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, out, jobs=1)


def work_of(lut_path: Path) -> Path:
    return lut_path.with_name(lut_path.name + ".work")


def copy_lut(lut: LUT, dest: Path, **changes) -> Path:
    """``lut`` written to ``dest`` with top-level ``changes``; its work folder is shared (a symlink), so
    model files one test exports (files are named by what they hold) are reused by the next."""
    dest.write_text(json.dumps({**lut.to_data(), **changes}))
    work_of(dest).symlink_to(work_of(lut.path), target_is_directory=True)
    return dest


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
        assert 0 < st.p10_ms <= st.median_ms and st.runs >= 2 * FAST.runs
    d = json.loads(onnx_lut.path.read_text())
    assert d["format"] == "edgequery-lut" and d["format_version"] == 2 and "version" not in d
    assert d["device"] == "local" and d["runtime_version"].startswith("onnxruntime")
    here = Fingerprint.local("onnxruntime", 1)
    assert Fingerprint(**d["fingerprint"]).differences(here) == [] and d["fingerprint"]["isa"] == here.isa
    assert d["threads"] == 1 and d["protocol"]["rounds"] == 2 and d["measured_at"] and d["other_devices"] == []
    arch = space.sample(np.random.default_rng(0))
    keys = [b.key for b in space.blocks(arch)]
    expected = onnx_lut.overhead_ms + sum(onnx_lut.blocks[k].median_ms - onnx_lut.overhead_ms for k in keys)
    assert onnx_lut.predict(arch, space) == pytest.approx(expected)
    assert load_lut(onnx_lut.path, space=space).predict(str(arch), space) == pytest.approx(expected)


def test_prediction_applies_the_calibration(onnx_lut):
    lut = LUT.parse_data(onnx_lut.to_data())
    space = tiny_space()
    arch = space.smallest()
    raw = lut.predict(arch, space)
    lut.calibration = Calibration(scale=1.5, offset_ms=0.01, fit="by hand", fitted_on=3, fitted_at="now")
    assert lut.predict(arch, space) == pytest.approx(1.5 * raw + 0.01)
    assert lut.breakdown(space, arch)["raw_ms"] == pytest.approx(raw, abs=1e-5)


def test_profile_resumes_after_an_interruption(tmp_path, onnx_lut, caplog):
    """Kill the timing after 5 results: the LUT on disk keeps them, a rerun measures only the rest."""

    class Dying(LocalDevice):
        def time_models(self, folder, models, runtime, protocol):
            for i, rec in enumerate(super().time_models(folder, models, runtime, protocol)):
                if i == 6:  # info + overhead already done in the first call; 5 blocks here
                    raise KeyboardInterrupt
                yield rec

    out = tmp_path / "lut.json"
    shutil.copytree(work_of(onnx_lut.path), work_of(out))
    with pytest.raises(KeyboardInterrupt):
        profile(tiny_space(), [24], Dying(), "onnxruntime", FAST, out)
    partial = load_lut(out)
    assert not partial.complete and 0 < len(partial.blocks) < 15 and partial.overhead
    with pytest.raises(EdgeQueryError, match="lacks .* block.*did not finish"):
        load_lut(out, space=tiny_space())
    with caplog.at_level("INFO", logger="edgequery"):
        done = profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, out)
    assert f"{len(partial.blocks)} of 15 blocks already measured" in caplog.text
    assert done.complete and len(done.blocks) == 15
    assert all(done.blocks[k] == v for k, v in partial.blocks.items())  # kept, not re-measured
    # other settings over the same file are refused, nothing is lost
    with pytest.raises(EdgeQueryError, match="other settings .*threads: 1 vs 2"):
        profile(tiny_space(), [24], parse_device("local"), "onnxruntime", Protocol(threads=2), out)
    assert load_lut(out).blocks == done.blocks



def test_rounds_over_passes_time_every_file_once_per_pass_and_resume_within_a_pass(tmp_path, onnx_lut, caplog):
    """--rounds-over pass: each round is one agent run per chunk over *all* files (so a file's rounds lie a
    pass apart); killed in the second pass, a rerun times only what that pass still lacked, from the journal."""
    requests: list[tuple[list[str], int]] = []

    class Counting(LocalDevice):
        die_after: int | None = None

        def time_models(self, folder, models, runtime, protocol):
            requests.append((list(models), protocol["rounds"]))
            for i, rec in enumerate(super().time_models(folder, models, runtime, protocol)):
                if self.die_after is not None and len(requests) == self.die_after and i == 4:
                    raise KeyboardInterrupt
                yield rec

    out = tmp_path / "lut.json"
    shutil.copytree(work_of(onnx_lut.path), work_of(out))
    spread = replace(FAST, rounds=2, rounds_over="pass")
    dying = Counting()
    dying.die_after = 4   # the overhead's two passes, the blocks' pass 1 (15: one chunk), 3 results into pass 2
    with pytest.raises(KeyboardInterrupt):
        profile(tiny_space(), [24], dying, "onnxruntime", spread, out)
    journal = work_of(out) / "onnxruntime" / "rounds.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(lines) == 15 + 3 and all(line["protocol"]["rounds"] == 1 for line in lines)
    partial = load_lut(out)
    assert len(partial.blocks) == 3 and partial.protocol.rounds_over == "pass"
    assert all(rounds == 1 for _, rounds in requests)   # one round per agent run
    requests.clear()
    with caplog.at_level("INFO", logger="edgequery"):
        done = profile(tiny_space(), [24], Counting(), "onnxruntime", spread, out)
    assert "18 round(s) of 15 file(s) already timed" in caplog.text
    assert [len(models) for models, _ in requests] == [12]   # only what pass 2 still lacked
    assert done.complete and len(done.blocks) == 15 and not journal.exists()
    assert all(st.runs >= 2 * spread.runs and st.p10_ms <= st.median_ms <= st.p90_ms for st in done.blocks.values())
    assert json.loads(out.read_text())["protocol"]["rounds_over"] == "pass" and Protocol.of(done).rounds_over == "pass"
    assert "rounds_over" not in json.loads(onnx_lut.path.read_text())["protocol"]   # older tables read as before
    assert Protocol.of(onnx_lut).rounds_over == "chunk"
    with pytest.raises(EdgeQueryError, match="other settings .*rounds_over: pass vs None"):
        profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, out)
    with pytest.raises(EdgeQueryError, match="rounds-over chunk or pass"):
        replace(FAST, rounds_over="day").check()


def _converters_of(pid: int) -> list[int]:
    """The converter worker processes (``python -m edgequery.latency.blocks``) whose parent is ``pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and b"edgequery.latency.blocks" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):  # it ended while we looked
            pass
    return found


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_a_killed_profile_stops_its_converters_and_says_a_rerun_resumes(tmp_path):
    """`kill` (SIGTERM) stops `edgequery profile` as Ctrl-C does: the converter processes it started end
    with it (Python's default for SIGTERM would exit at once and leave them running)."""
    opts = ["--space", "mbv3", "--space-option", "resolutions=40", "--space-option", "widths=0.5",
            "--space-option", "depths=2", "--space-option", "kernels=3", "--space-option", "expands=3"]
    cmd = [sys.executable, "-m", "edgequery.commands", "profile", *opts, "--resolution", "40", "--runtime",
           "onnxruntime", "--jobs", "2", "--out", str(tmp_path / "lut.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, workers = time.time() + 120, []
        while time.time() < deadline and proc.poll() is None and len(workers) < 2:
            workers = _converters_of(proc.pid)
            time.sleep(0.1)
        assert len(workers) == 2, "the profile's two converter processes never started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
        assert "interrupted" in proc.stderr.read()
        deadline = time.time() + 10
        while time.time() < deadline and any(map(_running, workers)):
            time.sleep(0.1)
        assert not [w for w in workers if _running(w)], "converters outlived the killed profile"
    finally:
        if proc.poll() is None:
            proc.kill()

@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["litert", "torch"])
def test_local_profile_and_validate_other_runtimes(tmp_path, runtime):
    out = tmp_path / f"lut-{runtime}.json"
    jobs = 1 if runtime == "torch" else 2  # torch.export is cheap: worker processes would cost more than they save
    lut = profile(tiny_space(), [24], parse_device("local"), runtime, FAST, out, jobs=jobs)
    assert lut.complete and lut.runtime_version and lut.overhead_ms > 0
    assert lut.fingerprint.runtime == runtime and lut.fingerprint.runtime_version == lut.runtime_version
    report = validate(load_lut(out), tiny_space(), parse_device("local"), n=3, calibrate=True, jobs=jobs)
    assert report["n"] == 3 and len(report["nets"]) == 3 and all(n["measured_ms"] > 0 for n in report["nets"])
    assert load_lut(out).calibration.model_dump(mode="json") == report["calibration"]
    if runtime == "litert":
        litert_blocks_run_no_layout_transpose_their_net_does_not(out, lut)


def litert_blocks_run_no_layout_transpose_their_net_does_not(out: Path, lut: LUT):
    """LiteRT block files are channels-last (the stem takes the NCHW image as its net does), so a
    block runs no TRANSPOSE a whole net does not: the stem and the net one each, every other block
    none; the LUT says so, and an older table of NCHW block files is not resumed with these."""
    from ai_edge_litert.interpreter import Interpreter

    def transposes(path: Path) -> int:
        return sum(op["op_name"] == "TRANSPOSE" for op in Interpreter(str(path))._get_ops_details())

    work = work_of(out) / "litert"
    found = {b.kind: transposes(work / file_name(b.key, "litert")) for b in space_blocks(tiny_space(), [24])}
    assert found == {"stem": 1, "mbconv": 0, "lastconv": 0, "pool_mix": 0, "embed": 0}
    assert [transposes(net) for net in sorted((work / "nets").iterdir())] == [1, 1, 1]
    assert lut.protocol.block_layout == "NHWC" and load_lut(out).to_data()["protocol"]["block_layout"] == "NHWC"
    older = load_lut(out).to_data()
    del older["protocol"]["block_layout"]
    older["complete"] = False
    out.write_text(json.dumps(older))
    with pytest.raises(EdgeQueryError, match="other settings .*block_layout: None vs NHWC"):
        profile(tiny_space(), [24], parse_device("local"), "litert", FAST, out)


@pytest.mark.slow
def test_validate_reports_accuracy_and_stores_calibration(onnx_lut, tmp_path):
    path = copy_lut(onnx_lut, tmp_path / "lut.json")
    rc = main(["profile", "validate", "--lut", str(path), "--n", "3", "--calibrate", "--runs", "5",
               "--min-seconds", "0", "--rounds", "1", "--jobs", "1", "--noise-ceiling", "--interleave"])
    assert rc == 0
    report = json.loads((tmp_path / "lut.validation.json").read_text())
    session = report["same_session"]  # the nets' blocks timed again beside them
    distinct = {b.key for a in report["nets"] for b in tiny_space().blocks(tiny_space().parse(a["arch"]))}
    assert session["blocks_timed"] == len(distinct) and len(session["raw_ms"]) == 3 and session["overhead_ms"] > 0
    assert 0.3 < session["table_over_session_block_median"] < 3 and session["uncalibrated"]["n"] == 3
    assert report["n"] == 3 and {"within_5pct", "within_10pct", "mape_pct", "spearman_rho"} <= set(
        report["uncalibrated"])
    assert report["calibrated_in_sample"]["n"] == 3 and "calibrated_cross_validated" not in report  # from 10 on
    assert report["noise_ceiling"]["n"] == 3 and all(n["measured_again_ms"] > 0 for n in report["nets"])
    assert report["allow_other_device"] is False and report["device_notes"] == [] and report["fingerprint"]["cpu"]
    cal = load_lut(path).calibration
    assert cal.fitted_on == 3 and cal.device == "local" and cal.notes == []
    assert cal.model_dump(mode="json") == report["calibration"]


def test_interleaving_puts_each_net_next_to_its_blocks():
    from edgequery.latency.validation import interleaved_order

    order = interleaved_order(["n1", "n2", "n3"], [["a", "b"], ["b", "c", "c"], ["a"]], first=["identity"])
    assert order == ["identity", "n1", "a", "b", "n2", "c", "n3"]  # every file once, each net before its new blocks


@pytest.mark.slow
def test_the_cold_cache_protocol_flushes_before_every_timed_run_and_is_recorded(onnx_lut, tmp_path):
    from edgequery.runtimes import agent

    order = []
    times = agent.time_call(lambda: order.append("call"), runs=3, min_seconds=0, flush=lambda: order.append("flush"))
    assert len(times) == 3 and order == ["flush", "call"] * 3
    assert agent.cache_flusher(0) is None
    out = tmp_path / "lut-cold.json"
    shutil.copytree(work_of(onnx_lut.path), work_of(out))  # the same block files, timed again
    cold = profile(tiny_space(), [24], parse_device("local"), "onnxruntime", replace(FAST, flush_kb=2048), out)
    assert cold.complete and cold.protocol.flush_kb == 2048 and Protocol.of(load_lut(out)).flush_kb == 2048
    assert "flush_kb" not in json.loads(onnx_lut.path.read_text())["protocol"]  # a warm table reads as before
    assert Protocol.of(onnx_lut).flush_kb == 0
    warm = copy_lut(onnx_lut, tmp_path / "warm.json")
    with pytest.raises(EdgeQueryError, match="other settings .*flush_kb: None vs 2048"):
        profile(tiny_space(), [24], parse_device("local"), "onnxruntime", replace(FAST, flush_kb=2048), warm)


def test_calibration_scores_cross_validate_from_ten_nets(onnx_lut):
    """The figures `validate` reports from raw predictions and measurements (no timing needed)."""
    lut = LUT.parse_data(onnx_lut.to_data())
    raw = np.linspace(0.1, 1.2, 12)
    measured = 1.3 * raw + 0.05 + np.random.default_rng(0).normal(0, 0.002, 12)
    report = score_calibration(lut, raw, measured, calibrate=True, device="local")
    cv = report["calibrated_cross_validated"]
    assert cv["n"] == 12 and cv["folds"] == 5 and cv["within_5pct"] == 1.0 and len(cv["predicted_ms"]) == 12
    assert lut.calibration.scale == pytest.approx(1.3, abs=0.02) and report["calibrated_in_sample"]["n"] == 12
    assert "with_stored_calibration" not in report
    assert "with_stored_calibration" in score_calibration(lut, raw, measured, calibrate=False)


def test_the_calibration_that_predicts_better_out_of_sample_is_kept(onnx_lut):
    """Nets whose time follows block count and weight bytes (as onnxruntime's do here) get the
    blocks+weights model, stored and used by ``predict``; nets on a line keep the line."""
    lut = LUT.parse_data(onnx_lut.to_data())
    space = tiny_space()
    archs = [space.sample(np.random.default_rng(i)) for i in range(24)]
    terms = [lut.terms(a, space, weights=True) for a in archs]
    raw, blocks, mb = (np.array(c, float) for c in zip(*terms))
    assert len(set(blocks)) > 2 and mb.min() > 0 and len(set(np.round(mb, 6))) > len(set(blocks))
    noise = 1 + np.random.default_rng(0).normal(0, 0.003, len(archs))
    measured = (0.4 * raw + 0.02 * blocks + 0.5 * mb) * noise
    report = score_calibration(lut, terms, measured, calibrate=True, device="local")
    assert report["calibration_model"] == "blocks+weights" and set(report["models"]) == {
        "scale", "line", "weight-scaled", "blocks+weights"}
    assert report["models"]["blocks+weights"]["calibration_curve"]["10"]["within_5pct"] == 1.0
    assert report["models"]["line"]["calibration_curve"]["10"]["within_5pct"] < 1.0
    cal = lut.calibration
    # (one block choice per stage: raw and block count are nearly collinear, so the split between
    # their coefficients is not identified here - the prediction is)
    assert cal.model == "blocks+weights" and cal.per_weight_mb_ms > 0 and cal.offset_ms == 0.0
    assert report["calibrated_in_sample"]["within_5pct"] == 1.0
    assert lut.predict(archs[3], space) == pytest.approx(measured[3], rel=0.02)  # weights counted for the stored model
    assert "ms/block" in cal.formula() and LUT.parse_data(lut.to_data()).calibration == cal

    line = score_calibration(lut, terms, 1.3 * raw + 0.05, calibrate=True)
    assert line["calibration_model"] == "line" and lut.calibration.model == "line"
    assert lut.calibration.per_block_ms == lut.calibration.per_weight_mb_ms == 0.0
    # nets in proportion to their block sums: every model predicts them, and the one with fewest terms is kept
    factor = score_calibration(lut, terms, 1.3 * raw, calibrate=True)
    assert factor["calibration_model"] == "scale" and lut.calibration.model == "scale"
    assert lut.calibration.scale == pytest.approx(1.3) and lut.calibration.offset_ms == 0.0
    assert lut.calibration.formula() == "1.3000 x raw"
    assert lut.predict(archs[3], space) == pytest.approx(1.3 * raw[3])
    assert "scale_per_weight_mb" not in lut.to_data()["calibration"]   # only the weight-scaled model writes it
    # nets whose blocks all run slower the more weights the net holds: the weight-scaled factor
    slowed = (1.05 + 0.4 * mb) * raw * noise
    scaled = score_calibration(lut, terms, slowed, calibrate=True)
    cal = lut.calibration
    assert scaled["calibration_model"] == "weight-scaled" and cal.scale_per_weight_mb == pytest.approx(0.4, rel=0.1)
    assert scaled["models"]["weight-scaled"]["calibration_curve"]["10"]["within_5pct"] == 1.0
    assert lut.predict(archs[3], space) == pytest.approx(slowed[3], rel=0.02)
    assert "x weight MB) x raw" in cal.formula() and LUT.parse_data(lut.to_data()).calibration == cal
    with pytest.raises(EdgeQueryError, match="blocks"):
        fit_calibration(raw, measured, model="blocks+weights")  # raw sums alone cannot fit it


def test_calibration_curve_scores_each_size_on_the_nets_it_was_not_fitted_on():
    from edgequery.latency.validation import calibration_curve, noise_ceiling

    rng = np.random.default_rng(1)
    raw = rng.uniform(0.2, 2.0, 40)
    measured = 1.2 * raw + 0.1
    measured[:4] *= 1.5  # four outliers: whichever draws fit on them predict the rest worse
    curve = calibration_curve(raw, measured, sizes=(0, 5, 10, 20, 38))
    assert list(curve) == ["0", "5", "10", "20"]  # 38 would leave 2 nets to score
    assert curve["0"]["draws"] == 1 and curve["0"]["within_10pct"] == 0.0  # the raw sum is 20-30 % low
    assert curve["10"]["draws"] == 50 and curve["10"]["scored_on"] == 30
    assert curve["20"]["mape_pct"] < curve["10"]["mape_pct"] < curve["5"]["mape_pct"] < curve["0"]["mape_pct"]
    assert curve["10"]["within_10pct_p5"] < curve["10"]["within_10pct"] < 36 / 40  # a draw with outliers fits worse
    same = noise_ceiling([1.0, 2.0, 3.0], [1.0, 2.1, 3.6])
    assert same["within_5pct"] == same["within_10pct"] == pytest.approx(2 / 3, abs=1e-4)  # 3.6 vs 3.0: 17 %


def test_an_emulated_device_that_is_not_set_up_says_how_to_set_it_up(tmp_path):
    device = parse_device(f"qemu-aarch64:{tmp_path}")
    assert device.describe() == f"qemu-aarch64:{tmp_path}?cpu=cortex-a76" and device.name == "qemu-aarch64-cortex-a76"
    with pytest.raises(EdgeQueryError, match="qemu CPU model"):
        parse_device("qemu-aarch64?cpu=a76;rm")
    with pytest.raises(EdgeQueryError, match="setup_aarch64_emulation.sh"):
        device.fingerprint("onnxruntime")


def test_nets_of_a_space_at_another_resolution_are_measured(tmp_path):
    """A space configured for an input size outside the defaults (as lut_accuracy does for 224 px)
    exports and times its whole nets; parsed in the default space the same arch is refused."""
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
    assert cal.scale == pytest.approx(2.0) and cal.offset_ms == pytest.approx(0.5)


# --------------------------------------------------------------------------- the device fingerprint


def other_device(lut: LUT, dest: Path, drop_block: bool = False) -> Path:
    """A copy of ``lut`` that says it was measured on another CPU (optionally missing one block)."""
    fp = {**lut.fingerprint.model_dump(), "cpu": "Imaginary CPU 9000", "isa": ["neon"]}
    blocks = lut.to_data()["blocks"]
    if drop_block:
        blocks.pop(next(iter(blocks)))
    return copy_lut(lut, dest, fingerprint=fp, blocks=blocks, complete=not drop_block)


def test_resuming_a_lut_of_another_device_is_refused_unless_allowed(onnx_lut, tmp_path):
    out = other_device(onnx_lut, tmp_path / "lut.json", drop_block=True)
    with pytest.raises(EdgeQueryError, match="another device than this one: cpu: 'Imaginary CPU 9000' vs .*isa") as e:
        profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, out)
    assert "--allow-other-device" in e.value.fix
    assert len(load_lut(out).blocks) == 14  # nothing was measured
    lut = profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, out, allow_other_device=True)
    assert lut.complete and len(lut.blocks) == 15
    saved = load_lut(out)
    assert saved.fingerprint.cpu == "Imaginary CPU 9000"  # the table's device stays what it was
    (use,) = saved.other_devices
    assert use.action == "resume" and use.device == "local" and use.fingerprint.cpu == onnx_lut.fingerprint.cpu
    assert "--allow-other-device" in use.notes[0] and "cpu: 'Imaginary CPU 9000'" in use.notes[0]
    assert check_compatible(onnx_lut, Fingerprint.local("onnxruntime", 1)) == []  # the real one fits


def test_validating_a_lut_of_another_device_is_refused_unless_allowed(onnx_lut, tmp_path, capsys):
    path = other_device(onnx_lut, tmp_path / "lut.json")
    quick = ["--runs", "5", "--min-seconds", "0", "--rounds", "1", "--jobs", "1"]
    assert main(["profile", "validate", "--lut", str(path), "--n", "3", *quick]) == 2
    err = capsys.readouterr().err
    assert "measured on another device" in err and "Imaginary CPU 9000" in err and "--allow-other-device" in err
    assert not (tmp_path / "lut.validation.json").exists()


@pytest.mark.slow
def test_validating_a_lut_of_another_device_when_allowed_is_recorded(onnx_lut, tmp_path, capsys):
    path = other_device(onnx_lut, tmp_path / "lut.json")
    quick = ["--runs", "5", "--min-seconds", "0", "--rounds", "1", "--jobs", "1"]
    assert main(["profile", "validate", "--lut", str(path), "--n", "3", "--calibrate", "--allow-other-device",
                 *quick]) == 0
    assert "NOTE --allow-other-device" in capsys.readouterr().out
    report = json.loads((tmp_path / "lut.validation.json").read_text())
    assert report["allow_other_device"] is True and "Imaginary CPU 9000" in report["device_notes"][0]
    assert report["fingerprint"]["cpu"] == onnx_lut.fingerprint.cpu and report["n"] == 3
    lut = load_lut(path)
    assert lut.calibration.notes == report["device_notes"] and lut.calibration.device == "local"
    assert [u.action for u in lut.other_devices] == ["calibrate"]
    assert main(["profile", "show", str(path)]) == 0
    assert "other device (calibrate" in capsys.readouterr().out


def test_a_version_1_lut_migrates_as_an_unknown_device(onnx_lut, tmp_path):
    d = onnx_lut.to_data()
    v1 = {k: v for k, v in d.items() if k not in ("format_version", "fingerprint", "other_devices")}
    v1.update(version=1, device={"spec": "local", "cpu": "AMD EPYC", "cores": 2, "machine": "x86_64", "os": "Linux",
                                 "python": "3.11.7"})
    path = copy_lut(onnx_lut, tmp_path / "v1.json")
    path.write_text(json.dumps(v1))
    lut = load_lut(path, space=tiny_space())
    assert (lut.format_version, lut.device, lut.fingerprint, lut.other_devices) == (2, "local", None, [])
    assert lut.blocks == onnx_lut.blocks and lut.predict(tiny_space().smallest()) == onnx_lut.predict(
        tiny_space().smallest())
    with pytest.raises(EdgeQueryError, match="no device fingerprint"):
        check_compatible(lut, Fingerprint.local("onnxruntime", 1), a_name=str(path))
    with pytest.raises(EdgeQueryError, match="no device fingerprint"):
        profile(tiny_space(), [24], parse_device("local"), "onnxruntime", FAST, path)
    saved = json.loads(lut.save(tmp_path / "v2.json").read_text())
    assert saved["format_version"] == 2 and "version" not in saved and saved["fingerprint"] is None


def test_the_lut_file_refuses_invented_keys_and_newer_versions(onnx_lut, tmp_path):
    for change, msg in [({"colour": "red"}, "colour: unknown key"), ({"format_version": 3}, "upgrade edgequery"),
                        ({"overhead": {"median_ms": 1, "p10_ms": 1, "p90_ms": 1, "runs": 1, "mean_ms": 1}},
                         "overhead.mean_ms: unknown key")]:
        (tmp_path / "bad.json").write_text(json.dumps({**onnx_lut.to_data(), **change}))
        with pytest.raises(EdgeQueryError, match=msg):
            load_lut(tmp_path / "bad.json")


@pytest.mark.slow
def test_cli_profiles_a_space_configured_by_options(tmp_path, capsys):
    """`--space-option` makes the space (here a 40 px one, one choice per block): profile needs no
    code to cover an input size outside the defaults, and the LUT stores the configuration.
    (torch runtime: its files convert in a fraction of the time of ONNX ones.)"""
    opts = ["--space", "mbv3", "--space-option", "resolutions=40", "--space-option", "widths=0.5",
            "--space-option", "depths=2", "--space-option", "kernels=3", "--space-option", "expands=3"]
    quick = ["--runtime", "torch", "--runs", "3", "--warmup", "1", "--min-seconds", "0", "--rounds", "1",
             "--jobs", "1"]
    out = tmp_path / "lut-40.json"
    assert main(["profile", "--resolution", "40", "--out", str(out), *quick]) == 2
    assert "no input resolution 40" in capsys.readouterr().err
    assert main(["profile", *opts, "--resolution", "40", "--out", str(out), *quick]) == 0
    assert "15 blocks measured, 0 missing" in capsys.readouterr().out
    lut = load_lut(out, space=get_space("mbv3", resolutions=(40,), widths=(0.5,), depths=(2,), kernels=(3,),
                                        expands=(3,)))
    assert lut.resolutions == [40] and lut.space_config["resolutions"] == [40] and lut.space_config["depths"] == [2]
    assert lut.predict(lut_space(lut).smallest(), lut_space(lut)) > 0
    # rerun without --resolution: the space's largest (40) is the default; the complete LUT is kept
    assert main(["profile", *opts, "--out", str(out), *quick]) == 0
    assert load_lut(out).measured_at == lut.measured_at


def lut_space(lut: LUT):
    from edgequery.spaces import space_from_config

    return space_from_config(lut.space_config)


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
    d = onnx_lut.to_data()
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


# --------------------------------------------------------------------------- aarch64 under qemu user mode


@pytest.mark.slow
def test_an_emulated_aarch64_board_profiles_blocks_and_validates_nets(tmp_path):
    """scripts/setup_aarch64_emulation.sh (idempotent: ~30 s and 160 MB of downloads the first time)
    makes the board; both runtimes' aarch64 builds time every block of a space and a whole net."""
    root = Path(os.environ.get("EDGEQUERY_AARCH64_DIR", "~/.cache/edgequery/aarch64")).expanduser()
    script = Path(__file__).parent.parent / "scripts" / "setup_aarch64_emulation.sh"
    setup = subprocess.run(["bash", str(script), str(root)], capture_output=True, text=True)
    assert setup.returncode == 0, setup.stdout[-1500:] + setup.stderr[-1500:]
    device = parse_device(f"qemu-aarch64:{root}")
    space = get_space("mbv3", resolutions=(24,), widths=(0.5,), kernels=(3,), expands=(3,), depths=(2,))
    for runtime in ("onnxruntime", "litert"):
        out = tmp_path / f"lut-{runtime}.json"
        lut = profile(space, [24], device, runtime, FAST, out, jobs=2)
        fp = lut.fingerprint
        assert lut.complete and fp.machine == "aarch64" and "asimd" in fp.isa and fp.runtime == runtime
        assert fp.emulated.startswith("qemu-aarch64 ") and "cortex-a76" in fp.emulated
        assert fp.differences(Fingerprint.local(runtime, 1))  # not this machine's table
        report = validate(load_lut(out), space, device, n=1, jobs=2)
        assert report["fingerprint"]["emulated"] == fp.emulated and all(n["measured_ms"] > 0 for n in report["nets"])
    with pytest.raises(EdgeQueryError, match="another device|fingerprint"):  # an emulated table is not the host's
        validate(load_lut(out), space, parse_device("local"), n=1)


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
    shutil.copytree(work_of(onnx_lut.path), work_of(out))
    lut = profile(tiny_space(), [24], parse_device(spec), "onnxruntime", FAST, out)
    assert lut.complete and set(lut.blocks) == set(onnx_lut.blocks)
    assert lut.device == f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}"
    # the fingerprint is the target's, told by the agent over ssh (here: the same machine, so the same)
    assert lut.fingerprint.runtime_version == lut.runtime_version and lut.fingerprint.python
    assert lut.fingerprint.differences(onnx_lut.fingerprint) == []
    assert _remote_agent_dirs(sshd) == before  # the remote temp folder is removed when done


def test_ssh_device_names_what_is_missing_on_the_remote(sshd, tmp_path):
    before = _remote_agent_dirs(sshd)
    base = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?config={sshd['config']}"
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec /usr/bin/env -i {sys.executable} -I -S \"$@\"\n")  # no site-packages
    bare.chmod(0o755)
    with pytest.raises(EdgeQueryError, match="onnxruntime cannot be imported.*install it there"):
        parse_device(f"{base}&python={bare}").fingerprint("onnxruntime")
    with pytest.raises(EdgeQueryError, match="cannot run"):
        parse_device(f"{base}&python=/nonexistent/python3").fingerprint("onnxruntime")
    with pytest.raises(EdgeQueryError, match="ssh .* failed"):
        parse_device(f"ssh://nobody-here@127.0.0.1:{_free_port()}").fingerprint("onnxruntime")
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


CPUINFO = """\
processor\t: 0
BogoMIPS\t: 49.15
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd05

Hardware\t: Google Tensor G2
"""

FAKE_ADB = r"""#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_ADB_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
cmd = args[1] if len(args) > 1 else ""
if args[0] == "shell" and "benchmark_model" in cmd and "--graph=" in cmd:
    sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"]).read())
elif args[0] == "shell" and cmd.startswith("getprop"):
    print({"ro.product.model": "Pixel 7", "ro.soc.model": "Tensor G2", "ro.board.platform": "gs201",
           "ro.build.version.release": "14", "ro.product.cpu.abi": "arm64-v8a"}[cmd.split()[1]])
elif args[0] == "shell" and cmd == "cat /proc/cpuinfo":
    sys.stdout.write(open(os.environ["FAKE_ADB_CPUINFO"]).read())
elif args[0] == "shell" and cmd == "nproc":
    print("8")
elif args[0] == "shell" and cmd == "uname -r":
    print("5.10.157-android13-4-00001-g5c2a2f3e1f2c")
elif args[0] == "shell" and cmd == "uname -m":
    print("aarch64")
elif args[0] == "shell" and "cpu0/cache/index" in cmd:
    print("1 Data 64K\n1 Instruction 64K\n2 Unified 256K\n3 Unified 4096K")
"""

ADB_PROTOCOL = Protocol(threads=2, warmup=5, runs=60, min_seconds=0.1, rounds=2)


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """A fake ``adb`` on PATH (its calls logged), answering like a Pixel 7; and a fake benchmark_model."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "adb").write_text(FAKE_ADB.replace("/usr/bin/env python3", sys.executable))
    (bindir / "adb").chmod(0o755)
    (tmp_path / "out.txt").write_text(NEW_LOG)
    (tmp_path / "cpuinfo.txt").write_text(CPUINFO)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(tmp_path / "out.txt"))
    monkeypatch.setenv("FAKE_ADB_CPUINFO", str(tmp_path / "cpuinfo.txt"))
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")

    def calls() -> list[str]:
        logged = [json.loads(x) for x in (tmp_path / "adb.log").read_text().splitlines()]
        assert all(c[:2] == ["-s", "SERIAL1"] for c in logged)
        return [" ".join(c[2:]) for c in logged]

    return {"binary": binary, "calls": calls}


def test_adb_device_command_sequence(tmp_path, fake_adb):
    binary = fake_adb["binary"]
    folder = tmp_path / "files"
    (folder / "blocks").mkdir(parents=True)
    for name in ("a", "b"):
        (folder / "blocks" / f"{name}.tflite").write_bytes(b"TFL3")
    dev = parse_device("adb:SERIAL1?cpumask=f0", benchmark_binary=str(binary))
    with pytest.raises(EdgeQueryError, match="use --runtime litert"):
        dev.fingerprint("onnxruntime")
    recs = list(dev.time_models(folder, ["blocks/a.tflite", "blocks/b.tflite"], "litert", ADB_PROTOCOL.to_dict()))
    dev.close()
    assert [r["model"] for r in recs] == ["blocks/a.tflite", "blocks/b.tflite"]
    assert all(r["median_ms"] == pytest.approx(0.4565) and r["runs"] == 440 for r in recs)
    cmds = fake_adb["calls"]()
    assert cmds.index(f"push {binary} /data/local/tmp/edgequery/benchmark_model") < \
        cmds.index("shell chmod 755 /data/local/tmp/edgequery/benchmark_model")
    assert f"push {folder / 'blocks/a.tflite'} /data/local/tmp/edgequery/blocks_a.tflite" in cmds
    runs = [c for c in cmds if "--graph=" in c]
    assert len(runs) == 4  # 2 files x 2 rounds, round-robin
    assert runs[0] == ("shell taskset f0 /data/local/tmp/edgequery/benchmark_model "
                       "--graph=/data/local/tmp/edgequery/blocks_a.tflite --num_threads=2 --warmup_runs=5 "
                       "--num_runs=60 --min_secs=0.1")
    assert cmds[-1] == "shell rm -rf /data/local/tmp/edgequery"


def test_adb_fingerprint_is_what_the_phone_tells(fake_adb, tmp_path):
    from edgequery.files import sha256_file

    dev = parse_device("adb:SERIAL1", benchmark_binary=str(fake_adb["binary"]))
    fp = dev.fingerprint("litert", 2)
    dev.close()
    assert (fp.device_model, fp.cpu, fp.cores, fp.machine, fp.os) == ("Pixel 7", "Tensor G2", 8, "aarch64",
                                                                       "Android 14")
    assert fp.kernel.startswith("5.10.157-android13") and fp.host == "SERIAL1" and fp.python is None
    assert fp.isa == ["asimd", "asimddp", "asimdhp", "bf16", "fphp", "i8mm"]
    assert fp.caches == {"L1d": "64K", "L1i": "64K", "L2": "256K", "L3": "4096K"}
    assert (fp.runtime, fp.threads) == ("litert", 2)
    assert fp.runtime_version == f"benchmark_model sha256:{sha256_file(fake_adb['binary'])[:16]}"
    cmds = fake_adb["calls"]()
    assert {"shell getprop ro.product.model", "shell getprop ro.soc.model", "shell cat /proc/cpuinfo",
            "shell nproc", "shell uname -r"} <= set(cmds)
    # another benchmark_model build is another runtime: a LUT of one is not the other's
    other = tmp_path / "benchmark_model_v2"
    other.write_bytes(b"\x7fELF another build")
    fp2 = parse_device("adb:SERIAL1", benchmark_binary=str(other)).fingerprint("litert", 2)
    assert [d.split(":")[0] for d in fp.differences(fp2)] == ["runtime_version"]


def test_adb_profile_records_the_phone_and_refuses_another(fake_adb, tmp_path):
    """A whole `profile` over (fake) adb: the model files are already in the work folder, so no
    converter runs; the LUT records the phone's fingerprint and the adb statistic (mean)."""
    space, out = tiny_space(), tmp_path / "lut-adb.json"
    work = work_of(out) / "litert"
    for key in [IDENTITY, *(b.key for b in space_blocks(space, [24]))]:
        path = work / (IDENTITY + ".tflite" if key == IDENTITY else file_name(key, "litert"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"TFL3")
    dev = parse_device("adb:SERIAL1", benchmark_binary=str(fake_adb["binary"]))
    lut = profile(space, [24], dev, "litert", ADB_PROTOCOL, out)
    assert lut.complete and len(lut.blocks) == 15 and lut.device == "adb:SERIAL1"
    assert lut.fingerprint.device_model == "Pixel 7" and lut.fingerprint.threads == 2
    assert lut.runtime_version.startswith("benchmark_model sha256:") and "mean" in lut.protocol.statistic
    other = tmp_path / "benchmark_model_v2"
    other.write_bytes(b"\x7fELF another build")
    lut.blocks.pop(next(iter(lut.blocks)))
    lut.complete = False
    lut.save(out)
    with pytest.raises(EdgeQueryError, match="another device.*runtime_version"):
        profile(space, [24], parse_device("adb:SERIAL1", benchmark_binary=str(other)), "litert", ADB_PROTOCOL, out)


def test_adb_refuses_the_cold_cache_protocol_and_a_negative_flush(fake_adb, tmp_path):
    device = parse_device("adb", benchmark_binary=fake_adb["binary"])
    with pytest.raises(EdgeQueryError, match="cannot flush caches"):
        list(device.time_models(tmp_path, ["blocks/x.tflite"], "litert", {**FAST.to_dict(), "flush_kb": 1024}))
    with pytest.raises(EdgeQueryError, match="flush-kb >= 0"):
        replace(FAST, flush_kb=-1).check()


def test_adb_device_without_binary_or_adb_says_how(tmp_path, monkeypatch):
    with pytest.raises(EdgeQueryError, match="--benchmark-binary"):
        parse_device("adb").fingerprint("litert")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgeQueryError, match="adb is not installed"):
        parse_device("adb", benchmark_binary=__file__).fingerprint("litert")
