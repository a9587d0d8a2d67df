"""
The OpenAPI 3.1 document of the web surface, assembled from a registry.

Each module that adds routes also registers their description::

    from entropy_appliance.web import openapi

    openapi.register_paths(
        lambda ctx: {"/v1/image": {"get": {...}}},
        schemas={"Image": {...}},
    )

A path builder is called with an :class:`OpenAPIContext` (limits of the
running instance, e.g. ``max_bytes``) each time the document is built, so
the document states the limits the server enforces.  The reusable pieces
(:func:`problem_responses`, :func:`int_param`, :data:`RNG_HEADERS`) keep
error responses and headers described the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from entropy_appliance.web.formats import FORMATS
from entropy_appliance.web.pollen import MAX_CHALLENGE

__all__ = [
    "OpenAPIContext",
    "register_paths",
    "build_document",
    "problem_responses",
    "int_param",
    "RNG_HEADERS",
    "INTEGER_BOUND",
    "MAX_INTEGERS",
    "MAX_UUIDS",
]

#: Limits of /v1/integers and /v1/uuid, enforced by the routes.
INTEGER_BOUND = 10**18
MAX_INTEGERS = 10000
MAX_UUIDS = 1000

PathBuilder = Callable[["OpenAPIContext"], dict[str, Any]]


@dataclass(frozen=True)
class OpenAPIContext:
    """What a path builder may need to know about the running instance."""

    version: str
    max_bytes: int


_builders: list[PathBuilder] = []
_schemas: dict[str, Any] = {}


def register_paths(paths: PathBuilder | Mapping[str, Any],
                   schemas: Mapping[str, Any] | None = None) -> None:
    """
    Add paths (a mapping, or a builder taking an :class:`OpenAPIContext`)
    and component schemas to every document built from now on.
    """
    if callable(paths):
        _builders.append(paths)
    else:
        fixed = dict(paths)
        _builders.append(lambda ctx: fixed)
    if schemas:
        _schemas.update(schemas)


def _problem_ref() -> dict[str, Any]:
    return {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True},
}
_ALLOW = {
    "Allow": {"description": "The methods this route accepts.",
              "schema": {"type": "string"}, "required": True},
}

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("A parameter is missing, not an integer, out of range, or unknown.", {}),
    404: ("No such route.", {}),
    405: ("The route does not accept this method.", _ALLOW),
    413: ("More bytes asked for than the server's --max-bytes.", {}),
    503: ("The source failed (health tests or reads): the appliance fails closed; or the seed "
          "pool stayed starved for longer than --seed-wait.  Retry later.", _RETRY_AFTER),
}


def problem_responses(*statuses: int) -> dict[str, Any]:
    """RFC 9457 error responses for ``statuses`` (any of 400, 404, 405, 413, 503)."""
    out: dict[str, Any] = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        response: dict[str, Any] = {"description": description, "content": _problem_ref()}
        if headers:
            response["headers"] = headers
        out[str(status)] = response
    return out


RNG_HEADERS: dict[str, Any] = {
    "Cache-Control": {"description": "Always no-store: random bytes are never cached.",
                      "schema": {"type": "string", "const": "no-store"}},
    "X-RNG-Source": {"description": "Name of the entropy source that seeds the DRBG.",
                     "schema": {"type": "string"}},
    "X-RNG-Source-Kind": {"description": "Kind of the entropy source (kernel, quantis, hwrng, ...).",
                          "schema": {"type": "string"}},
    "X-RNG-DRBG": {"description": "The DRBG mechanism.", "schema": {"type": "string"}},
    "X-RNG-Reseed-Age-ms": {"description": "Milliseconds since the DRBG was last reseeded.",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "X-RNG-Reseed-Interval-ms": {"description": "Longest time between reseeds, in milliseconds.",
                                 "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}


def _with_description(responses: dict[str, Any], status: str, text: str) -> dict[str, Any]:
    """``responses`` with the description of ``status`` replaced by ``text``."""
    responses[status] = {**responses[status], "description": text}
    return responses


def int_param(name: str, description: str, lo: int, hi: int, default: int | None = None,
              required: bool = False) -> dict[str, Any]:
    """A query parameter holding an integer in [lo, hi]."""
    schema: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi}
    if default is not None:
        schema["default"] = default
    return {"name": name, "in": "query", "required": required,
            "description": description, "schema": schema}


def _core_paths(ctx: OpenAPIContext) -> dict[str, Any]:
    random_headers = RNG_HEADERS
    fmt_names = sorted(FORMATS)
    return {
        "/v1/random": {"get": {
            "summary": "Random bytes from the CTR_DRBG.",
            "description": (
                "N random bytes. Bodies above 64 KiB are streamed; if the core fails "
                "closed mid-stream the connection is cut, so the body falls short of "
                "Content-Length."),
            "operationId": "getRandom",
            "parameters": [
                int_param("bytes", (
                    f"How many random bytes, 1 to this server's --max-bytes ({ctx.max_bytes}). "
                    "Below 1 or not an integer is 400; above --max-bytes is 413."),
                    1, ctx.max_bytes, required=True),
                {"name": "format", "in": "query", "required": False,
                 "description": "binary (default), hex, base64, or json.",
                 "schema": {"type": "string", "enum": fmt_names, "default": "binary"}},
            ],
            "responses": {
                "200": {
                    "description": "The random bytes in the asked format.",
                    "headers": random_headers,
                    "content": {
                        "application/octet-stream": {"schema": {
                            "type": "string", "contentMediaType": "application/octet-stream"}},
                        "text/plain": {"schema": {"type": "string", "pattern": "^[0-9a-fA-F+/=]*$"}},
                        "application/json": {"schema": {"$ref": "#/components/schemas/RandomJson"}},
                    },
                },
                **problem_responses(400, 413, 503),
            },
        }},
        "/v1/integers": {"get": {
            "summary": "Uniform random integers in [min, max], without modulo bias.",
            "operationId": "getIntegers",
            "parameters": [
                int_param("count", "How many integers.", 1, MAX_INTEGERS, default=1),
                int_param("min", "Smallest value (inclusive); min > max is a 400.",
                          -INTEGER_BOUND, INTEGER_BOUND, required=True),
                int_param("max", "Largest value (inclusive); max >= min.",
                          -INTEGER_BOUND, INTEGER_BOUND, required=True),
            ],
            "responses": {
                "200": {"description": "A JSON list of integers.", "headers": random_headers,
                        "content": {"application/json": {"schema": {
                            "type": "array", "minItems": 1, "maxItems": MAX_INTEGERS,
                            "items": {"type": "integer", "minimum": -INTEGER_BOUND,
                                      "maximum": INTEGER_BOUND}}}}},
                **_with_description(problem_responses(400, 503), "400", (
                    "count, min or max missing (min and max are required), not an integer or "
                    "out of range, or min greater than max (a constraint between two "
                    "parameters, which the parameter schemas cannot state).")),
            },
        }},
        "/v1/uuid": {"get": {
            "summary": "Version 4 UUIDs (RFC 9562).",
            "operationId": "getUuids",
            "parameters": [int_param("count", "How many UUIDs.", 1, MAX_UUIDS, default=1)],
            "responses": {
                "200": {"description": "A JSON list of UUID strings.", "headers": random_headers,
                        "content": {"application/json": {"schema": {
                            "type": "array", "minItems": 1, "maxItems": MAX_UUIDS,
                            "items": {"type": "string", "format": "uuid", "pattern":
                                      "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"}}}}},
                **problem_responses(400, 503),
            },
        }},
        "/v1/status": {"get": {
            "summary": "A snapshot of the source, health tests, pool and DRBG.",
            "operationId": "getStatus",
            "responses": {"200": {"description": "Status snapshot.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}},
        }},
        "/health": {"get": {
            "summary": "For load balancers: 200 while random bytes are served, or while starved "
                       "for no longer than --seed-wait; 503 when failed or starved longer.",
            "operationId": "getHealth",
            "responses": {
                "200": {"description": "Serving (ok), or briefly starved.", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
                "503": {"description": "Failed, or starved for longer than --seed-wait.",
                        "headers": _RETRY_AFTER, "content": {
                            "application/problem+json": {"schema": {"allOf": [
                                {"$ref": "#/components/schemas/Problem"},
                                {"$ref": "#/components/schemas/HealthState"}]}}}},
            },
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics.",
            "operationId": "getMetrics",
            "responses": {"200": {"description": "Prometheus text exposition.", "content": {
                "text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "summary": "This document.",
            "operationId": "getOpenAPI",
            "responses": {"200": {"description": "OpenAPI 3.1 document.", "content": {
                "application/json": {"schema": {"type": "object"}}}}},
        }},
        "/": {
            "get": {
                "summary": "Landing page; with ?challenge= the pollen protocol.",
                "operationId": "getRoot",
                "parameters": [{"name": "challenge", "in": "query", "required": False,
                                "description": "A pollinate challenge (hex).",
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": MAX_CHALLENGE}}],
                "responses": {
                    "200": {"description": "The landing page, or the two-line pollen reply.",
                            "content": {"text/html": {"schema": {"type": "string"}},
                                        "text/plain": {"schema": {"type": "string"}}}},
                    "400": {"description": "Empty or too long challenge.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **problem_responses(503),
                },
            },
            "post": {
                "summary": "The pollen protocol, as pollinate speaks it.",
                "operationId": "postPollen",
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": {
                        "type": "object", "required": ["challenge"],
                        "properties": {"challenge": {"type": "string", "minLength": 1,
                                                     "maxLength": MAX_CHALLENGE}}}}}},
                "responses": {
                    "200": {"description": (
                        "Two lines: hex SHA-512 of the challenge; hex SHA-512 of the "
                        "challenge followed by 64 random bytes."),
                        "headers": random_headers,
                        "content": {"text/plain": {"schema": {
                            "type": "string", "pattern": "^[0-9a-f]{128}\\n[0-9a-f]{128}\\n$"}}}},
                    "400": {"description": "Missing or empty challenge: use the pollinate client.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **problem_responses(503),
                },
            },
        },
    }


_CORE_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
        },
    },
    "RandomJson": {
        "type": "object",
        "required": ["bytes", "format", "data"],
        "properties": {
            "bytes": {"type": "integer", "minimum": 1},
            "format": {"type": "string", "const": "base64"},
            "data": {"type": "string", "contentEncoding": "base64"},
        },
    },
    "Health": {
        "allOf": [{"$ref": "#/components/schemas/HealthState"}, {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok", "starved"]}},
        }],
    },
    "HealthState": {
        "type": "object",
        "required": ["state", "source", "starved_seconds"],
        "properties": {
            "state": {"type": "string", "enum": ["ok", "starved", "failed"]},
            "reason": {"type": ["string", "null"]},
            "source": {"type": "string"},
            "reseed_age_seconds": {"type": ["number", "null"]},
            "starved_seconds": {"type": "number", "minimum": 0},
        },
    },
    "Status": {
        "type": "object",
        "required": ["state", "healthy", "starved", "source", "pool", "drbg", "version",
                     "uptime_seconds", "listeners"],
        "properties": {
            "state": {"type": "string", "enum": ["ok", "starved", "failed"],
                      "description": "ok: serving; starved: healthy source, seed short for a due "
                                     "reseed (requests wait); failed: the source failed (closed)."},
            "healthy": {"type": "boolean"},
            "starved": {"type": "object", "required": ["seconds", "total_seconds", "waits"],
                        "properties": {
                            "seconds": {"type": "number", "minimum": 0},
                            "total_seconds": {"type": "number", "minimum": 0},
                            "waits": {"type": "integer", "minimum": 0},
                            "refusals": {"type": "integer", "minimum": 0}}},
            "reason": {"type": ["string", "null"]},
            "source": {"type": "object"},
            "pool": {"type": "object"},
            "drbg": {"type": "object"},
            "served": {"type": "object", "additionalProperties": {"type": "integer"}},
            "version": {"type": "string"},
            "uptime_seconds": {"type": "number", "minimum": 0},
            "listeners": {"type": "array", "items": {"type": "string"}},
        },
    },
}

register_paths(_core_paths, _CORE_SCHEMAS)


def build_document(ctx: OpenAPIContext) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document, from every registered builder."""
    paths: dict[str, Any] = {}
    for builder in _builders:
        for path, item in builder(ctx).items():
            paths.setdefault(path, {}).update(item)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "entropy-appliance",
            "version": ctx.version,
            "description": (
                "Health-tested CTR_DRBG randomness over HTTP(S): bytes, integers, "
                "UUIDs, the pollen protocol, status and metrics. Errors are RFC 9457 "
                "application/problem+json."),
        },
        "paths": paths,
        "components": {"schemas": dict(_schemas)},
    }
