"""Regenerate every benchmark result, then one HTML page over all of them (``index.html``).

    python benchmarks/run_all.py --preset quick        # every script's quick preset -> benchmarks/results-quick/
    python benchmarks/run_all.py --preset full         # the committed results -> benchmarks/results/ (hours)
    python benchmarks/run_all.py --index-only          # only rewrite benchmarks/results/index.html
    python benchmarks/run_all.py --preset full --only bct_compat,supernet_rank   # some steps

The steps run in order, each a subprocess (the scripts' own progress shows), each resumable:
the scripts keep their trained nets and tables in ``--cache`` and reuse them when rerun, so a
killed ``run_all`` picks up where it stopped.  Later steps use earlier ones' files (the search's
latency table, the searched net that ``export_runtime`` times), so the order is fixed.

``--preset quick`` runs each script's quick preset (tiny data and training: it checks that every
script runs end to end and draws its figures; the figures are not measurements) into
``benchmarks/results-quick/``, never over the committed results.  ``--preset full`` reruns the
commands the committed results were made with.  Both end by writing ``index.html`` in the output
folder and ``run_all.json`` (which steps ran, their wall times, the machine).

``index.html`` is self-contained (plots embedded, no scripts): per results file its provenance
(commit, command, machine, wall time), its figure and its key figures with 95 % intervals, and a
*paper vs ours* section that sets CMP-NAS's findings beside the measured ones, with the verdict
each file's own comparisons give (a difference counts only where the intervals say so).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import _bench
from edgequery.report import Page, pct, pct_ci

log = logging.getLogger("edgequery.benchmarks.run_all")
QUICK_RESULTS = _bench.HERE / "results-quick"
SEARCH_LUT = "lut-local-litert-r32-search.json"


@dataclass
class Step:
    """One command of the run: ``args`` after ``python`` (a script, or ``-m edgequery.commands ...``)."""

    name: str
    args: list[str]
    quick: bool = True                      # run with --preset quick in the quick run
    full_extra: Callable[[Path, Path], list[str]] | None = None   # (out_dir, cache) -> full-run arguments known then
    cache_flag: bool = True                 # the script takes --cache / --out-dir
    quick_args: list[str] = field(default_factory=list)      # added in the quick run
    quick_extra: Callable[[Path], list[str]] | None = None   # (out_dir) -> arguments of the quick run known only then


def searched_query(out: Path, cache: Path) -> list[str]:
    """export_runtime times the headline net: the one search_ablation's headline names, seed 0, from the cache."""
    res = json.loads((out / "search_ablation.json").read_text())["results"]
    name = f"searched_{res['headline']['searched_for']}"
    net = next(r for r in res["retrained"] if r["net"] == name and r["seed"] == 0)
    return ["--gallery", str(_bench.STORED_PARAGON), "--searched-query", str(cache / net["checkpoint"])]


