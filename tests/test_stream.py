"""The raw TCP byte stream, in memory."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from entropy_appliance.health import HealthTests
from entropy_appliance.pool import ReseedPolicy, SeedPool
from entropy_appliance.stream import MAX_CLIENT_INPUT, StreamFactory, StreamProtocol
from tests.test_pool import FakeSource, pipeline, stuck


def connect(pool: SeedPool, chunk: int = 4096) -> tuple[StreamProtocol, StringTransport]:
    proto = StreamFactory(pool, chunk).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_registers_a_pull_producer() -> None:
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool)
    assert verifyObject(IPullProducer, proto)
    assert transport.producer is proto
    assert transport.streaming is False


def test_backpressure_one_chunk_per_pull() -> None:
    """Nothing is written until the transport asks; then one chunk per ask."""
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool, chunk=4096)
    assert transport.value() == b""
    # A slow reader: the transport asks three times in all.
    for _ in range(3):
        proto.resumeProducing()
    data = transport.value()
    assert len(data) == 3 * 4096
    assert len(set(data[i:i + 16] for i in range(0, len(data), 16))) == len(data) // 16
    assert pool.status()["served"]["stream"] == 3 * 4096


def test_stops_on_connection_lost() -> None:
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool)
    proto.resumeProducing()
    proto.connectionLost()
    before = len(transport.value())
    proto.resumeProducing()
    assert len(transport.value()) == before


def test_fail_closed_closes_without_sending() -> None:
    source = FakeSource()
    pool, _, clock = pipeline(source)
    proto, transport = connect(pool)
    proto.resumeProducing()
    sent = len(transport.value())
    source.make = stuck
    while pool.status()["source"]["state"] != "failed":
        pool.take_raw(512) if pool.status()["pool"]["fill_bytes"] > 2048 else pool.nudge()
    clock.advance(1.0)
    proto.resumeProducing()
    assert len(transport.value()) == sent
    assert transport.disconnecting
    assert transport.producer is None


def test_never_seeded_closes_at_once() -> None:
    pool = SeedPool(Clock(), HealthTests(8.0), ReseedPolicy())
    proto, transport = connect(pool)
    proto.resumeProducing()
    assert transport.value() == b""
    assert transport.disconnecting


def test_client_input_is_discarded_and_bounded() -> None:
    pool, _, _ = pipeline(FakeSource())
    proto, transport = connect(pool)
    proto.dataReceived(b"x" * 1000)
    assert not transport.disconnecting
    proto.dataReceived(b"x" * MAX_CLIENT_INPUT)
    assert transport.disconnecting
