"""The raw TCP byte stream, in memory."""

from __future__ import annotations

import socket
import sys

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from entropy_appliance.core.pool import SeedPool
from entropy_appliance.core.states import PoolState, SourceState
from entropy_appliance.net.body import CHUNK_SIZE, MIN_PIECE, BodyWriter
from entropy_appliance.net.memory import HeapTrim, malloc_trim
from entropy_appliance.net.stream import MAX_CLIENT_INPUT, STREAMS_BUDGET, StreamFactory, StreamProtocol
from tests.test_pool import FakeSource, pipeline, seed_fully, slow_pipeline, stuck


def connect(pool: SeedPool, chunk: int = 4096) -> tuple[StreamProtocol, StringTransport]:
    proto = StreamFactory(pool, chunk).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def ask(proto: StreamProtocol) -> None:
    """The transport asks the stream's producer for more, as a draining socket does."""
    assert proto.body is not None
    proto.body.resumeProducing()


def test_registers_a_pull_producer() -> None:
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool)
    assert isinstance(proto.body, BodyWriter)
    assert verifyObject(IPullProducer, proto.body)
    assert transport.producer is proto.body
    assert transport.streaming is False


def test_backpressure_one_chunk_per_pull() -> None:
    """Nothing is written until the transport asks; then one chunk per ask."""
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool, chunk=4096)
    assert transport.value() == b""
    # A slow reader: the transport asks three times in all.
    for _ in range(3):
        ask(proto)
    data = transport.value()
    assert len(data) == 3 * 4096
    assert len(set(data[i:i + 16] for i in range(0, len(data), 16))) == len(data) // 16
    assert pool.status().served["stream"] == 3 * 4096


def test_stops_on_connection_lost() -> None:
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool)
    ask(proto)
    proto.connectionLost()
    before = len(transport.value())
    ask(proto)
    assert len(transport.value()) == before


def test_fail_closed_closes_without_sending() -> None:
    source = FakeSource()
    pool, _, clock = pipeline(source)
    proto, transport = connect(pool)
    ask(proto)
    sent = len(transport.value())
    source.make = stuck
    while pool.status().source.state is not SourceState.FAILED:
        pool.take_raw(512) if pool.status().buffer.fill_bytes > 2048 else pool.nudge()
    clock.advance(1.0)
    ask(proto)
    assert len(transport.value()) == sent
    assert transport.disconnecting
    assert transport.producer is None


def test_connection_before_the_first_seed_waits_then_flows() -> None:
    pool, source, held, clock = slow_pipeline()
    proto, transport = connect(pool)
    ask(proto)
    assert transport.value() == b""
    assert not transport.disconnecting
    seed_fully(pool, held)
    assert len(transport.value()) == 4096


def test_starved_stream_pauses_and_resumes_without_hanging_up() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    proto, transport = connect(pool)
    ask(proto)
    assert len(transport.value()) == 4096
    pool._buffer.clear()
    clock.advance(1.0)  # a reseed is due, and the buffer is empty
    ask(proto)
    ask(proto)  # asked again while waiting: still nothing, no double wait
    assert len(transport.value()) == 4096
    assert not transport.disconnecting
    assert pool.status().state is PoolState.STARVED
    clock.advance(30.0)
    assert not transport.disconnecting
    held.deliver()
    assert len(transport.value()) == 2 * 4096
    assert pool.status().state is PoolState.OK
    assert pool.status().starved.waits == 1


def test_source_failure_closes_waiting_and_idle_streams() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    idle, idle_transport = connect(pool)
    ask(idle)  # wrote a chunk; its reader is slow, so no more asks
    sent = len(idle_transport.value())
    pool._buffer.clear()
    clock.advance(1.0)
    waiting, waiting_transport = connect(pool)
    ask(waiting)
    assert not waiting_transport.disconnecting
    source.make = stuck
    held.deliver(3)
    assert pool.status().state is PoolState.FAILED
    assert waiting_transport.disconnecting and waiting_transport.value() == b""
    assert idle_transport.disconnecting and len(idle_transport.value()) == sent
    # A new connection while failed gets nothing and is closed at once.
    late, late_transport = connect(pool)
    ask(late)
    assert late_transport.value() == b"" and late_transport.disconnecting


