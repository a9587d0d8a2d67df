"""
Per-peer limits: fairness between clients, and a floor against abuse.

A "peer" is a client IP address; IPv6 clients are grouped by their /64,
because one host usually holds a whole /64 and would otherwise evade every
limit by changing its address.  IPv4-mapped IPv6 addresses count as IPv4.

The accounting is plain synchronous code over an injected clock:

- :class:`TokenBucket`, one rate and burst;
- :class:`PeerRateLimiter`: requests per second per peer (burst 2R);
- :class:`PeerConnections`: concurrent connections per peer;
- :class:`PeerBandwidth`: bytes per second per peer, summed over every
  connection and surface (burst: one second's worth).

Thin Twisted adapters apply it, built on ``twisted.protocols.policies``:

- :class:`PeerLimitedFactory` (a ``WrappingFactory``) refuses a peer's
  connection past ``--peer-streams`` by returning no protocol, which closes
  it at once;
- :class:`PeerProtocol` (a ``ProtocolWrapper`` with ``TimeoutMixin``) closes
  connections idle for ``--idle-timeout`` seconds (nothing read or written:
  for a raw stream that means a client that stopped reading), closes an HTTP
  connection whose request head takes longer than ``--header-timeout``
  seconds (slowloris), and throttles writes past ``--peer-bandwidth`` by
  holding back the producer registered on the transport;
- :class:`RateLimitedResource` answers 429 with ``Retry-After`` and a
  problem+json body past ``--peer-rate``, and counts in-flight requests for
  a graceful stop.

``twisted.protocols.policies.ThrottlingFactory`` throttles per factory, not
per peer, and pauses only push producers; the raw stream is a pull producer,
hence :class:`_ProducerGate`.  ``0`` turns any limit off.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IPullProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import alsoProvides, implementer

from entropy_appliance.web.problems import Problem, write_problem

__all__ = [
    "PeerPolicy",
    "TokenBucket",
    "PeerRateLimiter",
    "PeerConnections",
    "PeerBandwidth",
    "BandwidthThrottle",
    "PeerLimitedFactory",
    "PeerProtocol",
    "RateLimitedResource",
    "TooManyRequests",
    "InFlight",
    "PeerGuard",
    "peer_key",
    "DEFAULT_PEER_STREAMS",
    "DEFAULT_PEER_RATE",
    "DEFAULT_PEER_BANDWIDTH",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
]

#: Concurrent raw-stream connections per peer.
DEFAULT_PEER_STREAMS = 64
#: HTTP requests per second per peer (the bucket holds twice as many).
DEFAULT_PEER_RATE = 200.0
#: Bytes per second per peer; 0: no cap (the optional limit).
DEFAULT_PEER_BANDWIDTH = 0
#: Seconds a connection may stay with nothing read and nothing written.
DEFAULT_IDLE_TIMEOUT = 120.0
#: Seconds from the first byte of an HTTP request head to its end.
DEFAULT_HEADER_TIMEOUT = 15.0

#: Seconds between sweeps that forget peers whose buckets are full again.
_SWEEP_INTERVAL = 60.0

_log = Logger()


class _Clock(Protocol):
    def seconds(self) -> float: ...


@dataclass(frozen=True)
class PeerPolicy:
    """The limits, as validated by the tap; 0 turns one off."""

    streams: int = DEFAULT_PEER_STREAMS
    rate: float = DEFAULT_PEER_RATE
    bandwidth: int = DEFAULT_PEER_BANDWIDTH
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT


def peer_key(address: IAddress | None) -> str:
    """
    The peer that ``address`` counts against: the IPv4 address, the /64 of
    an IPv6 address, or the address type for anything without a host
    (unix sockets: the local machine is one peer).
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return type(address).__name__
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# -- pure accounting ----------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens and return 0, or return the seconds until they are there."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def spend(self, now: float, cost: float) -> float:
        """Take ``cost`` tokens even into debt; return the seconds until the debt is paid."""
        self._refill(now)
        self.tokens -= cost
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def debt(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 if it is not in debt)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def full(self, now: float) -> bool:
        """True when the bucket is as if it had never been used."""
        self._refill(now)
        return self.tokens >= self.burst


