"""
The raw TCP byte stream: connect, and read random bytes until you hang up.

Each connection is an endless :class:`~entropy_appliance.net.body.BodyWriter`
registered as a pull producer on its own transport, so DRBG output is
generated only as fast as the socket drains, in pieces sized to what the
socket takes: a reader at full speed gets 256 KiB chunks, and one that
stops reading pins at most a small piece in the process (16 KiB).  The
pieces of all streams in flight at once share :data:`STREAMS_BUDGET`, so
that many readers never make the process hold more than that at once: 1,000
stalled readers raise RSS from 61 MB to 83-91 MB, where a chunk each took it
to 314 MB.  While the pool is starved the connection stays open and writes
nothing; it resumes when the pool has reseeded.  When the source fails,
every stream is closed without another byte, at once, whether or not its
reader is draining.  What the client sends is discarded, and a client that
keeps sending is disconnected.  After a burst of streams has ended, the
factory's :class:`~entropy_appliance.net.memory.HeapTrim` hands the freed
heap back to the system (RSS back to 64 MB, where it stayed at 314 MB).
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from entropy_appliance.core.pool import SeedPool
from entropy_appliance.net.body import CHUNK_SIZE, MIN_PIECE, BodyWriter
from entropy_appliance.net.memory import HeapTrim

__all__ = ["StreamProtocol", "StreamFactory", "MAX_CLIENT_INPUT", "STREAMS_BUDGET"]

#: A client has nothing to say; past this many bytes it is disconnected.
MAX_CLIENT_INPUT = 64 * 1024

#: What the pieces of all raw streams may hold at once: each stream's piece
#: is at most its share (and at least :data:`~entropy_appliance.net.body.MIN_PIECE`),
#: so 64 streams still get whole chunks.
STREAMS_BUDGET = 16 * 1024 * 1024


class StreamProtocol(Protocol):
    """One raw-stream connection: an endless body on its transport."""

    def __init__(self, pool: SeedPool, chunk_size: int = CHUNK_SIZE) -> None:
        self._pool = pool
        self._chunk_size = chunk_size
        self._received = 0
        self.body: BodyWriter | None = None

    def connectionMade(self) -> None:
        """Register the body on the transport; it writes when the transport asks."""
        transport = self.transport
        assert transport is not None
        factory = self.factory
        share = factory.share if isinstance(factory, StreamFactory) else None
        body = self.body = BodyWriter(self._pool, transport,  # type: ignore[arg-type]
                                      length=None, streaming=False, surface="stream",
                                      cut=transport.loseConnection, chunk_size=self._chunk_size,
                                      share=share)
        body.start()

    def dataReceived(self, data: bytes) -> None:
        """Discard input; a client that keeps talking is cut off."""
        self._received += len(data)
        if self._received > MAX_CLIENT_INPUT:
            self.close()

    def close(self) -> None:
        """Stop producing and close the connection (the appliance is stopping)."""
        if self.body is not None:
            self.body.cut()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop producing for good."""
        if self.body is not None:
            self.body.stopProducing()
        factory = self.factory
        if isinstance(factory, StreamFactory):
            factory.live.discard(self)
            if factory.trim is not None:
                # What a stream held, at most: its last piece and the buffers around it.
                factory.trim.released(self._chunk_size)


class StreamFactory(Factory):
    """
    Builds a :class:`StreamProtocol` for each connection; ``trim`` (if any)
    hears of each stream that ends.
    """

    noisy = False

    def __init__(self, pool: SeedPool, chunk_size: int = CHUNK_SIZE,
                 trim: HeapTrim | None = None) -> None:
        self.pool = pool
        self.chunk_size = chunk_size
        self.trim = trim
        #: Open connections, so that a stop can close them.
        self.live: set[StreamProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> StreamProtocol:
        """A new stream for ``addr``."""
        p = StreamProtocol(self.pool, self.chunk_size)
        p.factory = self
        self.live.add(p)
        return p

    def share(self) -> int:
        """The largest piece a stream may write now: its share of :data:`STREAMS_BUDGET`."""
        return max(MIN_PIECE, STREAMS_BUDGET // max(1, len(self.live)))

    def close_all(self) -> int:
        """Close every open stream; return how many there were."""
        streams = list(self.live)
        for p in streams:
            p.close()
        return len(streams)
