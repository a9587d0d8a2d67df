"""
Per-peer limits at the TCP level: thin Twisted adapters over the pure
accounting of :mod:`entropy_appliance.core.peers`, built on
``twisted.protocols.policies``.  Nothing here knows HTTP.

- :class:`PeerLimitedFactory` (a ``WrappingFactory``) refuses a peer's
  connection past ``--peer-streams`` (raw stream) or ``--peer-connections``
  (HTTP) by returning no protocol, which closes it at once; it logs the
  first refusal of a peer, and how many followed once the peer is under its
  limit again;
- :class:`ConnectionBudget` keeps the connections of the process within its
  file descriptors (``RLIMIT_NOFILE``), so that a shortage is met by
  refusing new connections, logged once, and never by a failed ``accept``,
  an ``open`` or a ``socket`` call somewhere else; a reserve of it is kept
  for clients that hold no connection yet;
- :class:`PeerProtocol` (a ``ProtocolWrapper`` with ``TimeoutMixin``) closes
  connections idle for ``--idle-timeout`` seconds (nothing read or written:
  for a raw stream that means a client that stopped reading; an EGD client
  that asks for nothing is quiet by right and stays), and throttles
  writes past ``--peer-bandwidth`` by holding back the producer registered
  on the transport;
- :class:`InFlight` counts responses in flight, for a graceful stop;
- :class:`PeerGuard` holds the limits of one process, shared by every
  listener;
- :func:`with_backlog` gives a listening endpoint description the listen
  backlog of :data:`DEFAULT_BACKLOG` unless it names one;
- :class:`AcceptGuard` (:func:`guard_accepts`, :class:`GuardedEndpoint`)
  pauses a listening port whose ``accept`` fails, logged once.

The HTTP-level limits (429 past ``--peer-rate``, the request deadlines) are
:mod:`entropy_appliance.web.limits`.

``twisted.protocols.policies.ThrottlingFactory`` throttles per factory, not
per peer, and pauses only push producers; the raw stream is a pull producer,
hence :class:`_ProducerGate`.  ``0`` turns any limit off.

Twisted's own answer to ``EMFILE`` in ``accept`` (``tcp.Port.doRead``) is to
close a reserved descriptor, accept every waiting connection and close it
at once, logging a line for each: waiting clients are turned away and the
log fills; to ``ENFILE``, ``ENOBUFS`` and ``ENOMEM``, a line and another try
at once, round after round.  The budget keeps the process's own connections
from getting there; the accept guard meets a shortage that comes from
elsewhere (the whole system out of descriptors, or memory).  It observes
the port's ``_logger``, the one private attribute of ``tcp.Port`` used here
(the pinned Twisted has it; a test checks).
"""

from __future__ import annotations

import re
import resource
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import ILogObserver, Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from entropy_appliance.core.peers import (
    PeerBandwidth,
    PeerConnections,
    PeerPolicy,
    PeerRateLimiter,
    peer_key,
)
from entropy_appliance.net.body import SendLimitOfTransport

__all__ = [
    "BandwidthThrottle",
    "ConnectionBudget",
    "PeerLimitedFactory",
    "PeerProtocol",
    "InFlight",
    "PeerGuard",
    "with_backlog",
    "fd_budget",
    "AcceptGuard",
    "guard_accepts",
    "GuardedEndpoint",
    "DEFAULT_PEER_CONNECTIONS",
    "DEFAULT_BACKLOG",
]

_log = Logger()

#: Concurrent HTTP(S) connections per peer, by default (``--peer-connections``).
DEFAULT_PEER_CONNECTIONS = 64

#: The listen backlog of an endpoint that names none.  Twisted's default of
#: 50 makes a burst of connects wait for SYN retransmits; the kernel caps it
#: at ``net.core.somaxconn``.
DEFAULT_BACKLOG = 1024

#: The endpoint types whose descriptions take ``backlog=``.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


class _Finishing(Protocol):
    """What :meth:`InFlight.begin` needs of a request."""

    def notifyFinish(self) -> Deferred[None]: ...  # noqa: N802 - twisted.web's name


