"""
The hot routes' responses, built in one place whatever channel carries them.

``POST /`` (pollen) and ``GET /v1/random`` travel two ways: through the
Klein routes on a ``Request``, and through the lean HTTP/1.1 channel
(:mod:`entropy_appliance.web.channel`), which writes bytes itself.  Both
take the answer from here, as a :class:`Response`: the headers in the order
they are written, and the body, whole or begun (then streamed by
:class:`~entropy_appliance.net.body.BodyWriter`).  Header names are spelled
as ``twisted.web`` writes them (``X-Rng-Source``), so the two ways write
the same bytes.

A builder raises :class:`FailClosed` (or :class:`Starved`) before any
header exists.  The Klein routes answer that with a problem; the lean
channel never does: it hands such a request to Klein.  So every problem is
written by one path, and every success is built here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.web import http
from twisted.web.server import Request
from twisted.web.server import version as SERVER_VERSION

from entropy_appliance.core.pool import FailClosed, IClock, SeedPool
from entropy_appliance.net.body import CHUNK_SIZE, first_chunk
from entropy_appliance.web.formats import FORMATS, Format
from entropy_appliance.web.h1 import Match, Parser, Pollen
from entropy_appliance.web.pollen import (
    MAX_CHALLENGE,
    POLLEN_BYTES,
    TEXT_PLAIN,
    challenge_of,
    challenge_refusal,
    pollen_reply,
)
from entropy_appliance.web.problems import ServiceUnavailable, write_problem

__all__ = ["Response", "Streamed", "HotRoutes", "STREAM_THRESHOLD", "rng_headers",
           "random_headers", "random_response", "pollen_response", "render_pollen", "apply",
           "head_bytes"]

#: Bodies of more raw bytes than this are streamed, on every channel.
STREAM_THRESHOLD = 64 * 1024

HeaderList = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Streamed:
    """A body to stream: ``length`` raw bytes in ``encoding``, ``first`` of them generated."""

    length: int
    encoding: Format
    first: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """A 200 answer: headers in order, then ``body`` whole, or ``stream`` (body empty)."""

    headers: HeaderList
    body: bytes = b""
    stream: Streamed | None = None


def rng_headers(pool: SeedPool) -> HeaderList:
    """The headers every random response carries, in order."""
    age = pool.reseed_age()
    return [
        (b"Cache-Control", b"no-store"),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"X-Rng-Source", pool.source_name.encode()),
        (b"X-Rng-Source-Kind", pool.source_kind.encode()),
        (b"X-Rng-Drbg", b"CTR_DRBG AES-256"),
        (b"X-Rng-Reseed-Age-Ms", b"%d" % round(1000 * (age or 0.0))),
        (b"X-Rng-Reseed-Interval-Ms", b"%d" % round(1000 * pool.policy.interval)),
    ]


def random_headers(pool: SeedPool, n: int, fmt: Format) -> HeaderList:
    """The headers of ``n`` random bytes in ``fmt`` (GET and HEAD alike)."""
    return [(b"Content-Type", fmt.content_type),
            (b"Content-Length", b"%d" % fmt.content_length(n)), *rng_headers(pool)]


def random_response(pool: SeedPool, n: int, fmt: Format, chunk_size: int = CHUNK_SIZE) -> Response:
    """``n`` random bytes in ``fmt``: whole up to :data:`STREAM_THRESHOLD`, streamed above."""
    if n <= STREAM_THRESHOLD:
        raw = pool.random_bytes(n, surface="http")
        return Response(random_headers(pool, n, fmt), fmt.prefix(n) + fmt.encode(raw) + fmt.suffix())
    first = pool.random_bytes(first_chunk(n, fmt, chunk_size), surface="http")
    return Response(random_headers(pool, n, fmt), stream=Streamed(n, fmt, first))


def pollen_response(pool: SeedPool, challenge: bytes) -> Response:
    """The reply to a pollen ``challenge``."""
    body = pollen_reply(pool, challenge)
    return Response([(b"Content-Type", TEXT_PLAIN), (b"Content-Length", b"%d" % len(body)),
                     *rng_headers(pool)], body)


def apply(request: Request, headers: HeaderList) -> None:
    """Set ``headers`` on ``request`` (the Klein way of writing a :class:`Response`)."""
    for name, value in headers:
        request.setHeader(name, value)


def render_pollen(request: Request, pool: SeedPool) -> bytes:
    """Answer a pollen request (``POST /``, ``GET /?challenge=``): the reply, a 400 or a 503."""
    challenge = challenge_of(request)
    refusal = challenge_refusal(challenge)
    if challenge is None or refusal is not None:
        request.setResponseCode(400)
        request.setHeader(b"Content-Type", TEXT_PLAIN)
        return refusal or b""
    try:
        response = pollen_response(pool, challenge)
    except FailClosed as e:
        return write_problem(request, ServiceUnavailable(e.reason, e.retry_after))
    apply(request, response.headers)
    return response.body


_STATUS_LINE = b"HTTP/1.1 200 OK\r\nServer: " + SERVER_VERSION + b"\r\nDate: "


def head_bytes(headers: HeaderList, date: bytes) -> bytes:
    """The head of a 200 response as ``twisted.web`` writes it (the lean channel's way)."""
    parts = [_STATUS_LINE, date, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_BINARY = FORMATS["binary"]


class HotRoutes:
    """
    What the lean channel answers itself: the responses above, over the
    Klein app's pool, counted in its metrics by ``observe(route, method,
    status)``.  Setting the Site's ``fast`` to None turns it off.
    """

    def __init__(self, pool: SeedPool, clock: IClock, observe: Callable[[str, str, int], None],
                 max_bytes: int, chunk_size: int = CHUNK_SIZE) -> None:
        self.pool = pool
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self.parser = Parser(MAX_CHALLENGE)
        self._clock = clock
        self._observe = observe
        self._date_second = -1
        self._date = b""

    def accepts(self, match: Match) -> bool:
        """
        Whether ``match`` is answered here now: its size is in range and the
        pool serves it at once.  If not, the Klein route takes it: it writes
        the 400 or 413, waits while the pool is starved, or writes the 503.
        """
        if isinstance(match, Pollen):
            return self.pool.ready(POLLEN_BYTES)
        n = match.n
        return 1 <= n <= self.max_bytes and self.pool.ready(min(n, self.chunk_size))

    def streams(self, match: Match) -> bool:
        """Whether the answer to ``match`` is streamed."""
        return not isinstance(match, Pollen) and match.n > STREAM_THRESHOLD

    def answer(self, match: Match) -> Response | None:
        """The response to ``match``, or None if the pool fails closed after all."""
        try:
            if isinstance(match, Pollen):
                return pollen_response(self.pool, match.challenge)
            return random_response(self.pool, match.n, _BINARY, self.chunk_size)
        except FailClosed:
            return None

    def head(self, response: Response) -> bytes:
        """The head of ``response``, dated by the clock."""
        # Formatting the date is a visible cost at this rate; it changes once a second.
        now = self._clock.seconds()
        if int(now) != self._date_second:
            self._date = http.datetimeToString(now)
            self._date_second = int(now)
        return head_bytes(response.headers, self._date)

    def count(self, match: Match) -> None:
        """Count a response in the metrics, as the Klein path counts it."""
        if isinstance(match, Pollen):
            self._observe("/", "POST", 200)
        else:
            self._observe("/v1/random", "GET", 200)
