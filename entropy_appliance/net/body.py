"""
The one body writer: DRBG output to a consumer, one bounded chunk at a time.

Every surface that sends random bytes by the chunk uses :class:`BodyWriter`:
the raw TCP stream (an endless body, a pull producer on its transport), a
streamed HTTP response through Klein (a push producer on the ``Request``),
and the lean HTTP/1.1 channel's streamed response (a pull producer on the
transport, in the channel's place).  The surfaces are thin faces: they say
where the bytes go and how to end, and the writer does the rest.

- Chunking: :data:`CHUNK_SIZE` raw bytes per step, whatever the surface.
- Backpressure: a pull writer writes one chunk each time the consumer asks;
  a push writer writes until the consumer pauses it.  Either way the
  process holds about one chunk per slow reader.
- Starvation: when the pool is starved (:class:`Starved`) nothing is
  written and nobody is hung up on; the writer waits for the pool and
  writes on once it has reseeded.
- Failing closed: on :class:`FailClosed`, or as soon as the pool reports a
  failure (even while the consumer is not asking for more), the writer
  unregisters and cuts the connection without another byte.  A body with a
  length is then short of it: never complete-looking.
- The in-flight count: a body counts from construction to its end, so that
  a graceful stop waits for it.

It ends exactly once, in one of three ways: complete (unregister, then the
face's ``complete``, then stop), cut (unregister, then the face's ``cut``),
or stopped by the consumer (``stopProducing``).  ``stopProducing`` is
idempotent, and calls that arrive after the end, or while a chunk is being
written, do nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from entropy_appliance.core.pool import FailClosed, SeedPool, Starved

__all__ = ["BodyWriter", "CHUNK_SIZE", "Encoding", "InFlightCount", "first_chunk"]

#: Raw bytes generated and written per step, on every surface.  Each step
#: costs a reactor turn, a send and a producer round trip, so larger chunks
#: are cheaper per byte, up to a point past which they measured slower.
#: Measured on loopback, one reader draining a raw stream as fast as it can
#: (one reactor, a seeded pool, two runs each, GB/s): 64 KiB 1.06-1.18,
#: 128 KiB 1.01-1.04, 192 KiB 1.12-1.29, 256 KiB 1.25-1.42, 384 KiB
#: 0.80-1.30, 512 KiB 0.75-0.78, 1 MiB 0.82-0.85.  256 KiB is the fastest,
#: and what a slow reader pins stays small.
CHUNK_SIZE = 256 * 1024


class Encoding(Protocol):
    """How raw chunks become body bytes (``web.formats.Format`` is one)."""

    def prefix(self, n: int) -> bytes: ...

    def encode(self, raw: bytes) -> bytes: ...

    def suffix(self) -> bytes: ...

    def chunk_size(self, preferred: int) -> int: ...


class _Raw:
    """The bytes as they are."""

    def prefix(self, n: int) -> bytes:
        return b""

    def encode(self, raw: bytes) -> bytes:
        return raw

    def suffix(self) -> bytes:
        return b""

    def chunk_size(self, preferred: int) -> int:
        return preferred


RAW: Encoding = _Raw()


class InFlightCount(Protocol):
    """What the writer needs of an in-flight count (``net.limits.InFlight`` is one)."""

    def enter(self) -> None: ...

    def leave(self) -> None: ...


class Consumer(Protocol):
    """A transport or a ``Request``: where the writer registers and writes."""

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...  # noqa: N802

    def unregisterProducer(self) -> None: ...  # noqa: N802

    def write(self, data: bytes) -> None: ...


def first_chunk(length: int, encoding: Encoding = RAW, chunk_size: int = CHUNK_SIZE) -> int:
    """The raw size of the first chunk of a ``length``-byte body in ``encoding``."""
    return min(length, encoding.chunk_size(chunk_size))


def _nothing() -> None:
    pass


@implementer(IPullProducer, IPushProducer)
class BodyWriter:
    """
    Writes ``length`` raw bytes of DRBG output (None: until stopped) to
    ``consumer``, encoded by ``encoding``; see the module docstring.

    ``streaming`` picks push (True) or pull (False).  ``first`` is raw
    output generated already (so that the caller could still answer an
    error before any header), and ``head`` bytes go out just ahead of the
    first chunk.  ``cut`` cuts the connection short; ``complete`` is called
    once the last byte is written and the writer unregistered; ``ended``
    once however the body ends.  ``chunk_size`` is :data:`CHUNK_SIZE` but
    in tests.
    """

    log = Logger()

    def __init__(self, pool: SeedPool, consumer: Consumer, *, length: int | None,
                 streaming: bool, cut: Callable[[], object],
                 complete: Callable[[], object] = _nothing,
                 ended: Callable[[], object] = _nothing,
                 surface: str = "http", encoding: Encoding = RAW,
                 first: bytes = b"", head: bytes = b"",
                 inflight: InFlightCount | None = None, chunk_size: int = CHUNK_SIZE) -> None:
        self._pool = pool
        self._consumer = consumer
        self._left = length
        self._streaming = streaming
        self._cut = cut
        self._complete = complete
        self._ended_hook = ended
        self._surface = surface
        self._encoding = encoding
        self._chunk = encoding.chunk_size(chunk_size)
        self._first = first
        self._head = head
        self._prefix = encoding.prefix(length or 0)
        self._inflight = inflight
        self._paused = False
        self._busy = False
        self._waiting = False
        self._withdraw: Callable[[], None] | None = None
        #: True once the body has ended, however it ended.
        self.ended = False
        #: True once a byte of the body (or its head) has been written.
        self.started = False
        self._unwatch = pool.on_failure(lambda e: self.cut(e.reason))
        if inflight is not None:
            inflight.enter()

    def start(self) -> None:
        """
        Register on the consumer.  A push writer writes at once; a pull
        writer writes what it holds already (head, first chunk), and
        generates more only when the consumer asks.
        """
        # A transport sends at most SEND_LIMIT bytes per writable event; a
        # whole chunk (with the head) per send halves the reactor turns.
        limit = len(self._head) + self._chunk
        if getattr(self._consumer, "SEND_LIMIT", limit) < limit:
            self._consumer.SEND_LIMIT = limit  # type: ignore[attr-defined]
        self._consumer.registerProducer(self, self._streaming)
        if self._streaming or ((self._head or self._first) and not self.started):
            self._run()

    # -- IPushProducer / IPullProducer -------------------------------------

    def resumeProducing(self) -> None:
        """The consumer wants more: one chunk (pull), or chunks until paused (push)."""
        self._paused = False
        self._run()

    def pauseProducing(self) -> None:
        """The consumer's buffer is full: write nothing until resumed."""
        if self._streaming:
            self._paused = True

    def stopProducing(self) -> None:
        """The consumer is going away: produce nothing more (idempotent)."""
        self._end()

    # -- ending -------------------------------------------------------------

    def cut(self, reason: str | None = None) -> None:
        """
        End now without another byte: unregister, then cut the connection
        (idempotent).  The source failed (``reason``), or the surface stops.
        """
        if self.ended:
            return
        if reason is not None:
            self.log.warn("cutting a random body short: {reason}", reason=reason)
        self._end()
        self._consumer.unregisterProducer()
        self._cut()

    def _finish(self) -> None:
        # Order matters: unregister, then finish, then stop.
        self._consumer.unregisterProducer()
        self._complete()
        self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._unwatch()
        self._stop_waiting()
        self._first = self._head = b""
        if self._inflight is not None:
            self._inflight.leave()
        self._ended_hook()

    # -- writing ------------------------------------------------------------

    def _run(self) -> None:
        # A write can pause, resume or stop us re-entrantly; only the
        # outermost call loops.
        if self._busy:
            return
        self._busy = True
        try:
            while not self.ended and not self._waiting and not self._paused:
                if self._step() and not self._streaming:
                    break
        finally:
            self._busy = False

    def _step(self) -> bool:
        """Write one chunk; False if nothing was written (waiting, or ended)."""
        raw = self._first
        if raw:
            self._first = b""
        else:
            size = self._chunk if self._left is None else min(self._left, self._chunk)
            try:
                raw = self._pool.random_bytes(size, surface=self._surface)
            except Starved:
                self._wait(size)
                return False
            except FailClosed as e:
                self.cut(e.reason)
                return False
        data = self._encoding.encode(raw)
        if self._prefix:
            data = self._prefix + data
            self._prefix = b""
        last = False
        if self._left is not None:
            self._left -= len(raw)
            last = self._left <= 0
            if last:
                data += self._encoding.suffix()
        self._write(data)
        if last and not self.ended:
            self._finish()
        return True

    def _write(self, data: bytes) -> None:
        self.started = True
        if self._head:
            head, self._head = self._head, b""
            # One send for the head and the first chunk.
            parts: Sequence[bytes] = (head, data)
            writer: Any = self._consumer
            writer.writeSequence(parts)
        else:
            self._consumer.write(data)

    # -- waiting for seed -----------------------------------------------------

    def _wait(self, n: int) -> None:
        # Nothing is written, so a pull consumer will not ask again: the
        # pool's wait writes on, once it has reseeded.
        self._waiting = True
        withdraw = self._pool.wait(n, self._seeded, self._wait_failed)
        if self._waiting:
            self._withdraw = withdraw

    def _seeded(self) -> None:
        self._waiting = False
        self._withdraw = None
        self._run()

    def _wait_failed(self, e: FailClosed) -> None:
        self._waiting = False
        self._withdraw = None
        self.cut(e.reason)

    def _stop_waiting(self) -> None:
        withdraw, self._withdraw = self._withdraw, None
        self._waiting = False
        if withdraw is not None:
            withdraw()
