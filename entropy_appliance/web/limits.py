"""
Per-peer limits at the HTTP level, over the accounting of
:mod:`entropy_appliance.core.peers` and the TCP-level adapters of
:mod:`entropy_appliance.net.limits`:

- :class:`RateLimitedResource`, in front of the site's root, answers a peer
  past ``--peer-rate`` with a 429 problem (``Retry-After``) and counts every
  other request as in flight, for a graceful stop;
- :class:`LimitedHTTPChannel` bounds HTTP/1.x requests before they are read:
  a head must be complete ``--header-timeout`` seconds after its first byte
  (slowloris), and a body ``--body-timeout`` seconds after its head; a
  ``Content-Length`` over ``--max-body`` is answered 413 before a byte of
  the body is read (a chunked body is cut by the request,
  :class:`~entropy_appliance.web.requests.BoundedRequest`); a line longer
  than the channel reads is answered with a problem;
- :class:`HTTPLimits`, the options of these limits;
- :func:`limit_site` puts a Site behind all of it, and behind the guard's
  TCP-level limits (``--peer-connections`` among them).

An answer given before a request is read (:meth:`LimitedHTTPChannel.refuse`)
closes the connection, after reading on for a moment: closing with unread
bytes resets the connection, and a reset can destroy the answer at the
client before it is read.

HTTP/2 streams never reach the channel's limits: after ALPN, Twisted hands
the connection to its own H2 protocol, whose framing has limits of its own;
their bodies are bounded by the request class all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from entropy_appliance.core.peers import PeerRateLimiter, peer_key
from entropy_appliance.net.limits import DEFAULT_PEER_CONNECTIONS, InFlight, PeerGuard, PeerLimitedFactory
from entropy_appliance.web.problems import (
    PayloadTooLarge,
    Problem,
    TooManyRequests,
    URITooLong,
    raw_response,
    write_problem,
)
from entropy_appliance.web.requests import DEFAULT_MAX_BODY, max_body_of

__all__ = ["RateLimitedResource", "LimitedHTTPChannel", "HTTPLimits", "limit_site",
           "DEFAULT_BODY_TIMEOUT"]

_log = Logger()

#: Seconds from the end of a request head to the end of its body, by default.
DEFAULT_BODY_TIMEOUT = 15.0

#: After an answer given before its request was read, how long the channel
#: reads on (discarding) before it closes, and how much it discards at most.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class HTTPLimits:
    """
    The HTTP limits beyond the per-peer policy, as the options validate
    them: ``--max-body`` bytes, ``--body-timeout`` seconds (0: none) and
    ``--peer-connections`` (0: no limit; applied at the TCP level by the
    guard).
    """

    max_body: int = DEFAULT_MAX_BODY
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    connections: int = DEFAULT_PEER_CONNECTIONS


class RateLimitedResource(Resource):
    """
    The root resource, in front of the site's own: past ``--peer-rate`` a
    request is answered 429 here; every other request is counted in
    :class:`InFlight` and handed on.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource, inflight: InFlight,
                 limiter: PeerRateLimiter | None = None,
                 observe: Callable[[Request], None] | None = None,
                 refuse: Callable[[Request, float], bytes | None] | None = None) -> None:
        super().__init__()
        self._wrapped = wrapped
        #: Writes the 429 in the shape of an API that has its own (None: problem+json).
        self._refuse = refuse
        #: The in-flight count, which the Site's fast path also joins.
        self.inflight = inflight
        self._limiter = limiter
        self._observe = observe

    def render(self, request: Request) -> Any:
        """Refuse past the peer's rate; otherwise count and delegate."""
        if self._limiter is not None:
            wait = self._limiter.check(peer_key(request.getClientAddress()))
            if wait:
                body = self._refuse(request, wait) if self._refuse is not None else None
                if body is None:
                    body = write_problem(request, TooManyRequests(
                        "this client has made too many requests; slow down and retry after "
                        "the number of seconds in Retry-After", wait))
                if self._observe is not None:
                    self._observe(request)
                return body
        self.inflight.begin(request)
        return self._wrapped.render(request)

    def admit(self, address: IAddress | None) -> bool:
        """
        For the Site's fast path: count one request from ``address`` and
        return True, or return False past the rate, counting nothing, so that
        :meth:`render` answers it with the 429.  A response the fast path
        streams joins :attr:`inflight` itself.
        """
        return self._limiter is None or not self._limiter.check(peer_key(address))


