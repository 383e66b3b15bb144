"""``edgequery profile``: per-block latency tables measured on the target, validated end to end."""

from __future__ import annotations

import argparse
import logging

from .common import HelpFormatter, add_space_args, parse_space_options

log = logging.getLogger(__name__)

DESCRIPTION = """\
Measure a latency lookup table (LUT) on the device that will run the query net: every
distinct block of the search space at the given input resolution(s) is exported as a
small model file for the runtime and timed there (batch 1, fixed threads, warm-up, then
>= --runs timed runs; median with p10/p90).  The runtime's per-invocation overhead is
measured on an identity model and counted once per net.  A killed run resumes where it
stopped (rerun the same command).  The LUT records the target's fingerprint (CPU, ISA
flags, caches, OS/kernel, runtime version, threads); resuming or validating it on a
device with another fingerprint is refused unless --allow-other-device (then recorded).

devices (a device is a string, not code):
  local                       this machine (optionally ?cpus=1 to pin with taskset)
  ssh://user@host[:port]      a Linux board via ssh/scp; it needs python3 and the runtime
                              (options: ?python=PATH&identity=KEY&config=SSH_CONFIG&cpus=LIST)
  qemu-aarch64[:DIR]          an aarch64 Linux board emulated here (qemu user mode, arm64 Python
                              and runtimes from DIR: bash scripts/setup_aarch64_emulation.sh DIR;
                              default ~/.cache/edgequery/aarch64). Runs the runtimes' ARM code;
                              timings are the emulator's, not a phone's (recorded: emulated)
  adb[:serial]                an Android phone via adb, timed by LiteRT's benchmark_model
                              (--benchmark-binary PATH; ?cpumask=f0 pins to CPUs with taskset)

runtimes: litert (.tflite via litert-torch; ai-edge-litert or tflite-runtime on the device),
onnxruntime (.onnx via torch.onnx), torch (.pt2 via torch.export)

examples:
  edgequery profile --device local --runtime litert --space mbv3 --resolution 32
  edgequery profile --space mbv3 --space-option resolutions=224 --resolution 224
  edgequery profile --device ssh://pi@raspberrypi.local --runtime onnxruntime --threads 4
  edgequery profile --device adb --runtime litert --benchmark-binary ./benchmark_model
  edgequery profile validate --lut lut-local-litert.json --n 100 --calibrate
  edgequery profile show lut-local-litert.json
"""


def _add_protocol(p: argparse.ArgumentParser, inherit: bool = False) -> None:
    g = p.add_argument_group("timing protocol" + (" (default: the LUT's)" if inherit else ""))
    d = (lambda v: None) if inherit else (lambda v: v)
    g.add_argument("--threads", type=int, default=d(1), help="runtime threads")
    g.add_argument("--warmup", type=int, default=d(10), help="untimed runs before timing")
    g.add_argument("--runs", type=int, default=d(50), help="timed runs (at least)")
    g.add_argument("--min-seconds", type=float, default=d(0.1), help="and at least this long of timed runs")
    g.add_argument("--rounds", type=int, default=d(3),
                   help="rounds of timing per file (the lowest round median is kept: load only adds time)")
    g.add_argument("--rounds-over", choices=["chunk", "pass"], default=d("chunk"),
                   help="chunk: a file's rounds follow each other, within its batch of 16 files (seconds apart); "
                        "pass: each round is a pass over all the files, so a file's rounds lie minutes apart and a "
                        "slow spell of the machine (a VM drifting) hits one of them, not all - same timing work")
    g.add_argument("--flush-kb", type=int, default=d(0), metavar="KIB",
                   help="write over this many KiB before each timed run, so every run starts with cold caches "
                        "as a single query on a phone does (e.g. 2x the L2 size; 0: off; not on adb)")


