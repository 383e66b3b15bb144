"""The shapes of the gallery's HTTP API: request and response bodies, and the one refusal shape.

These pydantic models are what FastAPI validates requests against and what ``/docs``
(``/openapi.json``) shows.  Every refusal — ours, the framework's, the connection layer's —
is answered as :class:`Problem`, JSON ``{"problem": ..., "fix": ...}`` (see
:mod:`.problems`); inside the server a refusal is raised as :class:`APIError`.

Requests are parsed strictly: no unknown keys, ``k`` must be a JSON integer (``5`` or, as
JSON Schema has it, ``5.0``; not ``"5"``, ``true`` or ``5.5``), embedding values JSON
numbers.  The bounds that depend on the server (``max_k``, the embedding dim, the accepted
model versions) are put into the schema by :func:`search_request_model`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

MAX_ID = 2**63 - 1          # ids are SQLite INTEGERs: 1 .. 2**63 - 1
MAX_MODEL_VERSION_CHARS = 64


def _integral(value):
    """5.0 is a JSON Schema integer; "5", true and 5.5 are not (strict validation refuses them)."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else value


JSONInt = Annotated[int, BeforeValidator(_integral), Strict()]


class APIError(Exception):
    """A refusal with an HTTP status, what was wrong and what to do about it."""

    def __init__(self, status: int, problem: str, fix: str, headers: dict[str, str] | None = None):
        super().__init__(problem)
        self.status, self.problem, self.fix, self.headers = status, problem, fix, headers

    def body(self) -> dict[str, str]:
        """The JSON body of the refusal."""
        return {"problem": self.problem, "fix": self.fix}


class Problem(BaseModel):
    """Every 4xx/5xx answer of the API: what was wrong, and what to do about it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"additionalProperties": False})
    problem: str = Field(description="what was wrong with the request (or the server), in one sentence")
    fix: str = Field(description="what to do about it")


def search_request_model(max_k: int, dim: int, versions: list[str], classes: list[str]) -> type[BaseModel]:
    """The body of ``POST /v1/search`` for a server answering at most ``max_k`` results.

    The embedding's length ``dim`` and the accepted ``versions`` are stated in the schema
    but checked by the route, whose refusals say more (422 naming both lengths, 409 naming
    the accepted versions) than a generic validation error would.
    """

    class SearchRequest(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")
        embedding: list[float] = Field(
            description=f"the query embedding: {dim} numbers (the gallery's embedding dim), any finite scale (the "
                        "server L2-normalises it in float64), not all zero",
            json_schema_extra={"minItems": dim, "maxItems": dim})
        model_version: str = Field(max_length=MAX_MODEL_VERSION_CHARS,
                                   description="model_version of the model that computed the embedding; another "
                                               "one is refused with 409 (GET /v1/model says why each is accepted)",
                                   json_schema_extra={"enum": list(versions)})
        k: JSONInt = Field(10, ge=1, le=max_k, description="how many results (a JSON integer)")
        label: JSONInt | None = Field(None, ge=0, le=max(len(classes) - 1, 0),
                                      description="only items of this class index (GET /v1/model lists the "
                                                  "classes); omit or null for all items")

    return SearchRequest


class HitOut(BaseModel):
    id: int = Field(ge=1, le=MAX_ID)
    score: float = Field(description="cosine similarity")
    label: int | None
    label_name: str | None
    source: str


class SearchResponse(BaseModel):
    model_version: str
    k: int
    results: list[HitOut]
    took_ms: float


class ItemOut(BaseModel):
    id: int = Field(ge=1, le=MAX_ID)
    label: int | None
    label_name: str | None
    source: str
    added_at: float


class AddResponse(BaseModel):
    added: list[ItemOut]


class DeleteResponse(BaseModel):
    deleted: int = Field(ge=1, le=MAX_ID)


class Health(BaseModel):
    status: str
    items: int
    model_version: str