class _PeerBuckets:
    """A bucket per peer, forgetting peers whose bucket has refilled."""

    def __init__(self, rate: float, burst: float, clock: _Clock) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._swept = clock.seconds()

    def bucket(self, peer: str, now: float) -> TokenBucket:
        if now - self._swept >= _SWEEP_INTERVAL:
            self._swept = now
            # A full bucket is the same as none: forgetting it bounds memory
            # by the peers active in the last minute.
            self._buckets = {p: b for p, b in self._buckets.items() if not b.full(now)}
        b = self._buckets.get(peer)
        if b is None:
            b = self._buckets[peer] = TokenBucket(self.rate, self.burst, now)
        return b

    def __len__(self) -> int:
        return len(self._buckets)


class PeerRateLimiter:
    """Requests per second per peer, as a token bucket with a burst of ``2 * rate``."""

    def __init__(self, rate: float, clock: _Clock) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self._clock = clock
        self._buckets = _PeerBuckets(rate, 2 * rate, clock)

    def check(self, peer: str) -> float:
        """0 when ``peer`` may make a request now (and count it), else seconds to wait."""
        now = self._clock.seconds()
        return self._buckets.bucket(peer, now).take(now)

    def tracked(self) -> int:
        """How many peers are remembered (for tests and status)."""
        return len(self._buckets)


class PeerConnections:
    """At most ``limit`` concurrent connections per peer."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, peer: str) -> bool:
        """Count a new connection of ``peer``; False (and nothing counted) past the limit."""
        n = self._open.get(peer, 0)
        if n >= self.limit:
            return False
        self._open[peer] = n + 1
        return True

    def release(self, peer: str) -> None:
        """A connection of ``peer`` has closed."""
        n = self._open.get(peer, 0) - 1
        if n > 0:
            self._open[peer] = n
        else:
            self._open.pop(peer, None)

    def count(self, peer: str) -> int:
        """Open connections of ``peer``."""
        return self._open.get(peer, 0)


class PeerBandwidth:
    """Bytes per second per peer; a burst of one second's worth."""

    def __init__(self, rate: int, clock: _Clock) -> None:
        if rate < 1:
            raise ValueError("rate must be >= 1")
        self.rate = rate
        self._clock = clock
        self._buckets = _PeerBuckets(float(rate), float(rate), clock)

    def spend(self, peer: str, n: int) -> float:
        """Count ``n`` bytes sent to ``peer``; return how long it must now wait (0: none)."""
        now = self._clock.seconds()
        return self._buckets.bucket(peer, now).spend(now, n)

    def wait(self, peer: str) -> float:
        """Seconds until ``peer`` may be sent more (0: now)."""
        now = self._clock.seconds()
        return self._buckets.bucket(peer, now).debt(now)


# -- Twisted adapters ---------------------------------------------------------