def test_client_input_is_discarded_and_bounded() -> None:
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool)
    proto.dataReceived(b"x" * 1000)
    assert not transport.disconnecting
    proto.dataReceived(b"x" * MAX_CLIENT_INPUT)
    assert transport.disconnecting


# -- what a stream holds, and gives back ----------------------------------------


class SocketTransport(StringTransport):
    """A transport whose kernel send queue is that of a real socket, which nobody reads."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def getHandle(self) -> socket.socket:  # noqa: N802 - the transport's name
        return self._sock


def test_a_stream_starts_small_and_grows_while_its_socket_takes_it() -> None:
    pool, _, _ = pipeline(FakeSource())
    a, b = socket.socketpair()
    with a, b:
        proto = StreamFactory(pool).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = SocketTransport(a)
        proto.makeConnection(transport)
        sizes = []
        for _ in range(5):
            before = len(transport.value())
            ask(proto)
            sizes.append(len(transport.value()) - before)
        if sys.platform.startswith("linux"):
            assert sizes == [2 * MIN_PIECE, 4 * MIN_PIECE, 8 * MIN_PIECE, CHUNK_SIZE, CHUNK_SIZE]
        else:
            assert sizes == [CHUNK_SIZE] * 5


def test_a_stream_whose_reader_stops_writes_small_pieces() -> None:
    pool, _, _ = pipeline(FakeSource())
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        try:
            while True:
                a.send(b"x" * 65536)
        except BlockingIOError:
            pass
        proto = StreamFactory(pool).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = SocketTransport(a)
        proto.makeConnection(transport)
        for _ in range(8):
            before = len(transport.value())
            ask(proto)
        last = len(transport.value()) - before
        assert last == (MIN_PIECE if sys.platform.startswith("linux") else CHUNK_SIZE)


def test_the_factory_trims_the_heap_after_a_burst_of_ended_streams() -> None:
    pool, _, _ = pipeline(FakeSource())
    clock = Clock()
    trims: list[int] = []
    trim = HeapTrim(clock, threshold=10 * 4096, delay=1.0, trim=lambda: bool(trims.append(1)))
    factory = StreamFactory(pool, 4096, trim=trim)
    streams = []
    for port in range(20):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        proto.makeConnection(StringTransport())
        streams.append(proto)
    for proto in streams[:9]:
        proto.connectionLost()
    clock.advance(5)
    assert trims == []
    for proto in streams[9:]:
        proto.connectionLost()
    clock.advance(0.5)
    assert trims == []
    # One trim for the whole burst, a second after it passed the threshold.
    clock.advance(0.5)
    assert trims == [1] and trim.trims == 1
    clock.advance(10)
    assert trims == [1]


def test_malloc_trim_answers_whether_it_gave_memory_back() -> None:
    assert malloc_trim() in (True, False)


def test_streams_share_one_budget_for_their_pieces() -> None:
    pool, _, _ = pipeline(FakeSource())
    factory = StreamFactory(pool)
    assert factory.share() == STREAMS_BUDGET
    for port in range(2000):
        factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    # 2,000 streams: each may hold the smallest piece, never less.
    assert factory.share() == MIN_PIECE
    for proto in list(factory.live)[:1000]:
        proto.connectionLost()
    # 1,000: together they hold the budget at most.
    assert MIN_PIECE <= factory.share() and 1000 * factory.share() <= STREAMS_BUDGET
    for proto in list(factory.live)[:936]:
        proto.connectionLost()
    assert factory.share() == STREAMS_BUDGET // 64 == CHUNK_SIZE
