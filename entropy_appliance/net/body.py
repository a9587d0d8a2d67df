"""
The one body writer: DRBG output to a consumer, one bounded chunk at a time.

Every surface that sends random bytes by the chunk uses :class:`BodyWriter`:
the raw TCP stream (an endless body, a pull producer on its transport), a
streamed HTTP response through Klein (a push producer on the ``Request``),
the lean HTTP/1.1 channel's streamed response (a pull producer on the
transport, in the channel's place), and a picture or sound made already
(``parts``: its pieces, written and let go one after another).  The
surfaces are thin faces: they say where the bytes go and how to end, and the
writer does the rest.

- Chunking: at most :data:`CHUNK_SIZE` raw bytes per step, whatever the
  surface.
- Backpressure: a pull writer writes one piece each time the consumer asks;
  a push writer writes until the consumer pauses it.  Either way the
  process holds about one piece per slow reader.
- Pieces the socket takes: the consumer asks a pull writer for more only
  once its buffer is empty, and keeps what the socket refuses of the last
  write, the whole object, until the reader reads.  So on a socket whose
  kernel send queue can be read (Linux), a pull writer adapts its piece to
  the reader: it doubles the piece, up to a chunk, while the queue holds no
  more than a quarter of its size (the reader keeps up), and halves it,
  down to :data:`MIN_PIECE`, while the queue holds more.  Reading the
  queue is a system call, which cost 5% of the speed when made for every
  chunk; so at full chunks it is read again only before what was written
  since could have filled the queue to three quarters (the kernel counts
  up to half as much again as the bytes it holds).  A reader
  that stops reading then pins a small piece, not a chunk, and one that
  drains at full speed gets whole chunks.  A surface with many bodies also
  caps each piece at its ``share`` of a budget, so that the pieces that all
  of them have in flight at once (written, not yet sent) stay within it.
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
written, do nothing.  At the end the writer lets go of the pool's failure
watch, so that nothing keeps it, and through it the consumer and the bytes
the consumer still buffers, alive until the next garbage collection.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from entropy_appliance.core.pool import FailClosed, SeedPool, Starved

__all__ = ["BodyWriter", "CHUNK_SIZE", "MIN_PIECE", "Encoding", "InFlightCount", "SendLimitOfTransport",
           "SendQueue", "first_chunk", "send_queue"]

#: Raw bytes generated and written per step, on every surface.  Each step
#: costs a reactor turn, a send and a producer round trip, so larger chunks
#: are cheaper per byte, up to a point past which they measured slower.
#: Measured on loopback, one reader draining a raw stream as fast as it can
#: (one reactor, a seeded pool, two runs each, GB/s): 64 KiB 1.06-1.18,
#: 128 KiB 1.01-1.04, 192 KiB 1.12-1.29, 256 KiB 1.25-1.42, 384 KiB
#: 0.80-1.30, 512 KiB 0.75-0.78, 1 MiB 0.82-0.85.  256 KiB is the fastest,
#: and what a slow reader pins stays small.
CHUNK_SIZE = 256 * 1024

#: The smallest piece a pull writer hands a socket whose reader falls behind:
#: what a reader that stops reading pins, at most (1,000 such readers: 16 MB).
MIN_PIECE = 16 * 1024

# getsockopt(SOL_SOCKET, SO_MEMINFO) (Linux 4.6 and later; Python has no name
# for it): the socket's memory counters as 32-bit words, of which the send
# buffer's allocated bytes, size and queued bytes are words 2, 3 and 5 (TCP
# counts its queue in the last, a unix socket in the first).
_SO_MEMINFO = 55
_MEMINFO_SIZE = 9 * 4
_WMEM_ALLOC = 2
_SNDBUF = 3
_WMEM_QUEUED = 5

#: The bytes a socket's kernel send queue holds, and the size of its send buffer.
SendQueue = tuple[int, int]


def send_queue(consumer: object) -> Callable[[], SendQueue | None] | None:
    """
    A function that reads the kernel send queue of ``consumer``'s socket,
    as (bytes held, buffer size), or None once it cannot; or None when that
    cannot be known: not Linux, no socket (``getHandle``), or no counters.
    """
    if not sys.platform.startswith("linux"):
        return None
    get_handle = getattr(consumer, "getHandle", None)
    try:
        handle = get_handle() if get_handle is not None else None
    except Exception:
        return None
    getsockopt = getattr(handle, "getsockopt", None)
    if getsockopt is None:
        return None

    def queued() -> SendQueue | None:
        try:
            raw = getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO_SIZE)
        except (OSError, TypeError):
            return None
        if len(raw) < (_WMEM_QUEUED + 1) * 4:
            return None
        words = struct.unpack_from(f"{_WMEM_QUEUED + 1}I", raw)
        return max(words[_WMEM_QUEUED], words[_WMEM_ALLOC]), words[_SNDBUF]

    return queued if queued() is not None else None


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
    first chunk.  ``parts`` is a body made already (``length`` bytes in
    all), written instead of DRBG output, at most a chunk per step, each
    piece let go once written; the pool is still watched, so a failure
    cuts it.  ``cut`` cuts the connection short; ``complete`` is called
    once the last byte is written and the writer unregistered; ``ended``
    once however the body ends.  ``chunk_size`` is :data:`CHUNK_SIZE` but
    in tests.  ``queued`` reads the consumer's kernel send queue
    (:func:`send_queue` of a pull writer's consumer by default), which sizes
    a pull writer's pieces; without it every piece is a chunk.  ``share``
    gives the largest piece this body may write now (never below
    :data:`MIN_PIECE`).
    """

    log = Logger()

    def __init__(self, pool: SeedPool, consumer: Consumer, *, length: int | None,
                 streaming: bool, cut: Callable[[], object],
                 complete: Callable[[], object] = _nothing,
                 ended: Callable[[], object] = _nothing,
                 surface: str = "http", encoding: Encoding = RAW,
                 first: bytes = b"", head: bytes = b"",
                 inflight: InFlightCount | None = None, chunk_size: int = CHUNK_SIZE,
                 parts: Iterable[bytes] | None = None,
                 queued: Callable[[], SendQueue | None] | None = None,
                 share: Callable[[], int] | None = None) -> None:
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
        self._parts = deque(parts) if parts is not None else None
        self._queued = queued
        self._share = share
        #: Whole chunks to write before the send queue is read again.
        self._unread = 0
        if queued is None and not streaming and parts is None:
            self._queued = send_queue(consumer)
        #: The raw size of the next piece: it adapts while a send queue is known.
        self.piece = self._chunk
        if self._queued is not None:
            self.piece = encoding.chunk_size(min(self._chunk, MIN_PIECE))
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
        # The watch holds a callback that holds this writer: a cycle, which
        # would keep the consumer's buffers alive until a garbage collection.
        unwatch, self._unwatch = self._unwatch, _nothing
        unwatch()
        self._stop_waiting()
        self._first = self._head = b""
        self._parts = None if self._parts is None else deque()
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
        elif self._parts is not None:
            raw = self._take_parts()
        else:
            size = self._next_piece()
            if self._left is not None:
                size = min(self._left, size)
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

    def _next_piece(self) -> int:
        """The raw size of the next piece: see "Pieces the socket takes" above."""
        queued = self._queued
        if self._unread:
            self._unread -= 1
        elif queued is not None:
            reading = queued()
            if reading is None:
                self._queued = None
                self.piece = self._chunk
            # A reader at full speed leaves the queue below a quarter of its
            # size at 99% of the asks (TCP, 4 MiB); below a chunk at only
            # 95%, which halved the piece often enough to cost 6% of speed.
            elif reading[0] <= reading[1] // 4:
                self.piece = self._encoding.chunk_size(min(self._chunk, 2 * self.piece))
                if self.piece == self._chunk:
                    # The queue only grows by what is written, a chunk a
                    # step, counted at up to 1.5 times its size.
                    self._unread = max(0, (reading[1] // 2 - reading[0]) // self._chunk - 1)
            else:
                self.piece = self._encoding.chunk_size(max(MIN_PIECE, self.piece // 2))
        if self._share is None:
            return self.piece
        return self._encoding.chunk_size(min(self.piece, max(MIN_PIECE, self._share())))

    def _take_parts(self) -> bytes:
        """The next pieces of a body made already, about a chunk of them, joined."""
        parts = self._parts
        assert parts is not None
        taken: list[bytes] = []
        size = 0
        while parts and (not taken or size + len(parts[0]) <= self._chunk):
            piece = parts.popleft()
            taken.append(piece)
            size += len(piece)
        if not size or (self._left is not None and size > self._left):
            raise ValueError(f"the parts do not hold the {self._left} bytes left")
        return taken[0] if len(taken) == 1 else b"".join(taken)

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


class SendLimitOfTransport:
    """
    For a protocol wrapper between a body writer and the real transport:
    its ``SEND_LIMIT`` is the transport's, so that the writer, which raises
    the limit for large pieces, raises the one that counts.
    """

    transport: Any

    @property
    def SEND_LIMIT(self) -> int:  # noqa: N802 - the transport's attribute
        """The transport's per-write send limit (a stream may raise it)."""
        return int(self.transport.SEND_LIMIT)

    @SEND_LIMIT.setter
    def SEND_LIMIT(self, value: int) -> None:  # noqa: N802
        self.transport.SEND_LIMIT = value