def quick_table(out: Path) -> list[str]:
    """timing_protocol's table in the quick run: the one lut_accuracy's quick preset just measured (its narrowed
    space gives the file a suffix)."""
    found = sorted(out.glob("lut-local-onnxruntime-r32*.json"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if not p.name.endswith(".validation.json")]
    if not found:
        raise SystemExit(f"no lut-local-onnxruntime-r32*.json in {out}: run the lut_accuracy step first")
    return ["--lut", str(found[-1])]


def search_lut_args(out: Path, cache: Path) -> list[str]:
    return ["--out", str(out / SEARCH_LUT)]


STEPS = [
    Step("paragon", ["benchmarks/paragon.py"]),
    Step("lut_accuracy", ["benchmarks/lut_accuracy.py"]),
    # on the table lut_accuracy just measured (the quick one is onnxruntime's at 32 px)
    Step("timing_protocol", ["benchmarks/timing_protocol.py"], quick_args=["--runtime", "onnxruntime"],
         quick_extra=quick_table),
    Step("search_lut", ["-m", "edgequery.commands", "profile", "--device", "local", "--runtime", "litert", "--space", "mbv3",
                        "--resolution", "32"], quick=False, cache_flag=False, full_extra=search_lut_args),
    Step("search_lut_calibration", ["-m", "edgequery.commands", "profile", "validate", "--n", "10", "--calibrate"],
         quick=False, cache_flag=False, full_extra=lambda out, cache: ["--lut", str(out / SEARCH_LUT)]),
    Step("bct_compat", ["benchmarks/bct_compat.py"]),
    Step("supernet_rank", ["benchmarks/supernet_rank.py", "--threads", "1"]),
    Step("supernet_rank_sandwich", ["benchmarks/supernet_rank.py", "--threads", "1", "--sandwich"], quick=False),
    Step("supernet_rank_sandwich_distill", ["benchmarks/supernet_rank.py", "--threads", "1", "--sandwich",
                                            "--inplace-distill", "1.0"], quick=False),
    Step("search_ablation", ["benchmarks/search_ablation.py"]),
    Step("reward_noise", ["benchmarks/reward_noise.py"], quick=False),
    Step("export_runtime", ["benchmarks/export_runtime.py", "--resolutions", "32,224"], full_extra=searched_query),
    Step("search_224", ["benchmarks/search_224.py"]),
    Step("demo_gallery", ["benchmarks/demo_gallery.py"]),
    Step("gallery_search", ["benchmarks/gallery_search.py"]),
    Step("browser_demo", ["benchmarks/browser_demo.py"]),
]


def command(step: Step, preset: str, out: Path, cache: Path) -> list[str]:
    args = [sys.executable, *step.args]
    if step.cache_flag:
        args += ["--out-dir", str(out), "--cache", str(cache)]
        if preset == "quick":
            args += ["--preset", "quick", *step.quick_args, *(step.quick_extra(out) if step.quick_extra else [])]
    if preset == "full" and step.full_extra:
        args += step.full_extra(out, cache)
    return args


def run_steps(steps: list[Step], preset: str, out: Path, cache: Path, keep_going: bool) -> list[dict[str, Any]]:
    done = []
    for i, step in enumerate(steps, 1):
        cmd = command(step, preset, out, cache)
        log.info("[%d/%d] %s: %s", i, len(steps), step.name, " ".join(cmd))
        t0 = time.time()
        code = subprocess.call(cmd, cwd=_bench.HERE.parent)
        rec = {"step": step.name, "command": " ".join(cmd[1:]), "exit_code": code,
               "seconds": round(time.time() - t0, 1)}
        done.append(rec)
        log.info("[%d/%d] %s: %s in %.0f s", i, len(steps), step.name, "done" if code == 0 else f"FAILED ({code})",
                 rec["seconds"])
        if code and not keep_going:
            raise SystemExit(f"{step.name} failed (exit {code}); fix it and rerun: finished steps reuse their caches "
                             "(or --keep-going to run the rest anyway)")
    return done


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["quick", "full"], default="quick")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help=f"where results go (default: {QUICK_RESULTS.name}/ for quick, results/ for full and "
                         "--index-only)")
    ap.add_argument("--cache", type=Path, default=_bench.CACHE, help="the scripts' trained nets and tables")
    ap.add_argument("--only", default=None, help="comma-separated step names (default: all of the preset's): "
                                                 + ", ".join(s.name for s in STEPS))
    ap.add_argument("--keep-going", action="store_true", help="run the remaining steps after one fails")
    ap.add_argument("--index-only", action="store_true", help="run nothing; rewrite index.html from the results")
    args = ap.parse_args(argv)
    from edgequery.log import NORMAL, setup_logging

    setup_logging(NORMAL)
    out = (args.out_dir or (QUICK_RESULTS if args.preset == "quick" and not args.index_only else _bench.RESULTS)).resolve()
    args.cache = args.cache.resolve()   # the steps run from the repository's root
    out.mkdir(parents=True, exist_ok=True)
    if not args.index_only:
        steps = [s for s in STEPS if s.quick or args.preset == "full"]
        if args.only:
            names = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = sorted(set(names) - {s.name for s in STEPS})
            if unknown:
                raise SystemExit(f"--only {args.only}: no step {unknown}; steps: {', '.join(s.name for s in STEPS)}")
            steps = [s for s in steps if s.name in names]
        prov = _bench.Provenance.start(config={"preset": args.preset, "out_dir": str(out), "cache": str(args.cache),
                                               "only": args.only, "keep_going": args.keep_going})
        done = run_steps(steps, args.preset, out, args.cache, args.keep_going)
        _bench.write(argparse.Namespace(out_dir=out, preset="full", note=[]), "run_all",
                     {"preset": args.preset, "steps": done, "seconds": round(sum(d["seconds"] for d in done), 1)},
                     prov, notes=[] if args.preset == "full" else [
                         "--preset quick: every script's quick preset, a check that each runs end to end; the "
                         "figures are not measurements"])
    path = write_index(out)
    log.info("wrote %s", path)
    return path


# --------------------------------------------------------------------------- index.html


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every benchmark results file in ``folder`` (the provenance envelope), by file stem."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == "edgequery-benchmark":
            found[path.stem] = data
    return found


def seeds_text(s: dict[str, Any]) -> str:
    """A seed summary (``recall_at_1_mean``, ``recall_at_1_ci95_per_seed``) as ``86.6 % (seeds: [85.6, 89.7], ...)``."""
    cis = ", ".join(f"[{100 * a:.1f}, {100 * b:.1f}]" for a, b in s["recall_at_1_ci95_per_seed"])
    return f"{pct(s['recall_at_1_mean'])} (per seed: {cis})"


