"""
A lean HTTP/1.1 path for the hottest requests: pollinate's ``POST /`` and
``GET /v1/random?bytes=N`` (binary, any N up to ``--max-bytes``).

pollinate calls ``POST /`` at every boot of every client, and small reads
of ``/v1/random`` are what scripts do in loops.  Through ``twisted.web``'s
normal request handling each of them pays for a ``Request`` object, header
objects, form parsing (``email``'s content-type parser) and Klein routing;
that costs several times the work of the answer itself.

:class:`FastHTTPChannel` is the ``HTTPChannel`` of :class:`EntropySite`.  At
a request boundary, with nothing queued, it looks at the bytes it received:
a complete request that is one of the above, in its plain form, is answered
with a prebuilt header block (:class:`FastRoutes`): inline up to 64 KiB, and
above that by :class:`StreamedBody`, a pull producer registered on the
transport, so that a slow reader holds back generation and the process
buffers about one chunk whatever N is.  Anything
else (another route or method, HTTP/1.0, ``Connection: close``, ``Expect``,
chunked or partial bodies, odd headers, a body that is not a bare hex
challenge) goes to ``HTTPChannel`` unchanged, starting at that request, so
the two paths never disagree about where a request begins.  HTTP/2 streams
never come here: Twisted swaps in its own H2 connection after ALPN, and
those streams take the normal path.

The answers are byte-for-byte the normal path's, headers included, and are
counted in the same metrics.  A streamed body also keeps the normal path's
other promises: it counts as in flight for a graceful stop, its writes go
through the per-peer bandwidth gate on the transport, and if the core fails
closed mid-body the connection is aborted, so the short body is never taken
as complete.  Bytes pipelined behind it wait, as ``HTTPChannel`` makes them
wait behind a request it is answering, and are read once the body is done.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.server import version as SERVER_VERSION

from entropy_appliance.pool import FailClosed, IClock, SeedPool
from entropy_appliance.web.errors import PROBLEM_JSON, ServiceUnavailable, problem_body
from entropy_appliance.web.pollen import MAX_CHALLENGE, TEXT_PLAIN, pollen_reply

__all__ = ["FastRoutes", "FastHTTPChannel", "fast_channel_protocol"]

OCTET_STREAM = b"application/octet-stream"
FORM = b"application/x-www-form-urlencoded"

#: Largest ``bytes=N`` answered inline; larger bodies are streamed by the route.
FAST_MAX_BYTES = 64 * 1024

_POST_ROOT = b"POST / HTTP/1.1"
_RANDOM_PREFIX = b"GET /v1/random?bytes="
_HTTP11 = b" HTTP/1.1"
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Characters that form decoding leaves as they are, so the value needs no unquoting.
_CHALLENGE_BODY = re.compile(rb"challenge=([0-9A-Za-z._~-]{1,%d})" % MAX_CHALLENGE)
_DIGITS = re.compile(rb"[0-9]{1,7}")

#: Route names as the metrics count them.
ROOT, RANDOM = "/", "/v1/random"


_CANONICAL: dict[bytes, bytes] = {}


def _canonical(name: bytes) -> bytes:
    """``name`` as ``twisted.web`` writes it (Http-Header-Case), computed once per name."""
    canonical = _CANONICAL.get(name)
    if canonical is None:
        canonical = next(iter(Headers({name: [b""]}).getAllRawHeaders()))[0]
        _CANONICAL[name] = canonical
    return canonical


class FastRoutes:
    """
    Builds complete HTTP/1.1 responses for the fast channel, from the same
    pool, header set and metrics as the Klein routes.

    Before answering, the channel asks its Site's ``admit_fast(channel)``
    (see :meth:`EntropySite.admit_fast`); False sends the request down the
    normal path, where per-request policy (limits, refusals) applies in
    full.  Setting :attr:`EntropySite.fast` to None turns the fast path off.
    """

    def __init__(self, pool: SeedPool, clock: IClock,
                 rng_header_items: Callable[[], list[tuple[bytes, bytes]]],
                 observe: Callable[[str, str, int], None], max_bytes: int) -> None:
        self._pool = pool
        self._clock = clock
        self._rng_header_items = rng_header_items
        self._observe = observe
        self.max_random = min(max_bytes, FAST_MAX_BYTES)
        self._date_second = -1
        self._date = b""

    def _date_header(self) -> bytes:
        # Formatting the date is a visible cost at this rate; it changes once a second.
        now = self._clock.seconds()
        second = int(now)
        if second != self._date_second:
            self._date = http.datetimeToString(now)
            self._date_second = second
        return self._date

    def _response(self, status: bytes, items: list[tuple[bytes, bytes]], body: bytes) -> bytes:
        parts = [b"HTTP/1.1 ", status, b"\r\nServer: ", SERVER_VERSION,
                 b"\r\nDate: ", self._date_header(), b"\r\n"]
        for name, value in items:
            parts += (_canonical(name), b": ", value, b"\r\n")
        parts += (b"\r\n", body)
        return b"".join(parts)

    def _failed(self, e: FailClosed, route: str, method: str,
                before: list[tuple[bytes, bytes]]) -> bytes:
        problem = ServiceUnavailable(e.reason, e.retry_after)
        body = problem_body(problem)
        items = before + [(b"Content-Type", PROBLEM_JSON), (b"Cache-Control", b"no-store")]
        items += list(problem.headers.items())
        items.append((b"Content-Length", b"%d" % len(body)))
        self._observe(route, method, problem.status)
        return self._response(b"503 Service Unavailable", _dedupe(items), body)

    def pollen(self, challenge: bytes) -> bytes:
        """The whole response to ``POST /`` with a valid ``challenge``."""
        try:
            body = pollen_reply(self._pool, challenge)
        except FailClosed as e:
            return self._failed(e, ROOT, "POST", [])
        items = [(b"Content-Type", TEXT_PLAIN), (b"Content-Length", b"%d" % len(body))]
        items += self._rng_header_items()
        self._observe(ROOT, "POST", 200)
        return self._response(b"200 OK", items, body)

    def random(self, n: int) -> bytes:
        """The whole response to ``GET /v1/random?bytes=n`` (binary, ``n <= max_random``)."""
        before = [(b"Content-Type", OCTET_STREAM), (b"Content-Length", b"%d" % n)]
        try:
            body = self._pool.random_bytes(n, surface="http")
        except FailClosed as e:
            return self._failed(e, RANDOM, "GET", before)
        items = before + self._rng_header_items()
        self._observe(RANDOM, "GET", 200)
        return self._response(b"200 OK", items, body)

    @property
    def healthy(self) -> bool:
        """Whether the pool serves now (if not, the normal path writes the 503)."""
        return self._pool.healthy


def _dedupe(items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Later values replace earlier ones in place, as ``Request.setHeader`` does."""
    out: dict[bytes, tuple[bytes, bytes]] = {}
    for name, value in items:
        key = name.lower()
        out[key] = (out[key][0] if key in out else name, value)
    return list(out.values())


