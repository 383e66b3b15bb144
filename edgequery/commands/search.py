"""``edgequery search``: the best compatible query net for a gallery under a latency budget."""

from __future__ import annotations

import argparse
import logging

from ..artifacts.search import METRICS, SearchConfig
from .common import HelpFormatter

log = logging.getLogger(__name__)


class _Formatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The description as written (it has examples), defaults shown."""

DESCRIPTION = """\
Search the supernet's space - as configured when the supernet was trained, cut to the
resolutions the LUT measured - for the query net with the best reward whose latency,
predicted from a per-block table measured on the target (edgequery profile), fits the
budget. Candidates inherit supernet weights (BN recalibrated) and are scored on the
validation split: M_het = queries by the candidate vs gallery by the gallery model,
M_hom = the candidate on both sides. Writes search.json (every candidate, the Pareto
front, the chosen arch, the space searched); rerun with the same flags to resume.

examples:
  edgequery search --supernet supernet.pt --gallery gallery.pt --lut lut-local-litert.json --latency-budget 0.4ms
  edgequery train query --arch search.json --gallery gallery.pt --bct      # retrain the winner
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="evolutionary search for a compatible query net under a latency budget",
                       description=DESCRIPTION, formatter_class=_Formatter)
    p.add_argument("--supernet", required=True, help="supernet checkpoint (edgequery train supernet)")
    p.add_argument("--gallery", required=True, help="gallery checkpoint the supernet was trained against")
    p.add_argument("--lut", required=True, help="latency table (edgequery profile) of the target device/runtime")
    p.add_argument("--latency-budget", required=True, help="e.g. 30ms, 800us, 0.03s")
    p.add_argument("--out", default="search.json")
    p.add_argument("--reward", choices=["r1", "r2", "r3"], default="r3",
                   help="r1 = M_hom (ordinary NAS), r2 = M_het (compatibility only), r3 = mix of both")
    p.add_argument("--mix", type=float, default=0.5, help="weight of M_het in r3")
    p.add_argument("--latency-weight", type=float, default=0.0,
                   help="MnasNet soft factor exponent w in reward x (LAT/T)^w; 0 = hard budget only, "
                        "negative favours faster nets")
    p.add_argument("--metric", choices=METRICS, default=SearchConfig.model_fields["metric"].default,
                   help="the retrieval figure M_het and M_hom are (map@r by default: on the benchmarks' gallery its "
                        "inherited scores rank stand-alone nets better, and it is less noisy than recall@1)")
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--mutation-prob", type=float, default=0.1)
    p.add_argument("--parents", type=float, default=0.25, help="share of the population kept as parents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recal-batches", type=int, default=20, help="BN recalibration batches per candidate")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="start over even if --out holds a search")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..search import parse_budget, search_from_files

    cfg = SearchConfig(budget=parse_budget(args.latency_budget), cost_unit="ms", reward=args.reward, mix=args.mix,
                       cost_weight=args.latency_weight, metric=args.metric, population=args.population,
                       generations=args.generations, mutation_prob=args.mutation_prob, parents=args.parents,
                       seed=args.seed)
    result = search_from_files(args.supernet, args.gallery, args.lut, cfg, args.out, recal_batches=args.recal_batches,
                               device=args.device, force=args.force)
    best = result["chosen"]
    print(f"chosen: {best['arch']}\n  predicted latency {best['latency_ms']:.3f} ms (budget {cfg.budget:g} ms), "
          f"M_het {best['m_het']:.4f}, M_hom {best['m_hom']:.4f}, {best['flops'] / 1e6:.1f} MFLOPs")
    for note in result["notes"]:
        log.warning("%s", note)
    log.info("wrote %s (%d candidates, %d on the Pareto front); retrain it with: edgequery train query --arch %s "
             "--gallery %s", args.out, len(result["history"]), len(result["pareto_front"]), args.out, args.gallery)
    return 0