class TooManyRequests(Problem):
    """429: the peer is past ``--peer-rate``; carries ``Retry-After``."""

    status = 429
    title = "Too Many Requests"
    slug = "too-many-requests"

    def __init__(self, detail: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(detail, {b"Retry-After": str(seconds).encode()})
        self.retry_after = seconds


class InFlight:
    """Counts HTTP requests that have begun and not yet finished."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: list[Callable[[], None]] = []

    def begin(self, request: Request) -> None:
        """Count ``request`` until it finishes (or its client goes away)."""
        self.enter()
        request.notifyFinish().addBoth(self._end)

    def enter(self) -> None:
        """Count a response made without a ``Request`` (the fast path's streamed bodies)."""
        self.count += 1

    def leave(self) -> None:
        """A response counted by :meth:`enter` has ended."""
        self._end(None)

    def _end(self, _: object) -> None:
        self.count -= 1
        if self.count == 0:
            waiting, self._idle = self._idle, []
            for callback in waiting:
                callback()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no request is in flight (now, if none is)."""
        if self.count == 0:
            callback()
        else:
            self._idle.append(callback)


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
                # twisted.web has no reason phrase for 429 of its own.
                request.setResponseCode(TooManyRequests.status, TooManyRequests.title.encode())
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


@implementer(IPushProducer, IPullProducer)
class _ProducerGate:
    """
    Stands between a transport and the producer registered on it, so that
    the bandwidth limit can hold the producer back whatever its kind: a
    push producer is paused, a pull producer is not asked for more.
    """

    def __init__(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming
        self._paused_by_transport = False
        self._throttled = False
        self._pull_pending = False

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self._paused_by_transport = True
        if not self._throttled:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        """The transport wants more, unless the peer is over its bandwidth."""
        self._paused_by_transport = False
        if self._throttled:
            self._pull_pending = not self.streaming
            return
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.producer.stopProducing()

    def throttle(self) -> None:
        """Hold the producer back."""
        if self._throttled:
            return
        self._throttled = True
        if self.streaming and not self._paused_by_transport:
            self.producer.pauseProducing()

    def hold(self) -> None:
        """Pause a push producer again: one registered later may have been missed."""
        if self._throttled and self.streaming:
            self.producer.pauseProducing()

    def unthrottle(self) -> None:
        """Let the producer go on, if the transport wants it to."""
        if not self._throttled:
            return
        self._throttled = False
        if self.streaming:
            if not self._paused_by_transport:
                self.producer.resumeProducing()
        elif self._pull_pending:
            self._pull_pending = False
            self.producer.resumeProducing()


class BandwidthThrottle:
    """Holds back every connection of a peer that is past its bandwidth, until it is not."""

    def __init__(self, bandwidth: PeerBandwidth, clock: IReactorTime) -> None:
        self.bandwidth = bandwidth
        self._clock = clock
        self._members: dict[str, set[PeerProtocol]] = {}
        self._timers: dict[str, IDelayedCall] = {}

    def join(self, peer: str, protocol: PeerProtocol) -> None:
        """Track ``protocol``; it starts held back if its peer is."""
        self._members.setdefault(peer, set()).add(protocol)
        if peer in self._timers:
            protocol.throttle()

    def leave(self, peer: str, protocol: PeerProtocol) -> None:
        """Forget ``protocol``."""
        members = self._members.get(peer)
        if members is not None:
            members.discard(protocol)
            if not members:
                del self._members[peer]
                timer = self._timers.pop(peer, None)
                if timer is not None and timer.active():
                    timer.cancel()

    def throttled(self, peer: str) -> bool:
        """True while ``peer`` is held back."""
        return peer in self._timers

    def wrote(self, peer: str, n: int) -> None:
        """Count ``n`` bytes written to ``peer``; hold it back if that puts it in debt."""
        wait = self.bandwidth.spend(peer, n)
        if wait > 0 and peer not in self._timers:
            for p in list(self._members.get(peer, ())):
                p.throttle()
            self._timers[peer] = self._clock.callLater(wait, self._release, peer)

    def _release(self, peer: str) -> None:
        wait = self.bandwidth.wait(peer)
        if wait > 0:
            self._timers[peer] = self._clock.callLater(wait, self._release, peer)
            return
        del self._timers[peer]
        for p in list(self._members.get(peer, ())):
            if peer in self._timers:
                break  # what an earlier connection wrote put the peer in debt again
            p.unthrottle()


#: What ends a request head in HTTP/1.x (with CRLF, or bare LF, line ends).
_HEAD_ENDS = (b"\n\r\n", b"\n\n")
_H2_PREFACE = b"PRI * HTTP/2.0"


class PeerProtocol(ProtocolWrapper, TimeoutMixin):
    """One connection under the per-peer limits; see the module docstring."""

    factory: PeerLimitedFactory
    # Any: the real transport's extras (abortConnection, producers) are used.
    transport: Any

    def __init__(self, factory: PeerLimitedFactory, wrappedProtocol: Any, peer: str) -> None:
        super().__init__(factory, wrappedProtocol)
        self.peer = peer
        self._clock = factory.clock
        self._gate: _ProducerGate | None = None
        self._throttled = False
        self._head_timeout = factory.policy.header_timeout if factory.http else 0.0
        self._awaiting_head = True
        self._wrote = False
        self._tail = b""
        self._head_call: IDelayedCall | None = None

    @property
    def SEND_LIMIT(self) -> int:  # noqa: N802 - the transport's attribute
        """The transport's per-write send limit (a stream may raise it)."""
        return int(self.transport.SEND_LIMIT)

    @SEND_LIMIT.setter
    def SEND_LIMIT(self, value: int) -> None:  # noqa: N802
        self.transport.SEND_LIMIT = value

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:  # noqa: N802
        """TimeoutMixin's scheduler: the factory's clock."""
        return self._clock.callLater(period, func)

    # -- life cycle -------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        """Start the idle timer; join the peer's bandwidth account."""
        if self.factory.policy.idle_timeout:
            self.setTimeout(self.factory.policy.idle_timeout)
        if self.factory.throttle is not None:
            self.factory.throttle.join(self.peer, self)
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop every timer and release the peer's slot."""
        self.setTimeout(None)
        self._cancel_head()
        if self.factory.throttle is not None:
            self.factory.throttle.leave(self.peer, self)
        self._gate = None
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        """Nothing was read or written for the idle timeout."""
        _log.debug("closing idle connection from {peer}", peer=self.peer)
        self.transport.abortConnection()

    # -- reading ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Count activity; watch HTTP request heads; pass the bytes on."""
        self.resetTimeout()
        if self._head_timeout:
            self._watch_head(data)
        super().dataReceived(data)

    def _watch_head(self, data: bytes) -> None:
        if not self._awaiting_head:
            if not self._wrote:
                return  # the body of the current request
            # Data after a response has begun starts the next request head.
            self._awaiting_head = True
            self._tail = b""
        if self._head_call is None:
            if self._tail == b"" and (data.startswith(_H2_PREFACE)
                                      or getattr(self.transport, "negotiatedProtocol", None) == b"h2"):
                # HTTP/2 has no text head; its framing layer has its own limits.
                self._head_timeout = 0.0
                return
            self._head_call = self.callLater(self._head_timeout, self._head_timed_out)
        buffer = self._tail + data
        if any(end in buffer for end in _HEAD_ENDS):
            self._cancel_head()
            self._awaiting_head = False
            self._wrote = False
            self._tail = b""
        else:
            self._tail = buffer[-2:]

    def _cancel_head(self) -> None:
        if self._head_call is not None:
            if self._head_call.active():
                self._head_call.cancel()
            self._head_call = None

    def _head_timed_out(self) -> None:
        self._head_call = None
        _log.info("closing a connection from {peer}: its request head took longer than {t} s",
                  peer=self.peer, t=self._head_timeout)
        self.transport.abortConnection()

    # -- writing ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Count activity and bandwidth; pass the bytes on."""
        self._wrote_bytes(len(data))
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:
        """As :meth:`write`, for several buffers."""
        data = list(data)
        self._wrote_bytes(sum(len(d) for d in data))
        self.transport.writeSequence(data)

    def _wrote_bytes(self, n: int) -> None:
        self.resetTimeout()
        if self._head_call is not None:
            # The server answered (an error, most likely) before the head ended.
            self._cancel_head()
            self._awaiting_head = False
        self._wrote = True
        if self.factory.throttle is not None:
            self.factory.throttle.wrote(self.peer, n)
            if self._throttled and self._gate is not None:
                # An HTTP channel passes a pause on to the response producer
                # of the moment only; a response begun since must hear it too.
                self._gate.hold()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register ``producer`` on the transport behind a gate that throttling can close."""
        gate = _ProducerGate(producer, streaming)
        self._gate = gate
        self.transport.registerProducer(gate, streaming)
        if self._throttled:
            gate.throttle()

    def unregisterProducer(self) -> None:
        """Unregister the producer (and its gate)."""
        self._gate = None
        self.transport.unregisterProducer()

    def close_when_flushed(self) -> None:
        """Close once the buffered output is sent, whatever the protocol above is doing."""
        if self._gate is not None:
            # A transport with a paused producer never finishes closing: it
            # resumes the producer instead.  Nothing more is to be produced.
            self._gate = None
            self.transport.unregisterProducer()
        self.loseConnection()

    def throttle(self) -> None:
        """The peer is past its bandwidth: hold the producer back."""
        self._throttled = True
        if self._gate is not None:
            self._gate.throttle()

    def unthrottle(self) -> None:
        """The peer may be sent more."""
        self._throttled = False
        if self._gate is not None:
            self._gate.unthrottle()


class PeerLimitedFactory(WrappingFactory["PeerProtocol"]):
    """
    Wraps a factory (the raw stream's, or the Site) so that its connections
    obey the per-peer limits.  ``connections`` (``--peer-streams``) refuses a
    peer's connection past its count; ``throttle`` (``--peer-bandwidth``) is
    shared by every surface; ``http`` turns on the request-head timeout.
    """

    protocol = PeerProtocol
    noisy = False

    def __init__(self, wrappedFactory: Any, clock: IReactorTime, policy: PeerPolicy, *,
                 http: bool, connections: PeerConnections | None = None,
                 throttle: BandwidthThrottle | None = None) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.policy = policy
        self.http = http
        self.connections = connections
        self.throttle = throttle
        self._all_closed: list[Deferred[None]] = []
        if IProtocolNegotiationFactory.providedBy(wrappedFactory):
            # TLS asks the factory it wraps (this one) for the ALPN protocols.
            self.acceptableProtocols = wrappedFactory.acceptableProtocols
            alsoProvides(self, IProtocolNegotiationFactory)

    def buildProtocol(self, addr: IAddress) -> PeerProtocol | None:  # type: ignore[override]
        """A limited connection for ``addr``, or None (closed at once) past ``--peer-streams``."""
        peer = peer_key(addr)
        if self.connections is not None and not self.connections.acquire(peer):
            _log.info("refused a connection from {peer}: it already has {n} open",
                      peer=peer, n=self.connections.limit)
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            if self.connections is not None:
                self.connections.release(peer)
            return None
        return PeerProtocol(self, wrapped, peer)

    def unregisterProtocol(self, p: Any) -> None:
        """A connection closed: give its peer the slot back."""
        super().unregisterProtocol(p)
        if self.connections is not None:
            self.connections.release(p.peer)
        if not self.protocols and self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> Deferred[None]:
        """
        Close every connection after its buffered output is sent; the
        Deferred fires once all are closed.  For a stop, once no request is
        in flight: the reactor's own final disconnect would drop what is
        still buffered.
        """
        d: Deferred[None] = Deferred()
        if not self.protocols:
            d.callback(None)
            return d
        self._all_closed.append(d)
        for p in list(self.protocols):
            p.close_when_flushed()
        return d



class PeerGuard:
    """
    The per-peer limits of one process, built once from a :class:`PeerPolicy`
    and shared by every listener: one rate limiter, one bandwidth account,
    one stream-connection count, one in-flight request count.
    """

    def __init__(self, policy: PeerPolicy, clock: IReactorTime) -> None:
        self.policy = policy
        self.clock = clock
        self.inflight = InFlight()
        self.rate = PeerRateLimiter(policy.rate, clock) if policy.rate else None
        self.throttle = (BandwidthThrottle(PeerBandwidth(policy.bandwidth, clock), clock)
                         if policy.bandwidth else None)
        self.stream_connections = PeerConnections(policy.streams) if policy.streams else None
        self._http: list[PeerLimitedFactory] = []

    def close_http(self) -> Deferred[None]:
        """Close every HTTP connection once flushed (see :meth:`PeerLimitedFactory.close_all`)."""
        d = DeferredList([f.close_all() for f in self._http])
        return d.addCallback(lambda _: None)

    def wrap_resource(self, resource: Resource,
                      observe: Callable[[Request], None] | None = None) -> RateLimitedResource:
        """The site's root resource behind ``--peer-rate`` and the in-flight count."""
        return RateLimitedResource(resource, self.inflight, self.rate, observe)

    def wrap_stream(self, factory: Any) -> PeerLimitedFactory:
        """The raw stream's factory behind ``--peer-streams``, bandwidth and idle timeout."""
        return PeerLimitedFactory(factory, self.clock, self.policy, http=False,
                                  connections=self.stream_connections, throttle=self.throttle)

    def wrap_http(self, site: Any) -> PeerLimitedFactory:
        """The Site behind bandwidth, idle and request-head timeouts (TLS goes outside)."""
        factory = PeerLimitedFactory(site, self.clock, self.policy, http=True, throttle=self.throttle)
        self._http.append(factory)
        return factory
