"""Does a search at camera size keep its latency promise?  Measured on this machine.

Phones run query encoders at 128-224 px.  This script searches the ``mbv3`` space at 224 px
exactly as a user would, then times what it found:

1. **The table**: ``--lut``, a 224 px LUT of the space measured on this machine (by default the
   LiteRT one ``benchmarks/lut_accuracy.py --runtimes litert --resolutions 224`` writes, with the
   calibration fitted there); one measured on another machine is refused.
2. **A tiny gallery model and supernet** at 224 px (ResNet-101 with the ImageNet stem, then a BCT
   supernet of the same space; ``--gallery-steps`` / ``--supernet-steps``, a few each): the
   candidates' accuracy is not what is measured here, their latency is.
3. **A budget that binds**: the ``--budget-quantile`` of 200 random archs' predicted latency
   (default: the median, so about half the space is out of reach).
4. ``edgequery search --latency-budget <X>ms`` through the CLI (reward R3).
5. **The promise kept?** The search's final population and its winner, exported to the LUT's
   runtime and timed with the LUT's protocol (random weights: float32 latency does not depend on
   them): how many nets are measured over the budget, and by how much.

Every training run is a workflow stage cached in ``--cache`` (reused when finished, resumed when
not); the search resumes from its own file.

    python benchmarks/search_224.py                   # after lut_accuracy.py --runtimes litert --resolutions 224
    python benchmarks/search_224.py --preset quick    # a 64 px space, its LUT timed here with a quick protocol

Writes ``<out-dir>/search_224.json`` and ``search_224.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import _bench
from edgequery.commands import main as edgequery
from edgequery.data import DataSpec
from edgequery.files import read_json
from edgequery.latency import Protocol, load_lut, restricted_space
from edgequery.spaces import get_space, space_from_config
from edgequery.workflow import Workflow

log = _bench.log
QUICK = {"lut": "none", "resolution": 64, "n_train": 256, "n_val": 100, "gallery_arch": "mobilenet_v3_small",
         "gallery_steps": 4, "supernet_steps": 4, "population": 4, "generations": 2, "recal_batches": 2}
QUICK_SPACE = {"widths": [0.5, 1.0], "depths": [2], "kernels": [3], "expands": [3, 4]}
QUICK_PROTOCOL = {"threads": 1, "warmup": 2, "runs": 10, "min_seconds": 0.01, "rounds": 1}


def parse(argv: list[str] | None):
    ap = _bench.parser(__doc__, {"quick": QUICK})
    ap.add_argument("--lut", default=str(_bench.RESULTS / "lut-local-litert-r224.json"),
                    help="the 224 px LUT searched with; 'none': profile the --resolution space here (quick preset)")
    ap.add_argument("--resolution", type=int, default=224, help="with --lut none: the input side to profile")
    ap.add_argument("--n-train", type=int, default=1000, help="training images of the gallery model and supernet")
    ap.add_argument("--n-val", type=int, default=300, help="validation images the candidates are scored on")
    ap.add_argument("--gallery-arch", default="resnet101", help="the gallery model (ImageNet stem at camera sizes)")
    ap.add_argument("--gallery-steps", type=int, default=20)
    ap.add_argument("--supernet-steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget-quantile", type=float, default=0.5,
                    help="the budget: this quantile of 200 random archs' predicted latency")
    # a candidate costs ~20 s at 224 px on 2 cores (BN recalibration and 300 images through the supernet)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--recal-batches", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = _bench.parse(ap, argv)
    if not 0 < args.budget_quantile < 1:
        ap.error("--budget-quantile must lie strictly between 0 and 1")
    return args


def table(args, stages: dict):
    """The LUT (and the space it was measured for): --lut, or one profiled here (quick preset)."""
    if args.lut != "none":
        path = Path(args.lut)
        if not path.is_file():
            raise SystemExit(f"{path}: no such LUT; measure it first: python benchmarks/lut_accuracy.py "
                             "--runtimes litert --resolutions 224 (or pass --lut)")
        lut = load_lut(path)
        _bench.require_this_machine(lut)   # before training, not after
        return lut, space_from_config(lut.space_config)
    space = get_space("mbv3", resolutions=[args.resolution], **QUICK_SPACE)
    path = args.cache / f"lut-local-onnxruntime-r{args.resolution}-{_bench.digest(space.config())}.json"
    Workflow(None, stages=stages).profile(path, space, [args.resolution], "onnxruntime", Protocol(**QUICK_PROTOCOL),
                                          jobs=2, workdir=args.cache / "lut-work")
    return load_lut(path, space=space), space


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    prov = _bench.start(args)
    args.cache.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    lut, base_space = table(args, stages)
    if len(lut.resolutions) != 1:
        raise SystemExit(f"{lut.where} covers {lut.resolutions} px: give a LUT of one resolution")
    res = lut.resolutions[0]
    space = restricted_space(base_space, [res])
    spec = DataSpec(resolution=res, n_train=args.n_train, n_val=args.n_val, n_query=100, n_gallery=200)
    wf = Workflow(spec, "cpu", stages=stages)
    tag = f"{_bench.data_tag(spec)}-{args.gallery_arch}-t{args.gallery_steps}-b{args.batch_size}-p{args.precision}"
    train = {"batch_size": args.batch_size, "precision": args.precision}
    gallery = wf.gallery(args.cache / f"gallery224-{tag}.pt", model={"arch": args.gallery_arch},
                         steps=args.gallery_steps, **train)
    supernet = wf.supernet(args.cache / f"supernet224-{tag}-{_bench.digest(space.config())}-t{args.supernet_steps}.pt",
                           gallery, space, None, steps=args.supernet_steps, **train)

    rng = np.random.default_rng(args.seed)
    probe = [lut.predict(space.sample(rng), space) for _ in range(200)]
    budget = float(np.quantile(probe, args.budget_quantile))
    fastest, slowest = lut.predict(space.smallest(), space), float(max(probe))
    log.info("budget %.3f ms (the %.2f quantile of 200 random archs; they predict %.3f-%.3f ms, the smallest arch "
             "%.3f ms)", budget, args.budget_quantile, min(probe), slowest, fastest)

    settings = [supernet.name, lut.measured_at, budget, args.population, args.generations, args.recal_batches,
                args.seed]
    out = args.cache / f"search224-{_bench.digest(settings)}.json"
    finished = out.is_file() and read_json(out, "search result").get("complete")
    with wf.stage("search", out, "reused" if finished else "ran"):
        if not finished:   # the command resumes an unfinished search and refuses to redo a finished one
            code = edgequery(["search", "--supernet", str(supernet), "--gallery", str(gallery), "--lut", str(lut.path),
                              "--latency-budget", f"{budget}ms", "--population", str(args.population),
                              "--generations", str(args.generations), "--recal-batches", str(args.recal_batches),
                              "--seed", str(args.seed), "--out", str(out)])
            if code != 0:
                raise SystemExit(f"edgequery search exited {code}")
    result = read_json(out, "search result")
    chosen = result["chosen"]["arch"]
    archs = list(dict.fromkeys([*result["state"]["population"], chosen]))
    parsed = [space.parse(a) for a in archs]
    with wf.stage("measure_population"):
        measured = _bench.measure_here(parsed, lut, args.cache / f"nets-{lut.runtime}-r{res}", space=space)
    predicted = [lut.predict(p, space) for p in parsed]
    nets = [{"arch": a, "predicted_ms": round(p, 4), "measured_ms": m, "over_budget": m > budget,
             "measured_over_predicted": round(m / p, 4)} for a, p, m in zip(archs, predicted, measured)]
    over = [n for n in nets if n["over_budget"]]
    worst = max(nets, key=lambda n: n["measured_ms"] / budget)
    population = {"nets_measured": len(nets), "over_budget": len(over),
                  "share_over_budget": round(len(over) / len(nets), 4),
                  "worst_measured_over_budget_pct": round(100 * (worst["measured_ms"] / budget - 1), 2),
                  "median_measured_over_predicted": round(float(np.median([n["measured_over_predicted"] for n in nets])), 4),
                  "chosen": chosen, "chosen_predicted_ms": result["chosen"]["latency_ms"],
                  "chosen_measured_ms": measured[archs.index(chosen)], "nets": nets}
    log.info("%d/%d of the final population measured over the %.3f ms budget (worst %+.1f %%); chosen %s measured "
             "%.3f ms", len(over), len(nets), budget, population["worst_measured_over_budget_pct"], chosen,
             population["chosen_measured_ms"])
    body = {"resolution": res,
            "lut": {"file": lut.path.name, "runtime": lut.runtime, "runtime_version": lut.runtime_version,
                    "threads": lut.threads, "fingerprint": lut.fingerprint and lut.fingerprint.model_dump(mode="json"),
                    "calibration": lut.calibration and lut.calibration.model_dump(mode="json"),
                    "protocol": Protocol.of(lut).to_dict()},
            "space": space.config(),
            "gallery": {"arch": args.gallery_arch, "steps": args.gallery_steps, "checkpoint": gallery.name},
            "supernet": {"steps": args.supernet_steps, "checkpoint": supernet.name},
            "budget": {"ms": round(budget, 4), "quantile_of_random_archs": args.budget_quantile,
                       "random_archs_predicted_ms": [round(min(probe), 4), round(slowest, 4)],
                       "smallest_arch_predicted_ms": round(fastest, 4),
                       "binds": bool(slowest > budget)},
            "search": {"config": result["config"], "chosen": {k: result["chosen"][k] for k in
                                                              ("arch", "latency_ms", "flops", "m_het", "m_hom", "reward")},
                       "candidates": len(result["history"]), "notes": result["notes"]},
            "population": population,
            "goal": {"statement": "no net of the final population (winner included) measured over the budget",
                     "met": not over},
            "stages": stages}
    path = _bench.write(args, "search_224", body, prov)
    plot(body, path.with_suffix(".png"))
    return path


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets, budget = out["population"]["nets"], out["budget"]["ms"]
    fig, ax = plt.subplots(figsize=(6, 5))
    pred = [n["predicted_ms"] for n in nets]
    meas = [n["measured_ms"] for n in nets]
    ax.scatter(pred, meas, s=25, c=["tab:red" if n["over_budget"] else "tab:blue" for n in nets])
    chosen = next(n for n in nets if n["arch"] == out["population"]["chosen"])
    ax.scatter([chosen["predicted_ms"]], [chosen["measured_ms"]], s=160, marker="*", c="k", label="winner")
    lo, hi = min(pred + meas) * 0.9, max(pred + meas + [budget]) * 1.1
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
    ax.axhline(budget, color="k", ls="--", lw=0.8, label=f"budget {budget:.2f} ms")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted by the LUT (ms)")
    ax.set_ylabel(f"measured, {out['lut']['runtime']} {out['lut']['threads']} thread (ms)")
    p = out["population"]
    ax.set_title(f"{out['resolution']} px search: {p['over_budget']}/{p['nets_measured']} of the final population "
                 f"over budget", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
