"""
The EGD server: the Twisted face of :class:`~entropy_appliance.core.egd.EgdSession`,
for QEMU's ``rng-egd`` (virtio-rng in virtual machines), ``egd-linux`` and
any other Entropy Gathering Daemon client.

Each connection answers its requests in order as the pool allows:

- a 0x02 that must wait for seed (the pool is starved) holds back the
  replies behind it, and the connection stays open; when the pool has
  reseeded, they go out;
- when the pool has failed, a 0x02 closes the connection without a byte of
  its reply (0x00 and 0x01 answer 0 meanwhile);
- an unknown command closes the connection, logged at debug level only;
- the backlog is bounded twice: the connection registers as a push
  producer on its transport, so it stops answering while its reader does
  not read (its replies are never buffered without limit), and it stops
  reading (``pauseProducing`` on the transport) while
  :data:`~entropy_appliance.core.egd.DEFAULT_BACKLOG` requests are
  unanswered, until they drain.

Replies leave at once: Twisted's transports only buffer what is written
and send it on the reactor's next writable event, which costs an EGD round
trip a second reactor iteration after the one that read the requests.
:class:`SendNow` sends what the write buffered while still in that first
iteration, whenever nothing was left unsent before it (the transport still
registers for writing and unregisters once all is sent: two ``epoll_ctl``
calls, about 1 us); it is the one place that reaches into Twisted's
``FileDescriptor``.

The per-peer limits (``--peer-streams``, ``--peer-bandwidth``,
``--idle-timeout``) wrap the factory as they wrap the raw stream's
(:meth:`~entropy_appliance.net.limits.PeerGuard.wrap_stream`); the idle
timeout closes a connection only while it owes its client replies
(:meth:`EgdProtocol.quiet_by_right`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from entropy_appliance.core.egd import DEFAULT_BACKLOG, EgdSession
from entropy_appliance.core.pool import FailClosed, SeedPool
from entropy_appliance.net.waiting import when_ready

__all__ = ["EgdProtocol", "EgdFactory", "SendNow"]

#: What :class:`SendNow` relies on in ``twisted.internet.abstract.FileDescriptor``:
#: ``doWrite`` sends the buffer (``dataBuffer`` holds what an earlier send left,
#: ``write`` appends to ``_tempDataBuffer``), and the flags that say whether
#: the connection is still open for writing.
TWISTED_INTERNALS = ("doWrite", "dataBuffer", "_tempDataBuffer", "connected", "disconnecting",
                     "_writeDisconnecting")


class SendNow:
    """
    Sends what a connection's transport buffered without waiting for the
    reactor's next writable event.

    ``doWrite`` is what the reactor calls when the socket can take more;
    calling it early is what an early writable event would do, so every
    wrapper above the file descriptor (the per-peer guard, PROXY, TLS)
    has done its part in ``write`` already.  It is called only while the
    connection is open for writing and its socket took everything before
    (nothing of an earlier send is left): otherwise the socket is full or
    closing, and the reactor sends as before.  A send that fails leaves the
    descriptor registered for writing, so the reactor sees the error.  Back
    pressure is unchanged: what the socket does not take stays buffered, and
    the transport pauses its producer past its buffer size.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: FileDescriptor) -> None:
        self.fd = fd

    @classmethod
    def find(cls, transport: object) -> SendNow | None:
        """
        The :class:`SendNow` of the file descriptor under ``transport`` and
        its wrappers (each wrapper's ``transport``), or None if there is none
        (a test's transport, a TLS layer's bypass) or Twisted's internals are
        not what it relies on.
        """
        t = transport
        for _ in range(8):
            if isinstance(t, FileDescriptor):
                return cls(t) if all(hasattr(t, name) for name in TWISTED_INTERNALS) else None
            t = getattr(t, "transport", None)
            if t is None:
                return None
        return None

    def __call__(self) -> None:
        """Send what was buffered since the socket last took everything."""
        fd: Any = self.fd
        if (fd._tempDataBuffer and not fd.dataBuffer and fd.connected and not fd.disconnecting
                and not fd._writeDisconnecting):
            fd.doWrite()


