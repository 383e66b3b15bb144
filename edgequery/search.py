"""Compatibility-aware, latency-aware evolutionary search (CMP-NAS with measured latency).

A candidate is an arch of the supernet's space.  Its accuracy is *inherited*: the
supernet's weights for that arch, BatchNorm recalibrated on training images, embed the
validation queries; the validation gallery is embedded once by the gallery model
(ResNet-101) and cached.  Two figures come out (Recall@1 or mAP@R, by flag):

* ``M_het`` = M(phi_q, phi_g): queries by the candidate, gallery by the gallery model;
* ``M_hom`` = M(phi_q, phi_q): the candidate on both sides.

Rewards (the paper's ablation): ``r1`` = M_hom (ordinary NAS), ``r2`` = M_het
(compatibility only), ``r3`` = mix * M_het + (1 - mix) * M_hom (default).

The budget limits one *cost* per arch, given by a cost function with a unit
(``SearchConfig.cost_unit``): ``ms`` - latency predicted from a per-block table measured
on the target (``edgequery search``) - or ``MFLOPs`` (the FLOPs-constrained baseline of
the ablation benchmark).  It is a *hard* budget - a candidate over budget never enters
the population; the check is made where candidates are made - and, with
``cost_weight`` w != 0, also a MnasNet-style soft factor: reward x (cost/budget)^w
(w < 0 favours cheaper nets).

The evolution follows once-for-all's ``EvolutionFinder``: a population of within-budget
archs; each generation keeps the best ``parents`` share and refills the population half
by mutation and half by crossover of parents.  When the budget admits fewer distinct
archs than the population asks for, the population shrinks to those found (a warning,
and a note in the result).  Every evaluation is memoised by arch string, and the state
(:class:`~edgequery.artifacts.search.SearchResult`) is saved after each generation, so a
killed search resumes.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .artifacts.search import REWARDS, Candidate, SearchConfig, SearchResult, SearchSources, SearchState
from .data import Splits
from .errors import EdgeQueryError
from .evaluate import embed
from .log import progress as progress_bar
from .metrics import retrieval_metrics

log = logging.getLogger(__name__)

FORMAT = SearchResult.FORMAT
FORMAT_VERSION = SearchResult.VERSION
_UNITS_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}

__all__ = ["REWARDS", "CandidateScorer", "EvolutionSearch", "SearchConfig", "chosen_arch", "chosen_arch_and_space",
           "load_search", "pareto_front", "parse_budget", "reward_of", "search_from_files"]


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


def reward_of(cfg: SearchConfig, m_het: float, m_hom: float, cost: float) -> float:
    """The reward of a candidate (``cfg.reward``), times (cost / budget)^cost_weight when that is set."""
    base = {"r1": m_hom, "r2": m_het, "r3": cfg.mix * m_het + (1 - cfg.mix) * m_hom}[cfg.reward]
    if cfg.cost_weight:
        base *= (cost / cfg.budget) ** cfg.cost_weight
    return base


class CandidateScorer:
    """M_het and M_hom of an arch with inherited supernet weights, on the validation split.

    By default (``n_queries`` None) every validation image is a query against all the
    others (leave-one-out): M_het ranks the gallery model's embeddings of the other images,
    M_hom the candidate's own.  All of the split's images are queries at no extra cost (the
    candidate embeds each once either way), so a score's standard error is about
    sqrt(5)x smaller than with a fifth of them as queries.  ``n_queries`` = N instead cuts
    the split: its first N images are queries, the rest the gallery.  The gallery model
    embeds its side once, at construction.
    """

    def __init__(self, supernet, gallery_model: torch.nn.Module, splits: Splits, n_queries: int | None = None,
                 recal_batches: int = 20, recal_batch_size: int = 128, device: str = "cpu", ci: bool = False):
        val = splits.val
        if len(val) < 20:
            raise EdgeQueryError(f"the validation split has {len(val)} images, too few to score candidates",
                                 "train with --n-val of at least a few hundred images")
        self.leave_one_out, self.ci = n_queries is None, ci
        n_q = len(val) if self.leave_one_out else n_queries
        if not self.leave_one_out and not 0 < n_q < len(val):
            raise EdgeQueryError(f"{n_q} validation queries out of {len(val)} images",
                                 f"pass between 1 and {len(val) - 1}, or none (every image a query, leave-one-out)")
        self.queries = val.subset(torch.arange(n_q))
        self.gallery = val if self.leave_one_out else val.subset(torch.arange(n_q, len(val)))
        self.supernet, self.splits, self.spec = supernet, splits, splits.spec
        self.recal_batches, self.recal_batch_size, self.device = recal_batches, recal_batch_size, device
        self.gallery_emb = embed(gallery_model, self.gallery, self.spec, device=device, desc="gallery model: val")

    def __call__(self, arch: Any) -> dict[str, dict[str, float]]:
        net = self.supernet.subnet(arch, self.splits.train, self.spec, batches=self.recal_batches,
                                  batch_size=self.recal_batch_size)
        q = embed(net, self.queries, self.spec, device=self.device, show_progress=False)
        qg = q if self.leave_one_out else embed(net, self.gallery, self.spec, device=self.device, show_progress=False)
        ql, gl, loo = self.queries.labels, self.gallery.labels, self.leave_one_out
        return {"het": retrieval_metrics(q, ql, self.gallery_emb, gl, exclude_self=loo, ci=self.ci),
                "hom": retrieval_metrics(q, ql, qg, gl, exclude_self=loo, ci=self.ci)}

    def protocol(self) -> str:
        """What the scores are of: ``loo-<n>`` (leave-one-out over n images) or ``q<n>-g<m>``."""
        return (f"loo-{len(self.queries)}" if self.leave_one_out
                else f"q{len(self.queries)}-g{len(self.gallery)}")

    def sizes(self) -> dict[str, int]:
        return {"val_queries": len(self.queries), "val_gallery": len(self.gallery) - int(self.leave_one_out)}


def pareto_front(candidates: list[dict]) -> list[dict]:
    """Candidates no other beats on both cost (lower) and M_het (higher), cheapest first."""
    front, best = [], -1.0
    for c in sorted(candidates, key=lambda c: (c["cost"], -c["m_het"])):
        if c["m_het"] > best:
            front.append(c)
            best = c["m_het"]
    return front


class EvolutionSearch:
    """The evolutionary loop over archs of ``space``.

    ``cost_fn(arch)`` returns what the budget limits, in ``cfg.cost_unit`` (``ms``: a
    LUT's predicted latency; ``MFLOPs``); it is memoised by arch string.
    ``score_fn(arch)`` returns ``{"het": metrics, "hom": metrics}``.  ``out`` is the
    ``search.json`` saved after each generation (and resumed from); ``meta`` names the
    files searched on (:class:`~edgequery.artifacts.search.SearchSources`).
    """

    def __init__(self, space, cfg: SearchConfig, cost_fn: Callable[[Any], float],
                 score_fn: Callable[[Any], dict], out: str | Path | None = None, meta: dict | None = None):
        cfg.check()
        self.space, self.cfg, self.cost_fn, self.score_fn = space, cfg, cost_fn, score_fn
        self.out = Path(out) if out else None
        self.meta = SearchSources.model_validate(meta or {}).model_dump(mode="json", exclude_unset=True)
        self.rng = np.random.default_rng(cfg.seed)
        self.evaluated: dict[str, dict] = {}
        self.population: list[str] = []
        self.population_size = cfg.population
        self.notes: list[str] = []
        self.generation = 0
        self._costs: dict[str, float] = {}

    def cost(self, arch: Any) -> float:
        key = str(arch)
        if key not in self._costs:
            self._costs[key] = float(self.cost_fn(arch))
        return self._costs[key]

    # -------------------------------------------------------------- candidates

    def _try_within_budget(self, make: Callable[[], Any]) -> Any | None:
        for _ in range(self.cfg.max_tries):
            arch = make()
            if self.cost(arch) <= self.cfg.budget:
                return arch
        return None

    def _within_budget(self, make: Callable[[], Any], what: str) -> Any:
        arch = self._try_within_budget(make)
        if arch is not None:
            return arch
        cheapest = min(min(self._costs.values(), default=float("inf")), self.cost(self.space.smallest()))
        unit, latency = self.cfg.cost_unit, self.cfg.cost_unit == "ms"
        raise EdgeQueryError(
            f"no {what} within the {self.cfg.budget:g} {unit} budget after {self.cfg.max_tries} tries; the "
            f"cheapest arch of this space {'predicts' if latency else 'costs'} {cheapest:.3f} {unit}"
            + (" on this LUT" if latency else ""),
            f"raise --latency-budget above {cheapest:.3f}ms, or profile a faster device/runtime" if latency
            else f"raise the budget above {cheapest:.3f} {unit}")

    def _initial_population(self) -> list[str]:
        """``cfg.population`` distinct within-budget archs - or all that can be found, with a note."""
        smallest = self.space.smallest()
        if self.cost(smallest) > self.cfg.budget:
            self._within_budget(lambda: smallest, "arch")  # raises, naming the cheapest cost
        slowest = self.cost(self.space.largest())
        if slowest <= self.cfg.budget:
            unit = self.cfg.cost_unit
            note = (f"the {self.cfg.budget:g} {unit} budget does not bind: the largest arch of this space "
                    f"{'predicts' if unit == 'ms' else 'costs'} {slowest:.4g} {unit}, so every arch is within it "
                    f"and the search is by accuracy alone")
            log.warning("%s (give a budget below %.4g %s to trade accuracy for %s)", note, slowest, unit,
                        "latency" if unit == "ms" else "cost")
            self.notes.append(note)
        population: list[str] = []
        seen: set[str] = set()
        repeats = 0  # within-budget draws in a row that found no new arch
        while len(population) < self.cfg.population and repeats < self.cfg.max_tries:
            arch = self._try_within_budget(lambda: self.space.sample(self.rng))
            if arch is None:
                if not population:
                    self._within_budget(lambda: self.space.sample(self.rng), "sampled arch")  # raises
                break
            key = str(arch)
            repeats = repeats + 1 if key in seen else 0
            if key not in seen:
                seen.add(key)
                population.append(key)
        if len(population) < self.cfg.population:
            note = (f"population shrunk from {self.cfg.population} to {len(population)}: sampling found only "
                    f"{len(population)} distinct arch(s) of this space within the {self.cfg.budget:g} "
                    f"{self.cfg.cost_unit} budget")
            log.warning("%s (raise the budget or widen the space for a real search)", note)
            self.notes.append(note)
        self.population_size = len(population)
        return population

    def _evaluate(self, arch: Any) -> dict:
        key = str(arch)
        if key not in self.evaluated:
            scores = self.score_fn(arch)
            cost = self.cost(arch)
            m_het, m_hom = scores["het"][self.cfg.metric], scores["hom"][self.cfg.metric]
            self.evaluated[key] = Candidate(
                arch=key, generation=self.generation, cost=cost,
                latency_ms=cost if self.cfg.cost_unit == "ms" else None, **self.space.cost(arch),
                m_het=m_het, m_hom=m_hom, reward=reward_of(self.cfg, m_het, m_hom, cost),
                het=scores["het"], hom=scores["hom"]).model_dump(mode="json")
        return self.evaluated[key]

    # -------------------------------------------------------------- loop

    def run(self, progress: bool = True) -> dict:
        """Run (or resume) the search to the end; returns the result (``search.json``'s content)."""
        self._maybe_resume()
        if not self.population:
            self.population = self._initial_population()
        total = self.cfg.generations * self.population_size
        bar = progress_bar(total=total, initial=min(len(self.evaluated), total), desc="search", unit="arch",
                           enabled=progress, log=log)
        while self.generation < self.cfg.generations:
            t0 = time.time()
            scored = []
            for key in self.population:
                new = key not in self.evaluated
                scored.append(self._evaluate(self.space.parse(key)))
                bar.update(int(new))
            scored.sort(key=lambda c: c["reward"], reverse=True)
            best = scored[0]
            bar.set_postfix(best=f"{best['reward']:.4f}", cost=f"{best['cost']:.3g}{self.cfg.cost_unit}",
                            refresh=False)
            log.info("generation %d/%d: best reward %.4f (M_het %.4f, M_hom %.4f, %.3f %s), %d archs evaluated "
                     "[%.0fs]", self.generation + 1, self.cfg.generations, best["reward"], best["m_het"],
                     best["m_hom"], best["cost"], self.cfg.cost_unit, len(self.evaluated), time.time() - t0)
            self.generation += 1
            if self.generation < self.cfg.generations:
                self.population = self._next_population([c["arch"] for c in scored])
            self._save(complete=self.generation >= self.cfg.generations)
        bar.close()
        return self.result()

    def _next_population(self, ranked: list[str]) -> list[str]:
        size = self.population_size
        n_parents = max(1, int(round(self.cfg.parents * size)))
        parents = [self.space.parse(a) for a in ranked[:n_parents]]
        children = [str(a) for a in parents]
        n_mut = (size - n_parents) // 2
        while len(children) < n_parents + n_mut:
            p = parents[self.rng.integers(len(parents))]
            children.append(str(self._within_budget(lambda: self.space.mutate(p, self.cfg.mutation_prob, self.rng),
                                                    "mutated arch")))
        while len(children) < size:
            def cross():
                i, j = self.rng.choice(len(parents), 2, replace=len(parents) < 2)
                return self.space.crossover(parents[i], parents[j], self.rng)
            children.append(str(self._within_budget(cross, "crossed-over arch")))
        return children

    # -------------------------------------------------------------- results & state

    def result_model(self, complete: bool | None = None) -> SearchResult:
        """The search so far as its file schema."""
        cands = list(self.evaluated.values())
        chosen = max(cands, key=lambda c: c["reward"]) if cands else None
        return SearchResult(
            **self.meta, space=self.space.config(), config=self.cfg,
            complete=self.generation >= self.cfg.generations if complete is None else complete,
            notes=self.notes, chosen=chosen, pareto_front=pareto_front(cands), history=cands,
            state=SearchState(generation=self.generation, population=self.population,
                              population_size=self.population_size, rng=self.rng.bit_generator.state))

    def result(self, complete: bool | None = None) -> dict:
        """:meth:`result_model` as plain JSON data (what ``search.json`` holds)."""
        return self.result_model(complete).to_data()

    def _save(self, complete: bool) -> None:
        if self.out is not None:
            self.result_model(complete).save(self.out)

    def _maybe_resume(self) -> None:
        if self.out is None or not self.out.exists():
            return
        prev = load_search(self.out)
        if prev.complete:
            raise EdgeQueryError(f"{self.out} holds a finished search",
                                 "pass --force to search again, or another --out")
        sources = prev.model_dump(mode="json", include={"supernet", "gallery", "lut"})
        same = prev.config == self.cfg and prev.space == self.space.config()
        if not same or any(sources.get(k) != v for k, v in self.meta.items() if k in sources):
            raise EdgeQueryError(f"{self.out} holds an unfinished search with other settings",
                                 "rerun with the same settings to resume it, --force to start over, or another --out")
        self.evaluated = {c.arch: c.model_dump(mode="json") for c in prev.history}
        self.population = list(prev.state.population)
        self.population_size = prev.state.population_size
        self.notes = list(prev.notes)
        self.generation = prev.state.generation
        self.rng.bit_generator.state = prev.state.rng
        log.info("resuming search %s at generation %d (%d archs already evaluated)", self.out, self.generation + 1,
                 len(self.evaluated))


def search_from_files(supernet_path: str | Path, gallery_path: str | Path, lut_path: str | Path, cfg: SearchConfig,
                      out: str | Path, recal_batches: int = 20, device: str = "cpu", force: bool = False,
                      progress: bool = True) -> dict:
    """``edgequery search``: check that supernet, gallery and LUT belong together, then search.

    The space searched is the supernet's (its stored configuration), cut to the
    resolutions the LUT measured; the LUT must be of that space (same choices, every
    block present) and embedding size.  The cost is the LUT's predicted latency (ms).
    """
    from .artifacts.compat import check_compatible
    from .checkpoint import load_checkpoint
    from .data import DataSpec, load_splits
    from .latency import load_lut, restricted_space
    from .models import model_from_checkpoint
    from .spaces import load_supernet
    from .train import resolve_device

    if cfg.cost_unit != "ms":
        raise EdgeQueryError(f"edgequery search limits predicted latency, not {cfg.cost_unit}",
                             "give the budget in ms (cost_unit ms); a FLOPs-constrained search runs EvolutionSearch "
                             "with a FLOPs cost function")
    cfg.check()
    device = resolve_device(device)
    supernet, sck = load_supernet(supernet_path)
    gallery = load_checkpoint(gallery_path, "gallery")
    check_compatible(sck, gallery, a_name=f"supernet {supernet_path}", b_name=str(gallery_path), require_bct=True)
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
            "lut": {"path": str(lut_path), "device": lut.device, "runtime": lut.runtime,
                    "threads": lut.threads, "calibrated": bool(lut.calibration)},
            "validation": scorer.sizes()}
    log.info("searching %s (%s) under %.4g ms predicted by %s", space.name, space.describe(), cfg.budget, lut_path)
    search = EvolutionSearch(space, cfg, lambda arch: lut.predict(arch, space), scorer, out, meta)
    emulated = lut.fingerprint.emulated if lut.fingerprint else None
    if emulated:
        note = (f"{lut_path} was measured under emulation ({emulated} on a {lut.fingerprint.cpu}): its latencies "
                "are the emulator's, not an ARM CPU's, so the budget is not a phone's milliseconds")
        log.warning("%s (profile the real board: --device ssh://user@board or adb)", note)
        search.notes.append(note)
    return search.run(progress)


def load_search(path: str | Path) -> SearchResult:
    """A ``search.json``, validated (refusing other or damaged JSON with a clear message)."""
    if not Path(path).is_file():
        raise EdgeQueryError(f"search result {path} does not exist", "run `edgequery search` first")
    return SearchResult.load(path)


def chosen_arch(path: str | Path) -> str:
    """The chosen arch string of a search result."""
    return load_search(path).chosen_arch(str(path))


def chosen_arch_and_space(path: str | Path):
    """The chosen arch string of a search result and the space it was searched in (to rebuild it there)."""
    from .spaces import space_from_config

    result = load_search(path)
    return result.chosen_arch(str(path)), space_from_config(result.space)
