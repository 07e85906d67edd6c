"""Typed JSON records: dataclasses that read and write themselves as JSON objects (no torch import).

A record is a dataclass deriving from :class:`JsonRecord` whose fields each declare their JSON
kind once, with :func:`item`::

    @dataclass
    class Corpus(JsonRecord):
        sources: list[str] = item(list_of(TEXT))
        tokens: int | None = item(optional(WHOLE), default=None)

That one declaration gives the writer (:meth:`JsonRecord.to_json`) and the one validating reader
(:meth:`JsonRecord.from_json`), so adding a field is a one-line change. Reading treats the JSON
as data from a stranger: every known key is checked against its kind before anything uses it,
and a wrong one raises :class:`RecordError` naming the field (``progress.step is 'abc', not a
whole number >= 0``). Keys a record does not know are ignored (a newer charnn wrote them); a
missing key takes the field's default (an older charnn did not write it) or is refused when the
field has none.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self


class RecordError(ValueError):
    """A JSON value that is not what its record declares; the message names the field."""


def clip(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: forged values can be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Kind:
    """What a JSON value must be (``what``, for messages) and how it becomes a Python value and back.

    ``read(value, name)`` returns the Python value or raises :class:`RecordError`; the default
    checks ``ok`` and keeps the value. ``write`` turns the Python value back into JSON."""

    what: str
    ok: Callable[[Any], bool] = lambda value: True
    load: Callable[[Any, str], Any] | None = None  # (checked value, field name) -> Python value
    write: Callable[[Any], Any] = lambda value: value
    doc: str | None = None  # what the documentation says, when it says more than ``what``

    def read(self, value: Any, name: str) -> Any:
        if not self.ok(value):
            raise RecordError(f"{name} is {clip(value)}, not {self.what}")
        return value if self.load is None else self.load(value, name)


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite JSON number (booleans are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(min: int = 0) -> Kind:
    return Kind(f"a whole number >= {min}", lambda v: is_whole(v) and v >= min)


def real(min: float | None = None, positive: bool = False) -> Kind:
    if positive:
        return Kind("a finite number > 0", lambda v: is_real(v) and v > 0)
    if min is not None:
        return Kind(f"a finite number >= {min:g}", lambda v: is_real(v) and v >= min)
    return Kind("a finite number", is_real)


WHOLE = whole(0)
REAL = real()
TEXT = Kind("text", lambda v: isinstance(v, str))
FLAG = Kind("true or false", lambda v: isinstance(v, bool))
SHA256 = Kind(
    "a sha256 hex digest", lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None
)
# A JSON scalar or a list of them (an optimizer hyperparameter such as AdamW's betas).
SCALAR = Kind(
    "a number, text, true/false, null or a list of numbers",
    lambda v: (
        v is None
        or isinstance(v, (bool, str))
        or is_real(v)
        or (isinstance(v, list) and all(map(is_real, v)))
    ),
)


def optional(kind: Kind) -> Kind:
    """``kind`` or null."""
    return Kind(
        f"null or {kind.what}",
        load=lambda v, name: None if v is None else kind.read(v, name),
        write=lambda v: None if v is None else kind.write(v),
        doc=f"null or {kind.doc}" if kind.doc else None,
    )


# A measurement that may have gone non-finite (a diverged validation): JSON has no NaN, so the
# writer stores null, which reads back as None.
MEASURE = Kind(
    "null or a finite number",
    lambda v: v is None or is_real(v),
    write=lambda v: v if v is None or math.isfinite(v) else None,
)


def list_of(kind: Kind, non_empty: bool = False) -> Kind:
    def load(value: Any, name: str) -> list[Any]:
        return [kind.read(v, f"{name}[{i}]") for i, v in enumerate(value)]

    what = f"a {'non-empty ' if non_empty else ''}list of "
    return Kind(
        what + kind.what,
        lambda v: isinstance(v, list) and (bool(v) or not non_empty),
        load,
        lambda v: [kind.write(x) for x in v],
        what + kind.doc if kind.doc else None,
    )


def mapping_of(kind: Kind) -> Kind:
    def load(value: dict[str, Any], name: str) -> dict[str, Any]:
        return {k: kind.read(v, f"{name}.{k}") for k, v in value.items()}

    return Kind(
        f"a mapping to {kind.what}",
        lambda v: isinstance(v, dict),
        load,
        lambda v: {k: kind.write(x) for k, x in v.items()},
    )


def record(cls: type[JsonRecord]) -> Kind:
    """A nested record, read with its own reader (errors name ``outer.inner``)."""
    return Kind(
        "a mapping",
        lambda v: isinstance(v, dict),
        cls.from_json,
        lambda v: v.to_json(),
        f"`{cls.__name__}` (below)",
    )


def item(kind: Kind, **kwargs: Any) -> Any:
    """A record field of JSON kind ``kind`` (``default=``/``default_factory=`` as for ``field``)."""
    return dataclasses.field(metadata={"json": kind}, **kwargs)


class JsonRecord:
    """Base of the records: one reader, one writer, both driven by the fields' :func:`item` kinds."""

    # Fields holding None are left out of the JSON (keys that older writers did not have either).
    OMIT_NONE: ClassVar[bool] = False

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> Self:
        """The record from parsed JSON; ``where`` prefixes field names in errors."""
        name = where or cls.__name__
        if not isinstance(data, dict):
            raise RecordError(f"{name} is {clip(data)}, not a mapping")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            kind = f.metadata.get("json")
            if kind is None or not f.init:
                continue
            if f.name in data:
                values[f.name] = kind.read(data[f.name], f"{where}.{f.name}" if where else f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where + '.' if where else ''}{f.name} is missing")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # the class's own cross-field checks
            raise RecordError(f"{name}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data (what :meth:`from_json` reads back)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            kind = f.metadata.get("json")
            if kind is None:
                continue
            value = getattr(self, f.name)
            if value is None and self.OMIT_NONE:
                continue
            out[f.name] = kind.write(value)
        return out


def json_fields(cls: type[JsonRecord]) -> list[tuple[str, str]]:
    """Each JSON field of a record class and what it must hold, in order (for the docs)."""
    kinds = [(f.name, f.metadata["json"]) for f in dataclasses.fields(cls) if "json" in f.metadata]  # type: ignore[arg-type]
    return [(name, kind.doc or kind.what) for name, kind in kinds]