class InFlight:
    """Counts HTTP requests that have begun and not yet finished."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: list[Callable[[], None]] = []

    def begin(self, request: _Finishing) -> None:
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


class PeerProtocol(SendLimitOfTransport, ProtocolWrapper, TimeoutMixin):
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
        if self.factory.throttle is not None:
            self.factory.throttle.leave(self.peer, self)
        self._gate = None
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        """
        Nothing was read or written for the idle timeout: close, unless the
        protocol above says its silence is its client's right (an EGD client
        that asks for nothing: ``quiet_by_right()``); then watch on.
        """
        quiet_by_right = getattr(self.wrappedProtocol, "quiet_by_right", None)
        if quiet_by_right is not None and quiet_by_right():
            self.setTimeout(self.factory.policy.idle_timeout)
            return
        _log.debug("closing idle connection from {peer}", peer=self.peer)
        self.transport.abortConnection()

    # -- reading ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Count activity; pass the bytes on."""
        self.resetTimeout()
        super().dataReceived(data)

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


class ConnectionBudget:
    """
    At most ``limit`` connections open at once, over every listener of the
    process.  The last ``reserve`` of them (an eighth by default) are kept
    for peers that hold no connection yet, so that peers which fill the
    rest, however many, do not keep a newcomer out.  Past its share a new
    connection is refused: closed as soon as it is accepted.  That is
    logged once when a shortage begins, and once when it ends (below nine
    tenths of the limit), with the number refused.
    """

    def __init__(self, limit: int, reserve: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.reserve = limit // 8 if reserve is None else reserve
        self.open = 0
        #: Connections refused in the shortage of the moment.
        self.refused = 0
        self._short = False
        self._held: dict[str, int] = {}

    def acquire(self, peer: str) -> bool:
        """Count a new connection of ``peer``; False (and nothing counted) past its share."""
        held = self._held.get(peer, 0)
        if self.open >= self.limit or (held and self.open >= self.limit - self.reserve):
            if not self._short:
                self._short = True
                _log.warn("refusing new connections: {n} are open, close to what the file descriptor "
                          "limit (RLIMIT_NOFILE) leaves room for ({limit}, the last {r} kept for clients "
                          "with no connection yet); raise it (LimitNOFILE= under systemd)",
                          n=self.open, limit=self.limit, r=self.reserve)
            self.refused += 1
            return False
        self.open += 1
        self._held[peer] = held + 1
        return True

    def release(self, peer: str) -> None:
        """A connection of ``peer`` counted by :meth:`acquire` has closed."""
        self.open -= 1
        held = self._held.pop(peer, 0) - 1
        if held > 0:
            self._held[peer] = held
        if self._short and self.open < (self.limit - self.reserve) * 0.9:
            self._short = False
            _log.info("accepting new connections again ({n} open); {r} were refused meanwhile",
                      n=self.open, r=self.refused)
            self.refused = 0


def fd_budget(reserve: int = 64) -> int | None:
    """
    The connections this process may hold: its soft ``RLIMIT_NOFILE`` less an
    eighth (at least ``reserve``) for whatever else it opens (listeners, the
    source, logs, TLS files, worker pipes, and ``accept`` itself); None when
    the limit is unlimited.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft - max(reserve, soft // 8))


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    ``description`` with ``:backlog=N`` added when it is a ``tcp:``,
    ``tcp6:``, ``ssl:`` or ``unix:`` endpoint that names no backlog; any
    other (``systemd:``, whose socket systemd made with its own ``Backlog=``)
    as it is.
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in _BACKLOG_TYPES or any(p.startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


#: What Twisted's accept loop (``twisted.internet.tcp._accept``) logs on the
#: port's ``_logger``: a failed ``accept``, and each waiting connection its
#: EMFILE recovery closes.
_ACCEPT_FAILED = "Could not accept new connection ({acceptError})"
_EMFILE_FOUND = "EMFILE encountered; releasing reserved file descriptor."
_EMFILE_CLOSED = "EMFILE recovery: Closed socket from {address}"


@implementer(ILogObserver)
class AcceptGuard:
    """
    The observer of one listening port's accept loop.

    Twisted's ``tcp.Port`` logs a failed ``accept`` (``EMFILE``, ``ENFILE``,
    ``ENOBUFS``, ``ENOMEM``) on its ``_logger`` and returns; the listening
    socket stays readable, so the reactor calls it again at once: a busy
    loop that logs a line a turn.  On ``EMFILE`` it first closes every
    waiting connection, logging each.  Here the first failure stops the
    port reading for ``pause`` seconds, the connections that wait stay in
    the backlog, and the shortage is logged once as it begins and once as
    it ends (a ``pause`` after the port reads again with no failure), with
    the count of failures and of connections closed.
    """

    def __init__(self, port: Any, clock: IReactorTime, pause: float = 1.0) -> None:
        self.port = port
        #: The port's address, for the log (taken now: nothing may fail in the accept loop).
        self.where = str(port.getHost())
        self.pause = pause
        self.failures = 0
        self.closed = 0
        self._clock = clock
        self._short = False
        self._resume_call: IDelayedCall | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        """One event of the accept loop: count it; on a failure, pause the port."""
        text = event.get("log_format")
        if text == _EMFILE_CLOSED:
            self.closed += 1
            return
        if text == _ACCEPT_FAILED:
            error = str(event.get("acceptError"))
        elif text == _EMFILE_FOUND:
            error = "EMFILE"
        else:
            return
        self.failures += 1
        if not self._short:
            self._short = True
            _log.warn("could not accept a connection on {where} ({error}: out of file descriptors or "
                      "buffers); accepting pauses for {s} s at a time until it works again",
                      where=self.where, error=error, s=self.pause)
        if self._resume_call is None:
            self.port.stopReading()
            self._resume_call = self._clock.callLater(self.pause, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        if not getattr(self.port, "connected", False):
            return  # the port was closed meanwhile
        self.port.startReading()
        self._clock.callLater(self.pause, self._check, self.failures)

    def _check(self, failures: int) -> None:
        if self._short and self.failures == failures and self._resume_call is None:
            self._short = False
            _log.info("accepting connections on {where} again; {n} accepts failed, and Twisted closed "
                      "{c} waiting connections", where=self.where, n=self.failures, c=self.closed)
            self.failures = self.closed = 0


def guard_accepts(port: Any, clock: IReactorTime) -> Any:
    """
    Put an :class:`AcceptGuard` on ``port``'s accept loop (a ``tcp.Port``,
    or a ``unix.Port``, which has the same loop); return ``port``.  A port
    without that loop is returned as it is.
    """
    logger = getattr(port, "_logger", None)
    if isinstance(logger, Logger):
        port._logger = Logger(namespace=logger.namespace, observer=AcceptGuard(port, clock))
    return port


@implementer(IStreamServerEndpoint)
class GuardedEndpoint:
    """An endpoint whose listening port gets :func:`guard_accepts`."""

    def __init__(self, endpoint: IStreamServerEndpoint, clock: IReactorTime) -> None:
        self._endpoint = endpoint
        self._clock = clock

    def listen(self, protocolFactory: Any) -> Deferred[Any]:  # noqa: N803 - the interface's name
        """Listen, and guard the port's accept loop."""
        return self._endpoint.listen(protocolFactory).addCallback(guard_accepts, self._clock)


