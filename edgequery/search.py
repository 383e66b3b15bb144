"""Compatibility-aware, latency-aware evolutionary search (CMP-NAS with measured latency).

A candidate is an arch of the supernet's space.  Its accuracy is *inherited*: the
supernet's weights for that arch, BatchNorm recalibrated on training images, embed the
validation queries; the validation gallery is embedded once by the gallery model
(ResNet-101) and cached.  Two figures come out (Recall@1 or mAP@R, by flag):

* ``M_het`` = M(phi_q, phi_g): queries by the candidate, gallery by the gallery model;
* ``M_hom`` = M(phi_q, phi_q): the candidate on both sides.

Rewards (the paper's ablation): ``r1`` = M_hom (ordinary NAS), ``r2`` = M_het
(compatibility only), ``r3`` = mix * M_het + (1 - mix) * M_hom (default).  Latency comes
from a per-block table measured on the target.  It is a *hard* budget - a candidate over
budget never enters the population; the check is made where candidates are made - and,
with ``latency_weight`` w != 0, also a MnasNet-style soft factor: reward x (LAT/T)^w
(w < 0 favours faster nets).

The evolution follows once-for-all's ``EvolutionFinder``: a population of within-budget
archs; each generation keeps the best ``parents`` share and refills the population half
by mutation and half by crossover of parents.  Every evaluation is memoised by arch
string, and the state is saved after each generation, so a killed search resumes.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .data import Splits
from .errors import EdgeQueryError
from .evaluate import embed
from .metrics import retrieval_metrics

FORMAT = "edgequery-search"
FORMAT_VERSION = 1
REWARDS = ("r1", "r2", "r3")
_UNITS_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_budget(text: str | float) -> float:
    """A latency budget in milliseconds from ``"30ms"``, ``"800us"``, ``"0.03s"`` (or a number of ms)."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "ms"
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|µs|s)?\s*", str(text))
        if not m:
            raise EdgeQueryError(f"cannot read latency budget {text!r}", "write it like 30ms, 800us or 0.03s")
        value, unit = float(m.group(1)), m.group(2) or "ms"
    if value <= 0:
        raise EdgeQueryError(f"latency budget {text!r} is not positive", "give a budget above zero, e.g. 30ms")
    return value * _UNITS_MS[unit]


@dataclass
class SearchConfig:
    budget_ms: float
    reward: str = "r3"
    mix: float = 0.5
    latency_weight: float = 0.0
    metric: str = "recall@1"      # or map@r
    population: int = 50
    generations: int = 20
    mutation_prob: float = 0.1
    parents: float = 0.25
    seed: int = 0
    max_tries: int = 500          # attempts to make one within-budget candidate

    def check(self) -> None:
        if self.reward not in REWARDS:
            raise EdgeQueryError(f"unknown reward {self.reward!r}", "use r1 (homogeneous), r2 (heterogeneous) or r3 (mix)")
        if not 0.0 <= self.mix <= 1.0:
            raise EdgeQueryError(f"--mix {self.mix} is outside [0, 1]", "give the weight of M_het, e.g. 0.5")
        if self.metric not in ("recall@1", "map@r"):
            raise EdgeQueryError(f"unknown metric {self.metric!r}", "use recall@1 or map@r")
        if self.population < 2 or self.generations < 1:
            raise EdgeQueryError("the population needs >= 2 archs and >= 1 generation",
                                 "raise --population / --generations")
        if not 0.0 < self.parents <= 1.0 or not 0.0 <= self.mutation_prob <= 1.0:
            raise EdgeQueryError("--parents must be in (0, 1] and --mutation-prob in [0, 1]", "fix those flags")


def reward_of(cfg: SearchConfig, m_het: float, m_hom: float, latency_ms: float) -> float:
    base = {"r1": m_hom, "r2": m_het, "r3": cfg.mix * m_het + (1 - cfg.mix) * m_hom}[cfg.reward]
    if cfg.latency_weight:
        base *= (latency_ms / cfg.budget_ms) ** cfg.latency_weight
    return base


