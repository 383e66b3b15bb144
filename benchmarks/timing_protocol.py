"""Which timing protocol repeats itself better on this machine: rounds within a chunk, or over passes?

A table's prediction can be no better than the machine repeats its own timings (the noise
ceiling of ``lut_accuracy.py``).  On a VM whose speed drifts by a few % over minutes, the
default protocol - a file's ``--rounds`` back to back within its agent run, the lowest round
median kept - lets a slow spell hit all of a file's rounds.  ``--rounds-over pass`` makes each
round a pass over all the files instead (the same timing work), so a file's rounds lie a pass
apart.  This script times the same N whole nets (the random nets ``lut_accuracy.py`` validates,
exported as ``edgequery export`` does) K times under each protocol, alternating A B B A A B B A
so that drift hits both alike, and reports for each protocol how often two of its runs agree
within ±5 % / ±10 % (every pair of its runs: the noise ceiling it would give), each run's level
(its median ratio to the nets' median over all runs) and spread.

    python benchmarks/timing_protocol.py                      # LiteRT, 160 px, 100 nets, 4 runs each (~13 min)
    python benchmarks/timing_protocol.py --runtime onnxruntime --resolution 32
    python benchmarks/timing_protocol.py --preset quick       # 12 nets, 2 runs each, 32 px
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np

import _bench
from edgequery.latency import Protocol, load_lut, parse_device
from edgequery.latency.build import export_nets, time_files
from edgequery.latency.lut import restricted_space
from edgequery.latency.validation import sample_archs
from edgequery.spaces import space_from_config

log = _bench.log
QUICK = {"n": 12, "runs_each": 2, "resolution": 32}
PROTOCOLS = ("chunk", "pass")


def parse(argv: list[str] | None):
    p = _bench.parser(__doc__, {"quick": QUICK}, cache=_bench.CACHE / "lut")
    p.add_argument("--runtime", choices=["litert", "onnxruntime"], default="litert")
    p.add_argument("--resolution", type=int, default=160)
    p.add_argument("--lut", type=Path,
                   help="this machine's table whose space, protocol and nets to use (default: "
                        "<out-dir>/lut-local-<runtime>-r<resolution>.json, as lut_accuracy.py writes it)")
    p.add_argument("--n", type=int, default=100, help="random nets (seed 0: lut_accuracy.py's nets)")
    p.add_argument("--runs-each", type=int, default=4, help="timing runs of all nets per protocol")
    p.add_argument("--jobs", type=int, default=2)
    return _bench.parse(p, argv)


def schedule(runs_each: int) -> list[str]:
    """A B B A A B B A ...: each protocol as often first as second, so a trend in time favours neither."""
    return [PROTOCOLS[((i + 1) // 2) % 2] for i in range(2 * runs_each)]


def agreement(runs: np.ndarray) -> dict:
    """How often two runs of the same nets agree, over every pair of ``runs`` (one row per run)."""
    pairs = [(a, b) for a, b in itertools.combinations(range(len(runs)), 2)]
    w5 = [float(np.mean(np.abs(runs[b] / runs[a] - 1) <= 0.05)) for a, b in pairs]
    w10 = [float(np.mean(np.abs(runs[b] / runs[a] - 1) <= 0.10)) for a, b in pairs]
    return {"pairs": len(pairs), "within_5pct": round(float(np.mean(w5)), 4), "within_10pct": round(float(np.mean(w10)), 4),
            "within_5pct_each_pair": [round(w, 4) for w in w5], "within_10pct_each_pair": [round(w, 4) for w in w10]}


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    prov = _bench.start(args)
    lut_path = args.lut or Path(args.out_dir) / f"lut-local-{args.runtime}-r{args.resolution}.json"
    lut = load_lut(lut_path)
    _bench.require_this_machine(lut)
    space = restricted_space(space_from_config(lut.space_config), lut.resolutions)
    archs = sample_archs(space, args.n, seed=0)
    folder = Path(args.cache) / lut_path.stem
    names = export_nets(archs, lut.runtime, folder, lut.embed_dim, args.jobs, space=space)
    base = replace(Protocol.of(lut), rounds_over="chunk")
    device = parse_device("local")
    order, timed = schedule(args.runs_each), []
    try:
        for i, which in enumerate(order):
            t = time_files(device, folder, names, lut.runtime, replace(base, rounds_over=which),
                           desc=f"run {i + 1}/{len(order)}: rounds over {which}")
            timed.append([t[n].median_ms for n in names])
    finally:
        device.close()
    runs = np.array(timed)
    per_net = np.median(runs, axis=0)
    levels = [{"protocol": which, "level": round(float(np.median(r / per_net)), 4),
               "spread_sd": round(float(np.std(r / per_net / np.median(r / per_net))), 4)}
              for which, r in zip(order, runs)]
    results = {"lut": lut_path.name, "runtime": lut.runtime, "runtime_version": lut.runtime_version,
               "resolution": args.resolution, "n": len(names), "protocol": base.to_dict(), "order": order,
               "fingerprint": lut.fingerprint.model_dump(mode="json"),
               "protocols": {which: agreement(runs[[i for i, o in enumerate(order) if o == which]])
                             for which in PROTOCOLS},
               "runs": levels, "nets": [{"arch": str(a), "median_ms": [float(r[j]) for r in runs]}
                                        for j, a in enumerate(archs)]}
    out = _bench.write(args, "timing_protocol", results, prov)
    plot(results, out.with_suffix(".png"))
    for which, fig in results["protocols"].items():
        log.info(f"rounds over {which:5s}: two runs agree within ±5 % for {fig['within_5pct']:.0%} of nets, "
                 f"±10 % for {fig['within_10pct']:.0%} (mean over {fig['pairs']} pairs)")
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {"chunk": "tab:red", "pass": "tab:blue"}
    for i, run in enumerate(results["runs"]):
        left.errorbar(i + 1, run["level"], yerr=run["spread_sd"], fmt="o", color=colours[run["protocol"]],
                      label=f"rounds over {run['protocol']}" if i < 2 else None)
    left.axhline(1.0, color="0.5", lw=0.8)
    left.set_xticks(range(1, len(results["runs"]) + 1))
    left.set_xlabel("run, in time order")
    left.set_ylabel("median of run / net's median over all runs")
    left.legend(fontsize=8)
    for k, (which, fig_) in enumerate(results["protocols"].items()):
        right.bar([k - 0.2, k + 0.2], [fig_["within_5pct"], fig_["within_10pct"]], width=0.38,
                  color=colours[which], alpha=0.6)
        right.plot([k - 0.2] * len(fig_["within_5pct_each_pair"]), fig_["within_5pct_each_pair"], "k.", ms=4)
    right.set_xticks(range(len(results["protocols"])),
                     [f"{w}\n(±5 % | ±10 %)" for w in results["protocols"]])
    right.set_ylim(0, 1.05)
    right.set_ylabel("share of nets two runs agree on")
    fig.suptitle(f"{results['runtime']} {results['resolution']} px, {results['n']} nets: timing protocol repeatability",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