class FastHTTPChannel(http.HTTPChannel):
    """
    ``HTTPChannel`` that answers complete, plain fast-path requests inline
    and hands everything else to its parent class at a request boundary.
    """

    def dataReceived(self, data: bytes) -> None:
        """Answer what the fast path can, then let ``HTTPChannel`` parse the rest."""
        fast: FastRoutes | None = getattr(getattr(self, "site", None), "fast", None)
        if fast is not None and data and self._at_boundary():
            self.resetTimeout()
            data = self._serve(fast, data)
            if not data:
                return
        super().dataReceived(data)

    def _at_boundary(self) -> bool:
        # Only between requests, with nothing buffered, queued or half-parsed,
        # and while the transport takes our writes.
        return bool(
            not self.requests
            and self.line_mode
            and not self._buffer
            and not self._busyReceiving
            and not self.paused
            and self.persistent
            and not self._dataBuffer
            and not self._waitingForTransport
            and self._receivedHeaderSize == 0
            and self.transport is not None
            and getattr(self, "_HTTPChannel__first_line", 1) == 1
        )

    def _serve(self, fast: FastRoutes, data: bytes) -> bytes:
        """Answer the fast requests at the front of ``data``; return what is left."""
        pos = 0
        out: list[bytes] = []
        end = len(data)
        try:
            while pos < end:
                reply, used = self._one(fast, data, pos)
                if reply is None:
                    break
                out.append(reply)
                pos = used
        finally:
            if out and self.transport is not None:
                self.transport.writeSequence(out)
        return data[pos:] if pos else data

    def _one(self, fast: FastRoutes, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """Parse one request at ``pos``; return (response, end of request) or (None, pos)."""
        head_end = data.find(b"\r\n\r\n", pos, pos + self.totalHeadersSize)
        if head_end < 0:
            return None, pos
        lines = data[pos:head_end].split(b"\r\n")
        first = lines[0]
        n = 0
        if first == _POST_ROOT:
            post = True
        elif first.startswith(_RANDOM_PREFIX) and first.endswith(_HTTP11):
            digits = first[len(_RANDOM_PREFIX):-len(_HTTP11)]
            if not _DIGITS.fullmatch(digits):
                return None, pos
            n = int(digits)
            if not 1 <= n <= fast.max_random:
                return None, pos
            post = False
        else:
            return None, pos
        headers = lines[1:]
        if len(headers) > self.maxHeaders:
            return None, pos
        length: int | None = None
        form = False
        for line in headers:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name) or b"\r" in line or b"\n" in line \
                    or b"\x00" in value:
                return None, pos
            key = name.lower()
            if key == b"content-length":
                value = value.strip(b" \t")
                if length is not None or not value.isdigit():
                    return None, pos
                length = int(value)
            elif key == b"content-type":
                if form or value.strip(b" \t").lower() != FORM:
                    return None, pos
                form = True
            elif key == b"connection":
                if value.strip(b" \t").lower() != b"keep-alive":
                    return None, pos
            elif key in (b"transfer-encoding", b"expect", b"upgrade"):
                return None, pos
        body_start = head_end + 4
        if post:
            if not form or not length or length > MAX_CHALLENGE + 16:
                return None, pos
            stop = body_start + length
            if stop > len(data):
                return None, pos
            match = _CHALLENGE_BODY.fullmatch(data, body_start, stop)
            if match is None:
                return None, pos
            if not self._admitted(fast):
                return None, pos
            return fast.pollen(match.group(1)), stop
        if length:
            return None, pos
        if not self._admitted(fast):
            return None, pos
        return fast.random(n), body_start

    def _admitted(self, fast: FastRoutes) -> bool:
        # While failing closed the normal path writes the 503, with its own counters.
        if not fast.healthy:
            return False
        admit = getattr(getattr(self, "site", None), "admit_fast", None)
        return admit is None or bool(admit(self))


def fast_channel_protocol(factory: Any) -> Any:
    """
    The ``protocol`` of :class:`EntropySite`: Twisted's ALPN-switching
    wrapper (HTTP/1.1 or HTTP/2) around a :class:`FastHTTPChannel`, as
    ``twisted.web.http`` builds it around a plain ``HTTPChannel``.
    """
    return http._GenericHTTPChannelProtocol(FastHTTPChannel())
