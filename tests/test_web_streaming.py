"""The streamed-body producer: backpressure, disconnects, and failing closed mid-stream."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface.verify import verifyObject

from entropy_appliance.core.pool import FailClosed, PoolState
from entropy_appliance.web.formats import FORMATS
from entropy_appliance.web.streaming import RandomBodyProducer
from tests.test_pool import seed_fully, slow_pipeline, stuck
from tests.web_helpers import seeded_pool


class FakeChannel:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class FakeRequest:
    """A consumer that pauses its producer after every write, like a full socket buffer."""

    def __init__(self, pause_each_write: bool = True) -> None:
        self.channel = FakeChannel()
        self.written: list[bytes] = []
        self.producer: Any = None
        self.pause_each_write = pause_each_write

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.pause_each_write and self.producer is not None:
            self.producer.pauseProducing()


class CountingPool:
    """A seeded pool that records each request and can be made to fail closed."""

    def __init__(self) -> None:
        self.pool = seeded_pool()
        self.calls: list[int] = []
        self.fail = False

    def random_bytes(self, n: int, additional_input: bytes = b"", surface: str | None = None) -> bytes:
        if self.fail:
            raise FailClosed("source failed its health tests", 2.0)
        self.calls.append(n)
        return self.pool.random_bytes(n, additional_input, surface)

    def on_failure(self, callback: Any) -> Any:
        return self.pool.on_failure(callback)

    def wait(self, n: int, ready: Any, failed: Any) -> Any:
        return self.pool.wait(n, ready, failed)


def test_is_a_push_producer() -> None:
    p = RandomBodyProducer(FakeRequest(), CountingPool(), 10, FORMATS["binary"])  # type: ignore[arg-type]
    assert verifyObject(IPushProducer, p)


def test_generates_one_chunk_per_drain_and_finishes() -> None:
    pool = CountingPool()
    req = FakeRequest()
    p = RandomBodyProducer(req, pool, 10_000, FORMATS["hex"], chunk_size=3000)  # type: ignore[arg-type]
    done: list[bytes] = []
    p.start().addCallback(done.append)
    # Paused after the first write: only one chunk exists until the consumer drains.
    assert pool.calls == [3000] and len(req.written) == 1
    for _ in range(10):
        if done:
            break
        p.resumeProducing()
    assert pool.calls == [3000, 3000, 3000, 1000]
    assert done == [b""] and req.producer is None
    assert len(b"".join(req.written)) == 20_000


def test_disconnect_cancels_and_stops_generation() -> None:
    pool = CountingPool()
    req = FakeRequest()
    p = RandomBodyProducer(req, pool, 10**9, FORMATS["binary"], chunk_size=4096)  # type: ignore[arg-type]
    d = p.start()
    errors: list[Any] = []
    d.addErrback(errors.append)
    d.cancel()
    assert errors and req.producer is None
    p.resumeProducing()
    p.stopProducing()
    assert pool.calls == [4096]


def test_json_stream_is_valid_whole() -> None:
    import base64
    import json

    req = FakeRequest(pause_each_write=False)
    p = RandomBodyProducer(req, CountingPool(), 100_000, FORMATS["json"], chunk_size=4096)  # type: ignore[arg-type]
    p.start()
    doc = json.loads(b"".join(req.written))
    assert doc["bytes"] == 100_000 and len(base64.b64decode(doc["data"])) == 100_000
    assert len(b"".join(req.written)) == FORMATS["json"].content_length(100_000)


def test_fail_closed_mid_stream_aborts_without_finishing() -> None:
    pool = CountingPool()
    req = FakeRequest()
    p = RandomBodyProducer(req, pool, 10**6, FORMATS["binary"], chunk_size=4096)  # type: ignore[arg-type]
    done: list[Any] = []
    p.start().addBoth(done.append)
    pool.fail = True
    p.resumeProducing()
    assert req.channel.aborted
    assert done == []  # never reported complete; the connection loss cancels it
    assert sum(map(len, req.written)) == 4096


def test_starved_body_pauses_mid_body_and_resumes() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    req = FakeRequest(pause_each_write=False)
    p = RandomBodyProducer(req, pool, 5 * 4096, FORMATS["binary"], chunk_size=4096)  # type: ignore[arg-type]
    done: list[Any] = []
    pool._buffer.clear()
    clock.advance(1.0)  # a reseed is due and there is no seed for it
    p.start().addBoth(done.append)
    assert req.written == [] and done == []
    assert not req.channel.aborted
    clock.advance(20.0)
    held.deliver()
    assert done == [b""]
    assert sum(map(len, req.written)) == 5 * 4096
    assert not req.channel.aborted


def test_source_failure_while_a_body_waits_aborts_it() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    req = FakeRequest()
    p = RandomBodyProducer(req, pool, 10**6, FORMATS["binary"], chunk_size=4096)  # type: ignore[arg-type]
    done: list[Any] = []
    p.start().addBoth(done.append)
    assert sum(map(len, req.written)) == 4096  # then the slow client's socket is full
    source.make = stuck
    pool._buffer.clear()
    clock.advance(1.0)
    pool.tick()
    held.deliver(3)
    assert pool.status().state is PoolState.FAILED
    assert req.channel.aborted  # at once, though the client has not drained its socket
    assert done == []
    assert sum(map(len, req.written)) == 4096
