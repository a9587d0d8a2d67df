"""
Streamed random bodies: a producer registered on the request.

A body above :data:`STREAM_THRESHOLD` is never held in memory whole.  The
producer generates one chunk of DRBG output at a time and stops as soon as
the transport says its buffer is full (``pauseProducing`` arrives from
inside ``write``), so a slow client holds back generation and the process
buffers at most a chunk or two whatever ``n`` is.  It is registered as a
streaming (push) producer: a pull producer would be driven through the
global cooperator, which costs a reactor turn per chunk and does not run in
memory-only tests.

:func:`stream_random` returns a Deferred for a Klein handler to return (never
``NOT_DONE_YET``).  It fires with ``b""`` once the last byte is written, so
Klein finishes the request; if the client goes away Klein cancels it, and the
canceller stops the producer.  While the pool is starved the body pauses
and resumes after the reseed.  If the source fails mid-stream, the
connection (or the HTTP/2 stream) is aborted: the client sees a short body
against the announced ``Content-Length``, never a complete-looking one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from entropy_appliance.core.pool import FailClosed, SeedPool, Starved
from entropy_appliance.net.waiting import when_ready
from entropy_appliance.web.formats import Format

__all__ = ["STREAM_THRESHOLD", "CHUNK_SIZE", "RandomBodyProducer", "stream_random", "abort_request"]

#: Bodies of more raw bytes than this are streamed.
STREAM_THRESHOLD = 64 * 1024

#: Raw bytes generated per step: one standard DRBG request (64 KiB), so no
#: chunk is joined from parts.  Larger chunks measured slower: every one is a
#: fresh allocation above malloc's mmap threshold, paid for in page faults.
CHUNK_SIZE = 64 * 1024


def abort_request(request: Request) -> None:
    """Cut a response short so that the client cannot take it as complete."""
    channel: Any = getattr(request, "channel", None)
    # An HTTP/2 stream resets only itself; HTTP/1.1 drops the connection.
    abort = getattr(channel, "abortConnection", None)
    if abort is None and channel is not None and channel.transport is not None:
        abort = getattr(channel.transport, "abortConnection", None)
    if abort is not None:
        abort()


@implementer(IPushProducer)
class RandomBodyProducer:
    """Writes ``n`` random bytes, encoded by ``fmt``, to ``request`` chunk by chunk."""

    log = Logger()

    def __init__(self, request: Request, pool: SeedPool, n: int, fmt: Format,
                 first: bytes = b"", chunk_size: int = CHUNK_SIZE, surface: str = "http") -> None:
        self._request = request
        self._pool = pool
        self._fmt = fmt
        self._chunk = fmt.chunk_size(chunk_size)
        self._surface = surface
        self._pending = first
        self._remaining = n - len(first)
        self._prefix = fmt.prefix(n)
        self._stopped = False
        self._paused = False
        self._busy = False
        self._waiting: Deferred[None] | None = None
        self._unwatch = pool.on_failure(self._source_failed)
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def start(self) -> Deferred[bytes]:
        """Register on the request and write; the returned Deferred fires when done."""
        self._request.registerProducer(self, True)
        self._run()
        return self.done

    def resumeProducing(self) -> None:
        """The transport drained: write chunks until it pauses us again."""
        self._paused = False
        self._run()

    def pauseProducing(self) -> None:
        """The transport's buffer is full: write nothing until resumed."""
        self._paused = True

    def stopProducing(self) -> None:
        """The consumer is going away: produce nothing more (idempotent)."""
        self._stopped = True
        self._release()

    def _run(self) -> None:
        # A write can pause, resume or stop us re-entrantly; only the
        # outermost call loops.
        if self._busy:
            return
        self._busy = True
        try:
            while not self._paused and not self._stopped and self._waiting is None:
                self._step()
        finally:
            self._busy = False

    def _step(self) -> None:
        raw = self._pending
        self._pending = b""
        if not raw:
            size = min(self._remaining, self._chunk)
            try:
                raw = self._pool.random_bytes(size, surface=self._surface)
            except Starved:
                self._waiting = when_ready(self._pool, size)
                self._waiting.addCallbacks(self._seeded, self._wait_failed)
                return
            except FailClosed as e:
                self._source_failed(e)
                return
            self._remaining -= size
        data = self._fmt.encode(raw)
        if self._prefix:
            data = self._prefix + data
            self._prefix = b""
        last = self._remaining == 0
        if last:
            data += self._fmt.suffix()
        self._request.write(data)
        if last:
            self._complete()

    def _seeded(self, _: object) -> None:
        self._waiting = None
        self._run()

    def _wait_failed(self, failure: Any) -> None:
        self._waiting = None
        if isinstance(failure.value, FailClosed):
            self._source_failed(failure.value)

    def _source_failed(self, e: FailClosed) -> None:
        if self._stopped:
            return
        self.log.warn("aborting a streamed body: {reason}", reason=e.reason)
        self._abort()

    def _release(self) -> None:
        self._unwatch()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.addErrback(lambda _: None)
            waiting.cancel()

    def _complete(self) -> None:
        # Order matters: unregister, then let Klein finish, then stop.
        self._release()
        self._request.unregisterProducer()
        self.done.callback(b"")
        self._stopped = True

    def _abort(self) -> None:
        self._stopped = True
        self._release()
        self._request.unregisterProducer()
        # The connection loss makes Klein cancel ``done``; nothing is finished.
        abort_request(self._request)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self._release()
        if not self._stopped:
            self._stopped = True
            try:
                self._request.unregisterProducer()
            except Exception:
                # The channel may already be gone; there is nothing to undo.
                pass


def stream_random(request: Request, pool: SeedPool, n: int, fmt: Format, first: bytes,
                  chunk_size: int = CHUNK_SIZE, surface: str = "http") -> Deferred[bytes]:
    """
    Stream ``n`` random bytes (``first`` already generated) as ``fmt`` and
    return the Deferred a Klein handler should return.
    """
    return RandomBodyProducer(request, pool, n, fmt, first=first,
                              chunk_size=chunk_size, surface=surface).start()
