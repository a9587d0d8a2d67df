"""
Fetching exactly N random bytes: from the raw ``tcp://`` stream, or from
``GET /v1/random`` over http(s).  A short read is an error, never a short
output.

Over HTTP the client always asks for ``format=binary`` (the caller encodes),
so that the length check counts the random bytes themselves.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from entropy_fetch.connect import Connector, HttpConnection
from entropy_fetch.errors import FetchError, ShortRead, reason
from entropy_fetch.target import Target
from entropy_fetch.version import USER_AGENT

__all__ = ["READ_SIZE", "REQUEST_MAX", "fetch_http", "fetch_tcp", "http_error"]

#: The most bytes asked for in one HTTP request; larger N is split.
REQUEST_MAX = 16 * 1024 * 1024
#: Read size for sockets and HTTP bodies.
READ_SIZE = 64 * 1024
#: How much of an error body is read to find its detail line.
ERROR_BODY_MAX = 4096


def fetch_tcp(connector: Connector, n: int, target: Target) -> Iterator[bytes]:
    """Read exactly ``n`` bytes from the raw stream, then hang up."""
    sock = connector()
    try:
        remaining = n
        while remaining:
            try:
                data = sock.recv(min(remaining, READ_SIZE))
            except OSError as e:
                raise FetchError(
                    f"reading from {target.authority} failed after {n - remaining} of {n} bytes: "
                    f"{reason(e)}") from None
            if not data:
                raise ShortRead(
                    f"{target.authority} closed the stream after {n - remaining} of {n} bytes "
                    "(the appliance closes it when it fails closed)")
            remaining -= len(data)
            yield data
    finally:
        sock.close()


def http_error(resp: http.client.HTTPResponse, where: str) -> FetchError:
    """A FetchError for a non-200 answer: status, the problem's detail, and Retry-After."""
    body = resp.read(ERROR_BODY_MAX)
    detail = ""
    ctype = resp.getheader("Content-Type", "")
    if "json" in ctype:
        try:
            problem: Any = json.loads(body)
            detail = str(problem.get("detail") or problem.get("title") or "")
        except (ValueError, AttributeError):
            detail = ""
    elif body and "text/" in ctype:
        detail = body.decode("utf-8", "replace").strip().splitlines()[0][:200]
    retry = resp.getheader("Retry-After")
    msg = f"{where} answered {resp.status} {resp.reason}"
    if detail:
        msg += f": {detail}"
    if retry:
        msg += f" (retry after {retry} s)"
    return FetchError(msg)


def _base_path(path: str) -> str:
    # A URL path is a prefix (a reverse proxy's mount point), unless it already names the route.
    path = path.rstrip("/")
    if path.endswith("/v1/random"):
        return path
    return path + "/v1/random"


def fetch_http(connector: Connector, n: int, target: Target, timeout: float,
               request_max: int = REQUEST_MAX) -> Iterator[bytes]:
    """
    GET ``n`` bytes from ``/v1/random`` in requests of at most
    ``request_max`` bytes over one keep-alive connection, checking each
    response's length.
    """
    conn = HttpConnection(target, connector, timeout)
    path = _base_path(target.path)
    where = f"{target.scheme}://{target.authority}{path}"
    done = 0
    try:
        while done < n:
            k = min(request_max, n - done)
            query = urlencode({"bytes": k, "format": "binary"})
            try:
                conn.request("GET", f"{path}?{query}", headers={
                    "User-Agent": USER_AGENT, "Accept": "application/octet-stream"})
                resp = conn.getresponse()
            except FetchError:
                raise
            except (OSError, http.client.HTTPException) as e:
                raise FetchError(f"{where}: request failed after {done} of {n} bytes: "
                                 f"{reason(e)}") from None
            if resp.status != 200:
                raise http_error(resp, where)
            if resp.length is not None and resp.length != k:
                raise ShortRead(f"{where} announced {resp.length} bytes for a request of {k}")
            got = 0
            while got < k:
                try:
                    data = resp.read(min(READ_SIZE, k - got))
                except http.client.IncompleteRead:
                    data = b""
                except (OSError, http.client.HTTPException) as e:
                    raise FetchError(f"{where}: reading failed after {done + got} of {n} bytes: "
                                     f"{reason(e)}") from None
                if not data:
                    raise ShortRead(f"{where}: the response ended after {done + got} of {n} bytes")
                got += len(data)
                yield data
            if resp.length is None and resp.read(1):
                raise FetchError(f"{where} sent more than the {k} bytes asked for")
            done += k
    finally:
        conn.close()
