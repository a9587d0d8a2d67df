"""
The core service: source -> producer -> health tests -> seed pool -> DRBG.

:class:`CoreService` starts the source reader when the application starts,
and keeps the reseed schedule with a ``TimerService`` (so that an idle pool
still reseeds, and fails closed, on time).  It belongs to the ``pipeline``
phase of :mod:`~entropy_appliance.app.lifecycle`, which stops last.
"""

from __future__ import annotations

from typing import cast

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger

from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import ReseedPolicy, SeedPool
from entropy_appliance.source.producer import ReaderThread, SourceProducer
from entropy_appliance.source.sources import Source

__all__ = ["CoreService", "build_core"]


class _Reader(Service):
    """Reads the source while running: starts the producer, stops it and its thread."""

    log = Logger()

    def __init__(self, pool: SeedPool, producer: SourceProducer, reader: ReaderThread | None,
                 detected: bool) -> None:
        self._pool = pool
        self._producer = producer
        self._reader = reader
        self._detected = detected

    def startService(self) -> None:
        """Log the source; start reading it."""
        super().startService()
        self.log.info(
            "entropy source: {name} (kind {kind}{how}), claimed min-entropy "
            "{h} bits per sample",
            name=self._pool.source_name, kind=self._pool.source_kind,
            how=", auto-detected" if self._detected else "",
            h=self._pool.min_entropy,
        )
        self._producer.start()

    def stopService(self) -> None:
        """Stop the producer and its thread."""
        super().stopService()
        self._producer.stopProducing()
        if self._reader is not None:
            self._reader.stop()
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
    """Runs the source reader and the reseed schedule of one seed pool."""

    def __init__(self, pool: SeedPool, producer: SourceProducer, clock: IReactorTime,
                 reader: ReaderThread | None = None, detected: bool = False) -> None:
        super().__init__()
        self.pool = pool
        self.producer = producer
        _Reader(pool, producer, reader, detected).setServiceParent(self)
        # Half the interval keeps the reseed age below the interval.
        self.schedule = TimerService(pool.policy.interval / 2, _ReseedTick(pool))
        self.schedule.clock = clock
        self.schedule.setServiceParent(self)


def build_core(
    reactor: IReactorTime,
    source: Source,
    min_entropy: float,
    policy: ReseedPolicy,
    alpha: float,
    detected: bool = False,
    serving: bool = True,
) -> CoreService:
    """
    Assemble the pipeline for one process (``serving=False``: relay only).
    ``reactor`` also runs the blocking reads (``callFromThread``) once the
    service starts.
    """
    health = HealthTests(min_entropy, alpha=alpha)
    pool = SeedPool(reactor, health, policy, source_name=source.name, source_kind=source.kind,
                    serving=serving)
    reader = ReaderThread(cast(IReactorThreads, reactor))
    producer = SourceProducer(source, pool, reader, reactor)
    return CoreService(pool, producer, reactor, reader=reader, detected=detected)
