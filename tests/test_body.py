"""The one body writer, in memory: its order of ending, the in-flight count, and calls out of turn."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from entropy_appliance.net.body import CHUNK_SIZE, BodyWriter, first_chunk
from entropy_appliance.net.limits import InFlight
from entropy_appliance.web.formats import FORMATS
from tests.test_pool import seed_fully, slow_pipeline
from tests.web_helpers import seeded_pool


class Recorder(StringTransport):
    """A transport that logs what happens to it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def unregisterProducer(self) -> None:
        self.events.append("unregister")
        super().unregisterProducer()

    def abortConnection(self) -> None:
        self.events.append("abort")
        super().abortConnection()


def writer(transport: Recorder, n: int | None, **kwargs: Any) -> BodyWriter:
    inflight = kwargs.pop("inflight", None)
    pool = kwargs.pop("pool", None) or seeded_pool()
    return BodyWriter(pool, transport, length=n, streaming=kwargs.pop("streaming", False),
                      cut=lambda: transport.events.append("cut"),
                      complete=lambda: transport.events.append("complete"),
                      ended=lambda: transport.events.append("ended"),
                      inflight=inflight, chunk_size=kwargs.pop("chunk_size", 4096), **kwargs)


def test_provides_both_producer_interfaces() -> None:
    w = writer(Recorder(), 10)
    assert verifyObject(IPullProducer, w) and verifyObject(IPushProducer, w)


def test_one_chunk_size_for_every_surface() -> None:
    assert CHUNK_SIZE == 256 * 1024
    assert first_chunk(10) == 10 and first_chunk(10**9) == CHUNK_SIZE
    assert first_chunk(10**9, FORMATS["base64"]) % 3 == 0


def test_completion_unregisters_then_finishes_then_stops() -> None:
    transport = Recorder()
    inflight = InFlight()
    w = writer(transport, 10_000, head=b"HEAD\r\n", inflight=inflight)
    assert inflight.count == 1
    w.start()
    # The head goes out with the first chunk at once; the rest when asked.
    assert transport.value().startswith(b"HEAD\r\n") and len(transport.value()) == 6 + 4096
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert len(transport.value()) == 6 + 10_000
    assert transport.events == ["unregister", "complete", "ended"]
    assert inflight.count == 0 and w.ended


def test_a_cut_writes_nothing_more_and_ends_once() -> None:
    transport = Recorder()
    inflight = InFlight()
    w = writer(transport, 10**6, inflight=inflight)
    w.start()
    w.resumeProducing()
    sent = len(transport.value())
    w.cut("the appliance is stopping")
    w.cut()
    w.resumeProducing()
    w.stopProducing()
    assert len(transport.value()) == sent
    assert transport.events == ["ended", "unregister", "cut"]
    assert inflight.count == 0


def test_stop_producing_is_idempotent_and_final() -> None:
    transport = Recorder()
    w = writer(transport, None)
    w.start()
    w.resumeProducing()
    w.stopProducing()
    w.stopProducing()
    w.resumeProducing()
    assert len(transport.value()) == 4096
    assert transport.events == ["ended"]


def test_a_push_writer_writes_until_paused() -> None:
    transport = Recorder()
    w = writer(transport, 10 * 4096, streaming=True)
    original = transport.write

    def write_then_pause(data: bytes) -> None:
        original(data)
        if len(transport.value()) == 3 * 4096:
            w.pauseProducing()

    transport.write = write_then_pause  # type: ignore[method-assign]
    w.start()
    assert len(transport.value()) == 3 * 4096
    w.resumeProducing()  # not paused again until full: the rest at once
    assert len(transport.value()) == 10 * 4096
    assert transport.events == ["unregister", "complete", "ended"]


def test_a_resume_from_inside_a_write_does_not_recurse() -> None:
    transport = Recorder()
    w = writer(transport, 10**6)
    calls: list[int] = []
    original = transport.write

    def write_and_ask(data: bytes) -> None:
        calls.append(len(data))
        original(data)
        w.resumeProducing()  # a consumer that asks again at once

    transport.write = write_and_ask  # type: ignore[method-assign]
    w.start()
    w.resumeProducing()
    assert calls == [4096]


def test_a_paused_push_writer_writes_nothing_after_a_reseed() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    pool._buffer.clear()
    clock.advance(1.0)  # a reseed is due and there is no seed
    transport = Recorder()
    w = writer(transport, 5 * 4096, pool=pool, streaming=True)
    w.start()
    assert transport.value() == b""
    w.pauseProducing()  # the consumer filled up meanwhile
    held.deliver()
    assert transport.value() == b""
    w.resumeProducing()
    assert len(transport.value()) == 5 * 4096


def test_a_failure_cuts_an_idle_writer_at_once() -> None:
    pool = seeded_pool()
    transport = Recorder()
    w = writer(transport, 10**6, pool=pool)
    w.start()
    w.resumeProducing()  # one chunk; the consumer asks for no more
    pool.source_failed("unplugged")
    assert transport.events == ["ended", "unregister", "cut"]
    assert len(transport.value()) == 4096
