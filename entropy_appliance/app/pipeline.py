"""
The core service: sources -> producers -> health tests -> seed pool -> DRBG.

:class:`CoreService` starts one reader per source when the application starts,
and keeps the reseed schedule with a ``TimerService`` (so that an idle pool
still reseeds, and fails closed, on time).  It belongs to the ``pipeline``
phase of :mod:`~entropy_appliance.app.lifecycle`, which stops last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger

from entropy_appliance.core.feed import SourceFeed
from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import ReseedPolicy, SeedPool
from entropy_appliance.source.producer import ReaderThread, SourceProducer
from entropy_appliance.source.sources import Source

__all__ = ["CoreService", "build_core"]


class _Reader(Service):
    """
    Reads every source while running: starts each producer, stops each
    producer and its thread.  Each source has its own reader thread, so a
    device that blocks never holds up the others.
    """

    log = Logger()

    def __init__(self, pool: SeedPool, producers: Sequence[SourceProducer],
                 readers: Sequence[ReaderThread], detected: bool) -> None:
        self._pool = pool
        self._producers = list(producers)
        self._readers = list(readers)
        self._detected = detected

    def startService(self) -> None:
        """Log the sources; start reading them."""
        super().startService()
        for feed in self._pool.feeds:
            self.log.info(
                "entropy source: {name} (kind {kind}{how}), claimed min-entropy "
                "{h} bits per sample",
                name=feed.name, kind=feed.kind,
                how=", auto-detected" if self._detected else "",
                h=feed.min_entropy,
            )
        if len(self._pool.feeds) > 1:
            self.log.info("{n} entropy sources; fail closed with fewer than {k} healthy",
                          n=len(self._pool.feeds), k=self._pool.min_sources)
        for producer in self._producers:
            producer.start()

    def stopService(self) -> None:
        """Stop the producers and their threads."""
        super().stopService()
        for producer in self._producers:
            producer.stopProducing()
        for reader in self._readers:
            reader.stop()
        self.log.info("entropy pipeline stopped")


class _ReseedTick:
    """
    ``pool.tick``, skipping the call that ``TimerService`` makes as it starts:
    no seed can have arrived at that instant, so that call would only count
    a failed reseed.  The schedule's first tick is one step later.
    """

    def __init__(self, pool: SeedPool) -> None:
        self._pool = pool
        self._first = True

    def __call__(self) -> None:
        if self._first:
            self._first = False
            return
        self._pool.tick()


class CoreService(MultiService):
    """Runs the source readers and the reseed schedule of one seed pool."""

    def __init__(self, pool: SeedPool, producers: Sequence[SourceProducer], clock: IReactorTime,
                 readers: Sequence[ReaderThread] = (), detected: bool = False) -> None:
        super().__init__()
        self.pool = pool
        self.producers = list(producers)
        _Reader(pool, producers, readers, detected).setServiceParent(self)
        # Half the interval keeps the reseed age below the interval.
        self.schedule = TimerService(pool.policy.interval / 2, _ReseedTick(pool))
        self.schedule.clock = clock
        self.schedule.setServiceParent(self)

    @property
    def producer(self) -> SourceProducer:
        """The first source's producer."""
        return self.producers[0]


def build_core(
    reactor: IReactorTime,
    sources: Sequence[tuple[Source, float]],
    policy: ReseedPolicy,
    alpha: float,
    detected: bool = False,
    serving: bool = True,
    min_sources: int = 1,
) -> CoreService:
    """
    Assemble the pipeline for one process (``serving=False``: relay only)
    from ``(source, claimed min-entropy)`` pairs: one feed, producer and
    reader thread per source.  ``reactor`` also runs the blocking reads
    (``callFromThread``) once the service starts.
    """
    feeds = [SourceFeed(HealthTests(h, alpha=alpha), source.name, source.kind) for source, h in sources]
    pool = SeedPool(reactor, None, policy, serving=serving, feeds=feeds, min_sources=min_sources)
    readers = [ReaderThread(cast(IReactorThreads, reactor)) for _ in sources]
    producers = [SourceProducer(source, feed, reader, reactor)
                 for (source, _), feed, reader in zip(sources, feeds, readers, strict=True)]
    return CoreService(pool, producers, reactor, readers=readers, detected=detected)
