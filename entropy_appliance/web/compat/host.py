"""
What the compatible APIs draw on: the main app's pool, clock and headers
(:class:`CompatHost`), and their answers in their own shapes.

Both APIs draw every random byte from the one seed pool, counted in
``/metrics`` under their own surface (``anu``, ``randomorg``), and fail
closed like the rest of the site: a pool that cannot serve makes the whole
answer an error in the API's shape, with HTTP 503 and ``Retry-After``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

from twisted.web.server import Request

from entropy_appliance.core.pool import SeedPool

__all__ = ["CompatHost", "write_json", "retry_after_header"]


class CompatHost(Protocol):
    """The main app, as the compatible APIs see it."""

    pool: SeedPool
    clock: Any

    def rng_headers(self, request: Request) -> None:
        """Set the headers every random response carries."""


def retry_after_header(seconds: float) -> bytes:
    """``Retry-After`` in whole seconds, at least 1."""
    return b"%d" % max(1, math.ceil(seconds))


def write_json(request: Request, value: Any, code: int = 200,
               headers: dict[bytes, bytes] | None = None) -> bytes:
    """Set ``code``, JSON headers and ``headers`` on ``request``; return the body."""
    body = json.dumps(value, separators=(",", ":")).encode()
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    for name, value_ in (headers or {}).items():
        request.setHeader(name, value_)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body