class PeerLimitedFactory(WrappingFactory["PeerProtocol"]):
    """
    Wraps a factory (the raw stream's, or the Site) so that its connections
    obey the per-peer limits.  ``connections`` (``--peer-streams`` or
    ``--peer-connections``) refuses a peer's connection past its count;
    ``throttle`` (``--peer-bandwidth``) and ``budget`` (the process's file
    descriptors) are shared by every surface.
    """

    protocol = PeerProtocol
    noisy = False

    def __init__(self, wrappedFactory: Any, clock: IReactorTime, policy: PeerPolicy, *,
                 connections: PeerConnections | None = None,
                 throttle: BandwidthThrottle | None = None,
                 budget: ConnectionBudget | None = None) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.policy = policy
        self.connections = connections
        self.throttle = throttle
        self.budget = budget
        #: Peers refused at their limit, and how often, until they have no connection left.
        self._refusals: dict[str, int] = {}
        self._all_closed: list[Deferred[None]] = []
        if IProtocolNegotiationFactory.providedBy(wrappedFactory):
            # TLS asks the factory it wraps (this one) for the ALPN protocols.
            self.acceptableProtocols = wrappedFactory.acceptableProtocols
            alsoProvides(self, IProtocolNegotiationFactory)

    def buildProtocol(self, addr: IAddress) -> PeerProtocol | None:  # type: ignore[override]
        """A limited connection for ``addr``, or None (closed at once) past a connection limit."""
        peer = peer_key(addr)
        if self.connections is not None and not self.connections.acquire(peer):
            refused = self._refusals.get(peer, 0)
            if not refused:
                _log.info("refused a connection from {peer}: it already has {n} open (further "
                          "refusals are counted until it has none)", peer=peer, n=self.connections.limit)
            self._refusals[peer] = refused + 1
            return None
        if self.budget is not None and not self.budget.acquire(peer):
            self._release(peer)
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            self._release(peer)
            if self.budget is not None:
                self.budget.release(peer)
            return None
        return PeerProtocol(self, wrapped, peer)

    def _release(self, peer: str) -> None:
        if self.connections is None:
            return
        self.connections.release(peer)
        if self.connections.count(peer) == 0:
            refused = self._refusals.pop(peer, 0)
            if refused:
                _log.info("{peer} has no connection left; {n} of its connections were refused "
                          "at the limit", peer=peer, n=refused)

    def unregisterProtocol(self, p: Any) -> None:
        """A connection closed: give its peer and the budget the slot back."""
        super().unregisterProtocol(p)
        self._release(p.peer)
        if self.budget is not None:
            self.budget.release(p.peer)
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
    one stream-connection count, one in-flight request count, and one
    connection budget (by default from ``RLIMIT_NOFILE``, see
    :func:`fd_budget`).  The rate limiter is applied by
    :func:`entropy_appliance.web.limits.limit_site`.
    """

    def __init__(self, policy: PeerPolicy, clock: IReactorTime,
                 budget: ConnectionBudget | None = None) -> None:
        self.policy = policy
        self.clock = clock
        self.inflight = InFlight()
        self.rate = PeerRateLimiter(policy.rate, clock) if policy.rate else None
        self.throttle = (BandwidthThrottle(PeerBandwidth(policy.bandwidth, clock), clock)
                         if policy.bandwidth else None)
        self.stream_connections = PeerConnections(policy.streams) if policy.streams else None
        if budget is None:
            limit = fd_budget()
            budget = ConnectionBudget(limit) if limit is not None else None
        self.budget = budget
        self._http: list[PeerLimitedFactory] = []

    def close_http(self) -> Deferred[None]:
        """Close every HTTP connection once flushed (see :meth:`PeerLimitedFactory.close_all`)."""
        d = DeferredList([f.close_all() for f in self._http])
        return d.addCallback(lambda _: None)

    def wrap_stream(self, factory: Any) -> PeerLimitedFactory:
        """The raw stream's factory behind ``--peer-streams``, bandwidth and idle timeout."""
        return PeerLimitedFactory(factory, self.clock, self.policy, connections=self.stream_connections,
                                  throttle=self.throttle, budget=self.budget)

    def wrap_http(self, site: Any, connections: int = DEFAULT_PEER_CONNECTIONS) -> PeerLimitedFactory:
        """
        The Site behind ``connections`` per peer (``--peer-connections``; 0:
        no limit), bandwidth and the idle timeout (TLS goes outside).
        """
        factory = PeerLimitedFactory(site, self.clock, self.policy,
                                     connections=PeerConnections(connections) if connections else None,
                                     throttle=self.throttle, budget=self.budget)
        self._http.append(factory)
        return factory
