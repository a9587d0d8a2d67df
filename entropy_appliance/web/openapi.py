"""
The OpenAPI 3.1 document of the web surface, collected from the routes.

Each route method carries its own description, written beside it::

    @app.route("/v1/uuid", methods=["GET"])
    @openapi.operation("getUuids", "Version 4 UUIDs (RFC 9562).",
                       parameters=[params.UUID_COUNT], problems=[400, 503],
                       ok=openapi.ok("A JSON list of UUID strings.", ...))
    def uuids(self, request: Request) -> bytes: ...

:func:`build_document` walks the routes of the Klein apps it is given and
puts each described method under its path.  A parameter is a
:mod:`~entropy_appliance.web.params` object (or a function of the
:class:`OpenAPIContext`, for a limit of the running instance such as
``--max-bytes``), so the document states the limits the routes enforce.

Every operation also lists the problems that any request can meet before
it reaches its route: 414 (a request line or header line longer than the
HTTP/1.1 channel reads) and 429 (past ``--peer-rate``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from entropy_appliance.web.limits import LimitedHTTPChannel

__all__ = [
    "OpenAPIContext",
    "Operation",
    "operation",
    "operations",
    "build_document",
    "problem_responses",
    "ok",
    "RNG_HEADERS",
    "NO_STORE",
    "RETRY_AFTER",
    "SCHEMAS",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute of a route function that holds its operations, by method.
_ATTRIBUTE = "__openapi_operations__"


@dataclass(frozen=True)
class OpenAPIContext:
    """What an operation's description may need to know about the running instance."""

    version: str
    max_bytes: int


class _Param(Protocol):
    def spec(self) -> dict[str, Any]: ...


Parameter = _Param | Mapping[str, Any] | Callable[[OpenAPIContext], Mapping[str, Any]]

RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {"description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True},
}

NO_STORE: dict[str, Any] = {
    "Cache-Control": {"description": "Always no-store: random bytes are never cached.",
                      "schema": {"type": "string", "const": "no-store"}},
}