class CandidateScorer:
    """M_het and M_hom of an arch with inherited supernet weights, on the validation split.

    The validation split is cut in two: its first ``n_queries`` images are queries, the
    rest the gallery.  The gallery model embeds that gallery once, at construction.
    """

    def __init__(self, supernet, gallery_model: torch.nn.Module, splits: Splits, n_queries: int | None = None,
                 recal_batches: int = 20, recal_batch_size: int = 128, device: str = "cpu"):
        val = splits.val
        if len(val) < 20:
            raise EdgeQueryError(f"the validation split has {len(val)} images, too few to score candidates",
                                 "train with --n-val of at least a few hundred images")
        n_q = n_queries or max(len(val) // 5, 1)
        self.queries = val.subset(torch.arange(n_q))
        self.gallery = val.subset(torch.arange(n_q, len(val)))
        self.supernet, self.splits, self.spec = supernet, splits, splits.spec
        self.recal_batches, self.recal_batch_size, self.device = recal_batches, recal_batch_size, device
        self.gallery_emb = embed(gallery_model, self.gallery, self.spec, device=device, desc="gallery model: val")

    def __call__(self, arch: Any) -> dict[str, dict[str, float]]:
        net = self.supernet.subnet(arch, self.splits.train, self.spec, batches=self.recal_batches,
                                  batch_size=self.recal_batch_size)
        q = embed(net, self.queries, self.spec, device=self.device, desc="candidate")
        qg = embed(net, self.gallery, self.spec, device=self.device, desc="candidate")
        ql, gl = self.queries.labels, self.gallery.labels
        return {"het": retrieval_metrics(q, ql, self.gallery_emb, gl), "hom": retrieval_metrics(q, ql, qg, gl)}

    def sizes(self) -> dict[str, int]:
        return {"val_queries": len(self.queries), "val_gallery": len(self.gallery)}


def pareto_front(candidates: list[dict]) -> list[dict]:
    """Candidates no other beats on both latency (lower) and M_het (higher), fastest first."""
    front, best = [], -1.0
    for c in sorted(candidates, key=lambda c: (c["latency_ms"], -c["m_het"])):
        if c["m_het"] > best:
            front.append(c)
            best = c["m_het"]
    return front


class EvolutionSearch:
    """The evolutionary loop; ``latency_fn(arch) -> ms`` and ``score_fn(arch) -> metrics``."""

    def __init__(self, space, cfg: SearchConfig, latency_fn: Callable[[Any], float],
                 score_fn: Callable[[Any], dict], out: str | Path | None = None, meta: dict | None = None):
        cfg.check()
        self.space, self.cfg, self.latency_fn, self.score_fn = space, cfg, latency_fn, score_fn
        self.out = Path(out) if out else None
        self.meta = meta or {}
        self.rng = np.random.default_rng(cfg.seed)
        self.evaluated: dict[str, dict] = {}
        self.population: list[str] = []
        self.generation = 0
        self.fastest_seen = float("inf")

    # -------------------------------------------------------------- candidates

    def _within_budget(self, make: Callable[[], Any], what: str) -> Any:
        for _ in range(self.cfg.max_tries):
            arch = make()
            lat = self.latency_fn(arch)
            self.fastest_seen = min(self.fastest_seen, lat)
            if lat <= self.cfg.budget_ms:
                return arch
        fastest = min(self.fastest_seen, self.latency_fn(self.space.smallest()))
        raise EdgeQueryError(
            f"no {what} within the {self.cfg.budget_ms:g} ms budget after {self.cfg.max_tries} tries; the fastest "
            f"arch of this space predicts {fastest:.3f} ms on this LUT",
            f"raise --latency-budget above {fastest:.3f}ms, or profile a faster device/runtime")

    def _evaluate(self, arch: Any) -> dict:
        key = str(arch)
        if key not in self.evaluated:
            scores = self.score_fn(arch)
            lat = float(self.latency_fn(arch))
            m_het, m_hom = scores["het"][self.cfg.metric], scores["hom"][self.cfg.metric]
            self.evaluated[key] = {
                "arch": key, "generation": self.generation, "latency_ms": lat, **self.space.cost(arch),
                "m_het": m_het, "m_hom": m_hom, "reward": reward_of(self.cfg, m_het, m_hom, lat),
                "het": scores["het"], "hom": scores["hom"]}
        return self.evaluated[key]

    # -------------------------------------------------------------- loop

    def run(self, progress: bool = True) -> dict:
        from tqdm import tqdm

        self._maybe_resume()
        if not self.population:
            smallest = self.space.smallest()
            if self.latency_fn(smallest) > self.cfg.budget_ms:
                self._within_budget(lambda: smallest, "arch")  # raises with the fastest latency
            seen: set[str] = set()
            while len(self.population) < self.cfg.population:
                arch = self._within_budget(lambda: self.space.sample(self.rng), "sampled arch")
                if str(arch) not in seen or len(seen) >= self.cfg.population * 20:
                    seen.add(str(arch))
                    self.population.append(str(arch))
        total = self.cfg.generations * self.cfg.population
        bar = tqdm(total=total, initial=min(len(self.evaluated), total), desc="search", unit="arch",
                   disable=None if progress else True)
        while self.generation < self.cfg.generations:
            t0 = time.time()
            scored = []
            for key in self.population:
                new = key not in self.evaluated
                scored.append(self._evaluate(self.space.parse(key)))
                bar.update(int(new))
            scored.sort(key=lambda c: c["reward"], reverse=True)
            best = scored[0]
            bar.set_postfix(best=f"{best['reward']:.4f}", lat=f"{best['latency_ms']:.3g}ms")
            print(f"generation {self.generation + 1}/{self.cfg.generations}: best reward {best['reward']:.4f} "
                  f"(M_het {best['m_het']:.4f}, M_hom {best['m_hom']:.4f}, {best['latency_ms']:.3f} ms) "
                  f"[{time.time() - t0:.0f}s]", file=sys.stderr)
            self.generation += 1
            if self.generation < self.cfg.generations:
                self.population = self._next_population([c["arch"] for c in scored])
            self._save(complete=self.generation >= self.cfg.generations)
        bar.close()
        return self.result()

    def _next_population(self, ranked: list[str]) -> list[str]:
        n_parents = max(1, int(round(self.cfg.parents * self.cfg.population)))
        parents = [self.space.parse(a) for a in ranked[:n_parents]]
        children = [str(a) for a in parents]
        n_mut = (self.cfg.population - n_parents) // 2
        while len(children) < n_parents + n_mut:
            p = parents[self.rng.integers(len(parents))]
            children.append(str(self._within_budget(lambda: self.space.mutate(p, self.cfg.mutation_prob, self.rng),
                                                    "mutated arch")))
        while len(children) < self.cfg.population:
            def cross():
                i, j = self.rng.choice(len(parents), 2, replace=len(parents) < 2)
                return self.space.crossover(parents[i], parents[j], self.rng)
            children.append(str(self._within_budget(cross, "crossed-over arch")))
        return children

    # -------------------------------------------------------------- results & state

    def result(self, complete: bool | None = None) -> dict:
        cands = list(self.evaluated.values())
        chosen = max(cands, key=lambda c: c["reward"]) if cands else None
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, **self.meta,
            "space": self.space.config(), "config": asdict(self.cfg),
            "complete": self.generation >= self.cfg.generations if complete is None else complete,
            "chosen": chosen, "pareto_front": pareto_front(cands), "history": cands,
            "state": {"generation": self.generation, "population": self.population,
                      "rng": self.rng.bit_generator.state},
        }

    def _save(self, complete: bool) -> None:
        if self.out is not None:
            from .commands.common import write_json

            write_json(self.out, self.result(complete))

    def _maybe_resume(self) -> None:
        if self.out is None or not self.out.exists():
            return
        prev = load_search(self.out)
        if prev.get("complete"):
            raise EdgeQueryError(f"{self.out} holds a finished search", "pass --force to search again, or another --out")
        same = {k: v for k, v in prev["config"].items()} == asdict(self.cfg) and prev["space"] == self.space.config()
        if not same or any(prev.get(k) != v for k, v in self.meta.items() if k in ("supernet", "gallery", "lut")):
            raise EdgeQueryError(f"{self.out} holds an unfinished search with other settings",
                                 "rerun with the same settings to resume it, --force to start over, or another --out")
        self.evaluated = {c["arch"]: c for c in prev["history"]}
        self.population = list(prev["state"]["population"])
        self.generation = prev["state"]["generation"]
        self.rng.bit_generator.state = prev["state"]["rng"]
        print(f"resuming search {self.out} at generation {self.generation + 1} "
              f"({len(self.evaluated)} archs already evaluated)", file=sys.stderr)


