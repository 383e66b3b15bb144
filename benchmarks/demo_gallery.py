"""Does the demo's short gallery recipe beat raw pixels, and what makes it?

``edgequery demo`` has minutes, not the full recipe's hour, for its ResNet-101 gallery model.
This trains the demo's recipe (``DemoConfig``: ImageNet stem, residual branches starting at
zero, ``gallery_steps`` over all training images, no augmentation) beside the same recipe
without the zero start, and beside the recipe the demo had before (small-input stem, 3 epochs
over the demo's 8000 images, augmented), each with ``--seeds``, and scores every model on the
demo's query/gallery split: Recall@1 with its 95 % interval (bootstrap over the 1000
queries), the raw-pixel kNN baseline on the same split, and the training time.

    python benchmarks/demo_gallery.py                    # 3 recipes x 2 seeds, ~30 min here
    python benchmarks/demo_gallery.py --preset quick     # a few steps each, to check the script

Writes ``<out-dir>/demo_gallery.json`` and ``demo_gallery.png``.  Checkpoints go to ``--cache``
(reused when finished, resumed when not).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

import _bench
from edgequery.checkpoint import load_checkpoint
from edgequery.evaluate import gallery_report
from edgequery.models import model_from_checkpoint
from edgequery.workflow import DemoConfig, Workflow

log = _bench.log
QUICK = {"n_train": 512, "steps": 4, "seeds": "0"}


def recipes(demo: DemoConfig, steps: int | None, n_train: int | None) -> dict[str, dict]:
    """Each recipe: the gallery's model, its training images (None: all) and its train settings."""
    ours = {"model": {"arch": demo.gallery_arch}, "n_train": n_train or demo.gallery_n_train,
            "train": {"steps": steps or demo.gallery_steps, "augment": False, "extra": {"zero_init_residual": True}}}
    return {
        "demo": ours,
        "demo-without-zero-init": {**ours, "train": {**ours["train"], "extra": {}}},
        # what `edgequery demo` trained before: the gallery recipe's model and settings, 3 epochs of the demo's images
        "previous-demo": {"model": {}, "n_train": n_train or demo.n_train,
                          "epochs": None if steps else 3, "train": {"steps": steps, "augment": True}},
    }


def parse(argv: list[str] | None):
    p = _bench.parser(__doc__, {"quick": QUICK})
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=None, help="override every recipe's steps (quick checks)")
    p.add_argument("--n-train", type=int, default=None, help="override every recipe's training images")
    p.add_argument("--device", default="cpu")
    return _bench.parse(p, argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    prov = _bench.start(args)
    demo = DemoConfig(device=args.device)
    spec = demo.spec()
    wf = Workflow(spec, args.device)
    rows = []
    for name, recipe in recipes(demo, args.steps, args.n_train).items():
        for seed in _bench.seeds(args.seeds):
            data = replace(spec, n_train=recipe["n_train"])
            path = Path(args.cache) / f"demo-gallery-{name}-{_bench.digest([recipe, data.to_dict()])}-s{seed}.pt"
            wf.gallery(path, recipe.get("epochs"), model=recipe["model"], data=data, name=f"{name}_s{seed}",
                       seed=seed, **recipe["train"])
            ck = load_checkpoint(path, "gallery")
            report = gallery_report(model_from_checkpoint(ck), wf.splits, device=args.device)
            train = ck["train"]
            rows.append({"recipe": name, "seed": seed, "arch": ck["model"]["arch"], "train_images": data.n_train or "all",
                         "config": train["config"], "steps": train["scheduler"]["last_epoch"],
                         "train_seconds": round(sum(h["seconds"] for h in train["history"]), 1),
                         **_bench.r1_row(report["paragon"]), "warnings": report["warnings"]})
            lo, hi = rows[-1]["recall_at_1_ci95"]
            log.info("%s seed %d: Recall@1 %.1f %% [%.1f, %.1f] in %.0f s", name, seed, 100 * rows[-1]["recall_at_1"],
                     100 * lo, 100 * hi, rows[-1]["train_seconds"])
    raw = _bench.baselines_of(report)
    summary = {name: {"recall_at_1_mean": round(float(np.mean([r["recall_at_1"] for r in rows if r["recipe"] == name])), 4),
                      "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in rows
                                                                 if r["recipe"] == name])), 1)}
               for name in dict.fromkeys(r["recipe"] for r in rows)}
    out = _bench.write(args, "demo_gallery", {"split": wf.splits.sizes(), "baselines": raw, "recipes": summary,
                                              "rows": rows, "stages": wf.stages}, prov)
    plot(rows, raw, out.with_suffix(".png"))
    return out


def plot(rows: list[dict], raw: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["recipe"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    base = raw["raw_pixel_knn"]
    ax.axhspan(*[100 * v for v in base["recall_at_1_ci95"]], color="0.85", label="raw-pixel kNN (95 % CI)")
    ax.axhline(100 * base["recall_at_1"], color="0.4", lw=1)
    for i, name in enumerate(names):
        mine = [r for r in rows if r["recipe"] == name]
        for j, r in enumerate(mine):
            lo, hi = (100 * v for v in r["recall_at_1_ci95"])
            y = 100 * r["recall_at_1"]
            ax.errorbar(i + 0.12 * (j - (len(mine) - 1) / 2), y, yerr=[[y - lo], [hi - y]], fmt="o", capsize=3,
                        color=f"C{i}")
    ax.set_xticks(range(len(names)), [f"{n}\n({np.mean([r['train_seconds'] for r in rows if r['recipe'] == n]):.0f} s)"
                                      for n in names], fontsize=8)
    ax.set_ylabel("paragon Recall@1 (%), one point per seed")
    ax.set_title("The demo's gallery model: 1000 queries vs 5000 gallery images", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
