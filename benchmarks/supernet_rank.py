"""Does the BCT-trained supernet rank archs the way stand-alone training does?

One-shot NAS trusts that an arch's accuracy *inherited* from the supernet predicts its
accuracy when trained alone.  This measures it for heterogeneous search: for N archs
sampled from a space it compares

* **inherited** - the subnet extracted from the BCT-trained supernet, BatchNorm
  recalibrated on training images, queries embedded by it against the ResNet-101
  gallery embeddings (heterogeneous Recall@1, also mAP@R; before recalibration too);
* **stand-alone** - the same arch trained from scratch with BCT against the same
  gallery (the workflow's query stage, ``--standalone-epochs``),

and reports Kendall's tau (``scipy.stats.kendalltau``, tau-b) between the two rankings.
Writes ``<out-dir>/supernet_rank.json`` and ``supernet_rank.png`` (with ``--sandwich`` /
``--inplace-distill W``: ``supernet_rank-sandwich-distillW.json``, so both rules' runs are kept;
the stand-alone nets are the same files, trained once).

    python benchmarks/supernet_rank.py                  # the full run (on the paragon: not yet timed here)
    python benchmarks/supernet_rank.py --preset quick   # 1 min at load 4: 3 archs, 1000 images, 1 epoch
    python benchmarks/supernet_rank.py --gallery PATH   # reuse a finished gallery checkpoint

Without ``--gallery`` it takes the benchmarks' gallery model (``benchmarks/paragon.py``'s,
shared through ``--cache``; trained if missing: about 1.7 h on 2 cores).  The supernet and
stand-alone nets train on the first ``--n-train`` training images of the gallery's split
(a subset of what the gallery saw); query / gallery images are the gallery's.  Every
training run is a workflow stage: checkpointed into ``--cache``, resumed, reused.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import _bench
from edgequery.checkpoint import load_checkpoint
from edgequery.commands.common import add_space_args, space_from_args
from edgequery.data import DataSpec
from edgequery.errors import EdgeQueryError
from edgequery.spaces.training import load_supernet
from edgequery.train import TrainConfig
from edgequery.workflow import Workflow

log = _bench.log
QUICK = {"n_archs": 3, "gallery_n_train": 1000, "gallery_steps": 20, "n_train": 1000, "n_query": 200,
         "n_gallery": 500, "supernet_epochs": 1, "standalone_epochs": 1, "calib_batches": 2}


def metrics(report: dict) -> dict:
    het, hom = report["heterogeneous"], report["homogeneous"]
    return {"het_r1": het["recall@1"], "het_map_r": het["map@r"], "hom_r1": hom["recall@1"], **_bench.r1_row(het)}


def parse(argv: list[str] | None):
    ap = _bench.parser(__doc__, {"quick": QUICK})
    add_space_args(ap)
    ap.add_argument("--n-archs", type=int, default=10, help="archs to rank (sampled uniformly, --arch-seed)")
    ap.add_argument("--arch-seed", type=int, default=2024)
    ap.add_argument("--gallery", type=Path, default=None, help="a finished gallery.pt to reuse")
    ap.add_argument("--gallery-steps", type=int, default=None,
                    help="without --gallery: the gallery model's steps (default: the gallery recipe's, the paragon)")
    ap.add_argument("--gallery-n-train", type=int, default=None,
                    help="without --gallery: its training images (default: all 59k, the paragon's)")
    ap.add_argument("--n-train", type=int, default=5000, help="training images for supernet and stand-alone nets")
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--n-gallery", type=int, default=5000)
    ap.add_argument("--supernet-epochs", type=int, default=15)
    ap.add_argument("--standalone-epochs", type=int, default=4, help="the quick preset (edgequery demo's)")
    ap.add_argument("--sandwich", action="store_true", help="train the supernet with the sandwich rule")
    ap.add_argument("--inplace-distill", type=float, default=0.0, metavar="W",
                    help="with --sandwich: in-place distillation towards the largest arch's embedding, weight W")
    ap.add_argument("--calib-batches", type=int, default=20, help="BN recalibration: batches of 128 images")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the 2 cores are shared with other jobs; 2 threads then thrash)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--replot", action="store_true",
                    help="measure nothing: redraw the PNG of the --sandwich / --inplace-distill run from its JSON")
    return _bench.parse(ap, argv)


def distinct_archs(space, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    archs: list = []
    for _ in range(200 * n):
        a = space.sample(rng)
        if a not in archs:
            archs.append(a)
        if len(archs) == n:
            return archs
    raise EdgeQueryError(f"the space has fewer than {n} distinct archs to sample", "lower --n-archs")


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    rule = ("-sandwich" if args.sandwich else "") + (f"-distill{args.inplace_distill:g}" if args.inplace_distill else "")
    if args.replot:
        return _bench.replot(args, "supernet_rank", plot, variant=rule)
    prov = _bench.start(args)
    torch.set_num_threads(args.threads)
    gspec = _bench.paragon_spec(args.gallery_n_train)
    gallery_path = args.gallery or _bench.paragon_checkpoint(Workflow(gspec, args.device), args.cache,
                                                             steps=args.gallery_steps)
    gallery = load_checkpoint(gallery_path, "gallery")
    if not gallery["train"].get("complete"):
        raise EdgeQueryError(f"{gallery_path} is an unfinished gallery run", "finish it, or drop --gallery")
    gallery_spec = DataSpec.from_dict(gallery["data"])
    spec = replace(gallery_spec, n_train=args.n_train, n_query=args.n_query, n_gallery=args.n_gallery)
    wf = Workflow(spec, args.device)
    log.info("gallery %s (%s, %s); data %s", gallery_path, gallery["model"]["arch"], gallery["model_version"],
             wf.splits.sizes())

    space = space_from_args(args)
    tag = f"{args.space}-{_bench.data_tag(spec)}-g{gallery['model_version']}"
    sn_path = wf.supernet(args.cache / f"supernet-{tag}-e{args.supernet_epochs}{rule}.pt", gallery_path, space,
                          args.supernet_epochs, sandwich=args.sandwich, distill=args.inplace_distill)
    supernet, sn_ckpt = load_supernet(sn_path)
    rows, paragon = [], {}
    for i, arch in enumerate(distinct_archs(space, args.n_archs, args.arch_seed)):
        row, paragon = rank_row(wf, supernet, space, arch, i, args, gallery_path, tag, gallery["model"]["embed_dim"])
        rows.append(row)
    correlations = rank_correlations(rows)
    body = {
        "space": space.config(),
        "data": {"dataset": spec.dataset, "resolution": spec.resolution, "sizes": wf.splits.sizes(),
                 "classes": wf.splits.num_classes},
        "gallery": {"checkpoint": gallery_path.name, "arch": gallery["model"]["arch"],
                    "model_version": gallery["model_version"], "epochs": gallery["train"]["epochs"],
                    "n_train": gallery_spec.n_train, "embed_dim": gallery["model"]["embed_dim"],
                    "train_seconds": _bench.train_seconds(gallery),
                    "paragon": {"r1": paragon["recall@1"], "map_r": paragon["map@r"]}},
        "supernet": {"epochs": args.supernet_epochs, "sampling": sn_ckpt["sampling"]["rule"],
                     "distill": sn_ckpt["sampling"].get("distill", 0.0),
                     "n_train": len(wf.splits.train), "model_version": sn_ckpt["model_version"],
                     "final_loss": sn_ckpt["train"]["history"][-1]["loss"],
                     "train_seconds": _bench.train_seconds(sn_ckpt), "train_config": sn_ckpt["train"]["config"],
                     "bn_recalibration": {"batches": args.calib_batches, "batch_size": 128}},
        "standalone": {"epochs": args.standalone_epochs, "bct_weight": 1.0, "n_train": len(wf.splits.train),
                       "train_config": TrainConfig(epochs=args.standalone_epochs, device=args.device).to_dict()},
        "correlations": correlations,
        "archs": rows,
        "stages": wf.stages,
    }
    notes = [f"Kendall tau over {len(rows)} archs has a wide confidence interval: read p_value",
             "seconds are wall-clock on a machine whose cores may be shared (see provenance.load_average)"]
    path = _bench.write(args, "supernet_rank", body, prov, notes, variant=rule)
    plot(body, path.with_suffix(".png"))
    return path


def rank_row(wf: Workflow, supernet, space, arch, i: int, args, gallery_path: Path, tag: str,
             embed_dim: int) -> tuple[dict, dict]:
    """One arch: inherited (with and without BN recalibration) and stand-alone heterogeneous accuracy;
    and the paragon's figures (the gallery model on both sides), which every report carries."""
    row = {"arch": str(arch), **space.cost(arch, embed_dim)}
    inherited = {"inherited_no_recal": supernet.extract(arch),
                 "inherited": supernet.subnet(arch, wf.splits.train, wf.spec, batches=args.calib_batches)}
    reports = wf.evaluate(inherited, gallery_path, name=f"eval_inherited_{i}")
    row.update({k: metrics(r) for k, r in reports.items()})
    row["inherited_seconds"] = wf.stages[f"eval_inherited_{i}"]["seconds"]
    path = wf.query(args.cache / f"standalone-{tag}-e{args.standalone_epochs}-{i}.pt", gallery_path, str(arch), True,
                    args.standalone_epochs, name=f"train_standalone_{i}", space=space)
    report = wf.evaluate({"standalone": path}, gallery_path, name=f"eval_standalone_{i}")["standalone"]
    row["standalone"] = metrics(report)
    # the row's headline figures: the stand-alone net's het Recall@1, beside raw pixels on the same split
    row.update({k: row["standalone"][k] for k in ("recall_at_1", "recall_at_1_ci95")}, baselines=_bench.baselines_of(report))
    row["standalone_train_seconds"] = _bench.train_seconds(load_checkpoint(path, "query"))
    log.info("[%d/%d] %s  het R@1 inherited %.2f (no recal %.2f)  stand-alone %.2f  %.1f MFLOPs", i + 1,
             args.n_archs, arch, 100 * row["inherited"]["het_r1"], 100 * row["inherited_no_recal"]["het_r1"],
             100 * row["standalone"]["het_r1"], row["flops"] / 1e6)
    return row, report["paragon"]


