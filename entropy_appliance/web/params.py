"""
The query parameters of every route: their limits, their parsers, and the
OpenAPI description of each, so that what a route enforces and what the
document states come from one object.

One rule for every parameter: a parameter that is absent takes its default
(or is a 400 if it has none); a parameter that is present is parsed, even
when its value is empty, so ``?count=`` is a 400 like ``?count=abc``.  Only
the first value of a repeated parameter counts.  A value out of its range
is a 400; a size above what the server makes (``limit``) is a 413.

The image and sound maxima are those of :mod:`entropy_appliance.web.rendering`,
which checks them again where it encodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.web.iweb import IRequest

from entropy_appliance.web import rendering
from entropy_appliance.web.formats import DEFAULT_FORMAT, FORMATS
from entropy_appliance.web.problems import BadRequest, PayloadTooLarge

__all__ = [
    "INTEGER_BOUND",
    "MAX_INTEGERS",
    "MAX_UUIDS",
    "IntParam",
    "ChoiceParam",
    "NumberParam",
    "TextParam",
    "query_arg",
    "parse_int",
    "parse_choice",
]

#: Largest magnitude of /v1/integers' ``min`` and ``max``.
INTEGER_BOUND = 10**18
#: Most integers in one /v1/integers answer.
MAX_INTEGERS = 10000
#: Most UUIDs in one /v1/uuid answer.
MAX_UUIDS = 1000

_INT = re.compile(r"[+-]?[0-9]{1,40}")
# Any decimal literal, of any precision: a client that prints a float with
# all its 17 significant digits (or in exponent form) asks for a valid length.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def query_arg(request: IRequest, name: str) -> str | None:
    """The first value of query parameter ``name`` ("" if empty), or None when absent."""
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def parse_int(request: IRequest, name: str, lo: int, hi: int | None,
              default: int | None = None) -> int:
    """
    The integer query parameter ``name`` in [lo, hi] (``hi`` None: no upper
    bound), or ``default`` when absent; raises :class:`BadRequest`.
    """
    text = query_arg(request, name)
    if text is None:
        if default is None:
            raise BadRequest(f"the query parameter {name!r} is required")
        return default
    if not _INT.fullmatch(text.strip()):
        raise BadRequest(f"{name}={text[:64]!r} is not an integer")
    value = int(text)
    if value < lo or (hi is not None and value > hi):
        upper = "" if hi is None else f" and at most {hi}"
        raise BadRequest(f"{name}={value} is out of range: it must be at least {lo}{upper}")
    return value


def parse_choice(request: IRequest, name: str, choices: Iterable[str], default: str) -> str:
    """The query parameter ``name``, one of ``choices``, or ``default`` when absent; raises BadRequest."""
    text = query_arg(request, name)
    if text is None:
        return default
    options = sorted(choices)
    if text not in options:
        raise BadRequest(f"{name}={text[:64]!r} is unknown; use one of {', '.join(options)}")
    return text


def _parameter(name: str, description: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


@dataclass(frozen=True)
class IntParam:
    """An integer parameter: outside [lo, hi] or not in ``enum`` is 400, above ``limit`` 413."""

    name: str
    description: str
    lo: int
    hi: int | None = None
    default: int | None = None
    limit: int | None = None
    unit: str = ""
    enum: tuple[int, ...] = ()

    def parse(self, request: IRequest) -> int:
        """The value in ``request``, or the default; raises a 400 or 413 problem."""
        value = parse_int(request, self.name, self.lo, self.hi, self.default)
        if self.limit is not None and value > self.limit:
            raise PayloadTooLarge(f"{self.name}={value} is above the limit of {self.limit}{self.unit}")
        if self.enum and value not in self.enum:
            raise BadRequest(f"{self.name}={value} is not offered; use one of "
                             f"{', '.join(map(str, self.enum))}")
        return value

    def spec(self, **schema: Any) -> dict[str, Any]:
        """The OpenAPI parameter; ``schema`` overrides schema keywords (an instance's maximum)."""
        base: dict[str, Any] = {"type": "integer"}
        if self.enum:
            base["enum"] = list(self.enum)
        else:
            base["minimum"] = self.lo
            top = self.hi if self.hi is not None else self.limit
            if top is not None:
                base["maximum"] = top
        if self.default is not None:
            base["default"] = self.default
        return _parameter(self.name, self.description, {**base, **schema}, self.default is None)


@dataclass(frozen=True)
class ChoiceParam:
    """One of a fixed set of words; anything else is 400."""

    name: str
    description: str
    choices: tuple[str, ...]
    default: str

    def parse(self, request: IRequest) -> str:
        """The value in ``request``, or the default; raises a 400 problem."""
        return parse_choice(request, self.name, self.choices, self.default)

    def spec(self) -> dict[str, Any]:
        """The OpenAPI parameter."""
        return _parameter(self.name, self.description,
                          {"type": "string", "enum": list(self.choices), "default": self.default},
                          False)


@dataclass(frozen=True)
class NumberParam:
    """A decimal number above 0: not one, or not above 0, is 400; above ``limit`` 413."""

    name: str
    description: str
    default: float
    limit: float

    def parse(self, request: IRequest) -> float:
        """The value in ``request``, or the default; raises a 400 or 413 problem."""
        text = query_arg(request, self.name)
        if text is None:
            return self.default
        if not _NUMBER.fullmatch(text.strip()):
            raise BadRequest(f"{self.name}={text[:64]!r} is not a number")
        value = float(text)
        if not math.isfinite(value) or value <= 0:
            raise BadRequest(f"{self.name}={text[:64]} is out of range: it must be above 0")
        if value > self.limit:
            raise PayloadTooLarge(
                f"{self.name}={value:g} is above the limit of {self.limit:g}; ask for less")
        return value

    def spec(self) -> dict[str, Any]:
        """The OpenAPI parameter."""
        return _parameter(self.name, self.description,
                          {"type": "number", "exclusiveMinimum": 0, "maximum": self.limit,
                           "default": self.default}, False)


@dataclass(frozen=True)
class TextParam:
    """A free word, checked by the route (an unknown one is the route's own problem)."""

    name: str
    description: str

    def parse(self, request: IRequest) -> str | None:
        """The value in ``request``, or None when absent."""
        return query_arg(request, self.name)

    def spec(self) -> dict[str, Any]:
        """The OpenAPI parameter."""
        return _parameter(self.name, self.description, {"type": "string"}, False)


# -- /v1/random -------------------------------------------------------------------

#: The instance's ``--max-bytes`` is the maximum; above it is 413 (see the route).
BYTES = IntParam("bytes", "How many random bytes, 1 to this server's --max-bytes. "
                 "Below 1 or not an integer is 400; above --max-bytes is 413.", 1)
FORMAT = ChoiceParam("format", "binary (default), hex, base64, or json.",
                     tuple(sorted(FORMATS)), DEFAULT_FORMAT)

# -- /v1/integers and /v1/uuid ----------------------------------------------------

INTEGER_COUNT = IntParam("count", "How many integers.", 1, MAX_INTEGERS, default=1)
INTEGER_MIN = IntParam("min", "Smallest value (inclusive); min > max is a 400.",
                       -INTEGER_BOUND, INTEGER_BOUND)
INTEGER_MAX = IntParam("max", "Largest value (inclusive); max >= min.", -INTEGER_BOUND, INTEGER_BOUND)
UUID_COUNT = IntParam("count", "How many UUIDs.", 1, MAX_UUIDS, default=1)

# -- pictures and sound -----------------------------------------------------------

WIDTH, HEIGHT = (
    IntParam(side, f"Image {side} in pixels (1 to {rendering.MAX_SIZE}; above the limit is 413).",
             1, default=rendering.DEFAULT_SIZE, limit=rendering.MAX_SIZE, unit=" pixels")
    for side in ("width", "height"))
SOURCE = TextParam("source", "The name of one entropy source, as /v1/status lists it under "
                   "sources (a device path, or kernel); default: the first source. An unknown "
                   "name is 404.")
MODE = ChoiceParam("mode", "rgb (default), gray or bits.", rendering.MODES, "rgb")
SECONDS = NumberParam("seconds", f"Length in seconds, 0 < S <= {rendering.MAX_SECONDS:g} "
                      "(above the limit is 413).", rendering.DEFAULT_SECONDS, rendering.MAX_SECONDS)
RATE = IntParam("rate", "Sample rate in Hz.", 1, default=rendering.DEFAULT_RATE, enum=rendering.RATES)
COLOR = ChoiceParam("color", "white (default), pink or brown.", rendering.COLORS, "white")
