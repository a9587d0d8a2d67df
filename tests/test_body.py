"""The one body writer, in memory: its order of ending, the in-flight count, and calls out of turn."""

from __future__ import annotations

import gc
import socket
import sys
import weakref
from typing import Any

import pytest
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from entropy_appliance.net.body import CHUNK_SIZE, MIN_PIECE, BodyWriter, first_chunk, send_queue
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


# -- a body made already ----------------------------------------------------------


def test_parts_are_written_about_a_chunk_at_a_time_and_let_go() -> None:
    transport = Recorder()
    parts = [bytes([i]) * 1000 for i in range(10)]
    w = writer(transport, 10_000, parts=parts, streaming=True)
    original = transport.write
    writes: list[int] = []

    def write_then_pause(data: bytes) -> None:
        writes.append(len(data))
        original(data)
        w.pauseProducing()

    transport.write = write_then_pause  # type: ignore[method-assign]
    w.start()
    # At most a chunk (4096 here) per write, in whole parts, in order.
    assert writes == [4000]
    w.resumeProducing()
    w.resumeProducing()
    assert writes == [4000, 4000, 2000]
    assert transport.value() == b"".join(parts)
    assert transport.events == ["unregister", "complete", "ended"]


def test_parts_are_cut_when_the_source_fails() -> None:
    pool = seeded_pool()
    transport = Recorder()
    w = writer(transport, 100_000, pool=pool, parts=[b"x" * 1000] * 100)
    w.start()
    w.resumeProducing()
    pool.source_failed("unplugged")
    assert transport.events == ["ended", "unregister", "cut"]
    assert len(transport.value()) == 4000


def test_parts_that_fall_short_of_the_length_are_an_error() -> None:
    w = writer(Recorder(), 5000, parts=[b"x" * 1000])
    w.start()
    w.resumeProducing()
    with pytest.raises(ValueError):
        w.resumeProducing()


# -- pieces the socket takes ------------------------------------------------------


def pieces(queue: list[int | None], chunk: int = CHUNK_SIZE, buffer: int = 512 << 10) -> list[int]:
    """
    The sizes a pull writer writes while its send queue (of ``buffer``
    bytes) holds ``queue`` bytes, one reading per ask.  (With a buffer below
    three chunks the queue is read at every ask.)
    """
    transport = Recorder()
    readings = iter(None if q is None else (q, buffer) for q in queue)
    w = writer(transport, None, chunk_size=chunk, queued=lambda: next(readings))
    sizes: list[int] = []
    original = transport.write
    transport.write = lambda data: (sizes.append(len(data)), original(data))  # type: ignore[method-assign]
    w.start()
    for _ in queue:
        w.resumeProducing()
    return sizes


def test_the_piece_doubles_while_the_reader_keeps_up() -> None:
    sizes = pieces([0] * 7)
    assert sizes == [32768, 65536, 131072, 262144, 262144, 262144, 262144]


def test_the_piece_halves_while_the_send_queue_grows() -> None:
    full = 512 << 10
    sizes = pieces([0, 0, 0, 0, full, full, full, full, full, 0])
    assert sizes == [32768, 65536, 131072, 262144, 131072, 65536, 32768, MIN_PIECE, MIN_PIECE,
                     32768]


def test_at_full_chunks_the_queue_is_read_before_it_could_fill() -> None:
    transport = Recorder()
    buffer = 4 << 20
    readings: list[int] = []

    def queued() -> tuple[int, int]:
        readings.append(len(transport.value()))
        return 0, buffer

    w = writer(transport, None, chunk_size=CHUNK_SIZE, queued=queued)
    w.start()
    for _ in range(40):
        w.resumeProducing()
    # Read at each step of the ramp, then once every 8 chunks: never more
    # than half the buffer written between two readings (which the kernel
    # counts as up to three quarters).
    assert len(readings) == 4 + 4
    gaps = [b - a for a, b in zip(readings[3:], readings[4:], strict=False)]
    assert gaps and all(gap <= buffer // 2 for gap in gaps)


def test_a_small_send_buffer_counts_as_full_sooner() -> None:
    transport = Recorder()
    # A unix socket's buffer: 208 KiB, of which 100 KiB are queued.
    w = writer(transport, None, chunk_size=CHUNK_SIZE, queued=lambda: (100 << 10, 208 << 10))
    w.start()
    w.resumeProducing()
    w.resumeProducing()
    assert w.piece == MIN_PIECE


def test_an_unreadable_send_queue_means_whole_chunks() -> None:
    assert pieces([0, None, 0, 0]) == [32768, CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE]


def test_pieces_keep_an_encodings_granule() -> None:
    transport = Recorder()
    w = writer(transport, 10**6, encoding=FORMATS["base64"], chunk_size=CHUNK_SIZE,
               queued=lambda: (0, 4 << 20))
    assert w.piece % 3 == 0
    w.start()
    w.resumeProducing()
    assert w.piece % 3 == 0


def test_a_push_writer_or_a_plain_transport_writes_chunks() -> None:
    assert send_queue(StringTransport()) is None
    w = writer(Recorder(), None, streaming=True, chunk_size=CHUNK_SIZE)
    assert w.piece == CHUNK_SIZE


def test_the_send_queue_of_a_real_socket_is_read() -> None:
    a, b = socket.socketpair()
    with a, b:
        transport = StringTransport()
        transport.getHandle = lambda: a  # type: ignore[attr-defined]
        queued = send_queue(transport)
        if not sys.platform.startswith("linux"):
            # SO_MEMINFO is Linux's: elsewhere every piece is a chunk.
            assert queued is None
            return
        assert queued is not None
        held, size = queued() or (-1, 0)
        assert held == 0 and size > 0
        a.setblocking(False)
        sent = 0
        try:
            while sent < 10 * 1024 * 1024:
                sent += a.send(b"x" * 65536)
        except BlockingIOError:
            pass
        # The peer reads nothing: the kernel holds what was sent.
        held, size = queued() or (0, 0)
        assert held > 0


# -- the end lets go ---------------------------------------------------------------


def test_an_ended_writer_is_freed_without_a_garbage_collection() -> None:
    pool = seeded_pool()
    transport = Recorder()
    w = writer(transport, None, pool=pool)
    w.start()
    w.resumeProducing()
    ref = weakref.ref(w)
    gc.disable()
    try:
        w.stopProducing()
        del w
        transport.producer = None
        assert ref() is None
    finally:
        gc.enable()


def test_a_share_caps_the_piece_but_never_below_the_smallest() -> None:
    transport = Recorder()
    cap = [100_000]
    w = writer(transport, None, chunk_size=CHUNK_SIZE, queued=lambda: (0, 4 << 20),
               share=lambda: cap[0])
    sizes: list[int] = []
    original = transport.write
    transport.write = lambda data: (sizes.append(len(data)), original(data))  # type: ignore[method-assign]
    w.start()
    for _ in range(5):
        w.resumeProducing()
    cap[0] = 10
    w.resumeProducing()
    assert sizes == [32768, 65536, 100_000, 100_000, 100_000, MIN_PIECE]
