"""How noisy is the search reward? The scorer's two protocols on the same archs, with standard errors.

The search ranks candidates by a retrieval metric (``--metric``: Recall@1 or mAP@R) on the
validation split (``CandidateScorer``).  Two protocols over the same 1000 validation images:

``split``  the first fifth (200) are queries, the other 800 the gallery (the protocol before);
``loo``    every image is a query against the other 999 (leave-one-out, the default now):
           five times the queries at the same cost, since a candidate embeds each image once.

For ``--archs`` random archs of ``search_ablation.py``'s space (its supernet, stored paragon
and LUT resolution, from the same ``--cache``), both protocols' heterogeneous and homogeneous
Recall@1 and mAP@R with 95 % bootstrap intervals over queries; the standard error is the
interval's width / 3.92, set beside how much the archs' scores differ (their standard deviation):
a reward whose standard error is not well below that spread cannot rank these archs.  Writes
``<out-dir>/reward_noise.json`` and ``.png``.

    python benchmarks/reward_noise.py --cache ~/.cache/edgequery/bench   # ~3 min with search_ablation's cache
"""

from __future__ import annotations

import numpy as np

import _bench
from edgequery.search import CandidateScorer
from search_ablation import Ablation, load_model
from search_ablation import parse as ablation_parse


METRICS = {"recall@1": "r1", "map@r": "map_r"}   # the scorer's figure -> this file's key


def main(argv: list[str] | None = None):
    from scipy.stats import kendalltau

    args = ablation_parse(argv, __doc__, lambda ap: ap.add_argument("--archs", type=int, default=12,
                                                                     help="random archs scored under both protocols"))
    n_archs = args.archs
    prov = _bench.start(args)
    ab = Ablation(args)
    sn_path, supernet, sck = ab.supernet()
    gallery = load_model(ab.gallery_path)
    n_val = len(ab.wf.splits.val)
    scorers = {"split": CandidateScorer(supernet, gallery, ab.wf.splits, n_queries=n_val // 5,
                                        recal_batches=args.recal_batches, device=args.device, ci=True),
               "loo": CandidateScorer(supernet, gallery, ab.wf.splits, recal_batches=args.recal_batches,
                                      device=args.device, ci=True)}
    rng = np.random.default_rng(args.seed)
    archs = [ab.space.sample(rng) for _ in range(n_archs)]
    rows = []
    for i, arch in enumerate(archs):
        row = {"arch": str(arch), "predicted_ms": round(ab.predicted(arch), 4)}
        for name, scorer in scorers.items():
            torch_seed_everything(args.seed)  # the same BatchNorm re-estimation batches under both protocols
            s = scorer(arch)
            for side in ("het", "hom"):
                for metric, key in METRICS.items():
                    lo, hi = s[side][f"{metric}_ci95"]
                    row[f"{name}_{side}_{key}"] = round(s[side][metric], 4)
                    row[f"{name}_{side}_{key}_ci95"] = [round(lo, 4), round(hi, 4)]
                    row[f"{name}_{side}_{key}_se"] = round((hi - lo) / 3.92, 4)
        rows.append(row)
        _bench.log.info(f"[{i + 1}/{n_archs}] het R@1 split {row['split_het_r1']:.3f} ± {row['split_het_r1_se']:.3f}"
                        f"  loo {row['loo_het_r1']:.3f} ± {row['loo_het_r1_se']:.3f};  het mAP@R loo "
                        f"{row['loo_het_map_r']:.3f} ± {row['loo_het_map_r_se']:.3f}")
    summary = {}
    for name, scorer in scorers.items():
        for side in ("het", "hom"):
            for key in METRICS.values():
                se = [r[f"{name}_{side}_{key}_se"] for r in rows]
                spread = float(np.std([r[f"{name}_{side}_{key}"] for r in rows]))
                summary[f"{name}_{side}_{key}"] = {
                    "metric": key, "queries": scorer.sizes()["val_queries"], "gallery": scorer.sizes()["val_gallery"],
                    "median_se_points": round(100 * float(np.median(se)), 2),
                    "spread_of_scores_points": round(100 * spread, 2),
                    "se_over_spread": round(float(np.median(se)) / spread, 2) if spread else None}
    taus = {key: kendalltau([r[f"split_het_{key}"] for r in rows], [r[f"loo_het_{key}"] for r in rows])
            for key in METRICS.values()}
    res = {"archs": rows, "summary": summary, "supernet": {"checkpoint": sn_path.name,
                                                           "model_version": sck["model_version"]},
           "gallery": {"checkpoint": ab.gallery_path.name, "model_version": ab.gver},
           **{f"kendall_tau_split_vs_loo_het_{key}": {"tau": round(float(t.statistic), 4),
                                                      "p_value": round(float(t.pvalue), 4)} for key, t in taus.items()},
           "stages": ab.stages}
    notes = []
    for key, label in (("r1", "Recall@1"), ("map_r", "mAP@R")):
        split, loo = summary[f"split_het_{key}"], summary[f"loo_het_{key}"]
        notes.append(f"median standard error of a candidate's heterogeneous {label}: {split['median_se_points']} points "
                     f"with {split['queries']} queries, {loo['median_se_points']} with leave-one-out over "
                     f"{loo['queries']}; the archs' scores spread {loo['spread_of_scores_points']} points (std, "
                     "leave-one-out)")
    path = _bench.write(args, "reward_noise", res, prov, notes)
    plot(res, path.with_suffix(".png"))
    return path


def torch_seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(res["archs"], key=lambda r: r["loo_het_r1"])
    x = np.arange(len(rows))
    panels = [(key, label) for key, label in (("r1", "Recall@1"), ("map_r", "mAP@R")) if f"loo_het_{key}" in rows[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for off, name, colour in ((-0.15, "split", "C1"), (0.15, "loo", "C0")):
            y = [r[f"{name}_het_{key}"] for r in rows]
            lo = [r[f"{name}_het_{key}"] - r[f"{name}_het_{key}_ci95"][0] for r in rows]
            hi = [r[f"{name}_het_{key}_ci95"][1] - r[f"{name}_het_{key}"] for r in rows]
            summary = res["summary"][f"{name}_het_{key}"]
            ax.errorbar(x + off, y, yerr=[lo, hi], fmt="o", color=colour, capsize=2,
                        label=f"{name}: {summary['queries']} queries (median SE {summary['median_se_points']} pts)")
        ax.set(xlabel="random arch (sorted by leave-one-out Recall@1)", ylabel=f"heterogeneous {label} (95 % CI)",
               title=f"the search reward's noise, {label}: {res['summary']['split_het_r1']['queries']} queries vs "
                     f"leave-one-out over {res['summary']['loo_het_r1']['queries']}")
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
