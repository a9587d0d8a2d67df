"""
The core service: source -> producer -> health tests -> seed pool -> DRBG.

:class:`CoreService` starts the source reader when the application starts,
keeps the reseed schedule (so that an idle pool still reseeds, and fails
closed on time), and stops the reader last, after every listener.
"""

from __future__ import annotations

from typing import cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import ReseedPolicy, SeedPool
from entropy_appliance.source.producer import ReaderThread, SourceProducer
from entropy_appliance.source.sources import Source

__all__ = ["CoreService", "OrderedService", "build_core"]


class OrderedService(MultiService):
    """
    A MultiService that stops its children one at a time, last first, each
    only after the one before it has finished stopping.

    ``MultiService`` stops every child at once; the appliance needs order:
    listeners close (and in-flight work drains) before the entropy pipeline
    under them stops.
    """

    log = Logger()

    def stopService(self) -> Deferred[None]:
        """Stop the children in reverse order, waiting on each."""
        Service.stopService(self)
        d: Deferred[None] = succeed(None)
        for child in reversed(list(self)):
            d.addCallback(self._stop_child, child)
        return d

    def _stop_child(self, _: object, child: IService) -> Deferred[None]:
        def failed(f: Failure) -> None:
            self.log.failure("error stopping {child}", f, child=child)

        return maybeDeferred(child.stopService).addErrback(failed)


class CoreService(Service):
    """Runs the source reader and the reseed schedule of one seed pool."""

    log = Logger()

    def __init__(self, pool: SeedPool, producer: SourceProducer, clock: IReactorTime,
                 reader: ReaderThread | None = None, detected: bool = False) -> None:
        self.pool = pool
        self.producer = producer
        self._clock = clock
        self._reader = reader
        self._detected = detected
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """Log the source, start reading it, start the reseed schedule."""
        super().startService()
        self.log.info(
            "entropy source: {name} (kind {kind}{how}), claimed min-entropy "
            "{h} bits per sample",
            name=self.pool.source_name, kind=self.pool.source_kind,
            how=", auto-detected" if self._detected else "",
            h=self.pool.min_entropy,
        )
        self.producer.start()
        loop = LoopingCall(self.pool.tick)
        loop.clock = self._clock
        # Half the interval keeps the reseed age below the interval.
        loop.start(self.pool.policy.interval / 2, now=False)
        self._loop = loop

    def stopService(self) -> None:
        """Stop the schedule and the reader."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.producer.stopProducing()
        if self._reader is not None:
            self._reader.stop()
        self.log.info("entropy pipeline stopped")


def build_core(
    reactor: IReactorTime,
    source: Source,
    min_entropy: float,
    policy: ReseedPolicy,
    alpha: float,
    detected: bool = False,
    serving: bool = True,
) -> CoreService:
    """Assemble the pipeline for one process (``serving=False``: relay only)."""
    health = HealthTests(min_entropy, alpha=alpha)
    pool = SeedPool(reactor, health, policy, source_name=source.name, source_kind=source.kind,
                    serving=serving)
    assert IReactorThreads.providedBy(reactor), "the core needs a reactor with threads"
    reader = ReaderThread(cast(IReactorThreads, reactor))
    producer = SourceProducer(source, pool, reader, reactor)
    return CoreService(pool, producer, reactor, reader=reader, detected=detected)
