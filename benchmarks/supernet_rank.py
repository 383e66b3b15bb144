"""Does the BCT-trained supernet rank archs the way stand-alone training does?

One-shot NAS trusts that an arch's accuracy *inherited* from the supernet predicts its
accuracy when trained alone.  This measures it for heterogeneous search: for N archs
sampled from a space it compares

* **inherited** - the subnet extracted from the BCT-trained supernet, BatchNorm
  recalibrated on training images, queries embedded by it against the ResNet-101
  gallery embeddings (heterogeneous Recall@1, also mAP@R; before recalibration too);
* **stand-alone** - the same arch trained from scratch with BCT against the same
  gallery (``recipes.train_query``, the quick preset),

and reports Kendall's tau (``scipy.stats.kendalltau``, tau-b) between the two rankings.
Writes ``benchmarks/results/supernet_rank.json`` and ``supernet_rank.png``.

    python benchmarks/supernet_rank.py                                   # the committed preset
    python benchmarks/supernet_rank.py --gallery benchmarks/.cache/gallery-r101.pt   # reuse a gallery
    python benchmarks/supernet_rank.py --n-archs 3 --supernet-epochs 1 --standalone-epochs 1 \\
        --n-train 1000 --gallery-epochs 1 --out /tmp/rank.json            # smoke run

Without ``--gallery`` it reuses ``benchmarks/.cache/gallery-r101.pt`` when that holds a
finished gallery, and otherwise trains its own small ResNet-101 gallery.  The supernet
and stand-alone nets train on the first ``--n-train`` training images of the gallery's
split (a subset of what the gallery saw); query / gallery images are the gallery's.
Every training run checkpoints into ``--cache`` and resumes; finished ones are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgequery.checkpoint import is_finished, load_checkpoint
from edgequery.commands.common import write_json
from edgequery.data import DataSpec, load_splits
from edgequery.evaluate import evaluate_pair
from edgequery.models import model_from_checkpoint
from edgequery.recipes import train_gallery, train_query
from edgequery.spaces import get_space
from edgequery.spaces.training import load_supernet, train_supernet
from edgequery.sysinfo import machine_info
from edgequery.train import TrainConfig

HERE = Path(__file__).resolve().parent
SHARED_GALLERY = HERE / ".cache" / "gallery-r101.pt"


def train_seconds(ckpt: dict) -> float:
    """Wall-clock training time recorded in a checkpoint (sum over epochs; survives reuse and resume)."""
    return round(sum(h["seconds"] for h in ckpt["train"]["history"]), 1)


def metrics(report: dict) -> dict:
    het, hom = report["heterogeneous"], report["homogeneous"]
    return {"het_r1": het["recall@1"], "het_map_r": het["map@r"], "hom_r1": hom["recall@1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="mbv3", choices=["mbv3", "shufflenet"])
    ap.add_argument("--n-archs", type=int, default=10, help="archs to rank (sampled uniformly, --arch-seed)")
    ap.add_argument("--arch-seed", type=int, default=2024)
    ap.add_argument("--gallery", type=Path, default=None, help="a finished gallery.pt to reuse")
    ap.add_argument("--gallery-epochs", type=int, default=2, help="when training our own gallery")
    ap.add_argument("--gallery-n-train", type=int, default=6000, help="when training our own gallery")
    ap.add_argument("--n-train", type=int, default=5000, help="training images for supernet and stand-alone nets")
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--n-gallery", type=int, default=5000)
    ap.add_argument("--supernet-epochs", type=int, default=15)
    ap.add_argument("--standalone-epochs", type=int, default=4, help="the quick preset (edgequery demo's)")
    ap.add_argument("--sandwich", action="store_true", help="train the supernet with the sandwich rule")
    ap.add_argument("--calib-batches", type=int, default=20, help="BN recalibration: batches of 128 images")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the 2 cores are shared with other jobs; 2 threads then thrash)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache" / "supernet_rank")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "supernet_rank.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start, load_start = time.time(), os.getloadavg()
    seconds: dict[str, float] = {}

    # ------------------------------------------------------------- the gallery model
    gallery_path = args.gallery or (SHARED_GALLERY if is_finished(SHARED_GALLERY) else None)
    if gallery_path is None:
        gspec = DataSpec(n_train=args.gallery_n_train, n_val=0, n_query=args.n_query, n_gallery=args.n_gallery)
        gallery_path = args.cache / f"gallery-r101-n{args.gallery_n_train}-e{args.gallery_epochs}.pt"
        if not is_finished(gallery_path):
            t = time.time()
            train_gallery(gspec, TrainConfig(epochs=args.gallery_epochs, device=args.device), gallery_path)
            seconds["gallery"] = round(time.time() - t, 1)
    gallery = load_checkpoint(gallery_path, "gallery")
    if not gallery["train"].get("complete"):
        raise SystemExit(f"{gallery_path} is an unfinished gallery run")
    gallery_model = model_from_checkpoint(gallery)
    gallery_spec = DataSpec.from_dict(gallery["data"])
    spec = replace(gallery_spec, n_train=args.n_train, n_query=args.n_query, n_gallery=args.n_gallery)
    splits = load_splits(spec)
    print(f"gallery {gallery_path} ({gallery['model']['arch']}, {gallery['model_version']}); data {splits.sizes()}",
          flush=True)

    # ------------------------------------------------------------- the supernet
    space = get_space(args.space)
    tag = f"{args.space}-n{args.n_train}-g{gallery['model_version']}"
    sn_path = args.cache / f"supernet-{tag}-e{args.supernet_epochs}{'-sandwich' if args.sandwich else ''}.pt"
    if not is_finished(sn_path):
        t = time.time()
        train_supernet(gallery_path, TrainConfig(epochs=args.supernet_epochs, device=args.device), sn_path,
                       space=space, sandwich=args.sandwich, spec=spec, splits=splits)
        seconds["supernet"] = round(time.time() - t, 1)
    supernet, sn_ckpt = load_supernet(sn_path)

    # ------------------------------------------------------------- archs, inherited vs stand-alone
    rng = np.random.default_rng(args.arch_seed)
    archs = []
    while len(archs) < args.n_archs:  # distinct archs
        a = space.sample(rng)
        if a not in archs:
            archs.append(a)
    cache: dict = {}
    rows = []
    for i, arch in enumerate(archs):
        row = {"arch": str(arch), **space.cost(arch, gallery["model"]["embed_dim"])}
        t = time.time()
        raw = supernet.extract(arch)
        row["inherited_no_recal"] = metrics(evaluate_pair(raw, gallery_model, splits, args.device, cache))
        net = supernet.subnet(arch, splits.train, spec, batches=args.calib_batches)
        row["inherited"] = metrics(evaluate_pair(net, gallery_model, splits, args.device, cache))
        row["inherited_seconds"] = round(time.time() - t, 1)

        path = args.cache / f"standalone-{tag}-e{args.standalone_epochs}-{i}.pt"
        if not is_finished(path):
            t = time.time()
            train_query(gallery_path, TrainConfig(epochs=args.standalone_epochs, device=args.device), path,
                        arch=str(arch), bct=True, spec=spec, splits=splits)
            seconds[f"standalone_{i}"] = round(time.time() - t, 1)
        q = load_checkpoint(path, "query")
        report = evaluate_pair(model_from_checkpoint(q), gallery_model, splits, args.device, cache)
        row["standalone"] = metrics(report)
        row["standalone_train_seconds"] = train_seconds(q)
        paragon = report["paragon"]
        rows.append(row)
        print(f"[{i + 1}/{len(archs)}] {arch}  het R@1 inherited {100 * row['inherited']['het_r1']:.2f} "
              f"(no recal {100 * row['inherited_no_recal']['het_r1']:.2f})  "
              f"stand-alone {100 * row['standalone']['het_r1']:.2f}  {row['flops'] / 1e6:.1f} MFLOPs", flush=True)

    # ------------------------------------------------------------- rank correlations
    from scipy.stats import kendalltau, spearmanr

    def finite(v: float) -> float | None:  # a constant ranking has no correlation: null, not NaN
        return round(float(v), 4) if np.isfinite(v) else None

    def tau(a, b):
        r = kendalltau(a, b)
        return {"tau": finite(r.statistic), "p_value": finite(r.pvalue)}

    standalone_r1 = [r["standalone"]["het_r1"] for r in rows]
    correlations = {
        "het_r1_inherited_vs_standalone": tau([r["inherited"]["het_r1"] for r in rows], standalone_r1),
        "het_map_r_inherited_vs_standalone": tau([r["inherited"]["het_map_r"] for r in rows],
                                                 [r["standalone"]["het_map_r"] for r in rows]),
        "het_r1_inherited_without_bn_recal_vs_standalone": tau([r["inherited_no_recal"]["het_r1"] for r in rows],
                                                               standalone_r1),
        "flops_vs_standalone_het_r1": tau([r["flops"] for r in rows], standalone_r1),
        "spearman_het_r1_inherited_vs_standalone": finite(spearmanr(
            [r["inherited"]["het_r1"] for r in rows], standalone_r1).statistic),
    }
    out = {
        "benchmark": "supernet_rank",
        "command": "python benchmarks/supernet_rank.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k not in ("cache", "out", "sandwich") and v is not None) + (" --sandwich" if args.sandwich else ""),
        "space": space.config(),
        "data": {"dataset": spec.dataset, "resolution": spec.resolution, "sizes": splits.sizes(),
                 "classes": splits.num_classes},
        "gallery": {"path": str(gallery_path), "arch": gallery["model"]["arch"],
                    "model_version": gallery["model_version"], "epochs": gallery["train"]["epochs"],
                    "n_train": gallery_spec.n_train, "embed_dim": gallery["model"]["embed_dim"],
                    "train_seconds": train_seconds(gallery),
                    "paragon": {"r1": paragon["recall@1"], "map_r": paragon["map@r"]}},
        "supernet": {"epochs": args.supernet_epochs, "sampling": sn_ckpt["sampling"]["rule"],
                     "n_train": len(splits.train), "model_version": sn_ckpt["model_version"],
                     "final_loss": sn_ckpt["train"]["history"][-1]["loss"], "train_seconds": train_seconds(sn_ckpt),
                     "train_config": sn_ckpt["train"]["config"],
                     "bn_recalibration": {"batches": args.calib_batches, "batch_size": 128}},
        "standalone": {"epochs": args.standalone_epochs, "bct_weight": 1.0, "n_train": len(splits.train),
                       "train_config": TrainConfig(epochs=args.standalone_epochs).to_dict()},
        "correlations": correlations,
        "archs": rows,
        "train_seconds_this_run": seconds,  # empty when every model came from the cache
        "total_seconds_this_run": round(time.time() - t_start, 1),
        "load_average_1min": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "note": ("2 CPU cores shared with other jobs during the run; seconds are wall-clock and noisy. "
                 "Kendall tau over this few archs has a wide confidence interval: read p_value."),
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(args.out, out)
    plot(rows, correlations, args.out.with_suffix(".png"), args.space)
    print(json.dumps(correlations, indent=1))
    print(f"wrote {args.out}")


def plot(rows: list[dict], correlations: dict, path: Path, space: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    x = [100 * r["standalone"]["het_r1"] for r in rows]
    ax.scatter(x, [100 * r["inherited"]["het_r1"] for r in rows], label="inherited, BN recalibrated", zorder=3)
    ax.scatter(x, [100 * r["inherited_no_recal"]["het_r1"] for r in rows], marker="x", color="#999999",
               label="inherited, shared BN statistics", zorder=2)
    ax.set_xlabel("stand-alone BCT training: het. Recall@1 (%)")
    ax.set_ylabel("inherited from supernet: het. Recall@1 (%)")
    c = correlations["het_r1_inherited_vs_standalone"]
    title = (f"Kendall tau = {c['tau']:.2f} (p = {c['p_value']:.2f})" if c["tau"] is not None
             else "Kendall tau undefined")
    ax.set_title(f"{space} supernet ranking, {title}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
