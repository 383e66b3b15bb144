"""What the search buys: rewards, latency- vs FLOPs-constrained search, FLOPs vs compatibility,
and the searched net against MobileNetV3 + BCT - measured on this machine.

One ResNet-101 gallery model, one BCT supernet of the ``mbv3`` space, one LUT measured
here (``--lut``: by default the committed run's, ``lut-local-litert-r32-search.json``, made as a
user makes one: ``edgequery profile`` then ``profile validate --calibrate --n 10``; a table of
another machine is refused at once; under ``--preset quick`` the workflow's profile stage
measures one into the cache), one latency budget that binds (default: the *measured* latency of
MobileNetV3-large exported to the LUT's runtime; measured once per LUT and kept in the cache,
so a resumed run searches under the same budgets).  Then:

1. **R1 vs R2 vs R3** - three searches under the budget (ordinary NAS = M_hom,
   compatibility only = M_het, the mix); each winner retrained with BCT from scratch and
   evaluated on the test query/gallery splits (het and hom Recall@1).
2. **Latency- vs FLOPs-constrained** - the R3 search again with FLOPs as the cost
   (``cost_unit`` MFLOPs), at the FLOPs budget that a line fitted to (FLOPs, predicted
   latency) of 200 random archs maps to the latency budget; the final populations of both
   searches are exported and *measured*: how often each breaks the latency budget.
3. **Spearman rho(FLOPs, M_het)** over ``--n-random`` random archs (inherited supernet
   weights, BN recalibrated) - CMP-NAS found heterogeneous accuracy does not follow FLOPs.
4. **The searched net vs MobileNetV3-small/large + BCT and vs a random arch of the space
   drawn under the same budget**, on the measured-latency / het-Recall@1 plane (all retrained
   identically, with every seed of ``--seeds``; a difference is claimed only where every
   seed's 95 % CI is clear of the other's).
5. **The headline**: more R3 searches at the budgets that would make the net ``--curve-ratios``
   times faster than the gallery model as a query encoder (default 80x, the paper's figure, and
   100x and 120x: a net predicted just under a budget can measure just over it), retrained like
   the rest; each searched net's measured latency ratio to the gallery model (same runtime, same
   run) and its het Recall@1 gap to the paragon - the accuracy-vs-latency curve - and the figures
   of the headline net: of the nets measured at least 80x faster, the one closest to the paragon
   (else the fastest, the best ratio reached).

Candidates are scored on the validation split (its first fifth as queries, the rest as
gallery); final figures come from the test query/gallery splits.  Every training run,
search and the LUT are workflow stages (:mod:`edgequery.workflow`), cached in ``--cache``:
reused when finished, resumed when not.  Latency is measured with the LUT's protocol on
the ``local`` device through the same agent (random weights: float32 latency does not
depend on them).

    python benchmarks/search_ablation.py                  # the full run: about 1.5 h of 2 cores with bf16 (AMD EPYC)
    python benchmarks/search_ablation.py --preset quick   # 8.4 min at load 4: tiny space, data, population

The gallery model is the benchmarks' one (``benchmarks/paragon.py``'s, shared through ``--cache``;
trained if missing: about 1.7 h on 2 cores); the supernet and the query nets train on the same
59k images, in steps (``--supernet-steps``, ``--query-steps``).
Writes ``<out-dir>/search_ablation.json`` and ``search_ablation.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import _bench
from edgequery.artifacts.search import METRICS
from edgequery.checkpoint import load_checkpoint
from edgequery.commands.common import add_space_args, space_from_args
from edgequery.data import DataSpec
from edgequery.errors import EdgeQueryError
from edgequery.files import read_json, write_json
from edgequery.latency import Protocol, load_lut, restricted_space
from edgequery.search import CandidateScorer, EvolutionSearch, SearchConfig
from edgequery.spaces.training import load_supernet
from edgequery.workflow import Workflow

log = _bench.log
BASELINES = ("mobilenet_v3_small", "mobilenet_v3_large")
QUICK = {"lut": None, "space_option": ["widths=1.0", "kernels=3", "expands=3,6"], "n_train": 500, "n_val": 200,
         "n_query": 100, "n_gallery": 300, "gallery_steps": 20, "supernet_steps": 20, "query_steps": 20,
         "population": 4, "generations": 2, "n_random": 6, "recal_batches": 2, "seeds": "0,1"}
# the timing protocol of a LUT measured here for lack of --lut (a quick one: the full run passes a real LUT)
QUICK_PROTOCOL = {"threads": 1, "warmup": 2, "runs": 10, "min_seconds": 0.01, "rounds": 1}


class Memo:
    """One scorer shared by every search: an arch is scored once, whichever search asks."""

    def __init__(self, scorer: CandidateScorer, path: Path):
        self.scorer, self.path = scorer, path
        self.cache: dict[str, dict] = read_json(path, "score cache") if path.exists() else {}

    def __call__(self, arch) -> dict:
        key = str(arch)
        if key not in self.cache:
            self.cache[key] = self.scorer(arch)
            if len(self.cache) % 10 == 0:
                self.save()
        return self.cache[key]

    def save(self) -> None:
        write_json(self.path, self.cache)


def parse(argv: list[str] | None, doc: str | None = None, extra=None):
    """The arguments (``extra(parser)`` adds a script's own: ``reward_noise.py`` shares these)."""
    ap = _bench.parser(doc or __doc__, {"quick": QUICK})
    add_space_args(ap)
    ap.add_argument("--lut", type=Path, default=_bench.RESULTS / "lut-local-litert-r32-search.json",
                    help="the LUT searched with (default: the committed run's, measured with `edgequery profile` and "
                         "calibrated on 10 nets by `profile validate --calibrate --n 10` on that run's machine: on "
                         "another machine, profile your own); 'none': measure one here (--runtime, --resolution)")
    ap.add_argument("--runtime", default="onnxruntime", help="without --lut: the runtime to profile")
    ap.add_argument("--resolution", type=int, default=32, help="without --lut: the resolution to profile")
    ap.add_argument("--n-train", type=int, default=None, help="training images (default: all 59k, the paragon's)")
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--n-gallery", type=int, default=None, help="gallery images (default: the test split's other 9k)")
    ap.add_argument("--gallery-steps", type=int, default=None,
                    help="the gallery model's steps (default: the gallery recipe's, the paragon benchmarks/paragon.py trains)")
    ap.add_argument("--supernet-steps", type=int, default=4600, help="supernet training steps (10 epochs of 59k images)")
    ap.add_argument("--query-steps", type=int, default=2300, help="steps of every retrained net (bct_compat.py's)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training precision of the supernet and the retrained nets (auto: bf16 where the CPU is "
                         "fast at it, about 1.5x faster here; a checkpoint name says when it is not fp32)")
    ap.add_argument("--budget", default="mobilenet_v3_large",
                    help="latency budget in ms, or a baseline name: its measured latency (default)")
    ap.add_argument("--curve-ratios", default="80,100,120",
                    help="more R3 searches, each at the budget that makes the net this many times faster than the "
                         "gallery model's measured latency as a query encoder (comma list; 'none' for none): their "
                         "winners, retrained like the rest, are the headline's accuracy-vs-latency curve")
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--mix", type=float, default=0.5)
    ap.add_argument("--metric", choices=METRICS, default=SearchConfig.model_fields["metric"].default,
                    help="the search's M_het / M_hom (edgequery search's default: supernet_rank.py's finding)")
    ap.add_argument("--recal-batches", type=int, default=10)
    ap.add_argument("--n-random", type=int, default=40, help="random archs for the FLOPs / M_het correlation")
    ap.add_argument("--seed", type=int, default=0, help="seed of the searches and of the random archs")
    ap.add_argument("--seeds", default="0,1", help="training seeds of every retrained net (comma list)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--replot", action="store_true",
                    help="measure nothing: redraw search_ablation.png from the stored search_ablation.json")
    if extra is not None:
        extra(ap)
    args = _bench.parse(ap, argv)
    if args.lut is not None and str(args.lut) == "none":
        args.lut = None
    try:
        args.curve_ratios = [] if args.curve_ratios == "none" else [float(r) for r in args.curve_ratios.split(",")]
    except ValueError:
        ap.error(f"--curve-ratios takes a comma list of numbers (e.g. 80,120) or none, not {args.curve_ratios!r}")
    if any(r <= 1 for r in args.curve_ratios):
        ap.error("--curve-ratios: each ratio must exceed 1 (the net is that many times faster than the gallery model)")
    return args


class Ablation:
    """The shared pieces: data, models, the LUT and its space, the scorer, latency measurement."""

    def __init__(self, args):
        self.args = args
        args.cache.mkdir(parents=True, exist_ok=True)
        self.base_space = space_from_args(args)
        self.stages: dict[str, dict] = {}
        lut_path = args.lut or self._profile_here()
        self.lut = load_lut(lut_path, space=self.base_space)
        _bench.require_this_machine(self.lut)   # before hours of training, not after
        self.lut_path, self.res = Path(lut_path), self.lut.resolutions[0]
        self.space = restricted_space(self.base_space, [self.res])
        self.spec = DataSpec(resolution=self.res, n_train=args.n_train, n_val=args.n_val, n_query=args.n_query,
                             n_gallery=args.n_gallery)
        self.wf = Workflow(self.spec, args.device, stages=self.stages)
        self.gallery_path = _bench.paragon_checkpoint(self.wf, args.cache, steps=args.gallery_steps)
        self.gver = load_checkpoint(self.gallery_path, "gallery")["model_version"]
        self.tag = f"{_bench.data_tag(self.spec)}-g{self.gver}"
        self.protocol = Protocol.of(self.lut)
        self._pred: dict[str, float] = {}

    def supernet(self):
        """The BCT supernet of the space (trained once, cached): ``(path, supernet, its checkpoint)``."""
        a = self.args
        path = self.wf.supernet(a.cache / f"supernet-mbv3-{self.tag}-{_bench.digest(self.base_space.config())}"
                                          f"-t{a.supernet_steps}{self.precision_tag}.pt", self.gallery_path,
                                self.base_space, None, steps=a.supernet_steps, precision=a.precision)
        return (path, *load_supernet(path))

    def _profile_here(self) -> Path:
        a = self.args
        path = a.cache / f"lut-local-{a.runtime}-r{a.resolution}-{_bench.digest(self.base_space.config())}.json"
        Workflow(None, stages=self.stages).profile(path, self.base_space, [a.resolution], a.runtime, Protocol(**QUICK_PROTOCOL), jobs=2,
                               workdir=a.cache / "lut-work" / a.runtime)
        return path

    def query_net(self, arch: str, name: str, seed: int) -> Path:
        path = _bench.query_checkpoint_path(self.args.cache, f"{name}-bct-s{seed}{self.precision_tag}", self.spec,
                                            self.args.query_steps, self.gver)
        return self.wf.query(path,
                             self.gallery_path, arch, True, None, name=f"train_query_{name}_s{seed}",
                             steps=self.args.query_steps, seed=seed, precision=self.args.precision,
                             space=self.space if ":" in arch else None)

    @property
    def precision_tag(self) -> str:
        """A checkpoint name's mark of a precision other than fp32 (bct_compat.py's nets are fp32, unmarked)."""
        return "" if self.args.precision == "fp32" else f"-p{self.args.precision}"

    def measure(self, archs: list, name: str) -> list[float]:
        """Measured median latency (ms) of each arch (parsed archs of the space, or baseline names)."""
        named = [a for a in archs if isinstance(a, str)]
        parsed = [a for a in archs if not isinstance(a, str)]
        ms: dict[str, float] = {}
        with self.wf.stage(name):
            for group, space in ((parsed, self.space), (named, None)):
                if group:
                    timed = _bench.measure_here(group, self.lut, self.args.cache / f"nets-{self.lut.runtime}",
                                                space=space, resolution=self.res)
                    ms.update({str(a): t for a, t in zip(group, timed)})
        return [ms[str(a)] for a in archs]

    def baselines(self, names: list[str]) -> dict[str, float]:
        """The named nets' measured latency (ms), measured once per LUT and kept in the cache: the budgets follow
        from them, so a resumed run searches under the same budgets and reuses its searches and retrained nets."""
        path = self.args.cache / f"baselines-{self.lut_path.stem}-{_bench.digest([names, self.lut.measured_at])}.json"
        if path.is_file():
            self.stages["measure_baselines"] = {"status": "reused", "seconds": 0.0, "artifact": str(path)}
            return read_json(path, "measured baselines")
        ms = dict(zip(names, self.measure(names, "measure_baselines")))
        write_json(path, ms)
        return ms

    def predicted(self, arch) -> float:
        key = str(arch)
        if key not in self._pred:
            self._pred[key] = self.lut.predict(arch, self.space)
        return self._pred[key]

    def mflops(self, arch) -> float:
        return self.space.cost(arch)["flops"] / 1e6


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    if args.replot:
        return _bench.replot(args, "search_ablation", plot)
    prov = _bench.start(args)
    ab = Ablation(args)
    _, supernet, sck = ab.supernet()
    gallery_arch = load_checkpoint(ab.gallery_path, "gallery")["model"]["arch"]
    base_ms = ab.baselines([*BASELINES, gallery_arch])
    budget = base_ms[args.budget] if args.budget in base_ms else float(args.budget)
    log.info("measured %s latency: %s; budget %.4f ms", ab.lut.runtime, base_ms, budget)
    candidates = CandidateScorer(supernet, load_model(ab.gallery_path), ab.wf.splits, recal_batches=args.recal_batches,
                                 device=args.device)
    scorer = Memo(candidates, args.cache / f"scores-{sck['model_version']}-{candidates.protocol()}.json")
    fit = flops_budget(ab, budget, args.seed)
    searches = {r: run_search(ab, scorer, sck, r, r, "ms", budget) for r in ("r1", "r2", "r3")}
    searches["r3_flops"] = run_search(ab, scorer, sck, "r3_flops", "r3", "MFLOPs", fit["matched_mflops"])
    budgets = {"r3": budget}   # the latency searches whose winners are retrained for the curve, and their budgets
    notes, cheapest = [], ab.predicted(ab.space.smallest())
    for ratio in args.curve_ratios:
        limit = base_ms[gallery_arch] / ratio
        if limit < cheapest:
            notes.append(f"--curve-ratios {ratio:g}: no net of the space is {ratio:g}x faster than the gallery model "
                         f"(budget {limit:.4f} ms; the cheapest arch predicts {cheapest:.4f} ms): not searched")
            log.warning("%s", notes[-1])
            continue
        try:
            searches[f"r3_x{ratio:g}"] = run_search(ab, scorer, sck, f"r3_x{ratio:g}", "r3", "ms", limit)
        except EdgeQueryError as exc:   # e.g. so few archs fit that random sampling finds none
            notes.append(f"--curve-ratios {ratio:g}: budget {limit:.4f} ms not searched: {exc}")
            log.warning("%s", notes[-1])
            continue
        budgets[f"r3_x{ratio:g}"] = limit
    broken = {name: over_budget(ab, searches[name], budget, fit["matched_mflops"]) for name in ("r3", "r3_flops")}
    corr = flops_vs_het(ab, scorer, args)
    rows, first = retrained(ab, searches, sck["model_version"], budgets, _bench.seeds(args.seeds))
    paragon = first["paragon"]
    by = per_net(rows)
    body = {"data": {**ab.spec.to_dict(), "sizes": ab.wf.splits.sizes(), "candidate_scoring": scorer.scorer.sizes()},
            "gallery": {"arch": gallery_arch, "checkpoint": ab.gallery_path.name, "model_version": ab.gver,
                        "measured_ms_as_query_encoder": base_ms[gallery_arch], **_bench.r1_row(paragon)},
            "baselines": _bench.baselines_of(first),
            "supernet": {"space": ab.base_space.config(), "searched_space": ab.space.config(),
                         "steps": args.supernet_steps, "sampling": sck["sampling"]["rule"],
                         "model_version": sck["model_version"]},
            "query_steps": args.query_steps,
            "lut": {"file": ab.lut_path.name, "runtime": ab.lut.runtime, "runtime_version": ab.lut.runtime_version,
                    "threads": ab.lut.threads, "device": ab.lut.device,
                    "calibration": ab.lut.calibration and ab.lut.calibration.model_dump(mode="json"),
                    "measured_here_by_this_script": args.lut is None},
            "protocol": ab.protocol.to_dict(),
            "budget": {"ms": round(budget, 4), "from": args.budget, **fit},
            "search": {"population": args.population, "generations": args.generations, "mix": args.mix,
                       "recal_batches": args.recal_batches, "archs_scored": len(scorer.cache),
                       "winners": {k: {"cost_unit": v["config"]["cost_unit"],
                                       **{x: v["chosen"][x] for x in ("arch", "cost", "latency_ms", "m_het", "m_hom",
                                                                      "reward")}} for k, v in searches.items()},
                       "notes": {k: v["notes"] for k, v in searches.items() if v["notes"]},
                       "pareto_front_r3": [{x: c[x] for x in ("arch", "latency_ms", "m_het", "m_hom")}
                                           for c in searches["r3"]["pareto_front"]]},
            "retrained": rows,
            "1_rewards": [by[f"searched_{r}"] for r in ("r1", "r2", "r3")],
            "1_rewards_compared": rewards_compared(rows),
            "2_latency_vs_flops_constraint": broken,
            "3_flops_vs_het": corr,
            "4_searched_vs_mobilenetv3": [by["searched_r3"], by["random_under_budget"], *(by[b] for b in BASELINES)],
            "4_searched_compared": {other: _bench.compare(_seeds_of(rows, "searched_r3"), _seeds_of(rows, other))
                                    for other in ("random_under_budget", *BASELINES)},
            "headline": headline(by, paragon, base_ms[gallery_arch], budgets),
            "goal": goal(by, rows), "stages": ab.wf.stages}
    path = _bench.write(args, "search_ablation", body, prov, notes)
    plot(body, path.with_suffix(".png"))
    return path


def load_model(path: Path):
    from edgequery.models import model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(path, "gallery"))


def flops_budget(ab: Ablation, budget: float, seed: int) -> dict:
    """The FLOPs budget a line fitted to (MFLOPs, predicted ms) of 200 random archs maps the latency budget to."""
    rng = np.random.default_rng(seed + 1)
    probe = [ab.space.sample(rng) for _ in range(200)]
    slope, intercept = np.polyfit([ab.mflops(a) for a in probe], [ab.predicted(a) for a in probe], 1)
    share_in = float(np.mean([ab.predicted(a) <= budget for a in probe]))
    matched = float((budget - intercept) / slope)
    log.info("budget %.4f ms admits %.0f%% of random archs; matched FLOPs budget %.2f MFLOPs", budget, 100 * share_in,
             matched)
    return {"share_of_random_archs_within": share_in, "matched_mflops": round(matched, 3),
            "flops_fit": {"slope_ms_per_mflop": float(slope), "intercept_ms": float(intercept)}}


def run_search(ab: Ablation, scorer: Memo, sck: dict, name: str, reward: str, unit: str, limit: float) -> dict:
    a = ab.args
    cfg = SearchConfig(budget=limit, cost_unit=unit, reward=reward, mix=a.mix, metric=a.metric,
                       population=a.population, generations=a.generations, seed=a.seed)
    out = a.cache / f"search-{name}-{sck['model_version']}-{_bench.digest(cfg.model_dump(mode='json'))}.json"
    meta = {"supernet": {"model_version": sck["model_version"]},
            "lut": {"path": str(ab.lut_path), "device": ab.lut.device, "runtime": ab.lut.runtime,
                    "threads": ab.lut.threads, "calibrated": bool(ab.lut.calibration)}}
    cost = ab.predicted if unit == "ms" else ab.mflops
    result = ab.wf.search(out, cfg, lambda: EvolutionSearch(ab.space, cfg, cost, scorer, out, meta).run(),
                          expect={"supernet.model_version": sck["model_version"]}, name=f"search_{name}")
    scorer.save()
    c = result["chosen"]
    log.info("search %s: chose %s (M_het %.3f, M_hom %.3f)", name, c["arch"], c["m_het"], c["m_hom"])
    return result


def over_budget(ab: Ablation, search: dict, budget: float, matched_mflops: float) -> dict:
    """The final population of a search (its winner included), exported and measured against the latency budget."""
    chosen = search["chosen"]["arch"]
    archs = [ab.space.parse(a) for a in dict.fromkeys([*search["state"]["population"], chosen])]
    ms = ab.measure(archs, f"measure_population_{search['config']['reward']}_{search['config']['cost_unit']}")
    latency = search["config"]["cost_unit"] == "ms"
    out = {"constraint": "predicted latency (LUT)" if latency else f"FLOPs <= {matched_mflops:.2f} M",
           "nets_measured": len(archs), "over_budget": int(sum(m > budget for m in ms)),
           "share_over_budget": round(float(np.mean([m > budget for m in ms])), 4),
           "chosen": chosen, "chosen_measured_ms": ms[[str(a) for a in archs].index(chosen)],
           "chosen_predicted_ms": round(ab.predicted(chosen), 4),
           "nets": [{"arch": str(a), "mflops": round(ab.mflops(a), 2), "predicted_ms": round(ab.predicted(a), 4),
                     "measured_ms": m} for a, m in zip(archs, ms)]}
    log.info("%s: %d/%d of the final population measured over budget; chosen measured %.4f ms", out["constraint"],
             out["over_budget"], len(archs), out["chosen_measured_ms"])
    return out


def flops_vs_het(ab: Ablation, scorer: Memo, args) -> dict:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(args.seed + 2)
    randoms = [ab.space.sample(rng) for _ in range(args.n_random)]
    with ab.wf.stage("score_random"):
        het = [scorer(a)["het"]["recall@1"] for a in randoms]
        hom = [scorer(a)["hom"]["recall@1"] for a in randoms]
        scorer.save()
    fl = [ab.mflops(a) for a in randoms]
    corr = {"n": len(randoms), "scored_with": "inherited supernet weights, BN recalibrated, validation split",
            "spearman_flops_vs_het_r1": round(float(spearmanr(fl, het).statistic), 4),
            "spearman_flops_vs_hom_r1": round(float(spearmanr(fl, hom).statistic), 4),
            "spearman_predicted_latency_vs_het_r1": round(float(spearmanr([ab.predicted(a) for a in randoms], het)
                                                                .statistic), 4),
            "archs": [{"arch": str(a), "mflops": round(f, 2), "het_r1": h, "hom_r1": o}
                      for a, f, h, o in zip(randoms, fl, het, hom)]}
    log.info("Spearman rho(FLOPs, M_het) over %d random archs: %s", len(randoms), corr["spearman_flops_vs_het_r1"])
    return corr


def random_under_budget(ab: Ablation, budget: float, seed: int) -> str:
    """A random arch of the searched space whose predicted latency is within the budget (the control that
    shows what the search adds over sampling)."""
    rng = np.random.default_rng(seed + 3)
    for _ in range(10_000):
        arch = ab.space.sample(rng)
        if ab.predicted(arch) <= budget:
            return str(arch)
    raise SystemExit(f"no random arch of the space is predicted within {budget:.4f} ms: raise --budget")


def retrained(ab: Ablation, searches: dict, sn_version: str, budgets: dict[str, float], seeds: list[int]
              ) -> tuple[list[dict], dict]:
    """Each latency-search winner (the rewards' at the budget ``budgets["r3"]``, the curve's at theirs), a random
    arch under the same budget and the MobileNetV3 baselines, each retrained with BCT from scratch with every seed,
    then measured and evaluated on the test splits.
    Returns a row per (net, seed) and one of the reports (for what they share: paragon, baselines)."""
    budget = budgets["r3"]
    # named by the arch: searches that chose the same arch share one retrained net
    nets = {f"searched_{r}": searches[r]["chosen"]["arch"] for r in ("r1", "r2", *budgets)}
    nets["random_under_budget"] = random_under_budget(ab, budget, ab.args.seed)
    nets.update({name: name for name in BASELINES})
    ms = dict(zip(nets, ab.measure([ab.space.parse(a) if ":" in a else a for a in nets.values()],
                                   "measure_retrained")))
    paths = {(name, seed): ab.query_net(arch, f"searched-{_bench.digest(arch)}-{sn_version}" if ":" in arch else name,
                                        seed)
             for name, arch in nets.items() for seed in seeds}
    reports = ab.wf.evaluate({f"{name}-s{seed}": path for (name, seed), path in paths.items()}, ab.gallery_path)
    rows = []
    for (name, seed), path in paths.items():
        arch, report, searched = nets[name], reports[f"{name}-s{seed}"], ":" in nets[name]
        ck = load_checkpoint(path, "query")
        mflops = ab.space.cost(ab.space.parse(arch))["flops"] if searched else _baseline_flops(arch, ab.res)
        rows.append({"net": name, "seed": seed, "arch": arch, "checkpoint": path.name,
                     "model_version": ck["model_version"], "measured_ms": ms[name],
                     "predicted_ms": round(ab.predicted(arch), 4) if searched else None,
                     "budget_ms": round(budgets.get(name.removeprefix("searched_"), budget), 4),
                     "within_budget": ms[name] <= budgets.get(name.removeprefix("searched_"), budget),
                     "mflops": round(mflops / 1e6, 2),
                     **_bench.r1_row(report["heterogeneous"]), "homogeneous": _bench.r1_row(report["homogeneous"]),
                     "baselines": _bench.baselines_of(report)})
    return rows, next(iter(reports.values()))


def _seeds_of(rows: list[dict], net: str) -> list[dict]:
    return [r for r in rows if r["net"] == net]


def per_net(rows: list[dict]) -> dict[str, dict]:
    """One row per net: its static fields, het Recall@1 averaged over the seeds (``het_r1``) and the seeds'."""
    out = {}
    for r in rows:
        if r["net"] not in out:
            seeds = _seeds_of(rows, r["net"])
            static = {k: r[k] for k in ("net", "arch", "measured_ms", "predicted_ms", "budget_ms", "within_budget",
                                        "mflops")}
            summary = _bench.seed_summary(seeds)
            out[r["net"]] = {**static, **summary, "het_r1": summary["recall_at_1_mean"],
                             "hom_r1": float(np.mean([s["homogeneous"]["recall_at_1"] for s in seeds]))}
    return out


def rewards_compared(rows: list[dict]) -> dict[str, str]:
    """R1 vs R2 vs R3 (their retrained winners' het Recall@1 over the seeds): which differences are outside
    the noise."""
    pairs = (("r3", "r1"), ("r3", "r2"), ("r2", "r1"))
    return {f"{a}_vs_{b}": _bench.compare(_seeds_of(rows, f"searched_{a}"), _seeds_of(rows, f"searched_{b}"))
            for a, b in pairs}


def headline(by: dict, paragon: dict, gallery_ms: float, budgets: dict[str, float], goal_ratio: float = 80,
             goal_gap: float = 0.5) -> dict:
    """The searched nets against the gallery model as a query encoder: each one's measured latency ratio and het
    Recall@1 gap to the paragon (with a conservative interval: the extremes of the CIs), fastest first (the
    curve).  The headline net is the one closest to the paragon among those *measured* at least ``goal_ratio``
    times faster; when none is, the fastest (the best ratio reached)."""
    def point(search: str) -> dict:
        net = by[f"searched_{search}"]
        lo = min(c[0] for c in net["recall_at_1_ci95_per_seed"])
        hi = max(c[1] for c in net["recall_at_1_ci95_per_seed"])
        return {"search": search, "net": net["arch"], "budget_ms": round(budgets[search], 4),
                "net_measured_ms": net["measured_ms"], "latency_ratio_vs_gallery": round(gallery_ms / net["measured_ms"], 2),
                "het_r1": net["het_r1"], "het_gap_to_paragon_points": round(100 * (paragon["recall@1"] - net["het_r1"]), 2),
                "het_gap_to_paragon_points_interval": [round(100 * (paragon["recall@1_ci95"][0] - hi), 2),
                                                       round(100 * (paragon["recall@1_ci95"][1] - lo), 2)]}

    curve = sorted((point(s) for s in budgets), key=lambda p: p["net_measured_ms"])
    fast_enough = [p for p in curve if p["latency_ratio_vs_gallery"] >= goal_ratio]
    top = min(fast_enough, key=lambda p: p["het_gap_to_paragon_points"]) if fast_enough else curve[0]
    meets = [p for p in curve if p["het_gap_to_paragon_points"] <= goal_gap]
    return {**{k: top[k] for k in ("net", "latency_ratio_vs_gallery", "het_gap_to_paragon_points",
                                   "het_gap_to_paragon_points_interval", "net_measured_ms")},
            "searched_for": top["search"], "gallery_measured_ms": gallery_ms, "curve": curve,
            "best_ratio_within_half_a_point": max((p["latency_ratio_vs_gallery"] for p in meets), default=None),
            "goal": {"latency_ratio_ge": goal_ratio, "het_gap_le_points": goal_gap,
                     "met": bool(top["latency_ratio_vs_gallery"] >= goal_ratio
                                 and top["het_gap_to_paragon_points"] <= goal_gap)}}


def goal(by: dict, rows: list[dict]) -> dict:
    ref = max((by[b] for b in BASELINES if by[b]["measured_ms"] >= by["searched_r3"]["measured_ms"]),
              key=lambda r: r["het_r1"], default=None)
    verdict = ref and _bench.compare(_seeds_of(rows, "searched_r3"), _seeds_of(rows, ref["net"]))
    return {"statement": "at equal or lower measured latency, the searched net (R3) beats MobileNetV3 + BCT on het "
                         "Recall@1, beyond the noise (every seed's CI)",
            "compared_with": ref and ref["net"], "verdict": verdict,
            "met": None if ref is None else verdict == "higher",
            "why_unmet": None if ref else "every MobileNetV3 baseline measured faster than the searched net"}


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
    for r in per_net(out["retrained"]).values():   # every retrained net, with its seeds' intervals
        marker = "*" if r["net"].startswith("searched") else "o"
        cis = r["recall_at_1_ci95_per_seed"]   # bars: from the lowest to the highest seed's 95 % bound
        yerr = [[r["het_r1"] - min(c[0] for c in cis)], [max(c[1] for c in cis) - r["het_r1"]]]
        ax.errorbar(r["measured_ms"], r["het_r1"], yerr=yerr, fmt=marker, ms=11 if marker == "*" else 7, capsize=3)
        ax.annotate(r["net"], (r["measured_ms"], r["het_r1"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    gallery, raw = out["gallery"], out["baselines"]["raw_pixel_knn"]
    ax.axhline(gallery["recall_at_1"], color="tab:green", lw=1, label=f"paragon {gallery['recall_at_1']:.3f}")
    ax.axhspan(*gallery["recall_at_1_ci95"], color="tab:green", alpha=0.12, label="paragon's 95 % CI")
    ax.axhline(raw["recall_at_1"], color="0.4", ls=":", lw=1, label=f"raw-pixel kNN {raw['recall_at_1']:.3f}")
    ax.axvline(budget, color="k", ls="--", lw=0.8, label=f"budget {budget:.3f} ms")
    ax.set_xlabel(f"measured latency, {out['lut']['runtime']} 1 thread (ms)")
    ax.set_ylabel("heterogeneous Recall@1 (test)")
    ax.set_title("searched (BCT) vs MobileNetV3 + BCT (mean of the seeds; bars: the seeds' 95 % CIs)",
                 fontsize=9)
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
    plt.close(fig)


if __name__ == "__main__":
    main()