class LimitedHTTPChannel(http.HTTPChannel):
    """
    ``HTTPChannel`` with bounded requests.  Its Site gives the limits:
    ``header_timeout`` and ``body_timeout`` (0 or absent: none) and
    ``max_body``.

    The head deadline starts when bytes arrive while the channel reads a
    head, and ends at the head's last line, which the channel reports in
    ``allHeadersReceived``.  Bytes of a body, and bytes held back while a
    response is produced, are not read as a head (the channel is in raw mode
    then); held-back bytes start the deadline when the channel comes back to
    them.  The body deadline starts at the end of a head that announces a
    body, and ends with the body.
    """

    #: The longest request the OpenAPI document admits (a 4096-character
    #: pollen challenge, percent-encoded UTF-8, in the query) must fit; the
    #: line parser's own default is 16 KiB.
    MAX_LENGTH = 65536
    totalHeadersSize = 65536

    _head_call: IDelayedCall | None = None
    _body_deadline: IDelayedCall | None = None
    _linger_call: IDelayedCall | None = None
    _refused = False
    _discarded = 0

    def dataReceived(self, data: bytes) -> None:
        """Start the head deadline if these bytes begin a request head; parse them."""
        if self._refused:
            self._discard(data)
            return
        if self.line_mode:
            self._start_head()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - LineReceiver's name
        """
        Start the head deadline at a head line read without a new read: a
        request pipelined behind one that was answered at once.  (Only a
        part of a first line read that way waits for the next read.)
        """
        if self._refused:
            return
        if line:
            self._start_head()
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:  # noqa: N802 - HTTPChannel's name
        """The head is complete: its deadline is met; refuse a body too large, or time it."""
        self._cancel_head()
        limit = max_body_of(getattr(self, "site", None))
        if self.length is not None and self.length > limit:
            self.refuse(PayloadTooLarge(
                f"the request body of {self.length} bytes is over this server's limit of "
                f"{limit} bytes; send a smaller body"))
            return
        super().allHeadersReceived()
        if self.length != 0 and not self._refused:
            self._start_body_deadline()

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802 - LineReceiver's name
        """Body bytes, or bytes held back; none once refused."""
        if self._refused:
            self._discard(data)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:  # noqa: N802 - HTTPChannel's name
        """The body is complete: its deadline is met.  A refused request goes no further."""
        self._cancel_body_deadline()
        if not self._refused:
            super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - LineReceiver's name
        """Answer an over-long line with a problem, not a silent hang-up."""
        self.refuse(self.line_too_long())

    def line_too_long(self) -> Problem:
        """The problem of a line over :attr:`MAX_LENGTH`; a channel that knows which line it was says so."""
        return URITooLong(f"a request line or header is over {self.MAX_LENGTH} bytes")

    def refuse(self, problem: Problem) -> None:
        """
        Answer ``problem`` now, before the request is read or read in full,
        and close the connection: what arrives meanwhile is discarded, and
        the connection closes once the client closes, after
        :data:`LINGER_SECONDS`, or past :data:`LINGER_BYTES` discarded.
        """
        if self._refused or self.transport is None:
            return
        self._refused = True
        # No request after this one: the fast path and the parser stop here.
        self.persistent = False
        self._cancel_head()
        self._cancel_body_deadline()
        self.clearLineBuffer()
        self.transport.write(raw_response(problem))
        self._linger_call = self.callLater(LINGER_SECONDS, self._close_refused)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Stop every deadline."""
        self._cancel_head()
        self._cancel_body_deadline()
        call, self._linger_call = self._linger_call, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason)

    def _discard(self, data: bytes) -> None:
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            self._close_refused()

    def _close_refused(self) -> None:
        call, self._linger_call = self._linger_call, None
        if call is not None and call.active():
            call.cancel()
        if self.transport is not None:
            self.transport.loseConnection()

    def _start_head(self) -> None:
        if self._head_call is None:
            timeout = float(getattr(getattr(self, "site", None), "header_timeout", 0.0) or 0.0)
            if timeout:
                self._head_call = self.callLater(timeout, lambda: self._timed_out("head", timeout))

    def _cancel_head(self) -> None:
        call, self._head_call = self._head_call, None
        if call is not None and call.active():
            call.cancel()

    def _start_body_deadline(self) -> None:
        timeout = float(getattr(getattr(self, "site", None), "body_timeout", 0.0) or 0.0)
        if timeout and self._body_deadline is None:
            self._body_deadline = self.callLater(timeout, lambda: self._timed_out("body", timeout))

    def _cancel_body_deadline(self) -> None:
        call, self._body_deadline = self._body_deadline, None
        if call is not None and call.active():
            call.cancel()

    def _timed_out(self, part: str, timeout: float) -> None:
        if part == "head":
            self._head_call = None
        else:
            self._body_deadline = None
        transport: Any = self.transport
        _log.info("closing a connection from {peer}: its request {part} took longer than {t} s",
                  peer=transport.getPeer(), part=part, t=timeout)
        transport.abortConnection()


def limit_site(site: Any, guard: PeerGuard, observe: Callable[[Request], None] | None = None,
               limits: HTTPLimits = HTTPLimits(),
               refuse: Callable[[Request, float], bytes | None] | None = None) -> PeerLimitedFactory:
    """
    Put ``site`` behind the per-peer limits of ``guard``: its root behind
    ``--peer-rate`` and the in-flight count (``observe`` counts each 429 in
    the metrics), its request heads under ``--header-timeout``, its request
    bodies under ``--max-body`` and ``--body-timeout``, and its connections
    under ``--peer-connections``, the bandwidth and idle limits.  Returns
    the factory to listen with.  ``refuse`` writes the 429 of an API whose
    errors have a shape of their own (see :class:`RateLimitedResource`).
    """
    site.resource = RateLimitedResource(site.resource, guard.inflight, guard.rate, observe, refuse)
    site.header_timeout = guard.policy.header_timeout
    site.max_body = limits.max_body
    site.body_timeout = limits.body_timeout
    return guard.wrap_http(site, connections=limits.connections)
