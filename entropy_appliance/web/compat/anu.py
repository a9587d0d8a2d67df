"""
ANU QRNG's API, both shapes, so that clients written for it (the
``quantumrandom`` package among them) only change their base URL.

- ``GET /API/jsonI.php?length=L&type=T&size=S``: the legacy shape of
  ``qrng.anu.edu.au``;
- ``GET /anu/?length=L&type=T&size=S`` with an ``x-api-key`` header: the
  keyed shape of ``api.quantumnumbers.anu.edu.au``.

``type`` is ``uint8`` (integers 0-255), ``uint16`` (0-65535) or ``hex16``
(``length`` blocks of ``size`` random bytes, each block as ``2 * size``
hex digits); 1 <= L <= 1024 and 1 <= S <= 1024 (S only matters for hex16,
and defaults to 1).  The answer is ``{"type", "length", "data", "success":
true}`` (hex16 adds ``size``, and its legacy ``type`` is ``string``, as
ANU's is).

Errors are ANU's shape, not problem+json: ``{"success": false, "message":
...}`` with 400 for a bad parameter and 503 (``Retry-After``) while the
appliance fails closed; a key that ``--api-keys`` does not list gets 403
``{"message": "Forbidden"}``, as ANU's gateway answers.  With
``--api-keys``, both shapes check the ``x-api-key`` header.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from entropy_appliance.core.pool import FailClosed
from entropy_appliance.web import openapi, problems
from entropy_appliance.web.compat.host import CompatHost, retry_after_header, write_json
from entropy_appliance.web.compat.keys import ApiKeys
from entropy_appliance.web.params import query_arg

__all__ = ["AnuWeb", "AnuError", "MAX_LENGTH", "TYPES", "SURFACE"]

#: The most values (and the largest hex16 block) in one answer, as ANU's.
MAX_LENGTH = 1024
TYPES = ("uint8", "uint16", "hex16")
SURFACE = "anu"

_INT = re.compile(r"[+-]?[0-9]{1,40}")


class AnuError(Exception):
    """An answer in ANU's error shape."""

    def __init__(self, status: int, message: str, retry_after: float | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.body = body if body is not None else {"success": False, "message": message}


def _int(request: Request, name: str, default: int | None) -> int:
    text = query_arg(request, name)
    if text is None:
        if default is None:
            raise AnuError(400, f"the {name} parameter is required: 1 to {MAX_LENGTH}")
        return default
    if not _INT.fullmatch(text.strip()):
        raise AnuError(400, f"{name} must be an integer between 1 and {MAX_LENGTH}")
    value = int(text)
    if not 1 <= value <= MAX_LENGTH:
        raise AnuError(400, f"{name} must be between 1 and {MAX_LENGTH}")
    return value


_ERROR_SCHEMA = {"type": "object", "required": ["success", "message"],
                 "properties": {"success": {"const": False}, "message": {"type": "string"}}}
_OK_SCHEMA = {
    "type": "object", "required": ["type", "length", "data", "success"],
    "properties": {
        "type": {"type": "string", "enum": ["uint8", "uint16", "hex16", "string"]},
        "length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH},
        "size": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH},
        "data": {"type": "array", "minItems": 1, "maxItems": MAX_LENGTH, "items": {
            "anyOf": [{"type": "integer", "minimum": 0, "maximum": 65535},
                      {"type": "string", "pattern": "^([0-9a-f]{2}){1,1024}$"}]}},
        "success": {"const": True},
    },
}
_PARAMETERS: list[dict[str, Any]] = [
    {"name": "length", "in": "query", "required": True,
     "description": f"How many values (or hex16 blocks), 1 to {MAX_LENGTH}.",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH}},
    {"name": "type", "in": "query", "required": True,
     "description": "uint8 (0-255), uint16 (0-65535) or hex16 (blocks of hex digits).",
     "schema": {"type": "string", "enum": list(TYPES)}},
    {"name": "size", "in": "query", "required": False,
     "description": f"hex16 only: random bytes per block, 1 to {MAX_LENGTH} (default 1).",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH, "default": 1}},
]


_TOO_MANY = ("this client has made too many requests (--peer-rate); retry after the number of "
             "seconds in Retry-After")