def search_from_files(supernet_path: str | Path, gallery_path: str | Path, lut_path: str | Path, cfg: SearchConfig,
                      out: str | Path, recal_batches: int = 20, device: str = "cpu", force: bool = False,
                      progress: bool = True) -> dict:
    """``edgequery search``: check that supernet, gallery and LUT belong together, then search.

    The space searched is the supernet's, cut to the resolutions the LUT measured; the
    LUT must be of that space (same choices, every block present) and embedding size.
    """
    from .checkpoint import load_checkpoint
    from .data import DataSpec, load_splits
    from .latency import load_lut, restricted_space
    from .models import model_from_checkpoint
    from .spaces import load_supernet
    from .train import resolve_device

    cfg.check()
    device = resolve_device(device)
    supernet, sck = load_supernet(supernet_path)
    gallery = load_checkpoint(gallery_path, "gallery")
    compat = (sck.get("compatible_with") or {}).get("gallery_version")
    if compat != gallery["model_version"]:
        raise EdgeQueryError(f"supernet {supernet_path} was trained against gallery {compat}, not "
                             f"{gallery_path} ({gallery['model_version']})",
                             f"train a supernet against this gallery: edgequery train supernet --gallery {gallery_path}")
    lut = load_lut(lut_path, space=supernet.space)
    embed_dim = supernet.head.out_features
    if lut.embed_dim != embed_dim:
        raise EdgeQueryError(f"{lut_path} was measured for {lut.embed_dim}-d embeddings, the supernet embeds into "
                             f"{embed_dim}", f"profile with --embed-dim {embed_dim}")
    space = restricted_space(supernet.space, lut.resolutions)  # search only resolutions the LUT measured
    if force and Path(out).exists():
        Path(out).unlink()
    splits = load_splits(DataSpec.from_dict(sck["data"]))
    scorer = CandidateScorer(supernet.to(device), model_from_checkpoint(gallery), splits,
                             recal_batches=recal_batches, device=device)
    meta = {"supernet": {"path": str(supernet_path), "model_version": sck["model_version"]},
            "gallery": {"path": str(gallery_path), "model_version": gallery["model_version"]},
            "lut": {"path": str(lut_path), "device": lut.device.get("spec"), "runtime": lut.runtime,
                    "threads": lut.threads, "calibrated": bool(lut.calibration)},
            "validation": scorer.sizes()}
    return EvolutionSearch(space, cfg, lambda arch: lut.predict(arch, space), scorer, out, meta).run(progress)


def load_search(path: str | Path) -> dict:
    """A ``search.json`` (refusing other JSON with a clear message)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeQueryError(f"search result {path} does not exist", "run `edgequery search` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeQueryError(f"{path} is not valid JSON ({exc})", "pass the search.json `edgequery search` wrote") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EdgeQueryError(f"{path} is not an edgequery search result", "pass the search.json `edgequery search` wrote")
    return data


def chosen_arch(path: str | Path) -> str:
    """The chosen arch string of a search result."""
    data = load_search(path)
    if not data.get("chosen"):
        raise EdgeQueryError(f"{path} has no chosen arch yet (the search did not evaluate any)",
                             "resume the search to finish it")
    return data["chosen"]["arch"]

