"""Bodies streamed on a request (the body writer's Klein face): backpressure, disconnects, failing closed."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface.verify import verifyObject

from entropy_appliance.core.pool import FailClosed, PoolState
from entropy_appliance.net.body import BodyWriter
from entropy_appliance.web.formats import FORMATS, Format
from entropy_appliance.web.streaming import stream_body
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
        self.registered: list[Any] = []
        self.pause_each_write = pause_each_write

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer
        self.registered.append(producer)

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


def start(req: FakeRequest, pool: Any, n: int, fmt: Format,
          chunk_size: int) -> tuple[Deferred[bytes], BodyWriter]:
    """Stream ``n`` bytes on ``req`` (the first chunk generated first, as the route does)."""
    first = pool.random_bytes(min(n, fmt.chunk_size(chunk_size)), surface="http")
    done = stream_body(req, pool, n, fmt, first, chunk_size=chunk_size)  # type: ignore[arg-type]
    [writer] = req.registered
    return done, writer


def test_registers_a_push_producer_on_the_request() -> None:
    req = FakeRequest()
    _, writer = start(req, CountingPool(), 10**6, FORMATS["binary"], 4096)
    assert verifyObject(IPushProducer, writer)
    assert req.producer is writer


def test_generates_one_chunk_per_drain_and_finishes() -> None:
    pool = CountingPool()
    req = FakeRequest()
    d, p = start(req, pool, 10_000, FORMATS["hex"], 3000)
    done: list[bytes] = []
    d.addCallback(done.append)
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
    d, p = start(req, pool, 10**9, FORMATS["binary"], 4096)
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
    start(req, CountingPool(), 100_000, FORMATS["json"], 4096)
    doc = json.loads(b"".join(req.written))
    assert doc["bytes"] == 100_000 and len(base64.b64decode(doc["data"])) == 100_000
    assert len(b"".join(req.written)) == FORMATS["json"].content_length(100_000)


def test_fail_closed_mid_stream_aborts_without_finishing() -> None:
    pool = CountingPool()
    req = FakeRequest()
    d, p = start(req, pool, 10**6, FORMATS["binary"], 4096)
    done: list[Any] = []
    d.addBoth(done.append)
    pool.fail = True
    p.resumeProducing()
    assert req.channel.aborted
    assert done == []  # never reported complete; the connection loss cancels it
    assert sum(map(len, req.written)) == 4096


def starved_body() -> tuple[FakeRequest, list[Any], Any, Any, Any]:
    """A 5-chunk body whose first chunk is out and whose second waits for a reseed."""
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    req = FakeRequest(pause_each_write=False)
    first = pool.random_bytes(4096)
    pool._buffer.clear()
    clock.advance(1.0)  # a reseed is due and there is no seed for it
    done: list[Any] = []
    stream_body(req, pool, 5 * 4096, FORMATS["binary"], first, chunk_size=4096).addBoth(  # type: ignore[arg-type]
        done.append)
    assert sum(map(len, req.written)) == 4096 and done == []  # the first chunk, then a wait
    assert not req.channel.aborted
    return req, done, pool, held, clock


def test_starved_body_pauses_mid_body_and_resumes() -> None:
    req, done, _, held, clock = starved_body()
    clock.advance(20.0)
    held.deliver()
    assert done == [b""]
    assert sum(map(len, req.written)) == 5 * 4096
    assert not req.channel.aborted


def test_source_failure_while_a_body_waits_aborts_it() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    req = FakeRequest()
    d, p = start(req, pool, 10**6, FORMATS["binary"], 4096)
    done: list[Any] = []
    d.addBoth(done.append)
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


def test_source_failure_while_a_body_waits_for_seed_aborts_it() -> None:
    req, done, pool, held, _ = starved_body()
    pool.source_failed("unplugged")
    assert req.channel.aborted and req.producer is None
    assert done == [] and sum(map(len, req.written)) == 4096
    held.deliver()  # seed now is too late: nothing more is written
    assert sum(map(len, req.written)) == 4096