@implementer(IPushProducer)
class EgdProtocol(Protocol):
    """One EGD connection; see the module docstring."""

    log = Logger()

    def __init__(self, pool: SeedPool, backlog: int = DEFAULT_BACKLOG,
                 pid: int | Callable[[], int] = os.getpid) -> None:
        self._pool = pool
        self.session = EgdSession(pool, pid, backlog)
        #: The transport asked us to stop writing (its reader is behind).
        self._paused = False
        #: We asked the transport to stop reading (the backlog is full).
        self.reading_paused = False
        self._waiting: Deferred[None] | None = None
        self._busy = False
        self._done = False
        self._send_now: SendNow | None = None

    def connectionMade(self) -> None:
        """Answer as the transport drains: a push producer on it."""
        transport: Any = self.transport
        assert transport is not None
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None:
            # Replies are small and answer requests: Nagle's algorithm would hold
            # one back until the client acknowledged the one before.
            try:
                no_delay(True)
            except OSError:
                pass  # a unix socket: nothing to turn off
        transport.registerProducer(self, True)
        self._send_now = SendNow.find(transport)

    def dataReceived(self, data: bytes) -> None:
        """Queue the requests in ``data`` and answer what can be answered."""
        if self._done:
            return
        self.session.receive(data)
        self._pump()

    # -- IPushProducer: the transport's side --------------------------------------

    def pauseProducing(self) -> None:
        """The reader is behind: answer nothing more until it catches up."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The reader caught up: answer on."""
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The connection is going away."""
        self._finish()

    def quiet_by_right(self) -> bool:
        """
        True while nothing is owed the client: every request it sent is
        answered.  The idle timeout then lets the connection be: QEMU keeps
        one open for the life of a virtual machine and asks only when its
        guest wants entropy.  A connection that owes replies (its client
        does not read them, or they wait for seed) is idle as a raw stream
        is.
        """
        return not self._done and self.session.pending == 0 and self.session.buffered == 0

    # -- answering ------------------------------------------------------------------

    def _pump(self) -> None:
        """Answer in order until a reply must wait, the reader is behind, or all are answered."""
        if self._busy or self._done:
            return
        self._busy = True
        try:
            while not self._paused and self._waiting is None and not self._done:
                step = self.session.step()
                if step.out:
                    self._write(step.out)
                if step.close:
                    self._close(step.reason)
                    return
                if step.wait:
                    self._wait(step.wait)
                elif not step.more:
                    break
        finally:
            self._busy = False
        self._flow()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self._send_now is not None:
            self._send_now()

    def _wait(self, n: int) -> None:
        """The head request waits until the pool can give ``n`` bytes, or fails."""
        d = self._waiting = when_ready(self._pool, n)
        d.addCallbacks(self._ready, self._failed)

    def _ready(self, _: object) -> None:
        self._waiting = None
        self._pump()

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # withdrawn: the connection is gone
        self._waiting = None
        if failure.check(FailClosed):
            self._close(f"the seed pool has failed ({failure.value})")
        else:
            self.log.failure("waiting for seed", failure)
            self._close("internal error")

    def _flow(self) -> None:
        """Read while the backlog has room; stop reading while it is full."""
        transport: Any = self.transport
        if self._done or transport is None:
            return
        wants = self.session.wants_input
        if wants and self.reading_paused:
            self.reading_paused = False
            transport.resumeProducing()
        elif not wants and not self.reading_paused:
            self.reading_paused = True
            transport.pauseProducing()

    def _close(self, reason: str) -> None:
        """End the connection after what was answered (nothing more is answered)."""
        if self._done:
            return
        self.log.debug("closing EGD connection from {peer}: {reason}",
                       peer=self.transport.getPeer() if self.transport is not None else None,
                       reason=reason)
        self._finish()
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()
            transport.loseConnection()

    def close(self) -> None:
        """Close the connection (the appliance is stopping)."""
        self._close("the appliance is stopping")

    def _finish(self) -> None:
        self._done = True
        self.session.closed = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Withdraw any wait for seed."""
        self._finish()
        factory = self.factory
        if isinstance(factory, EgdFactory):
            factory.live.discard(self)


class EgdFactory(Factory):
    """Builds an :class:`EgdProtocol` per connection, over one pool."""

    noisy = False

    def __init__(self, pool: SeedPool, backlog: int = DEFAULT_BACKLOG,
                 pid: int | Callable[[], int] = os.getpid) -> None:
        self.pool = pool
        self.backlog = backlog
        self.pid = pid
        #: Open connections, so that a stop can close them.
        self.live: set[EgdProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> EgdProtocol:
        """A new EGD connection for ``addr``."""
        p = EgdProtocol(self.pool, self.backlog, self.pid)
        p.factory = self
        self.live.add(p)
        return p

    def close_all(self) -> int:
        """Close every open connection; return how many there were."""
        connections = list(self.live)
        for p in connections:
            p.close()
        return len(connections)
