"""
The raw TCP byte stream: connect, and read random bytes until you hang up.

Each connection registers a pull producer on its own transport, so DRBG
output is generated only as fast as the socket drains: a slow reader never
makes the process buffer more than one chunk.  While the pool is starved the
connection stays open and writes nothing; it resumes when the pool has
reseeded.  When the source fails, every stream is closed without another
byte (the factory watches the pool).  What the client sends is discarded,
and a client that keeps sending is disconnected.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IConsumer, IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from entropy_appliance.core.pool import FailClosed, SeedPool, Starved
from entropy_appliance.net.waiting import when_ready

__all__ = ["StreamProtocol", "StreamFactory", "CHUNK_SIZE", "MAX_CLIENT_INPUT"]

#: Bytes generated per resumeProducing: large enough to amortise the
#: per-call overhead, small enough that a slow reader holds little memory.
CHUNK_SIZE = 256 * 1024

#: A client has nothing to say; past this many bytes it is disconnected.
MAX_CLIENT_INPUT = 64 * 1024


@implementer(IPullProducer)
class StreamProtocol(Protocol):
    """One raw-stream connection: a pull producer on its transport."""

    log = Logger()

    def __init__(self, pool: SeedPool, chunk_size: int = CHUNK_SIZE) -> None:
        self._pool = pool
        self._chunk_size = chunk_size
        self._done = False
        self._received = 0
        self._waiting: Deferred[None] | None = None

    def connectionMade(self) -> None:
        """Start producing as soon as the client connects."""
        transport = self.transport
        # Twisted sends at most SEND_LIMIT bytes per writable event; one
        # whole chunk per send halves the reactor turns per byte.
        if getattr(transport, "SEND_LIMIT", self._chunk_size) < self._chunk_size:
            transport.SEND_LIMIT = self._chunk_size  # type: ignore[union-attr]
        cast(IConsumer, transport).registerProducer(self, False)

    def resumeProducing(self) -> None:
        """
        Write one chunk of DRBG output; wait while the pool is starved;
        close if it fails closed.
        """
        if self._done or self._waiting is not None:
            return
        assert self.transport is not None
        try:
            data = self._pool.random_bytes(self._chunk_size, surface="stream")
        except Starved:
            # Nothing is written, so the transport will not ask again: the
            # pool's wait does, once it has reseeded.
            self._waiting = when_ready(self._pool, self._chunk_size)
            self._waiting.addCallbacks(self._seeded, self._failed)
            return
        except FailClosed as e:
            self._failed_with(e)
            return
        self.transport.write(data)

    def _seeded(self, _: object) -> None:
        self._waiting = None
        self.resumeProducing()

    def _failed(self, failure: Failure) -> None:
        self._waiting = None
        if isinstance(failure.value, FailClosed):
            self._failed_with(failure.value)

    def _failed_with(self, e: FailClosed) -> None:
        if not self._done:
            self.log.warn("closing raw stream: {reason}", reason=e.reason)
            self._finish()

    def pauseProducing(self) -> None:
        """Pull producers are never paused; part of the interface only."""

    def stopProducing(self) -> None:
        """The transport is going away: produce nothing more."""
        self._done = True
        self._stop_waiting()

    def _stop_waiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.addErrback(lambda _: None)
            waiting.cancel()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        assert self.transport is not None
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Discard input; a client that keeps talking is cut off."""
        self._received += len(data)
        if self._received > MAX_CLIENT_INPUT and not self._done:
            self._finish()

    def close(self) -> None:
        """Stop producing and close the connection (the appliance is stopping)."""
        if self.transport is None:
            self._done = True
            return
        self._finish()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        """Stop producing for good."""
        self._done = True
        self._stop_waiting()
        factory = self.factory
        if isinstance(factory, StreamFactory):
            factory.live.discard(self)


class StreamFactory(Factory):
    """Builds a :class:`StreamProtocol` for each connection."""

    noisy = False

    def __init__(self, pool: SeedPool, chunk_size: int = CHUNK_SIZE) -> None:
        self.pool = pool
        self.chunk_size = chunk_size
        #: Open connections, so that a stop or a failed source can close them.
        self.live: set[StreamProtocol] = set()
        # A stream that is waiting on a full socket would otherwise learn of
        # a failed source only when its reader next drains it.
        pool.on_failure(self._source_failed)

    def _source_failed(self, e: FailClosed) -> None:
        for p in list(self.live):
            p._failed_with(e)

    def buildProtocol(self, addr: IAddress | None) -> StreamProtocol:
        """A new stream for ``addr``."""
        p = StreamProtocol(self.pool, self.chunk_size)
        p.factory = self
        self.live.add(p)
        return p

    def close_all(self) -> int:
        """Close every open stream; return how many there were."""
        streams = list(self.live)
        for p in streams:
            p.close()
        return len(streams)
