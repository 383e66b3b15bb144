"""How well a per-block latency table predicts whole nets, on this machine.

For each runtime (and resolution): build the LUT of the ``mbv3`` space with
``edgequery.latency.profile`` on the ``local`` device (wall time recorded: the goal is
<= 10 minutes per runtime per resolution here), then measure N random whole nets end to
end with ``validate`` and compare: share predicted within ±5 % / ±10 %, mean absolute %
error, Spearman rho - uncalibrated, and calibrated out of sample (5-fold: each net
predicted by a line fitted on the other folds).  The calibration fitted on all N is
stored in the LUT, which is written to ``benchmarks/results/`` for the search to use.

    python benchmarks/lut_accuracy.py                                  # litert + onnxruntime, 32 px, 100 nets
    python benchmarks/lut_accuracy.py --runtimes onnxruntime --n 30    # a quick look
    python benchmarks/lut_accuracy.py --refit    # re-fit the calibration on the stored measurements

``--refit`` times nothing: it re-scores the nets already measured in ``lut_accuracy.json``
with the current calibration fit and stores the new line in the LUT files.

Writes ``benchmarks/results/lut_accuracy.json`` and ``lut_accuracy.png`` (predicted vs
measured), plus ``lut-local-<runtime>-r<res>.json``.  Model files are cached under
``benchmarks/.cache/lut/`` (delete it to re-convert).  The machine has 2 cores and may be
shared: the JSON records the load average before and after each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from edgequery.commands.common import write_json
from edgequery.latency import load_lut, parse_device, profile, validate
from edgequery.latency.profiler import Protocol, score_calibration
from edgequery.spaces import get_space
from edgequery.sysinfo import machine_info

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache" / "lut"


def space_at(res: int):
    """The mbv3 space; at a resolution outside it (e.g. 224 px, camera-sized), the same choices at that size."""
    space = get_space("mbv3")
    return space if res in space.resolutions else get_space("mbv3", resolutions=[res])


def run_one(runtime: str, res: int, args) -> dict:
    space = space_at(res)
    device = parse_device(args.device)
    protocol = Protocol(threads=args.threads, warmup=args.warmup, runs=args.runs, min_seconds=args.min_seconds,
                        rounds=args.rounds)
    out = RESULTS / f"lut-{device.name}-{runtime}-r{res}.json"
    load0 = os.getloadavg()
    t0 = time.time()
    lut = profile(space, [res], device, runtime, protocol, out, jobs=args.jobs, force=args.force,
                  workdir=CACHE / f"{runtime}-r{res}")
    wall = time.time() - t0
    load1 = os.getloadavg()
    lut = load_lut(out, space=space)
    report = validate(lut, space, parse_device(args.device), n=args.n, seed=args.seed, calibrate=True,
                      protocol=protocol, workdir=CACHE / f"{runtime}-r{res}", jobs=args.jobs)
    report.pop("lut", None)
    return {"runtime": runtime, "resolution": res, "lut_file": out.name, "blocks": len(lut.blocks),
            "overhead_ms": lut.overhead_ms, "lut_build_seconds": round(lut.build_seconds, 1),
            "lut_build_wall_seconds_this_run": round(wall, 1),
            "load_average": {"before_profile": load0, "after_profile": load1, "after_validate": os.getloadavg()},
            **report}


def refit(result: dict) -> dict:
    """``result`` with its calibration figures recomputed from its stored measurements."""
    path = RESULTS / result["lut_file"]
    lut = load_lut(path, space=space_at(result["resolution"]))
    lut.calibration = None
    raw = [n["raw_ms"] for n in result["nets"]]
    scores = score_calibration(lut, raw, [n["measured_ms"] for n in result["nets"]], calibrate=True)
    return {**{k: v for k, v in result.items() if k not in scores}, **scores}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        meas = np.array([n["measured_ms"] for n in r["nets"]])
        raw = np.array([n["raw_ms"] for n in r["nets"]])
        lo, hi = meas.min() * 0.85, meas.max() * 1.15
        line = np.linspace(lo, hi, 10)
        ax.fill_between(line, line * 0.9, line * 1.1, color="0.9", label="±10 %")
        ax.fill_between(line, line * 0.95, line * 1.05, color="0.8", label="±5 %")
        ax.plot(line, line, "k-", lw=0.8)
        u = r["uncalibrated"]
        ax.scatter(meas, raw, s=12, c="tab:red", alpha=0.7,
                   label=f"LUT sum: {u['within_10pct']:.0%} in ±10 %, rho {u['spearman_rho']:.2f}")
        if "calibrated_cross_validated" in r:
            c = r["calibrated_cross_validated"]
            ax.scatter(meas, c["predicted_ms"], s=12, c="tab:blue", alpha=0.7,
                       label=f"calibrated (5-fold CV): {c['within_5pct']:.0%} in ±5 %, {c['within_10pct']:.0%} in ±10 %")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("measured end to end (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.set_title(f"{r['runtime']} ({r['runtime_version']}), {r['resolution']} px, {r['threads']} thread,\n"
                     f"{r['n']} random mbv3 nets; LUT built in {r['lut_build_seconds'] / 60:.1f} min", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtimes", default="litert,onnxruntime")
    p.add_argument("--resolutions", default="32")
    p.add_argument("--device", default="local")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--min-seconds", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--force", action="store_true", help="re-measure the LUTs")
    p.add_argument("--refit", action="store_true",
                   help="time nothing: re-fit the calibration on the measurements stored in lut_accuracy.json")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.refit:
        out = json.loads((RESULTS / "lut_accuracy.json").read_text())
        results = out["results"] = [refit(r) for r in out["results"]]
        out["refit"] = "calibration re-fitted on the stored measurements: python benchmarks/lut_accuracy.py --refit"
    else:
        command = "python benchmarks/lut_accuracy.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("force", "refit"))
        fresh = [{**run_one(rt, int(res), args), "command": command, "machine": machine_info(),
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                 for res in args.resolutions.split(",") for rt in args.runtimes.split(",")]
        # results of other (runtime, resolution) pairs already in the file are kept
        path = RESULTS / "lut_accuracy.json"
        kept = json.loads(path.read_text())["results"] if path.exists() else []
        done = {(r["runtime"], r["resolution"]) for r in fresh}
        results = sorted([r for r in kept if (r["runtime"], r["resolution"]) not in done] + fresh,
                         key=lambda r: (r["resolution"], r["runtime"]))
        out = {"benchmark": "lut_accuracy", "space": "mbv3",
               "goal": ">= 99 % of nets within ±10 % and >= 90 % within ±5 %; LUT build <= 10 min per runtime and "
                       "resolution (nn-Meter: 99.0 % within ±10 % on a Pixel 4 CPU)",
               "results": results}
    write_json(RESULTS / "lut_accuracy.json", out)
    plot(results, RESULTS / "lut_accuracy.png")
    for r in results:
        u, c = r["uncalibrated"], r.get("calibrated_cross_validated", {})
        print(f"{r['runtime']:12s} {r['resolution']}px  LUT {r['blocks']} blocks in {r['lut_build_seconds']:.0f}s | "
              f"uncalibrated: {u['within_5pct']:.0%} ±5%, {u['within_10pct']:.0%} ±10%, MAPE {u['mape_pct']:.1f}%, "
              f"rho {u['spearman_rho']:.3f} | calibrated CV: {c.get('within_5pct', float('nan')):.0%} ±5%, "
              f"{c.get('within_10pct', float('nan')):.0%} ±10%, MAPE {c.get('mape_pct', float('nan')):.1f}%")


if __name__ == "__main__":
    main()