def paper_vs_ours(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows: finding, the paper's figure, ours (from the results files), verdict (from their comparisons)."""
    rows = []
    bct = results.get("bct_compat", {}).get("results")
    if bct:
        s, c = bct["summary"], bct["claims"]
        ours = "; ".join(f"{a.replace('mobilenet_v3_', 'MBv3-')}: het R@1 without BCT "
                         f"{pct(s[f'{a}-nobct']['heterogeneous']['recall_at_1_mean'])}, with BCT "
                         f"{seeds_text(s[f'{a}-bct']['heterogeneous'])}" for a in c if f"{a}-bct" in s)
        agree = bool(c) and all(v.get("bct_vs_no_bct_het") == "higher" for v in c.values())
        rows.append(["BCT is necessary: without it heterogeneous retrieval fails",
                     "a query net trained without compatibility retrieves almost nothing from the gallery",
                     ours, "agree" if agree else "not shown: " + json.dumps({k: v.get('bct_vs_no_bct_het')
                                                                             for k, v in c.items()})])
    sa = results.get("search_ablation", {}).get("results")
    if sa:
        f = sa["3_flops_vs_het"]
        weaker = abs(f["spearman_flops_vs_het_r1"]) < abs(f["spearman_flops_vs_hom_r1"])
        ours = (f"inherited weights: Spearman FLOPs vs het R@1 {f['spearman_flops_vs_het_r1']:.2f}, vs hom R@1 "
                f"{f['spearman_flops_vs_hom_r1']:.2f}, over {f['n']} archs ({f['scored_with']})")
        verdict = ("agree on the point estimates (no interval on a rank correlation of this size): weaker for het "
                   "than hom" if weaker else "disagree on the point estimates: het follows FLOPs as much as hom")
        rank = results.get("supernet_rank", {}).get("results")
        tau = (rank or {}).get("correlations", {}).get("flops_vs_standalone_het_r1")
        if tau:
            n = len(rank.get("archs", [])) or "?"
            ours += f"; {n} stand-alone nets: Kendall tau FLOPs vs het R@1 {tau['tau']:.2f} (p {tau['p_value']:.2g})"
            if tau["p_value"] < 0.05 and tau["tau"] > 0:
                verdict = ("mixed: among stand-alone trained nets het accuracy does rise with FLOPs; among "
                           "inherited-weight scores " + ("it follows FLOPs less than hom does" if weaker else
                                                         "it follows them as much as hom does"))
        rows.append(["heterogeneous accuracy does not follow FLOPs",
                     "FLOPs and heterogeneous accuracy correlate weakly among subnets", ours, verdict])
        r = {x["net"]: x for x in sa["1_rewards"]}
        comp = sa["1_rewards_compared"]
        verdicts = set(comp.values())
        verdict = ("cannot tell: every difference is within the noise" if verdicts == {"within the noise"}
                   else "; ".join(f"{k}: {v}" for k, v in comp.items()))
        rows.append(["reward R3 (het + hom) beats R1 (hom) and R2 (het)", "R3 best on both benchmarks",
                     "; ".join(f"{n.replace('searched_', '').upper()}: {seeds_text(x)}" for n, x in r.items()),
                     verdict])
        h, g = sa["headline"], sa["headline"]["goal"]
        gi = h.get("het_gap_to_paragon_points_interval")
        lut, queries = sa.get("lut", {}), sa.get("data", {}).get("n_query")
        why = []
        if h["latency_ratio_vs_gallery"] < g["latency_ratio_ge"]:
            why.append(f"the ratio is below {g['latency_ratio_ge']}x")
        if h["het_gap_to_paragon_points"] > g["het_gap_le_points"]:
            why.append(f"the gap is above {g['het_gap_le_points']} points")
        if gi and gi[1] - gi[0] > 2 * g["het_gap_le_points"]:
            why.append(f"the gap's interval ({gi[0]} to {gi[1]} points, {queries} test queries) is too wide to show "
                       f"a gap of {g['het_gap_le_points']} points")
        rows.append(["cost reduction within a small accuracy loss of the paragon",
                     "80x fewer FLOPs at 0.3 % (DeepFashion2); 23x at 1.6 % (IJB-C)",
                     f"measured latency {h['latency_ratio_vs_gallery']}x lower than the gallery model "
                     f"({lut.get('runtime', '?')}, {lut.get('threads', '?')} thread(s)) at "
                     f"{h['het_gap_to_paragon_points']} points below the paragon"
                     + (f" (interval {gi[0]} to {gi[1]} points)" if gi else ""),
                     "met" if g["met"] else "not met: " + "; ".join(why or ["see the results file"])])
    return rows


def section_of(page: Page, name: str, data: dict[str, Any], folder: Path) -> None:
    res, prov = data.get("results", {}), data.get("provenance", {})
    page.section(name, name)
    m = prov.get("machine") or {}
    page.items([f"command: {prov.get('command', '?')}",
                f"commit {str(prov.get('git_commit', '?'))[:10]}{' (dirty)' if prov.get('git_dirty') else ''}, "
                f"{prov.get('started_at', '?')}, {float(prov.get('seconds') or 0) / 60:.1f} min, load "
                f"{(prov.get('load_average') or {}).get('start', '?')}",
                f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, kernel {m.get('kernel', '?')}"])
    for note in data.get("notes", []):
        page.text(note, "note")
    png = folder / f"{name}.png"
    if png.is_file():
        page.figure(png.read_bytes(), f"{name}.png, drawn by the script from {name}.json", name=name)
    rows = key_rows(res)
    if rows:
        page.table(["figure", "value"], rows, name=name)


def key_rows(res: dict[str, Any]) -> list[list[str]]:
    """A results file's comparable figures: Recall@1 rows with intervals, claims, goals, correlations."""
    rows = []
    if "recall_at_1" in res:
        rows.append(["Recall@1", pct_ci(res, "recall_at_1")])
    base = (res.get("baselines") or {}).get("raw_pixel_knn")
    if base:
        rows.append(["raw-pixel kNN Recall@1 (baseline)", pct_ci(base, "recall_at_1") if "recall_at_1" in base
                     else pct(base.get("recall@1"))])
    for key in ("summary",):
        for label, s in (res.get(key) or {}).items():
            for setting in ("heterogeneous", "homogeneous"):
                if isinstance(s, dict) and isinstance(s.get(setting), dict) and "recall_at_1_mean" in s[setting]:
                    rows.append([f"{label}, {setting}", seeds_text(s[setting])])
    for label, verdict in _flatten(res.get("claims") or {}):
        rows.append([f"claim: {label}", str(verdict)])
    for key in [k for k in res if k.endswith("_compared")]:
        for label, verdict in _flatten(res[key]):
            rows.append([f"{key}: {label}", str(verdict)])
    for label, value in _flatten(res.get("correlations") or {}):
        rows.append([f"correlation: {label}", f"{value:.3f}" if isinstance(value, float) else str(value)])
    for step in res.get("steps") or []:
        rows.append([f"step {step['step']}", f"{step['seconds'] / 60:.1f} min, exit {step['exit_code']}"])
    goal = res.get("goal")
    if isinstance(goal, dict):
        rows.append(["goal", json.dumps(goal)[:300]])
    if isinstance(res.get("headline"), dict):
        h = res["headline"]
        rows.append(["headline", f"{h.get('latency_ratio_vs_gallery')}x lower latency than ResNet-101, "
                                 f"{h.get('het_gap_to_paragon_points')} points below the paragon"])
    return rows


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def write_index(folder: Path) -> Path:
    """``<folder>/index.html`` over every results file in ``folder``."""
    results = load_results(folder)
    page = Page("edgequery benchmarks", f"{len(results)} results files, each written whole by its "
                "script (commit, command, machine, load). Timings compare only within one machine fingerprint.")
    page.section("Overview", "overview")
    page.table(["results file", "commit", "started", "minutes", "machine (kernel)"],
               [[n, str(d["provenance"].get("git_commit", ""))[:10], d["provenance"].get("started_at", ""),
                 f"{float(d['provenance'].get('seconds') or 0) / 60:.1f}",
                 f"{(d['provenance'].get('machine') or {}).get('cpu', '?')} "
                 f"({(d['provenance'].get('machine') or {}).get('kernel', '?')})"] for n, d in results.items()],
               numeric=(3,), name="overview")
    page.section("Paper vs ours", "paper-vs-ours")
    quick = [n for n, d in results.items() if (d.get("provenance") or {}).get("config", {}).get("preset") == "quick"]
    if quick:
        page.text(f"{', '.join(quick)}: quick-preset runs (tiny data and training); their figures check the scripts, "
                  "they are not measurements of the method.", "note")
    rows = paper_vs_ours(results)
    if rows:
        page.table(["finding (CMP-NAS, CVPR 2021)", "paper", "ours (95 % intervals)", "verdict"], rows,
                   name="paper-vs-ours",
                   caption="Verdicts come from the results files' own comparisons: A beats B only where every seed's "
                           "interval of A lies above every seed's interval of B. The paper counts FLOPs, we measure "
                           "latency; its data sets are DeepFashion2 and IJB-C, ours Fashion-MNIST at 32 px.")
    else:
        page.text("bct_compat.json and search_ablation.json are not in this folder.", "missing")
    for name, data in results.items():
        section_of(page, name, data, folder)
    page.footer = "python benchmarks/run_all.py --index-only rewrites this page from the results files."
    return page.write(folder / "index.html")


if __name__ == "__main__":
    main()