RNG_HEADERS: dict[str, Any] = {
    **NO_STORE,
    "X-RNG-Source": {"description": "The entropy sources of the DRBG's current seed, comma-separated.",
                     "schema": {"type": "string"}},
    "X-RNG-Source-Kind": {"description": "Their kinds (kernel, quantis, hwrng, ...), in the same order.",
                          "schema": {"type": "string"}},
    "X-RNG-DRBG": {"description": "The DRBG mechanism.", "schema": {"type": "string"}},
    "X-RNG-Reseed-Age-ms": {"description": "Milliseconds since the DRBG was last reseeded.",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "X-RNG-Reseed-Interval-ms": {"description": "Longest time between reseeds, in milliseconds.",
                                 "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}

#: Problems, by status: the default description and the headers each carries.
_PROBLEMS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("A parameter is missing, not an integer, out of range, or unknown.", {}),
    404: ("No such route.", {}),
    413: ("More asked for than this server makes in one answer.", {}),
    414: (f"The request line or a header line is longer than {LimitedHTTPChannel.MAX_LENGTH} "
          "bytes; the connection is closed after this answer.", {}),
    429: ("This client (an IPv4 address, or an IPv6 /64) is past --peer-rate requests per "
          "second; retry after Retry-After seconds.", RETRY_AFTER),
    503: ("The source failed (health tests or reads): the appliance fails closed; or the seed "
          "pool stayed starved for longer than --seed-wait.  Retry later.", RETRY_AFTER),
}

#: What any request may be answered before its route sees it.
_ANY_REQUEST = (414, 429)


def problem_responses(*statuses: int) -> dict[str, Any]:
    """RFC 9457 error responses for ``statuses`` (any of 400, 404, 413, 414, 429, 503)."""
    out: dict[str, Any] = {}
    for status in statuses:
        description, headers = _PROBLEMS[status]
        response: dict[str, Any] = {"description": description, "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        if headers:
            response["headers"] = headers
        out[str(status)] = response
    return out


def ok(description: str, content: Mapping[str, Any],
       headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A 200 response: ``content`` maps media types to schemas."""
    response: dict[str, Any] = {"description": description,
                                "content": {t: {"schema": s} for t, s in content.items()}}
    if headers:
        response["headers"] = dict(headers)
    return response


@dataclass(frozen=True)
class Operation:
    """
    One method of one route, as the document describes it.  ``problems``
    lists the problem statuses the route answers, each with its default
    description or, mapped to text, with the route's own; ``responses`` holds
    any other response, written out.
    """

    operation_id: str
    summary: str
    ok: Mapping[str, Any]
    description: str = ""
    parameters: Sequence[Parameter] = ()
    problems: Mapping[int, str | None] = field(default_factory=dict)
    responses: Mapping[str, Any] = field(default_factory=dict)
    request_body: Mapping[str, Any] | None = None

    def render(self, ctx: OpenAPIContext) -> dict[str, Any]:
        """The Operation Object for the running instance."""
        op: dict[str, Any] = {"summary": self.summary, "operationId": self.operation_id}
        if self.description:
            op["description"] = self.description
        if self.parameters:
            op["parameters"] = [_parameter(p, ctx) for p in self.parameters]
        if self.request_body is not None:
            op["requestBody"] = dict(self.request_body)
        responses: dict[str, Any] = {"200": dict(self.ok)}
        for status in sorted({*self.problems, *_ANY_REQUEST}):
            (key, response), = problem_responses(status).items()
            text = self.problems.get(status)
            responses[key] = {**response, "description": text} if text else response
        responses.update(self.responses)
        op["responses"] = dict(sorted(responses.items()))
        return op


def _parameter(p: Parameter, ctx: OpenAPIContext) -> dict[str, Any]:
    if isinstance(p, Mapping):
        return dict(p)
    spec = getattr(p, "spec", None)
    if spec is not None:
        return dict(spec())
    assert callable(p)
    return dict(p(ctx))


def operation(operation_id: str, summary: str, *, ok: Mapping[str, Any], method: str = "get",
              description: str = "", parameters: Sequence[Parameter] = (),
              problems: Mapping[int, str | None] | Iterable[int] = (),
              responses: Mapping[str, Any] | None = None,
              request_body: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Describe ``method`` of the route the decorated function answers; stack one per method."""
    statuses = problems if isinstance(problems, Mapping) else dict.fromkeys(problems)
    op = Operation(operation_id, summary, ok, description, tuple(parameters), statuses,
                   dict(responses or {}), request_body)

    def describe(f: F) -> F:
        f.__dict__.setdefault(_ATTRIBUTE, {})[method] = op
        return f

    return describe


def operations(app: Any) -> Iterator[tuple[Any, dict[str, Operation]]]:
    """Each werkzeug rule of the Klein ``app`` with the operations of its route, by method."""
    for rule in app.url_map.iter_rules():
        handler = inspect.unwrap(app.endpoints[rule.endpoint])
        yield rule, dict(getattr(handler, _ATTRIBUTE, {}))


_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def build_document(apps: Iterable[Any], ctx: OpenAPIContext,
                   schemas: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of the routes of the Klein ``apps`` (``schemas``: more components)."""
    paths: dict[str, Any] = {}
    for app in apps:
        for rule, ops in operations(app):
            for method, op in ops.items():
                paths.setdefault(_CONVERTER.sub(r"{\1}", rule.rule), {})[method] = op.render(ctx)
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
        "components": {"schemas": {**SCHEMAS, **(schemas or {})}},
    }


#: The component schemas the operations refer to.
SCHEMAS: dict[str, Any] = {
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
        "required": ["state", "source", "starved_seconds", "current", "expected"],
        "properties": {
            "current": {"type": "integer", "minimum": 0,
                        "description": "drand's member: the DRBG reseeds done."},
            "expected": {"type": "integer", "minimum": 0,
                         "description": "drand's member: the reseeds due by now; above current "
                                        "while a due reseed cannot be done."},
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
            "source": {"type": "object",
                       "description": "The source, or with several all of them together."},
            "sources": {"type": "array", "description": "Each source, in the order given.",
                        "items": {"type": "object",
                                  "required": ["name", "kind", "state", "min_entropy", "bytes_read",
                                               "health_failures", "share"],
                                  "properties": {
                                      "name": {"type": "string"}, "kind": {"type": "string"},
                                      "state": {"type": "string",
                                                "enum": ["starting", "startup", "ok", "failed"]},
                                      "min_entropy": {"type": "number"},
                                      "bytes_read": {"type": "integer", "minimum": 0},
                                      "health_failures": {"type": "object"},
                                      "share": {"type": "number", "minimum": 0, "maximum": 1,
                                                "description": "Share of the credited entropy "
                                                               "of the last seed."}}}},
            "min_sources": {"type": "integer", "minimum": 1},
            "pool": {"type": "object"},
            "drbg": {"type": "object"},
            "served": {"type": "object", "additionalProperties": {"type": "integer"}},
            "version": {"type": "string"},
            "uptime_seconds": {"type": "number", "minimum": 0},
            "listeners": {"type": "array", "items": {"type": "string"}},
        },
    },
}