def _add_device(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--device", default=default,
                   help="where to time: local, ssh://user@host[:port], adb[:serial]"
                        + ("" if default else " (default: the LUT's)"))
    p.add_argument("--benchmark-binary", help="adb: LiteRT benchmark_model built for the phone")
    p.add_argument("--allow-other-device", action="store_true",
                   help="go on although the device's fingerprint differs from the LUT's (recorded in the output)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure per-block latency tables on a device (local, ssh, adb)",
                       description=DESCRIPTION, formatter_class=type("F", (HelpFormatter,
                                                                           argparse.RawDescriptionHelpFormatter), {}))
    _add_device(p, "local")
    p.add_argument("--runtime", choices=["litert", "onnxruntime", "torch"], default="litert")
    add_space_args(p, default=None)
    p.add_argument("--supernet", help="take the space (and its choice lists) from this supernet checkpoint")
    p.add_argument("--resolution", help="input resolution(s) of the archs to cover, e.g. 32 or 24,28,32 "
                                        "(default: the space's largest)")
    p.add_argument("--embed-dim", type=int, default=None,
                   help="embedding size of the query nets (default: the --supernet's, else 128)")
    p.add_argument("--out", help="LUT file (default lut-<device>-<runtime>.json)")
    p.add_argument("--jobs", type=int, default=2, help="processes converting block files (timing is sequential)")
    p.add_argument("--force", action="store_true", help="measure again from scratch over an existing --out")
    _add_protocol(p)
    p.set_defaults(handler=run_profile)
    acts = p.add_subparsers(dest="action", metavar="{validate,show}")

    v = acts.add_parser("validate", help="measure random whole nets end to end and score the LUT's predictions",
                        description="Sample --n random archs at the LUT's resolutions, export each whole net as "
                                    "`edgequery export` does, time it on the device and compare with the LUT: share "
                                    "within +-5% and +-10%, mean absolute % error, Spearman rho. --calibrate fits "
                                    "measured = scale * predicted (alone, plus an offset, with a scale that grows with "
                                    "the net's weights, or plus a cost per block and per MB of weights: whichever "
                                    "predicts better out of sample after 10 nets) and stores it in the LUT. The device must have the LUT's fingerprint (or pass "
                                    "--allow-other-device).",
                        formatter_class=HelpFormatter)
    v.add_argument("--lut", required=True, help="LUT to validate (edgequery profile)")
    v.add_argument("--n", type=int, default=100, help="random archs to measure")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--calibrate", action="store_true", help="fit and store a linear correction in the LUT")
    v.add_argument("--noise-ceiling", action="store_true",
                   help="time every net a second time, in a separate pass, and report how often the two passes "
                        "agree within +-5%% / +-10%%: no table can predict this device better than it repeats")
    v.add_argument("--interleave", action="store_true",
                   help="time the nets' blocks again in the same passes, each net followed by its blocks, and "
                        "score the table rebuilt from them too (same_session): tells drift since the table was "
                        "built from what the table itself gets wrong")
    _add_device(v, None)
    v.add_argument("--report", help="write the report JSON here (default <lut>.validation.json)")
    v.add_argument("--jobs", type=int, default=2, help="processes converting the nets (timing is sequential)")
    _add_protocol(v, inherit=True)
    v.set_defaults(handler=run_validate)

    s = acts.add_parser("show", help="a readable summary of a LUT", formatter_class=HelpFormatter)
    s.add_argument("lut", help="LUT file")
    s.add_argument("--top", type=int, default=10, help="how many of the slowest blocks to list")
    s.set_defaults(handler=run_show)


def _resolutions(text: str | None, space) -> list[int]:
    from ..errors import EdgeQueryError

    if text is None:
        return [max(space.resolutions)]
    try:
        return [int(r) for r in str(text).split(",") if r.strip()]
    except ValueError:
        raise EdgeQueryError(f"--resolution {text!r} is not a list of integers", "write e.g. 32 or 24,28,32") from None


def _space(args):
    """The space to profile: the supernet's, or ``--space`` / ``--space-option`` (default mbv3); and the
    embedding size: ``--embed-dim``, else the supernet's, else 128."""
    from ..spaces import get_space, space_from_config

    if args.supernet:
        if args.space or args.space_option:
            from ..errors import EdgeQueryError

            raise EdgeQueryError("--supernet already names the space; --space / --space-option would change it",
                                 "pass either --supernet or --space/--space-option")
        from ..checkpoint import load_checkpoint

        model = load_checkpoint(args.supernet, "supernet")["model"]
        return space_from_config(model["space"]), args.embed_dim or model["embed_dim"]
    return get_space(args.space or "mbv3", **parse_space_options(args.space_option)), args.embed_dim or 128


