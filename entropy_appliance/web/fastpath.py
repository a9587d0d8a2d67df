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
with a prebuilt header block (:class:`FastRoutes`): inline up to 64 KiB,
and above that by :class:`StreamedBody`, a pull producer registered on the
transport, so that a slow reader holds back generation and the process
buffers about one chunk whatever N is.  Anything else (another route or
method, a format, HTTP/1.0, ``Connection: close``, ``Expect``, chunked or
partial bodies, odd headers, a body that is not a bare hex challenge, a size
out of range) goes to ``HTTPChannel`` unchanged, starting at that request,
so the two paths never disagree about where a request begins.  HTTP/2 streams
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
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.server import version as SERVER_VERSION
from zope.interface import implementer

from entropy_appliance.core.pool import FailClosed, IClock, SeedPool, Starved
from entropy_appliance.net.waiting import when_ready
from entropy_appliance.web.limits import LimitedHTTPChannel
from entropy_appliance.web.pollen import MAX_CHALLENGE, POLLEN_BYTES, TEXT_PLAIN, pollen_reply
from entropy_appliance.web.problems import PROBLEM_JSON, ServiceUnavailable, problem_body

__all__ = ["FastRoutes", "FastHTTPChannel", "StreamedBody", "fast_channel_protocol",
           "FAST_MAX_BYTES", "STREAM_CHUNK"]

OCTET_STREAM = b"application/octet-stream"
FORM = b"application/x-www-form-urlencoded"

#: Largest ``bytes=N`` answered inline; larger bodies are streamed.
FAST_MAX_BYTES = 64 * 1024

#: Raw bytes generated and written per ``resumeProducing`` of a streamed
#: body.  Each chunk costs a reactor turn, a send and a producer round trip:
#: on loopback 128 KiB to 1 MiB measured alike and well ahead of 64 KiB
#: (bench/bench_http.py); 256 KiB keeps what a slow reader pins small.
STREAM_CHUNK = 256 * 1024

#: Room for a response head in the same send as the first chunk.
_HEAD_ROOM = 16 * 1024

_POST_ROOT = b"POST / HTTP/1.1"
_RANDOM_PREFIX = b"GET /v1/random?bytes="
_HTTP11 = b" HTTP/1.1"
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Characters that form decoding leaves as they are, so the value needs no unquoting.
_CHALLENGE_BODY = re.compile(rb"challenge=([0-9A-Za-z._~-]{1,%d})" % MAX_CHALLENGE)
# Enough digits for any --max-bytes the tap accepts; larger sizes get the normal 413.
_DIGITS = re.compile(rb"[0-9]{1,12}")

#: Route names as the metrics count them.
ROOT, RANDOM = "/", "/v1/random"

_log = Logger()


class InFlightCount(Protocol):
    """What a streamed body needs of :class:`entropy_appliance.net.limits.InFlight`."""

    def enter(self) -> None: ...

    def leave(self) -> None: ...


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
                 observe: Callable[[str, str, int], None], max_bytes: int,
                 chunk_size: int = STREAM_CHUNK) -> None:
        self._pool = pool
        self._clock = clock
        self._rng_header_items = rng_header_items
        self._observe = observe
        self.max_random = min(max_bytes, FAST_MAX_BYTES)
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
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

    def random_stream(self, n: int) -> tuple[bytes, bytes] | bytes:
        """
        For ``GET /v1/random?bytes=n`` above :attr:`max_random`: the response
        head and the first chunk of the body, or, failing closed before the
        first byte, the whole 503 response.  The rest of the body comes from
        :meth:`chunk`, and :meth:`streamed` counts the request at its end.
        """
        before = [(b"Content-Type", OCTET_STREAM), (b"Content-Length", b"%d" % n)]
        try:
            first = self._pool.random_bytes(min(n, self.chunk_size), surface="http")
        except FailClosed as e:
            return self._failed(e, RANDOM, "GET", before)
        return self._response(b"200 OK", before + self._rng_header_items(), b""), first

    def chunk(self, n: int) -> bytes:
        """``n`` more bytes of a streamed body; raises :class:`Starved` or :class:`FailClosed`."""
        return self._pool.random_bytes(n, surface="http")

    def wait(self, n: int) -> Deferred[None]:
        """Fires when ``n`` more bytes can be served (see :func:`when_ready`)."""
        return when_ready(self._pool, n)

    def on_failure(self, callback: Callable[[FailClosed], object]) -> Callable[[], None]:
        """Call ``callback`` if the source fails; returns the remover."""
        return self._pool.on_failure(callback)

    def streamed(self) -> None:
        """Count a streamed response once it has ended, as the normal path counts it."""
        # The normal path counts its status (200: the head was sent) when the
        # request finishes or its connection is lost, whichever comes first.
        self._observe(RANDOM, "GET", 200)

    def ready(self, n: int) -> bool:
        """
        Whether ``n`` bytes are served now.  If not, the normal path takes
        the request: it waits while the pool is starved, and writes the 503.
        """
        return self._pool.ready(n)


