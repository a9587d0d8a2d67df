"""
Problem details (RFC 9457) for every error the web surface returns.

Every problem the appliance answers is a :class:`Problem` subclass here:
400, 404, 405 (with ``Allow``), 413, 414, 431, 429 and 503 (both with
``Retry-After``), and 500 for a bug.  A route raises one and the handler
installed by :func:`install` writes it as ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``, plus its headers.  Werkzeug's
routing errors (unknown path, wrong method) are mapped to the same shape, so
a client never sees HTML or a 500 for bad input.

Code that answers without Klein uses the same classes: :func:`write_problem`
on a plain ``twisted.web`` request (the per-peer rate limit, a request
refused before routing), and :func:`raw_response` on an HTTP/1.1 channel
that answers before it has a request to answer on (a request line or head
too long to read, a body too large to read, a request Twisted's parser
rejects).
"""

from __future__ import annotations

import json
import math
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as RoutingMethodNotAllowed
from werkzeug.exceptions import NotFound as RoutingNotFound
from werkzeug.routing import RequestRedirect

__all__ = [
    "PROBLEM_TYPE_BASE",
    "PROBLEM_JSON",
    "Problem",
    "BadRequest",
    "NotFound",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "URITooLong",
    "HeaderFieldsTooLarge",
    "TooManyRequests",
    "ServiceUnavailable",
    "problem_body",
    "write_problem",
    "raw_response",
    "install",
]

log = Logger()

PROBLEM_JSON = b"application/problem+json"

#: ``type`` URIs are relative references to the appliance's own docs.
PROBLEM_TYPE_BASE = "/openapi.json#/components/schemas/Problem/"


class Problem(Exception):
    """
    An HTTP error with an RFC 9457 body; each subclass fixes its status and
    title in its class line (``class NotFound(Problem, status=404,
    title="Not Found")``); the ``type`` slug is the title in kebab case.
    """

    status = 500
    title = "Internal Server Error"
    slug = "internal"

    def __init_subclass__(cls, status: int | None = None, title: str | None = None,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None and title is not None:
            cls.status, cls.title = status, title
            cls.slug = title.lower().replace(" ", "-")

    def __init__(self, detail: str, headers: dict[bytes, bytes] | None = None,
                 extensions: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        #: RFC 9457 extension members, added after the standard ones.
        self.extensions = dict(extensions or {})

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the problem."""
        return {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extensions,
        }


class BadRequest(Problem, status=400, title="Bad Request"):
    """400: a parameter is missing, malformed or out of range."""


class URITooLong(Problem, status=414, title="URI Too Long"):
    """414: a request line longer than the server reads; the connection closes."""


class HeaderFieldsTooLarge(Problem, status=431, title="Request Header Fields Too Large"):
    """
    431: a header line or the whole head longer than the server reads, or
    too many header lines; the connection closes.
    """


class NotFound(Problem, status=404, title="Not Found"):
    """404: no such route."""


class MethodNotAllowed(Problem, status=405, title="Method Not Allowed"):
    """405: the route exists but not for this method; carries ``Allow``."""

    def __init__(self, detail: str, allowed: list[str]) -> None:
        super().__init__(detail, {b"Allow": ", ".join(sorted(set(allowed))).encode()})
        self.allowed = sorted(set(allowed))


class PayloadTooLarge(Problem, status=413, title="Payload Too Large"):
    """413: more bytes asked for than ``--max-bytes`` allows, or a request body over ``--max-body``."""


class _RetryLater(Problem):
    """A problem that tells the client when to retry, in whole seconds (at least 1)."""

    def __init__(self, detail: str, retry_after: float = 1.0,
                 extensions: dict[str, Any] | None = None) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(detail, {b"Retry-After": str(seconds).encode()}, extensions)
        self.retry_after = seconds


class TooManyRequests(_RetryLater, status=429, title="Too Many Requests"):
    """429: the client is past ``--peer-rate``; carries ``Retry-After``."""


class ServiceUnavailable(_RetryLater, status=503, title="Service Unavailable"):
    """503: the core fails closed; carries ``Retry-After`` in whole seconds."""


def problem_body(problem: Problem) -> bytes:
    """Serialise ``problem`` as the bytes of an RFC 9457 JSON body."""
    return json.dumps(problem.as_dict()).encode()


def write_problem(request: Request, problem: Problem) -> bytes:
    """
    Set the status and headers of ``request`` for ``problem`` and return the
    body; the caller writes it (Klein does so for a returned value).
    """
    # The title is the reason phrase; twisted.web knows none for 429.
    request.setResponseCode(problem.status, problem.title.encode())
    request.setHeader(b"Content-Type", PROBLEM_JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    for name, value in problem.headers.items():
        request.setHeader(name, value)
    body = problem_body(problem)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def raw_response(problem: Problem) -> bytes:
    """
    A whole HTTP/1.1 response for ``problem`` that closes the connection,
    for a channel that answers before it has a request to answer on.
    """
    body = problem_body(problem)
    head = [b"HTTP/1.1 %d %s" % (problem.status, problem.title.encode()),
            b"Date: " + datetimeToString(), b"Content-Type: " + PROBLEM_JSON, b"Cache-Control: no-store",
            *(name + b": " + value for name, value in problem.headers.items()),
            b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _allowed_methods(exc: RoutingMethodNotAllowed) -> list[str]:
    methods = list(exc.valid_methods or [])
    # Werkzeug adds HEAD for every GET rule and OPTIONS automatically.
    return [m for m in methods if m != "OPTIONS"]


def install(app: Klein) -> None:
    """Register the problem+json error handlers on a Klein ``app``."""

    @app.handle_errors(Problem)
    def _problem(self: Any, request: Any, failure: Failure) -> bytes:
        assert isinstance(failure.value, Problem)
        return write_problem(request, failure.value)

    @app.handle_errors(RoutingNotFound)
    def _not_found(self: Any, request: Any, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return write_problem(request, NotFound(f"no route for {path}; see /openapi.json"))

    @app.handle_errors(RoutingMethodNotAllowed)
    def _bad_method(self: Any, request: Any, failure: Failure) -> bytes:
        exc = failure.value
        assert isinstance(exc, RoutingMethodNotAllowed)
        allowed = _allowed_methods(exc)
        method = request.method.decode("ascii", "replace")
        return write_problem(request, MethodNotAllowed(
            f"{method} is not allowed here; use {', '.join(sorted(set(allowed)))}", allowed))

    @app.handle_errors(RequestRedirect)
    def _redirect(self: Any, request: Any, failure: Failure) -> bytes:
        exc = failure.value
        assert isinstance(exc, RequestRedirect)
        request.setResponseCode(exc.code)
        request.setHeader(b"Location", exc.new_url.encode())
        return b""

    @app.handle_errors(HTTPException)
    def _routing(self: Any, request: Any, failure: Failure) -> bytes:
        exc = failure.value
        assert isinstance(exc, HTTPException)
        problem = Problem(exc.description or exc.name)
        problem.status = exc.code or 400
        problem.title = exc.name
        return write_problem(request, problem)

    @app.handle_errors(Exception)
    def _unexpected(self: Any, request: Any, failure: Failure) -> bytes:
        # A bug must not leak a traceback to the client; it is logged instead.
        log.failure("unhandled error in {path}", failure, path=request.path)
        return write_problem(request, Problem("the server failed to answer this request"))
