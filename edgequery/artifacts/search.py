"""The result of an architecture search (``search.json``), and the search's configuration.

A search constrains one *cost* of each candidate, in a unit the result names:

* ``ms`` - batch-1 latency predicted by a latency table measured on the target
  (``edgequery search``); candidates then also carry it as ``latency_ms``;
* ``MFLOPs`` - millions of FLOPs (the FLOPs-constrained baseline of
  ``benchmarks/search_ablation.py``); ``latency_ms`` is then absent, nothing was timed.

``space`` is the full configuration of the space searched (``space.config()``, cut to
the resolutions the LUT measured), so the chosen arch rebuilds in that space:
``edgequery train query --arch search.json``.  ``state`` is what a killed search resumes
from.

Format history: version 1 named the budget ``budget_ms`` and each candidate's cost
``latency_ms`` even when it held MFLOPs; reading a version-1 file takes them as
milliseconds (what ``edgequery search`` wrote).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..errors import EdgeQueryError
from .base import Artifact, Strict
from .checkpoint import SpaceConfig

REWARDS = ("r1", "r2", "r3")
COST_UNITS = ("ms", "MFLOPs")


METRICS = ("map@r", "recall@1")   # what M_het / M_hom can be (the default first)


class SearchConfig(Strict):
    """The evolutionary search's settings (``edgequery search`` flags); compared on resume.

    ``budget`` is a hard limit on the cost, in ``cost_unit``.  ``cost_weight`` w != 0
    multiplies the reward by MnasNet's soft factor (cost / budget)^w (w < 0 favours
    cheaper nets).  ``budget_ms=`` is accepted for ``budget=``, ``cost_unit="ms"``.
    """

    budget: float
    cost_unit: Literal["ms", "MFLOPs"] = "ms"
    reward: str = "r3"
    mix: float = 0.5
    cost_weight: float = 0.0
    metric: str = "map@r"         # or recall@1 (benchmarks/supernet_rank.py: map@r ranks archs better)
    population: int = 50
    generations: int = 20
    mutation_prob: float = 0.1
    parents: float = 0.25
    seed: int = 0
    max_tries: int = 500          # attempts to make one within-budget candidate

    @model_validator(mode="before")
    @classmethod
    def _budget_ms(cls, data: Any) -> Any:
        if isinstance(data, dict) and "budget_ms" in data:
            if "budget" in data or data.get("cost_unit", "ms") != "ms":
                raise ValueError("budget_ms is a latency budget: give budget= (with cost_unit) instead")
            data = {**{k: v for k, v in data.items() if k != "budget_ms"}, "budget": data["budget_ms"],
                    "cost_unit": "ms"}
        return data

    def check(self) -> None:
        """Refuse settings the search cannot run with (one clear error naming the flag)."""
        if self.reward not in REWARDS:
            raise EdgeQueryError(f"unknown reward {self.reward!r}",
                                 "use r1 (homogeneous), r2 (heterogeneous) or r3 (mix)")
        if not 0.0 <= self.mix <= 1.0:
            raise EdgeQueryError(f"--mix {self.mix} is outside [0, 1]", "give the weight of M_het, e.g. 0.5")
        if self.metric not in METRICS:
            raise EdgeQueryError(f"unknown metric {self.metric!r}", f"use {' or '.join(METRICS)}")
        if self.budget <= 0:
            raise EdgeQueryError(f"the budget {self.budget:g} {self.cost_unit} is not positive",
                                 "give a budget above zero")
        if self.population < 2 or self.generations < 1:
            raise EdgeQueryError("the population needs >= 2 archs and >= 1 generation",
                                 "raise --population / --generations")
        if not 0.0 < self.parents <= 1.0 or not 0.0 <= self.mutation_prob <= 1.0:
            raise EdgeQueryError("--parents must be in (0, 1] and --mutation-prob in [0, 1]", "fix those flags")


class Candidate(Strict):
    """One evaluated arch."""

    arch: str
    generation: int               # the generation it was first evaluated in (0-based)
    cost: float                   # what the budget limits, in the result's cost_unit
    latency_ms: float | None = None   # predicted latency; set when the cost is latency
    flops: int
    params: int
    m_het: float                  # the metric, queries by the candidate vs the gallery model's gallery
    m_hom: float                  # the metric, the candidate on both sides
    reward: float
    het: dict[str, float]         # every retrieval figure (recall@1, recall@10, map@r, ...)
    hom: dict[str, float]


class ModelRef(Strict):
    path: str | None = None
    model_version: str


class LUTRef(Strict):
    """The latency table whose predictions were the cost."""

    path: str
    device: str
    runtime: str
    threads: int
    calibrated: bool


class ValidationSizes(Strict):
    val_queries: int
    val_gallery: int


class SearchState(Strict):
    """Where a search stands after a generation: enough to resume it."""

    generation: int
    population: list[str]
    population_size: int          # may be below config.population: see ``notes``
    rng: dict[str, Any]           # numpy bit-generator state (opaque JSON)


class SearchSources(Strict):
    """The files a search ran on (set by ``edgequery search``; benchmarks may set fewer)."""

    supernet: ModelRef | None = None
    gallery: ModelRef | None = None
    lut: LUTRef | None = None
    validation: ValidationSizes | None = None


class SearchResult(SearchSources, Artifact):
    FORMAT: ClassVar[str] = "edgequery-search"
    VERSION: ClassVar[int] = 2
    KIND: ClassVar[str] = "search result"
    FIX: ClassVar[str] = "pass the search.json `edgequery search` wrote"

    space: SpaceConfig = Field(description="the space searched (space.config()): the chosen arch rebuilds in it")
    config: SearchConfig
    complete: bool
    notes: list[str] = []         # e.g. a population shrunk because the budget admits fewer archs
    chosen: Candidate | None = None
    pareto_front: list[Candidate] = []
    history: list[Candidate] = []
    state: SearchState

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any] | None:
        if version != 1:
            return None
        config = dict(data.get("config") or {})
        config["budget"] = config.pop("budget_ms", None)
        config["cost_unit"] = "ms"
        config["cost_weight"] = config.pop("latency_weight", 0.0)

        def candidate(c: dict) -> dict:
            return {**c, "cost": c.get("latency_ms")}

        state = dict(data.get("state") or {})
        state.setdefault("population_size", len(state.get("population") or []) or config.get("population"))
        out = {**data, "format_version": 2, "config": config, "state": state,
               "chosen": candidate(data["chosen"]) if data.get("chosen") else None,
               "pareto_front": [candidate(c) for c in data.get("pareto_front") or []],
               "history": [candidate(c) for c in data.get("history") or []]}
        return out

    def chosen_arch(self, where: str = "the search result") -> str:
        """The chosen arch string (refused while the search has evaluated nothing)."""
        if self.chosen is None:
            raise EdgeQueryError(f"{where} has no chosen arch yet (the search did not evaluate any)",
                                 "resume the search to finish it")
        return self.chosen.arch