def rank_correlations(rows: list[dict]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    def finite(v: float) -> float | None:  # a constant ranking has no correlation: null, not NaN
        return round(float(v), 4) if np.isfinite(v) else None

    def tau(a, b):
        r = kendalltau(a, b)
        return {"tau": finite(r.statistic), "p_value": finite(r.pvalue)}

    def col(kind: str, key: str = "het_r1") -> list[float]:
        return [r[kind][key] for r in rows]

    standalone_r1 = col("standalone")
    return {
        "het_r1_inherited_vs_standalone": tau(col("inherited"), standalone_r1),
        "het_map_r_inherited_vs_standalone": tau(col("inherited", "het_map_r"), col("standalone", "het_map_r")),
        "het_r1_inherited_without_bn_recal_vs_standalone": tau(col("inherited_no_recal"), standalone_r1),
        "flops_vs_standalone_het_r1": tau([r["flops"] for r in rows], standalone_r1),
        "spearman_het_r1_inherited_vs_standalone": finite(spearmanr(col("inherited"), standalone_r1).statistic),
    }


def plot(results: dict, path: Path) -> None:
    """Inherited vs stand-alone heterogeneous Recall@1 and mAP@R of every arch (one panel each, titled with its
    Kendall tau), under the supernet's sampling rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, correlations = results["archs"], results["correlations"]
    sn = results["supernet"]
    rule = sn["sampling"] + (f" + in-place distillation {sn['distill']:g}" if sn.get("distill") else "")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, key, label in zip(axes, ("het_r1", "het_map_r"), ("Recall@1", "mAP@R")):
        x = [100 * r["standalone"][key] for r in rows]
        ax.scatter(x, [100 * r["inherited"][key] for r in rows], label="inherited, BN recalibrated", zorder=3)
        ax.scatter(x, [100 * r["inherited_no_recal"][key] for r in rows], marker="x", color="#999999",
                   label="inherited, shared BN statistics", zorder=2)
        ax.set_xlabel(f"stand-alone BCT training: het. {label} (%)")
        ax.set_ylabel(f"inherited from supernet: het. {label} (%)")
        c = correlations[f"{key}_inherited_vs_standalone"]
        ax.set_title(f"{label}: Kendall tau = {c['tau']:.2f} (p = {c['p_value']:.2f})" if c["tau"] is not None
                     else f"{label}: Kendall tau undefined", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['space']['space']} supernet ({rule}): inherited vs stand-alone ranking of "
                 f"{len(rows)} archs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
