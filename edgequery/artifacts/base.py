"""The conventions every artifact schema follows, and the one format rule.

An *artifact* is a file one stage writes and another reads (checkpoint metadata, model
card, latency table, search result, benchmark result).  Each has a pydantic model,
subclass of :class:`Artifact`, that is the only reader and writer of its file:

* **strict keys** - every model (and every nested :class:`Strict` part) refuses keys it
  does not declare, so a hand-edited or invented field is an error, not silently ignored;
* **one format rule** - ``format`` must be the class's :attr:`~Artifact.FORMAT`;
  ``format_version`` newer than :attr:`~Artifact.VERSION` is refused ("upgrade
  edgequery"); an older one is read only through the class's :meth:`~Artifact.migrate`,
  else refused ("re-create it");
* **clear errors** - a bad file raises :class:`~edgequery.errors.EdgeQueryError` naming
  the file, the field and the fix (:attr:`~Artifact.FIX`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from ..errors import EdgeQueryError
from ..files import read_json, write_json

A = TypeVar("A", bound="Artifact")


class Strict(BaseModel):
    """A schema part that refuses unknown keys.

    Fields named in ``WRITTEN_WHEN_SET`` are left out of the written data while they are
    ``None``: a field added later keeps files written before it reading back key for key.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_unset_later_fields(self, handler):
        data = handler(self)
        for name in self.WRITTEN_WHEN_SET:
            if isinstance(data, dict) and name in data and data[name] is None:
                del data[name]
        return data


class Compat(Strict):
    """The gallery model a query net (or supernet, or export) was trained to be compatible with (BCT)."""

    gallery_version: str
    gallery_arch: str | None = None


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """``field a.b: message; field c: message (+N more)`` from a pydantic error."""
    errs = exc.errors()
    parts = []
    for e in errs[:limit]:
        unknown = e["type"] in ("extra_forbidden", "unexpected_keyword_argument")
        msg = "unknown key (not part of this format)" if unknown else e["msg"]
        parts.append(f"{_where(e['loc'])}: {msg}")
    more = f" (+{len(errs) - limit} more)" if len(errs) > limit else ""
    return "; ".join(parts) + more


class Artifact(Strict):
    """A versioned file format; subclasses set FORMAT, VERSION, KIND and FIX."""

    FORMAT: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "file"                  # what a user calls it: "model card", "latency table", ...
    FIX: ClassVar[str] = "re-create it with this version of edgequery"

    format: str
    format_version: int

    @model_validator(mode="before")
    @classmethod
    def _stamp(cls, data: Any) -> Any:
        """Objects built in code get this class's format and version; files are checked in :meth:`parse_data`."""
        if isinstance(data, dict) and ("format" not in data or "format_version" not in data):
            data = {"format": cls.FORMAT, "format_version": cls.VERSION, **data}
        return data

    @model_validator(mode="after")
    def _same_format(self):
        if self.format != self.FORMAT:
            raise ValueError(f"format is {self.format!r}, expected {self.FORMAT!r}")
        if self.format_version != self.VERSION:
            raise ValueError(f"format_version {self.format_version} is not {self.VERSION}")
        return self

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any] | None:
        """Upgrade the data of an older ``version`` to :attr:`VERSION`; ``None``: no upgrade path."""
        return None

    @classmethod
    def check_format(cls, data: Any, where: str, version_key: str = "format_version") -> dict[str, Any]:
        """The one format rule: right ``format``, not newer, older only through :meth:`migrate`."""
        if not isinstance(data, dict):
            raise EdgeQueryError(f"{where} is not an edgequery {cls.KIND} (not a JSON object)", cls.FIX)
        if data.get("format") != cls.FORMAT:
            raise EdgeQueryError(f"{where} is not an edgequery {cls.KIND} (format {data.get('format')!r}, "
                                 f"expected {cls.FORMAT!r})", cls.FIX)
        version = data.get(version_key)
        if isinstance(version, bool) or not isinstance(version, int):
            raise EdgeQueryError(f"{where} has no integer format_version (found {version!r})", cls.FIX)
        if version > cls.VERSION:
            raise EdgeQueryError(f"{where} has {cls.KIND} format_version {version}, newer than this edgequery "
                                 f"reads ({cls.VERSION})", "upgrade edgequery (pip install -U edgequery)")
        if version < cls.VERSION:
            migrated = cls.migrate(dict(data), version)
            if migrated is None:
                raise EdgeQueryError(f"{where} has {cls.KIND} format_version {version}, older than this edgequery "
                                     f"reads ({cls.VERSION}) and there is no upgrade path", cls.FIX)
            data = migrated
        return data

    @classmethod
    def parse_data(cls: type[A], data: Any, where: str = "") -> A:
        """Validate ``data`` (a file's content) into this schema, or raise one clear EdgeQueryError."""
        where = where or f"the {cls.KIND}"
        data = cls.check_format(data, where)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EdgeQueryError(f"{where} is not a valid {cls.KIND}: {describe_validation_error(exc)}",
                                 cls.FIX) from None

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        """Read and validate a JSON artifact file."""
        return cls.parse_data(read_json(path, what=cls.KIND, fix=cls.FIX), str(path))

    def to_data(self) -> dict[str, Any]:
        """The file form: plain JSON types, every declared key present."""
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> Path:
        """Write atomically (a killed write leaves the old file or the new one)."""
        return write_json(path, self.to_data())
