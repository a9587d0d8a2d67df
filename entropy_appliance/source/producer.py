"""
The pull producer that reads an entropy source.

:class:`SourceProducer` is an :class:`IPullProducer`: each
``resumeProducing`` asks for one bounded chunk, which a worker thread reads
(blocking reads never run on the reactor thread) and which is then handed to
the consumer, the seed pool.  At most one read is in flight, so the device is
read no faster than the pool asks, and memory stays bounded by one chunk plus
the pool's high-water mark.

Any :class:`~entropy_appliance.source.sources.SourceError` (EOF, EAGAIN, EIO, a
device that disappeared) puts the producer in a failed state: the consumer is
told once, and the read is retried with exponential backoff until it works
again.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from entropy_appliance.core.backoff import Backoff
from entropy_appliance.source.sources import Source, SourceError

__all__ = ["SourceProducer", "ReaderThread", "ISeedConsumer"]


class ISeedConsumer(Protocol):
    """What the producer needs of its consumer (the seed pool)."""

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def source_failed(self, reason: str) -> None: ...
    def source_recovered(self) -> None: ...


class ReaderThread:
    """
    A one-thread pool for blocking source reads.

    The thread is a daemon: a read blocked on a silent device must never
    hold up process exit, which a joined Twisted thread pool would.
    """

    def __init__(self, reactor: IReactorThreads) -> None:
        self._reactor = reactor
        self._jobs: queue.SimpleQueue[tuple[Callable[[], bytes], Deferred[bytes]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def __call__(self, job: Callable[[], bytes]) -> Deferred[bytes]:
        """Run ``job`` on the worker thread; fire the Deferred in the reactor."""
        if self._pid != os.getpid():
            # Threads do not survive fork(): start afresh in the child.
            self._pid = os.getpid()
            self._jobs = queue.SimpleQueue()
            self._thread = None
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name="entropy-source-reader", daemon=True
            )
            self._thread.start()
        d: Deferred[bytes] = Deferred()
        self._jobs.put((job, d))
        return d

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, d = item
            try:
                result = job()
            except BaseException:
                self._reactor.callFromThread(d.errback, Failure())
            else:
                self._reactor.callFromThread(d.callback, result)

    def stop(self) -> None:
        """Let the worker thread end after its current read."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


@implementer(IPullProducer)
class SourceProducer:
    """
    Reads ``chunk_size`` bytes from a source per ``resumeProducing``.

    ``run`` runs a blocking callable off the reactor thread and returns a
    Deferred; tests pass a synchronous one.

    The size of each read is what the consumer asks for
    (``consumer.read_size()``, when it has one) between ``chunk_size`` and
    ``max_chunk``: a pool that falls behind its demand gets bigger reads,
    and so fewer thread round trips per byte.  A read that is only a health
    probe (``consumer.probing``) is the size asked, even below ``chunk_size``.
    """

    log = Logger()

    def __init__(
        self,
        source: Source,
        consumer: ISeedConsumer,
        run: Callable[[Callable[[], bytes]], Deferred[bytes]],
        clock: IReactorTime,
        chunk_size: int = 4096,
        max_chunk: int = 1024 * 1024,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self.source = source
        self._consumer = consumer
        self._run = run
        self._clock = clock
        self.chunk_size = chunk_size
        self.max_chunk = max(chunk_size, max_chunk)
        self._backoff = Backoff(backoff, max_backoff)
        self._reading = False
        self._stopped = False
        self._failed = False
        self._retry: IDelayedCall | None = None
        self.errors = 0

    @property
    def failed(self) -> bool:
        """True while the source is in its failed state."""
        return self._failed

    def start(self) -> None:
        """Register with the consumer, which starts pulling."""
        self._consumer.registerProducer(self, False)

    def resumeProducing(self) -> None:
        """Start one bounded read, unless one is in flight or we wait to retry."""
        if self._reading or self._stopped or self._retry is not None:
            return
        self._reading = True
        size = self.chunk_size
        wanted = getattr(self._consumer, "read_size", None)
        if wanted is not None:
            asked = wanted()
            # A health probe is read at its own size: a device that is only
            # checked is not asked for a whole chunk.
            exact = getattr(self._consumer, "probing", False)
            size = min(self.max_chunk, asked if exact else max(size, asked))
        d = self._run(lambda: self.source.read(size))
        d.addCallbacks(self._got, self._lost)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            return
        if self._failed:
            self._failed = False
            self._backoff.reset()
            self._consumer.source_recovered()
        self._consumer.write(data)

    def _lost(self, failure: Failure) -> None:
        self._reading = False
        if self._stopped:
            return
        if not failure.check(SourceError):
            self.log.failure("unexpected error reading the entropy source", failure)
        self.errors += 1
        self._failed = True
        # The consumer counts every error and logs only the first.
        self._consumer.source_failed(str(failure.value))
        delay = self._backoff.next()
        self._retry = self._clock.callLater(delay, self._try_again)

    def _try_again(self) -> None:
        self._retry = None
        self.resumeProducing()

    def after_fork(self) -> None:
        """
        In a forked child: a read in flight belonged to the parent's reader
        thread, which does not exist here; forget it so reads can start.
        """
        self._reading = False

    def stopProducing(self) -> None:
        """Stop for good: cancel a pending retry and release the source."""
        if self._stopped:
            return
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._consumer.unregisterProducer()
        self.source.close()
