"""
Per-peer limits at the HTTP level, over the accounting of
:mod:`entropy_appliance.core.peers` and the TCP-level adapters of
:mod:`entropy_appliance.net.limits`:

- :class:`RateLimitedResource`, in front of the site's root, answers a peer
  past ``--peer-rate`` with a 429 problem (``Retry-After``) and counts every
  other request as in flight, for a graceful stop;
- :class:`LimitedHTTPChannel` bounds HTTP/1.x request heads: one must be
  complete ``--header-timeout`` seconds after its first byte (slowloris), and
  a line longer than the channel reads is answered with a 414 problem;
- :func:`limit_site` puts a Site behind all of it, and behind the guard's
  TCP-level limits.

HTTP/2 streams never reach the channel's head limits: after ALPN, Twisted
hands the connection to its own H2 protocol, whose framing has limits of its
own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from entropy_appliance.core.peers import PeerRateLimiter, peer_key
from entropy_appliance.net.limits import InFlight, PeerGuard, PeerLimitedFactory
from entropy_appliance.web.problems import TooManyRequests, URITooLong, raw_response, write_problem

__all__ = ["RateLimitedResource", "LimitedHTTPChannel", "limit_site"]

_log = Logger()


class RateLimitedResource(Resource):
    """
    The root resource, in front of the site's own: past ``--peer-rate`` a
    request is answered 429 here; every other request is counted in
    :class:`InFlight` and handed on.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource, inflight: InFlight,
                 limiter: PeerRateLimiter | None = None,
                 observe: Callable[[Request], None] | None = None) -> None:
        super().__init__()
        self._wrapped = wrapped
        #: The in-flight count, which the Site's fast path also joins.
        self.inflight = inflight
        self._limiter = limiter
        self._observe = observe

    def render(self, request: Request) -> Any:
        """Refuse past the peer's rate; otherwise count and delegate."""
        if self._limiter is not None:
            wait = self._limiter.check(peer_key(request.getClientAddress()))
            if wait:
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
    ``HTTPChannel`` with bounded request heads.  The deadline is the Site's
    ``header_timeout`` (0 or absent: none); it starts when bytes arrive while
    the channel reads a head, and ends at the head's last line, which the
    channel reports in ``allHeadersReceived``.  Bytes of a body, and bytes
    held back while a response is produced, are not read as a head (the
    channel is in raw mode then); held-back bytes start the deadline when
    the channel comes back to them.
    """

    #: The longest request the OpenAPI document admits (a 4096-character
    #: pollen challenge, percent-encoded UTF-8, in the query) must fit; the
    #: line parser's own default is 16 KiB.
    MAX_LENGTH = 65536
    totalHeadersSize = 65536

    _head_call: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        """Start the head deadline if these bytes begin a request head; parse them."""
        if self.line_mode:
            self._start_head()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - LineReceiver's name
        """
        Start the head deadline at a head line read without a new read: a
        request pipelined behind one that was answered at once.  (Only a
        part of a first line read that way waits for the next read.)
        """
        if line:
            self._start_head()
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:  # noqa: N802 - HTTPChannel's name
        """The head is complete: its deadline is met."""
        self._cancel_head()
        super().allHeadersReceived()

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - LineReceiver's name
        """Answer an over-long line with a 414 problem, not a silent hang-up."""
        assert self.transport is not None
        self._cancel_head()
        self.transport.write(raw_response(
            URITooLong(f"a request line or header is over {self.MAX_LENGTH} bytes")))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Stop the head deadline."""
        self._cancel_head()
        super().connectionLost(reason)

    def _start_head(self) -> None:
        if self._head_call is None:
            timeout = float(getattr(getattr(self, "site", None), "header_timeout", 0.0) or 0.0)
            if timeout:
                self._head_call = self.callLater(timeout, lambda: self._head_timed_out(timeout))

    def _cancel_head(self) -> None:
        call, self._head_call = self._head_call, None
        if call is not None and call.active():
            call.cancel()

    def _head_timed_out(self, timeout: float) -> None:
        self._head_call = None
        transport: Any = self.transport
        _log.info("closing a connection from {peer}: its request head took longer than {t} s",
                  peer=transport.getPeer(), t=timeout)
        transport.abortConnection()


def limit_site(site: Any, guard: PeerGuard,
               observe: Callable[[Request], None] | None = None) -> PeerLimitedFactory:
    """
    Put ``site`` behind the per-peer limits of ``guard``: its root behind
    ``--peer-rate`` and the in-flight count (``observe`` counts each 429 in
    the metrics), its request heads under ``--header-timeout``, and its
    connections under the bandwidth and idle limits.  Returns the factory
    to listen with.
    """
    site.resource = RateLimitedResource(site.resource, guard.inflight, guard.rate, observe)
    site.header_timeout = guard.policy.header_timeout
    return guard.wrap_http(site)