def run_profile(args: argparse.Namespace) -> int:
    from ..latency import Protocol, parse_device, profile

    device = parse_device(args.device, benchmark_binary=args.benchmark_binary)
    space, embed_dim = _space(args)
    out = args.out or f"lut-{device.name}-{args.runtime}.json"
    lut = profile(space, _resolutions(args.resolution, space), device, args.runtime,
                  Protocol(args.threads, args.warmup, args.runs, args.min_seconds, args.rounds, args.flush_kb,
                           args.rounds_over), out,
                  embed_dim=embed_dim, jobs=args.jobs, force=args.force,
                  allow_other_device=args.allow_other_device)
    print(summary(lut, top=5))
    return 0


def _print_validation(report: dict, lut_path: str) -> None:
    u = report["uncalibrated"]
    print(f"{report['n']} random nets on {report['device']} ({report['runtime']}, {report['threads']} thread(s)):\n"
          f"  uncalibrated: {u['within_5pct']:.0%} within +-5%, {u['within_10pct']:.0%} within +-10%, "
          f"MAPE {u['mape_pct']:.2f}%, mean error {u['mean_error_pct']:+.2f}%, Spearman rho {u['spearman_rho']:.3f}")
    for name, figures in report.get("models", {}).items():
        c, ten = figures["calibrated_cross_validated"], figures["calibration_curve"].get("10")
        print(f"  {name} calibration ({', '.join(figures['terms'])}): 5-fold {c['within_5pct']:.0%} within +-5%, "
              f"{c['within_10pct']:.0%} within +-10%"
              + (f"; on 10 nets {ten['within_5pct']:.0%} / {ten['within_10pct']:.0%}" if ten else "")
              + ("  <- kept" if name == report.get("calibration_model") else ""))
    if "calibrated_cross_validated" in report:
        c = report["calibrated_cross_validated"]
        print(f"  calibrated, 5-fold cross-validated: {c['within_5pct']:.0%} within +-5%, "
              f"{c['within_10pct']:.0%} within +-10%, MAPE {c['mape_pct']:.2f}%")
    if "calibrated_10_nets" in report:
        c = report["calibrated_10_nets"]
        print(f"  calibrated on 10 nets (mean of {c['draws']} draws, scored on the other {c['scored_on']}): "
              f"{c['within_5pct']:.0%} within +-5%, {c['within_10pct']:.0%} within +-10%, MAPE {c['mape_pct']:.2f}%")
    if "noise_ceiling" in report:
        c = report["noise_ceiling"]
        print(f"  noise ceiling (the same nets timed twice): {c['within_5pct']:.0%} agree within +-5%, "
              f"{c['within_10pct']:.0%} within +-10%, MAPE {c['mape_pct']:.2f}%")
    if "same_session" in report:
        c = report["same_session"]
        u = c["uncalibrated"]
        print(f"  blocks timed in the same session ({c['blocks_timed']} blocks; stored table / session median "
              f"{c['table_over_session_block_median']:.3f}): uncalibrated {u['within_5pct']:.0%} within +-5%, "
              f"{u['within_10pct']:.0%} within +-10%, MAPE {u['mape_pct']:.2f}%")
    if "calibrated_in_sample" in report:
        c, cal = report["calibrated_in_sample"], report["calibration"]
        from ..artifacts.lut import Calibration

        print(f"  calibrated (in-sample, {cal['model']} model: measured = {Calibration(**cal).formula()}): "
              f"{c['within_5pct']:.0%} within +-5%, {c['within_10pct']:.0%} within +-10%, MAPE {c['mape_pct']:.2f}%"
              f"\n  stored in {lut_path}")
    for note in report["device_notes"]:
        print(f"  NOTE {note}")


