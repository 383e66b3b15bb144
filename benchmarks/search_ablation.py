"""What the search buys: rewards, latency- vs FLOPs-constrained search, FLOPs vs compatibility,
and the searched net against MobileNetV3 + BCT - measured on this machine.

One ResNet-101 gallery model, one BCT supernet of the ``mbv3`` space, one LUT measured
here (``benchmarks/lut_accuracy.py`` writes it, calibrated), one latency budget that
binds (default: the *measured* latency of MobileNetV3-large exported to the LUT's
runtime).  Then:

1. **R1 vs R2 vs R3** - three searches under the budget (ordinary NAS = M_hom,
   compatibility only = M_het, the mix); each winner retrained with BCT from scratch and
   evaluated on the test query/gallery splits (het and hom Recall@1).
2. **Latency- vs FLOPs-constrained** - the R3 search again with FLOPs as the constraint,
   at the FLOPs budget that a line fitted to (FLOPs, predicted latency) of 200 random
   archs maps to the latency budget; the final populations of both searches are exported
   and *measured*: how often each breaks the latency budget.
3. **Spearman rho(FLOPs, M_het)** over ``--n-random`` random archs (inherited supernet
   weights, BN recalibrated) - CMP-NAS found heterogeneous accuracy does not follow FLOPs.
4. **The searched net vs MobileNetV3-small/large + BCT** on the measured-latency /
   het-Recall@1 plane (all trained with the same data and epochs).

Candidates are scored on the validation split (its first fifth as queries, the rest as
gallery); final figures come from the test query/gallery splits.  Every checkpoint is
cached in ``--cache`` (resumable).  Latency is measured with the LUT's protocol on the
``local`` device through the same agent (random weights: float32 latency does not depend
on them).

    python benchmarks/search_ablation.py                 # the preset below, ~1 h on 2 cores
    python benchmarks/search_ablation.py --population 8 --generations 2 --n-random 30   # quicker look

Writes ``benchmarks/results/search_ablation.json`` and ``search_ablation.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from edgequery.checkpoint import is_finished, load_checkpoint
from edgequery.commands.common import write_json
from edgequery.data import DataSpec, load_splits
from edgequery.evaluate import evaluate_pair
from edgequery.latency import load_lut, measure_archs, parse_device, restricted_space
from edgequery.latency.profiler import Protocol
from edgequery.models import model_from_checkpoint
from edgequery.recipes import train_gallery, train_query
from edgequery.search import CandidateScorer, EvolutionSearch, SearchConfig
from edgequery.spaces import get_space
from edgequery.spaces.training import load_supernet, train_supernet
from edgequery.sysinfo import machine_info
from edgequery.train import TrainConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BASELINES = ("mobilenet_v3_small", "mobilenet_v3_large")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Memo:
    """One scorer shared by every search: an arch is scored once, whichever search asks."""

    def __init__(self, scorer: CandidateScorer, path: Path):
        self.scorer, self.path = scorer, path
        self.cache: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def __call__(self, arch) -> dict:
        key = str(arch)
        if key not in self.cache:
            self.cache[key] = self.scorer(arch)
            if len(self.cache) % 10 == 0:
                write_json(self.path, self.cache)
        return self.cache[key]

    def save(self) -> None:
        write_json(self.path, self.cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lut", type=Path, default=RESULTS / "lut-local-litert-r32.json")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache" / "ablation")
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--n-gallery", type=int, default=5000)
    ap.add_argument("--gallery-epochs", type=int, default=2)
    ap.add_argument("--supernet-epochs", type=int, default=10)
    ap.add_argument("--query-epochs", type=int, default=4)
    ap.add_argument("--budget", default="mobilenet_v3_large",
                    help="latency budget in ms, or a baseline name: its measured latency (default)")
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--mix", type=float, default=0.5)
    ap.add_argument("--recal-batches", type=int, default=10)
    ap.add_argument("--n-random", type=int, default=40, help="random archs for the FLOPs / M_het correlation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_ablation.json")
    args = ap.parse_args()
    t_start = time.time()
    args.cache.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ models
    lut = load_lut(args.lut, space=get_space("mbv3"))
    res = lut.resolutions[0]
    space = restricted_space(get_space("mbv3"), [res])
    spec = DataSpec(resolution=res, n_train=args.n_train, n_val=args.n_val, n_query=args.n_query,
                    n_gallery=args.n_gallery)
    splits = load_splits(spec)
    tag = f"n{args.n_train}-r{res}"
    gallery_path = args.cache / f"gallery-r101-{tag}-e{args.gallery_epochs}.pt"
    if not is_finished(gallery_path):
        t = time.time()
        train_gallery(spec, TrainConfig(epochs=args.gallery_epochs, device=args.device), gallery_path, splits=splits)
        seconds["train_gallery"] = round(time.time() - t, 1)
    gallery = load_checkpoint(gallery_path, "gallery")
    gver = gallery["model_version"]
    gallery_model = model_from_checkpoint(gallery)
    qcfg = TrainConfig(epochs=args.query_epochs, device=args.device)

    def query_net(arch: str, name: str) -> Path:
        path = args.cache / f"query-{name}-bct-{tag}-e{args.query_epochs}-g{gver}.pt"
        if not is_finished(path):
            t = time.time()
            train_query(gallery_path, qcfg, path, arch=arch, bct=True, spec=spec, splits=splits)
            seconds[f"train_query_{name}"] = round(time.time() - t, 1)
        return path

    baselines = {name: query_net(name, name) for name in BASELINES}
    supernet_path = args.cache / f"supernet-mbv3-{tag}-e{args.supernet_epochs}-g{gver}.pt"
    if not is_finished(supernet_path):
        t = time.time()
        train_supernet(gallery_path, TrainConfig(epochs=args.supernet_epochs, device=args.device), supernet_path,
                       space="mbv3", spec=spec, splits=splits)
        seconds["train_supernet"] = round(time.time() - t, 1)
    supernet, sck = load_supernet(supernet_path)

    # ------------------------------------------------------------------ measured latency
    device = parse_device("local")
    protocol = Protocol(**{k: lut.protocol[k] for k in ("threads", "warmup", "runs", "min_seconds", "rounds")})
    timing_dir = args.cache / f"nets-{lut.runtime}"

    def measure(archs: list) -> list[float]:
        timed = measure_archs(archs, device, lut.runtime, protocol, timing_dir, jobs=2, resolution=res)
        return [t["median_ms"] for t in timed]

    t = time.time()
    base_ms = dict(zip(BASELINES, measure(list(BASELINES))))
    seconds["measure_baselines"] = round(time.time() - t, 1)
    budget = base_ms[args.budget] if args.budget in base_ms else float(args.budget)
    log(f"measured {lut.runtime} latency: {base_ms}; budget {budget:.4f} ms")

    # ------------------------------------------------------------------ searches
    scorer = Memo(CandidateScorer(supernet, gallery_model, splits, recal_batches=args.recal_batches,
                                  device=args.device), args.cache / f"scores-{sck['model_version']}.json")
    pred = {}

    def predicted(arch) -> float:
        key = str(arch)
        if key not in pred:
            pred[key] = lut.predict(arch, space)
        return pred[key]

    def mflops(arch) -> float:
        return space.cost(arch)["flops"] / 1e6

    rng = np.random.default_rng(args.seed + 1)
    probe = [space.sample(rng) for _ in range(200)]
    slope, intercept = np.polyfit([mflops(a) for a in probe], [predicted(a) for a in probe], 1)
    flops_budget = (budget - intercept) / slope
    share_in = float(np.mean([predicted(a) <= budget for a in probe]))
    log(f"budget {budget:.4f} ms admits {share_in:.0%} of random archs; matched FLOPs budget {flops_budget:.2f} MFLOPs")

    def run_search(name: str, reward: str, constraint, limit: float) -> dict:
        cfg = SearchConfig(budget_ms=limit, reward=reward, mix=args.mix, population=args.population,
                           generations=args.generations, seed=args.seed)
        out = args.cache / f"search-{name}-{sck['model_version']}-b{limit:.4f}.json"
        t = time.time()
        if out.exists() and json.loads(out.read_text()).get("complete"):
            result = json.loads(out.read_text())
        else:
            result = EvolutionSearch(space, cfg, constraint, scorer, out,
                                     meta={"lut": str(args.lut), "supernet": sck["model_version"]}).run()
        scorer.save()
        seconds[f"search_{name}"] = round(time.time() - t, 1)
        log(f"search {name}: chose {result['chosen']['arch']} (M_het {result['chosen']['m_het']:.3f}, "
            f"M_hom {result['chosen']['m_hom']:.3f})")
        return result

    searches = {r: run_search(r, r, predicted, budget) for r in ("r1", "r2", "r3")}
    searches["r3_flops"] = run_search("r3_flops", "r3", mflops, flops_budget)

    # ------------------------------------------------------------------ 2. latency vs FLOPs constraint, measured
    t = time.time()
    broken = {}
    for name in ("r3", "r3_flops"):
        final = searches[name]["state"]["population"]
        chosen = searches[name]["chosen"]["arch"]  # kept as a parent, so in the final population; made sure
        archs = [space.parse(a) for a in dict.fromkeys([*final, chosen])]
        ms = measure(archs)
        broken[name] = {
            "constraint": "predicted latency (LUT)" if name == "r3" else f"FLOPs <= {flops_budget:.2f} M",
            "nets_measured": len(archs), "over_budget": int(sum(m > budget for m in ms)),
            "share_over_budget": round(float(np.mean([m > budget for m in ms])), 4),
            "chosen": chosen, "chosen_measured_ms": ms[[str(a) for a in archs].index(chosen)],
            "chosen_predicted_ms": round(predicted(chosen), 4),
            "nets": [{"arch": str(a), "mflops": round(mflops(a), 2), "predicted_ms": round(predicted(a), 4),
                      "measured_ms": m} for a, m in zip(archs, ms)]}
        log(f"{name}: {broken[name]['over_budget']}/{len(archs)} of the final population measured over budget; "
            f"chosen measured {broken[name]['chosen_measured_ms']:.4f} ms")
    seconds["measure_populations"] = round(time.time() - t, 1)

    # ------------------------------------------------------------------ 3. FLOPs vs M_het
    from scipy.stats import spearmanr

    t = time.time()
    rng = np.random.default_rng(args.seed + 2)
    randoms = [space.sample(rng) for _ in range(args.n_random)]
    het = [scorer(a)["het"]["recall@1"] for a in randoms]
    hom = [scorer(a)["hom"]["recall@1"] for a in randoms]
    fl = [mflops(a) for a in randoms]
    scorer.save()
    seconds["score_random"] = round(time.time() - t, 1)
    corr = {"n": len(randoms), "note": "inherited supernet weights, BN recalibrated, validation split",
            "spearman_flops_vs_het_r1": round(float(spearmanr(fl, het).statistic), 4),
            "spearman_flops_vs_hom_r1": round(float(spearmanr(fl, hom).statistic), 4),
            "spearman_predicted_latency_vs_het_r1": round(float(spearmanr([predicted(a) for a in randoms], het)
                                                                .statistic), 4),
            "archs": [{"arch": str(a), "mflops": round(f, 2), "het_r1": h, "hom_r1": o}
                      for a, f, h, o in zip(randoms, fl, het, hom)]}
    log(f"Spearman rho(FLOPs, M_het) over {len(randoms)} random archs: {corr['spearman_flops_vs_het_r1']}")

    # ------------------------------------------------------------------ 1 + 4. retrain winners, evaluate, measure
    nets = {}
    for name in ("r1", "r2", "r3"):
        arch = searches[name]["chosen"]["arch"]
        nets[f"searched_{name}"] = (arch, query_net(arch, f"searched-{name}-{sck['model_version']}"))
    for name, path in baselines.items():
        nets[name] = (name, path)
    t = time.time()
    ms = dict(zip(nets, measure([space.parse(a) if ":" in a else a for a, _ in nets.values()])))
    seconds["measure_retrained"] = round(time.time() - t, 1)
    cache: dict = {}
    rows = []
    for name, (arch, path) in nets.items():
        ck = load_checkpoint(path, "query")
        report = evaluate_pair(model_from_checkpoint(ck), gallery_model, splits, device=args.device,
                               gallery_cache=cache)
        rows.append({"net": name, "arch": arch, "checkpoint": path.name, "model_version": ck["model_version"],
                     "measured_ms": ms[name], "predicted_ms": round(predicted(arch), 4) if ":" in arch else None,
                     "within_budget": ms[name] <= budget,
                     "mflops": round((space.cost(space.parse(arch))["flops"] if ":" in arch else
                                      _baseline_flops(arch, res)) / 1e6, 2),
                     "het_r1": report["heterogeneous"]["recall@1"], "hom_r1": report["homogeneous"]["recall@1"],
                     "het_map_r": report["heterogeneous"]["map@r"], "paragon_r1": report["paragon"]["recall@1"]})
        log(f"{name}: het R@1 {rows[-1]['het_r1']:.3f}, hom R@1 {rows[-1]['hom_r1']:.3f}, {ms[name]:.4f} ms")
    by = {r["net"]: r for r in rows}
    goal_ref = max((by[b] for b in BASELINES if by[b]["measured_ms"] >= by["searched_r3"]["measured_ms"]),
                   key=lambda r: r["het_r1"], default=None)
    goal = {"statement": "at equal or lower measured latency, the searched net (R3) beats MobileNetV3 + BCT on het "
                         "Recall@1",
            "compared_with": goal_ref and goal_ref["net"],
            "met": None if goal_ref is None else bool(by["searched_r3"]["het_r1"] > goal_ref["het_r1"]),
            "note": None if goal_ref else "every MobileNetV3 baseline measured faster than the searched net"}

    out = {"benchmark": "search_ablation", "machine": machine_info(),
           "command": "python benchmarks/search_ablation.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("cache", "out")),
           "data": {**spec.to_dict(), "sizes": splits.sizes(), "candidate_scoring": scorer.scorer.sizes()},
           "gallery": {"arch": "resnet101", "epochs": args.gallery_epochs, "model_version": gver},
           "supernet": {"space": space.config(), "epochs": args.supernet_epochs, "sampling": "uniform",
                        "model_version": sck["model_version"]},
           "query_epochs": args.query_epochs,
           "lut": {"file": args.lut.name, "runtime": lut.runtime, "runtime_version": lut.runtime_version,
                   "threads": lut.threads, "calibration": lut.calibration, "device": lut.device.get("spec")},
           "protocol": protocol.to_dict(),
           "budget": {"ms": round(budget, 4), "from": args.budget, "share_of_random_archs_within": share_in,
                      "matched_mflops": round(float(flops_budget), 3),
                      "flops_fit": {"slope_ms_per_mflop": float(slope), "intercept_ms": float(intercept)}},
           "search": {"population": args.population, "generations": args.generations, "mix": args.mix,
                      "recal_batches": args.recal_batches, "archs_scored": len(scorer.cache),
                      "winners": {k: {x: v["chosen"][x] for x in ("arch", "latency_ms", "m_het", "m_hom", "reward")}
                                  for k, v in searches.items()},
                      "pareto_front_r3": [{x: c[x] for x in ("arch", "latency_ms", "m_het", "m_hom")}
                                          for c in searches["r3"]["pareto_front"]]},
           "1_rewards": [by[f"searched_{r}"] for r in ("r1", "r2", "r3")],
           "2_latency_vs_flops_constraint": broken,
           "3_flops_vs_het": corr,
           "4_searched_vs_mobilenetv3": [by["searched_r3"], *(by[b] for b in BASELINES)],
           "goal": goal, "seconds": {**seconds, "total_this_run": round(time.time() - t_start, 1)},
           "load_average_end": os.getloadavg(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(args.out, out)
    plot(out, args.out.with_suffix(".png"))
    log(f"wrote {args.out}")


def _baseline_flops(name: str, res: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgequery.models import build_embedding_net

    net = build_embedding_net(name, 128, 10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, res, res))
    return int(counter.get_total_flops())


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    budget = out["budget"]["ms"]
    ax = axes[0]
    for r in out["4_searched_vs_mobilenetv3"] + out["1_rewards"][:2]:
        marker = "*" if r["net"].startswith("searched") else "o"
        ax.scatter(r["measured_ms"], r["het_r1"], s=120 if marker == "*" else 50, marker=marker)
        ax.annotate(r["net"], (r["measured_ms"], r["het_r1"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axvline(budget, color="k", ls="--", lw=0.8, label=f"budget {budget:.3f} ms")
    ax.set_xlabel(f"measured latency, {out['lut']['runtime']} 1 thread (ms)")
    ax.set_ylabel("heterogeneous Recall@1 (test)")
    ax.set_title("searched (BCT) vs MobileNetV3 + BCT", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1]
    for name, color in (("r3", "tab:blue"), ("r3_flops", "tab:orange")):
        b = out["2_latency_vs_flops_constraint"][name]
        ax.scatter([n["mflops"] for n in b["nets"]], [n["measured_ms"] for n in b["nets"]], c=color, s=20,
                   label=f"{name}: {b['over_budget']}/{b['nets_measured']} over budget")
    ax.axhline(budget, color="k", ls="--", lw=0.8)
    ax.axvline(out["budget"]["matched_mflops"], color="tab:orange", ls=":", lw=0.8)
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("measured latency (ms)")
    ax.set_title("final populations: latency- vs FLOPs-constrained", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[2]
    c = out["3_flops_vs_het"]
    ax.scatter([a["mflops"] for a in c["archs"]], [a["het_r1"] for a in c["archs"]], s=15)
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("M_het Recall@1 (inherited, validation)")
    ax.set_title(f"{c['n']} random archs: Spearman rho = {c['spearman_flops_vs_het_r1']:.2f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
