"""
The Entropy Gathering Daemon protocol, as a pure state machine: bytes in,
bytes out, no I/O.

The wire format is the one ekeyd documents and QEMU's ``rng-egd`` speaks
(multi-byte values big-endian):

====  ===========================  ================================================
cmd   request                      reply
====  ===========================  ================================================
0x00  --                           U32: entropy available, in bits
0x01  U8 n                         U8 count, then that many bytes (what can be
                                   given now)
0x02  U8 n                         exactly n bytes, no prefix (blocking)
0x03  U16 bits, U8 len, len bytes  nothing
0x04  --                           U8 length, then the server's PID in decimal
====  ===========================  ================================================

:class:`EgdParser` splits any split or coalesced input into
:class:`EgdRequest` s, in order.  :class:`EgdSession` answers them in order,
from a pool with the face of :class:`~entropy_appliance.core.pool.SeedPool`:

- 0x00 reports ``reseed_bits`` (the min-entropy the DRBG's last reseed put
  in: no output since that reseed can carry more) while a byte can be given
  at once, else 0.  Counting 8 bits per byte of DRBG output would overstate
  what the appliance holds.
- 0x01 gives what the pool can give now: n bytes, or none (count 0) while
  the pool is starved or failed.
- 0x02 gives exactly n bytes.  While the pool is starved it waits
  (:attr:`Step.wait`), and the replies behind it wait with it; while the pool
  has failed, the session ends (:attr:`Step.close`) without a byte of it.
- 0x03 is never credited: its bytes are mixed into the DRBG as additional
  input at the next reseed (:meth:`SeedPool.mix`), hashed with SHA-512.
  SP 800-90A lets additional input be anything, even chosen by an adversary,
  without weakening the output, so a client can add to the mix but never
  take from it; discarding would only waste what an honest client offers.
- 0x04 gives the pid of the process that serves the connection.
- Any other command byte ends the session, once the requests before it are
  answered.

Consecutive 0x02 requests are served by one draw from the pool (their
replies are the DRBG's bytes in a row), so a client that pipelines many small
reads costs a parse per request, not a draw.  The input is bounded: the
session holds at most ``backlog`` parsed requests that are not yet answered,
and says when it wants no more input (:attr:`EgdSession.wants_input`), so
that the connection stops reading until the backlog drains.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Protocol

from entropy_appliance.core.pool import FailClosed, ReseedPolicy, Starved

__all__ = [
    "EgdCommand", "EgdRequest", "EgdParser", "EgdSession", "EgdPool", "Step", "UnknownCommand",
    "DEFAULT_BACKLOG", "MAX_STEP", "SURFACE", "encode_request",
]

#: The surface EGD output is counted under.
SURFACE = "egd"

#: Parsed requests a session holds unanswered before it stops reading: enough
#: for QEMU's pipelining (a 64 KiB guest read is 258 requests), little memory.
DEFAULT_BACKLOG = 1024

#: The most bytes one :meth:`EgdSession.step` answers with, so that a
#: connection can pause between steps when its reader falls behind.
MAX_STEP = 64 * 1024


class EgdCommand(IntEnum):
    """The command bytes of the protocol."""

    #: How much entropy is available, in bits.
    ENTROPY = 0x00
    #: Up to n bytes, what can be given now.
    READ = 0x01
    #: Exactly n bytes, waiting for them if need be.
    READ_BLOCKING = 0x02
    #: Entropy from the client: bits claimed, then the bytes.
    WRITE = 0x03
    #: The server's process id.
    PID = 0x04


class UnknownCommand(ValueError):
    """A command byte the protocol does not have."""

    def __init__(self, command: int) -> None:
        super().__init__(f"unknown EGD command 0x{command:02x}")
        self.command = command


@dataclass(frozen=True, slots=True)
class EgdRequest:
    """One parsed request.  ``n``: bytes asked for (0x01, 0x02); ``bits`` and ``data``: 0x03."""

    command: EgdCommand
    n: int = 0
    bits: int = 0
    data: bytes = b""


def encode_request(request: EgdRequest) -> bytes:
    """The bytes of ``request`` on the wire (what a client sends)."""
    c = request.command
    if c in (EgdCommand.READ, EgdCommand.READ_BLOCKING):
        return bytes((c, request.n))
    if c is EgdCommand.WRITE:
        return struct.pack(">BHB", c, request.bits, len(request.data)) + request.data
    return bytes((c,))


_ENTROPY = EgdRequest(EgdCommand.ENTROPY)
_PID = EgdRequest(EgdCommand.PID)


class EgdParser:
    """
    Splits a byte stream into requests, one at a time and in order, however
    the bytes were split or coalesced.  After an unknown command it parses
    nothing more: :attr:`error` says why.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.error: UnknownCommand | None = None

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        if self.error is None:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Received bytes not yet parsed."""
        return len(self._buf) - self._pos

    def next(self) -> EgdRequest | None:
        """The next complete request, or None until more bytes arrive (or after an error)."""
        buf, pos = self._buf, self._pos
        left = len(buf) - pos
        if left == 0 or self.error is not None:
            return None
        command = buf[pos]
        if command == EgdCommand.READ_BLOCKING or command == EgdCommand.READ:
            if left < 2:
                return None
            n = buf[pos + 1]
            self._advance(2)
            return EgdRequest(EgdCommand(command), n)
        if command == EgdCommand.ENTROPY:
            self._advance(1)
            return _ENTROPY
        if command == EgdCommand.PID:
            self._advance(1)
            return _PID
        if command == EgdCommand.WRITE:
            if left < 4:
                return None
            bits, length = struct.unpack_from(">HB", buf, pos + 1)
            if left < 4 + length:
                return None
            data = bytes(buf[pos + 4:pos + 4 + length])
            self._advance(4 + length)
            return EgdRequest(EgdCommand.WRITE, length, bits, data)
        self.error = UnknownCommand(command)
        self._buf = bytearray()
        self._pos = 0
        return None

    def next_blocking_run(self, limit: int, total: int) -> tuple[int, int]:
        """
        Take the run of complete 0x02 requests that comes next, at most
        ``limit`` of them and while their sizes stay within ``total`` bytes;
        return (how many, their total size).  The fast path of pipelined
        reads: no request object is made for them.
        """
        buf, pos = self._buf, self._pos
        if self.error is not None or len(buf) - pos < 2 or buf[pos] != EgdCommand.READ_BLOCKING:
            return 0, 0
        # Whole requests only, at most ``limit``: the command bytes are at even
        # offsets from ``pos``; the run ends at the first one that is not 0x02.
        pairs = min(limit, (len(buf) - pos) // 2)
        commands = bytes(buf[pos:pos + 2 * pairs:2])
        count = pairs - len(commands.lstrip(b"\x02"))
        sizes = buf[pos + 1:pos + 2 * count:2]
        size = sum(sizes)
        if size > total:
            # Fewer, so that the run stays within ``total`` bytes.
            count = bisect.bisect_right(list(itertools.accumulate(sizes)), total)
            size = sum(sizes[:count])
        if count:
            self._advance(2 * count)
        return count, size

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._pos == len(self._buf):
            # All parsed (the usual end of a read): start the buffer afresh.
            self._buf.clear()
            self._pos = 0
        elif self._pos >= 4096 and self._pos * 2 >= len(self._buf):
            # Drop what was parsed once it is most of the buffer: O(1) per byte overall.
            del self._buf[:self._pos]
            self._pos = 0


class EgdPool(Protocol):
    """What a session needs of the seed pool (:class:`~entropy_appliance.core.pool.SeedPool` is one)."""

    policy: ReseedPolicy

    def random_bytes(self, n: int, additional_input: bytes = b"",
                     surface: str | None = None) -> bytes: ...

    def ready(self, n: int = 0) -> bool: ...

    def mix(self, data: bytes) -> None: ...


class Step(NamedTuple):
    """
    What one :meth:`EgdSession.step` produced: ``out``, the bytes to send,
    in order; then, at most one of: ``wait`` > 0 (the head request waits for
    the pool to serve that many bytes; call :meth:`EgdSession.step` again
    once it can), ``close`` (end the connection after ``out``, for
    ``reason``), or ``more`` (more is ready to answer now).  With none of
    them, every request received is answered.  A named tuple: one is made
    per read of a pipelining client.
    """

    out: bytes
    wait: int = 0
    close: bool = False
    reason: str = ""
    more: bool = False


class EgdSession:
    """
    One connection's side of the protocol: :meth:`receive` its bytes,
    :meth:`step` to answer, in order, what can be answered now.  ``pid`` is
    what 0x04 reports.
    """

    def __init__(self, pool: EgdPool, pid: int | Callable[[], int], backlog: int = DEFAULT_BACKLOG,
                 max_step: int = MAX_STEP) -> None:
        if backlog < 1:
            raise ValueError("backlog must be >= 1")
        self._pool = pool
        self._pid = pid
        self.backlog = backlog
        self._max_step = max(255, max_step)
        self._parser = EgdParser()
        #: Parsed requests not yet answered, in order; a run of pipelined
        #: 0x02s is one entry (its count and total size) in the deque.
        self._queue: deque[EgdRequest | tuple[int, int]] = deque()
        #: Requests in :attr:`_queue`, runs counted by their length.
        self._pending = 0
        self.closed = False
        #: Requests answered, by command byte.
        self.answered: dict[int, int] = {}

    # -- input ------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Take bytes received from the client."""
        if not self.closed:
            self._parser.feed(data)

    @property
    def pending(self) -> int:
        """Parsed requests not yet answered."""
        return self._pending

    @property
    def buffered(self) -> int:
        """Received bytes not yet parsed (they wait for room in the backlog)."""
        return self._parser.buffered

    @property
    def wants_input(self) -> bool:
        """
        False while the backlog is full (or the session has ended): the
        connection should stop reading until it is True again.
        """
        if self.closed or self._parser.error is not None:
            return False
        self._fill()
        return self._pending < self.backlog

    def _fill(self) -> None:
        """Parse requests from the received bytes while the backlog has room."""
        parser, queue = self._parser, self._queue
        if parser.buffered == 0:
            return
        while self._pending < self.backlog:
            count, size = parser.next_blocking_run(self.backlog - self._pending, self._max_step)
            if count:
                self._pending += count
                tail = queue[-1] if queue else None
                if isinstance(tail, tuple) and tail[1] + size <= self._max_step:
                    queue[-1] = (tail[0] + count, tail[1] + size)
                else:
                    queue.append((count, size))
                continue
            request = parser.next()
            if request is None:
                return
            # A blocking read is always answered as a run, even a run of one.
            queue.append((1, request.n) if request.command is EgdCommand.READ_BLOCKING else request)
            self._pending += 1

    # -- output -----------------------------------------------------------------

    def step(self) -> Step:
        """
        Answer requests in order until one must wait, the session must end,
        nothing is left, or the next reply would take the step past
        ``max_step`` bytes.
        """
        if self.closed:
            return Step(b"", close=True, reason="closed")
        self._fill()
        out: list[bytes] = []
        size = 0
        queue = self._queue
        while queue:
            head = queue[0]
            if size and size + (head[1] if isinstance(head, tuple) else head.n + 5) > self._max_step:
                return Step(b"".join(out), more=True)
            if isinstance(head, tuple):
                count, n = head
                try:
                    data = self._pool.random_bytes(n, surface=SURFACE)
                except Starved:
                    return Step(b"".join(out), wait=n)
                except FailClosed as e:
                    return self._end(out, f"the seed pool has failed ({e.reason})")
                self._count(EgdCommand.READ_BLOCKING, count)
            else:
                data = self._answer(head)
                self._count(head.command, 1)
                count = 1
            queue.popleft()
            self._pending -= count
            if data:
                out.append(data)
                size += len(data)
            self._fill()
        if self._parser.error is not None:
            return self._end(out, str(self._parser.error))
        return Step(b"".join(out))

    def _answer(self, request: EgdRequest) -> bytes:
        command = request.command
        if command is EgdCommand.ENTROPY:
            return struct.pack(">I", self.entropy_bits())
        if command is EgdCommand.READ:
            try:
                data = self._pool.random_bytes(request.n, surface=SURFACE) if request.n else b""
            except FailClosed:
                data = b""
            return bytes((len(data),)) + data
        if command is EgdCommand.WRITE:
            if request.data:
                self._pool.mix(request.data)
            return b""
        if command is EgdCommand.PID:
            pid = self._pid() if callable(self._pid) else self._pid
            text = str(pid).encode("ascii")
            return bytes((len(text),)) + text
        raise AssertionError(f"a blocking read is answered in a run: {request}")  # pragma: no cover

    def entropy_bits(self) -> int:
        """What 0x00 reports: ``reseed_bits`` while a byte can be given now, else 0."""
        return min(self._pool.policy.bits, 0xFFFFFFFF) if self._pool.ready(1) else 0

    def _count(self, command: int, n: int) -> None:
        self.answered[command] = self.answered.get(command, 0) + n

    def _end(self, out: list[bytes], reason: str) -> Step:
        self.closed = True
        self._queue.clear()
        self._pending = 0
        return Step(b"".join(out), close=True, reason=reason)