#: The responses besides 200, in ANU's shape.
_RESPONSES: dict[str, Any] = {
    "429": {"description": "This client (an IPv4 address, or an IPv6 /64) is past --peer-rate "
                           "requests per second; retry after Retry-After seconds.",
            "headers": openapi.RETRY_AFTER,
            "content": {"application/json": {"schema": _ERROR_SCHEMA}}},
        "400": {"description": "length, type or size missing, not an integer, or out of range.",
                "content": {"application/json": {"schema": _ERROR_SCHEMA}}},
        "503": {"description": "The appliance fails closed (source failed, or starved longer "
                               "than --seed-wait); retry after Retry-After seconds.",
                "headers": openapi.RETRY_AFTER,
                "content": {"application/json": {"schema": _ERROR_SCHEMA}}},
        "403": {"description": "With --api-keys: the x-api-key header is missing or not listed.",
                "content": {"application/json": {"schema": {
                    "type": "object", "required": ["message"],
                    "properties": {"message": {"const": "Forbidden"}}}}}},
}
_KEY_PARAMETER = {"name": "x-api-key", "in": "header", "required": False,
                  "description": "The API key; checked only when the appliance runs with --api-keys.",
                  "schema": {"type": "string"}}


class AnuWeb:
    """ANU QRNG's API over a :class:`CompatHost`; ``app`` is its Klein app."""

    app = Klein()

    @app.handle_errors(AnuError)
    def _anu_error(self, request: IRequest, failure: Failure) -> bytes:
        e = failure.value
        assert isinstance(e, AnuError)
        headers = {} if e.retry_after is None else {b"Retry-After": retry_after_header(e.retry_after)}
        assert isinstance(request, Request)
        return write_json(request, e.body, e.status, headers)

    problems.install(app)

    def __init__(self, host: CompatHost, keys: ApiKeys | None = None) -> None:
        self.host = host
        self.keys = keys or ApiKeys()

    def too_many(self, request: Request, wait: float) -> bytes:
        """The 429 of a client past ``--peer-rate``, in ANU's shape."""
        return write_json(request, {"success": False, "message": _TOO_MANY}, 429,
                          {b"Retry-After": retry_after_header(wait)})

    def _check_key(self, request: Request) -> None:
        if not self.keys.checked:
            return
        raw = request.getHeader(b"x-api-key")
        if raw is None or not self.keys.accepts(raw if isinstance(raw, str) else raw.decode("latin-1")):
            raise AnuError(403, "Forbidden", body={"message": "Forbidden"})

    def _answer(self, request: Request, legacy: bool) -> bytes:
        self._check_key(request)
        length = _int(request, "length", None)
        kind = query_arg(request, "type")
        if kind is None or kind not in TYPES:
            raise AnuError(400, f"type must be one of {', '.join(TYPES)}")
        size = _int(request, "size", 1)
        width = {"uint8": 1, "uint16": 2, "hex16": size}[kind]
        try:
            raw = self.host.pool.random_bytes(length * width, surface=SURFACE)
        except FailClosed as e:
            raise AnuError(503, f"the appliance fails closed: {e.reason}; try again later",
                           e.retry_after) from None
        doc: dict[str, Any] = {"type": kind, "length": length}
        if kind == "uint8":
            doc["data"] = list(raw)
        elif kind == "uint16":
            doc["data"] = list(struct.unpack(f">{length}H", raw))
        else:
            doc["type"] = "string" if legacy else kind
            doc["size"] = size
            doc["data"] = [raw[i:i + size].hex() for i in range(0, length * size, size)]
        doc["success"] = True
        self.host.rng_headers(request)
        return write_json(request, doc)

    @app.route("/API/jsonI.php", methods=["GET"])
    @openapi.operation(
        "getAnuLegacy", "ANU QRNG's legacy JSON API (qrng.anu.edu.au/API/jsonI.php).",
        description="Drop-in for clients of ANU's legacy API: change only the base URL. "
                    "Errors are ANU's shape ({success: false, message}), not problem+json.",
        parameters=[*_PARAMETERS, _KEY_PARAMETER],
        ok=openapi.ok("The random values.", {"application/json": _OK_SCHEMA}, openapi.RNG_HEADERS),
        responses=_RESPONSES)
    def legacy(self, request: Request) -> bytes:
        """The legacy shape."""
        return self._answer(request, legacy=True)

    @app.route("/anu/", methods=["GET"], strict_slashes=False)
    @openapi.operation(
        "getAnuKeyed", "ANU Quantum Numbers' keyed API (api.quantumnumbers.anu.edu.au).",
        description="Drop-in for clients of ANU's keyed API: change only the base URL. The "
                    "x-api-key header is accepted, and checked when the appliance runs with "
                    "--api-keys. Errors are ANU's shape, not problem+json.",
        parameters=[*_PARAMETERS, _KEY_PARAMETER],
        ok=openapi.ok("The random values.", {"application/json": _OK_SCHEMA}, openapi.RNG_HEADERS),
        responses=_RESPONSES)
    def keyed(self, request: Request) -> bytes:
        """The keyed shape."""
        return self._answer(request, legacy=False)