def _dedupe(items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Later values replace earlier ones in place, as ``Request.setHeader`` does."""
    out: dict[bytes, tuple[bytes, bytes]] = {}
    for name, value in items:
        key = name.lower()
        out[key] = (out[key][0] if key in out else name, value)
    return list(out.values())


@implementer(IPullProducer)
class StreamedBody:
    """
    One streamed ``GET /v1/random`` response on a :class:`FastHTTPChannel`:
    a pull producer on the connection's transport, writing the head and a
    chunk first and one chunk per ``resumeProducing`` after that.

    It ends in one of three ways, each exactly once: complete (unregister,
    then hand the connection back to the channel), aborted because the core
    failed closed (unregister, then abort the connection), or stopped because
    the connection went away.  Each counts the request in the metrics and
    leaves the in-flight count.
    """

    def __init__(self, channel: FastHTTPChannel, routes: FastRoutes, head: bytes, first: bytes,
                 n: int, inflight: InFlightCount | None) -> None:
        self._channel = channel
        self._routes = routes
        self._head = head
        self._pending = first
        self._remaining = n - len(first)
        self._chunk = routes.chunk_size
        self._inflight = inflight
        self._busy = False
        self._waiting: Deferred[None] | None = None
        self.started = False
        self.finished = False
        self._unwatch = routes.on_failure(lambda e: self._abort(e.reason))
        if inflight is not None:
            inflight.enter()

    def begin(self) -> None:
        """Write the head and the first chunk, unless the transport has asked for them already."""
        if not self.started:
            self.resumeProducing()

    def resumeProducing(self) -> None:
        """The transport has room: write the next chunk (the last one completes the body)."""
        if self.finished or self._busy or self._waiting is not None:
            return
        self._busy = True
        try:
            self._step()
        finally:
            self._busy = False

    def pauseProducing(self) -> None:
        """Pull producers are not paused; part of the interface only."""

    def stopProducing(self) -> None:
        """The connection is going away: produce nothing more (idempotent)."""
        self._end()

    def _step(self) -> None:
        transport: Any = self._channel.transport
        if transport is None:
            self._end()
            return
        data = self._pending
        self._pending = b""
        if not data:
            size = min(self._remaining, self._chunk)
            try:
                data = self._routes.chunk(size)
            except Starved:
                # Paused mid-body: the pool's wait writes the next chunk.
                self._waiting = self._routes.wait(size)
                self._waiting.addCallbacks(self._seeded, self._wait_failed)
                return
            except FailClosed as e:
                self._abort(e.reason)
                return
            self._remaining -= size
        if not self.started:
            self.started = True
            transport.writeSequence([self._head, data])
            self._head = b""
        else:
            transport.write(data)
        if self._remaining == 0 and not self.finished:
            # Order matters: unregister, give the channel its transport back,
            # end (a graceful stop may now close the connection), read on.
            transport.unregisterProducer()
            self._channel._body_done(self)
            self._end()
            self._channel._read_on()

    def _abort(self, reason: str) -> None:
        _log.warn("aborting a streamed body: {reason}", reason=reason)
        transport: Any = self._channel.transport
        self._end()
        if transport is not None:
            transport.unregisterProducer()
            # Cut short, against the announced Content-Length: never complete-looking.
            transport.abortConnection()

    def _seeded(self, _: object) -> None:
        self._waiting = None
        self.resumeProducing()

    def _wait_failed(self, failure: Failure) -> None:
        self._waiting = None
        if isinstance(failure.value, FailClosed):
            self._abort(failure.value.reason)

    def _end(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._unwatch()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.addErrback(lambda _: None)
            waiting.cancel()
        self._pending = b""
        self._routes.streamed()
        if self._inflight is not None:
            self._inflight.leave()


class FastHTTPChannel(LimitedHTTPChannel):
    """
    ``HTTPChannel`` (with the request-head limits of
    :class:`~entropy_appliance.web.limits.LimitedHTTPChannel`) that answers
    complete, plain fast-path requests itself and hands everything else to
    its parent class at a request boundary.
    """

    _body: StreamedBody | None = None
    _serving = False

    def dataReceived(self, data: bytes) -> None:
        """Answer what the fast path can, then let ``HTTPChannel`` parse the rest."""
        fast: FastRoutes | None = getattr(getattr(self, "site", None), "fast", None)
        if fast is not None and data and self._at_boundary():
            self.resetTimeout()
            data = self._serve(fast, data)
            if not data:
                return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """End a streamed body still running (counted, no longer in flight)."""
        body, self._body = self._body, None
        if body is not None:
            body.stopProducing()
        super().connectionLost(reason)

    def _at_boundary(self) -> bool:
        # Only between requests, with nothing buffered, queued or half-parsed,
        # and while the transport takes our writes.
        return bool(
            self._body is None
            and not self.requests
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
        self._serving = True
        try:
            while pos < end:
                reply, used = self._one(fast, data, pos)
                if reply is None:
                    break
                pos = used
                if isinstance(reply, bytes):
                    out.append(reply)
                    continue
                if out:
                    # What is answered before the body goes out before it.
                    self.transport.writeSequence(out)  # type: ignore[union-attr]
                    out = []
                # The rest waits behind the body, as HTTPChannel makes it wait.
                if pos < end:
                    self._dataBuffer.append(data[pos:])
                self._start_body(reply)
                if self._body is not None:
                    return b""
                # The body completed at once (the transport took every chunk
                # as it was registered): read on here, not by recursion.
                data = b"".join(self._dataBuffer)
                self._dataBuffer = []
                pos, end = 0, len(data)
                self.setLineMode()
                if not self._at_boundary():
                    break
        finally:
            self._serving = False
            if out and self.transport is not None:
                self.transport.writeSequence(out)
        return data[pos:] if pos else data

    def _one(self, fast: FastRoutes, data: bytes,
             pos: int) -> tuple[bytes | StreamedBody | None, int]:
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
            if not 1 <= n <= fast.max_bytes:
                return None, pos
            if n > fast.max_random and not self._can_stream():
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
            if not self._admitted(fast, POLLEN_BYTES):
                return None, pos
            return fast.pollen(match.group(1)), stop
        if length:
            return None, pos
        if not self._admitted(fast, min(n, fast.chunk_size)):
            return None, pos
        if n <= fast.max_random:
            return fast.random(n), body_start
        started = fast.random_stream(n)
        if isinstance(started, bytes):
            return started, body_start  # failed closed before the first byte: the 503
        head, first_chunk = started
        inflight = getattr(getattr(self, "site", None), "fast_inflight", lambda: None)()
        return StreamedBody(self, fast, head, first_chunk, n, inflight), body_start

    def _admitted(self, fast: FastRoutes, n: int) -> bool:
        # While starved or failed the normal path waits or writes the 503,
        # with its own counters.
        if not fast.ready(n):
            return False
        admit = getattr(getattr(self, "site", None), "admit_fast", None)
        return admit is None or bool(admit(self))

    def _can_stream(self) -> bool:
        # The body's producer takes the channel's place on the transport, so
        # the transport must be the one the channel is registered on.
        transport = self.transport
        return IConsumer.providedBy(transport) and getattr(self, "_networkProducer", None) is transport

    def _start_body(self, body: StreamedBody) -> None:
        """Register ``body`` on the transport in the channel's place, and start it."""
        self._body = body
        # As HTTPChannel does while it answers a request: no idle timeout
        # (the transport's own idle limit still sees every write), and what
        # arrives meanwhile is buffered in raw mode, reading paused past a
        # small amount.
        if self.timeOut:
            self._savedTimeOut = self.setTimeout(None)
        self._handlingRequest = True
        self.setRawMode()
        transport: Any = self.transport
        # One send per chunk (the first one with the head) rather than
        # several: fewer reactor turns per byte.
        limit = body._chunk + _HEAD_ROOM
        if getattr(transport, "SEND_LIMIT", limit) < limit:
            transport.SEND_LIMIT = limit
        # The body's producer takes the channel's place on the transport.
        network: Any = self._networkProducer
        network.unregisterProducer()
        transport.registerProducer(body, False)
        if not body.finished:
            body.begin()

    def _body_done(self, body: StreamedBody) -> None:
        """``body`` is complete: the channel takes the transport back."""
        if self._body is not body:
            return
        self._body = None
        network: Any = self._networkProducer
        network.registerProducer(self, True)
        self._handlingRequest = False
        if not self._waitingForTransport:
            network.resumeProducing()
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)

    def _read_on(self) -> None:
        """Parse what arrived during a completed body (``_serve`` does it itself)."""
        if self._serving or self._body is not None:
            return
        data = b"".join(self._dataBuffer)
        self._dataBuffer = []
        self.setLineMode(data)

def fast_channel_protocol(factory: Any) -> Any:
    """
    The ``protocol`` of :class:`EntropySite`: Twisted's ALPN-switching
    wrapper (HTTP/1.1 or HTTP/2) around a :class:`FastHTTPChannel`, as
    ``twisted.web.http`` builds it around a plain ``HTTPChannel``.
    """
    return http._GenericHTTPChannelProtocol(FastHTTPChannel())