def run_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..files import write_json
    from ..latency import Protocol, load_lut, parse_device, validate
    from ..spaces import space_from_config

    lut = load_lut(args.lut)
    space = space_from_config(lut.space_config)
    device = parse_device(args.device or lut.device, benchmark_binary=args.benchmark_binary)
    protocol = Protocol.of(lut, threads=args.threads, warmup=args.warmup, runs=args.runs,
                           min_seconds=args.min_seconds, rounds=args.rounds, flush_kb=args.flush_kb,
                           rounds_over=args.rounds_over)
    report = validate(lut, space, device, n=args.n, seed=args.seed, calibrate=args.calibrate, protocol=protocol,
                      jobs=args.jobs, allow_other_device=args.allow_other_device, noise_rounds=args.noise_ceiling,
                      interleave=args.interleave)
    path = args.report or str(Path(args.lut).with_suffix("")) + ".validation.json"
    write_json(path, report)
    _print_validation(report, args.lut)
    log.info(f"wrote {path}")
    return 0


def _describe_device(lut) -> str:
    fp = lut.fingerprint
    if fp is None:
        return f"{lut.device}: unknown device (no fingerprint recorded)"
    isa = ", ".join(fp.isa) or "-"
    caches = ", ".join(f"{k} {v}" for k, v in fp.caches.items()) or "-"
    return (f"{lut.device}: {fp.device_model + ', ' if fp.device_model else ''}{fp.cpu}, {fp.cores} cores, "
            f"{fp.machine}, {fp.os} {fp.kernel}" + (f", EMULATED by {fp.emulated}" if fp.emulated else "")
            + f"\n             ISA {isa}; caches {caches}")


def summary(lut, top: int = 10) -> str:
    """A readable summary of a LUT: where, how, coverage and the slowest blocks."""
    from ..spaces import space_from_config

    space = space_from_config(lut.space_config)
    missing = lut.missing(space)
    pr = lut.protocol
    lines = [f"LUT {lut.path}",
             f"  device     {_describe_device(lut)}",
             f"  runtime    {lut.runtime_version or lut.runtime}, {lut.threads} thread(s)",
             f"  space      {lut.space} at resolution(s) {', '.join(map(str, lut.resolutions))}, "
             f"embedding {lut.embed_dim}",
             f"  protocol   warm-up {pr.warmup}, >= {pr.runs} runs and >= {pr.min_seconds} s, x{pr.rounds} rounds"
             + (" (each a pass over all files)" if pr.rounds_over == "pass" else "")
             + (f", caches flushed ({pr.flush_kb} KiB)" if pr.flush_kb else "")
             + f"; block files {pr.block_layout or 'NCHW'},\n"
             f"             {pr.statistic}; {pr.spread}",
             f"  coverage   {len(lut.blocks)} blocks measured, {len(missing)} missing"
             + ("" if lut.complete else "  (INCOMPLETE: rerun the profile command to finish)"),
             f"  overhead   {lut.overhead_ms:.4f} ms per invocation (identity model)",
             f"  measured   {lut.measured_at}, {lut.build_seconds:.0f} s"]
    for use in lut.other_devices:
        lines.append(f"  other device ({use.action} {use.at} on {use.device}): {'; '.join(use.notes)}")
    if lut.calibration:
        c = lut.calibration
        lines.append(f"  calibrated measured = {c.formula()} ({c.model} model, fitted on {c.fitted_on} nets)")
    if lut.blocks:
        lines += _block_lines(lut, top, complete=not missing)
    return "\n".join(lines)


def _block_lines(lut, top: int, complete: bool) -> list[str]:
    from ..spaces import space_from_config

    lines = [f"  slowest {min(top, len(lut.blocks))} blocks (median ms, p10-p90):"]
    for key, st in sorted(lut.blocks.items(), key=lambda kv: -kv[1].median_ms)[:top]:
        lines.append(f"    {st.median_ms:9.4f}  ({st.p10_ms:.4f}-{st.p90_ms:.4f})  {key}")
    sizes = sorted(st.median_ms for st in lut.blocks.values())
    lines.append(f"  block medians: min {sizes[0]:.4f}, median {sizes[len(sizes) // 2]:.4f}, max {sizes[-1]:.4f} ms")
    if complete:
        sub = space_from_config({**lut.space_config, "resolutions": list(lut.resolutions)})
        lines.append(f"  nets: smallest {lut.predict(sub.smallest(), sub):.3f} ms, "
                     f"largest {lut.predict(sub.largest(), sub):.3f} ms (predicted)")
    return lines


def run_show(args: argparse.Namespace) -> int:
    from ..latency import load_lut

    print(summary(load_lut(args.lut), top=args.top))
    return 0
