"""
One entropy source's side of the seed pool, and how several are combined.

A :class:`SourceFeed` is everything the pool keeps per source: its SP
800-90B health tests (cutoffs from its own claimed min-entropy), its buffer
of approved samples, its state, the backoff before its startup test is run
again, its counters, and the reader that writes to it.  It is the consumer
its reader (a pull producer) is registered with; the decisions (fail
closed, reseed, wake) stay in :class:`~entropy_appliance.core.pool.SeedPool`.

:func:`allot` is the combining rule: how many approved samples each source
gives to one seed so that the credited entropy (samples times each source's
own H) reaches what the seed needs.  Credit is counted in integer units of
``1/CREDIT_SCALE`` bit, the claim rounded down, so that checking and taking
can never disagree by a rounding error.

Pure and synchronous, like the rest of ``core/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from entropy_appliance.core.backoff import Backoff
from entropy_appliance.core.health import HealthTests, failing_run
from entropy_appliance.core.states import SourceState

__all__ = ["SourceFeed", "allot", "credit_units", "feed_of", "CREDIT_SCALE", "MAX_BACKOFF"]

#: Credit units per bit of min-entropy.
CREDIT_SCALE = 1 << 16

#: The longest wait, in seconds, before a failed source is tested again.
MAX_BACKOFF = 60.0


def credit_units(min_entropy: float) -> int:
    """The credit of one sample at ``min_entropy`` bits, rounded down (never over-credited)."""
    return max(1, math.floor(min_entropy * CREDIT_SCALE))


def allot(available: Sequence[tuple[int, int]], credit: int, min_sources: int = 1) -> list[int] | None:
    """
    How many samples to take from each source for one seed of ``credit``
    units, given ``(samples buffered, units per sample)`` per source; None
    if they cannot carry it, or if fewer than ``min_sources`` have samples.

    Every source with samples gives some.  The credit is split evenly
    ("water-filling"): a source that holds less than its even share gives
    all it holds and the others share the rest, so a slow source never
    holds the others up and a fast one never crowds the rest out.  Each
    source's take is rounded up to whole samples, so the sum may exceed
    ``credit`` by less than one sample per source.
    """
    take = [0] * len(available)
    active = [i for i, (n, unit) in enumerate(available) if n > 0 and unit > 0]
    if len(active) < max(1, min_sources):
        return None
    remaining = credit
    while active and remaining > 0:
        count = len(active)
        short = [i for i in active if available[i][0] * available[i][1] * count < remaining]
        if not short:
            for i in active:
                take[i] = min(available[i][0], -(-remaining // (count * available[i][1])))
            remaining = 0
            break
        for i in short:
            take[i] = available[i][0]
            remaining -= available[i][0] * available[i][1]
            active.remove(i)
    if sum(n * available[i][1] for i, n in enumerate(take)) < credit:
        return None
    return take


class IPull(Protocol):
    """What a feed needs of its source reader: one more read, please."""

    def resumeProducing(self) -> None: ...


class IFeedOwner(Protocol):
    """What a feed tells its pool."""

    def _fed(self, feed: SourceFeed, data: bytes) -> None: ...
    def _feed_failed(self, feed: SourceFeed, reason: str) -> None: ...
    def _feed_recovered(self, feed: SourceFeed) -> None: ...
    def _pull(self, feed: SourceFeed) -> None: ...
    def target(self, feed: SourceFeed | None = None) -> int: ...


class SourceFeed:
    """
    One source in the pool: health tests, approved-sample buffer, state,
    backoff and counters.  Its reader registers with it as with any
    consumer (``registerProducer``, ``write``), and it reports failures
    (``source_failed``) and recoveries (``source_recovered``) to the pool.

    ``left_out`` is True from a failure until the source passes its startup
    test again: while it is, the source counts as failed for
    ``--min-sources`` and gives nothing to any seed.
    """

    def __init__(self, health: HealthTests, name: str = "kernel", kind: str = "kernel") -> None:
        self.health = health
        self.name = name
        self.kind = kind
        self.min_entropy = health.min_entropy
        self.unit = credit_units(self.min_entropy)
        self.buffer = bytearray()
        self.state: SourceState = SourceState.STARTING
        self.error: str | None = None
        self.left_out = False
        self.retry_at: float | None = None
        self.backoff = Backoff(1.0, MAX_BACKOFF)
        self.bytes_read = 0
        self.errors = 0
        #: The samples it gave to the last seed.
        self.given = 0
        self.producer: IPull | None = None
        self.pulling = False
        #: Samples drawn since the last demand measurement, and the demand.
        self.drawn = 0
        self.demand = 0.0
        #: The samples a refused request needs of this source at once.
        self.wanted = 0
        self.high_water = 4096
        self.max_buffer = 4096
        #: When its last read ended (None before the first): the pool reads
        #: a source that has not been read for a reseed interval anyway.
        self.read_at: float | None = None
        #: The samples of one health probe: a run of one value this long
        #: fails the source persistently wherever it starts.
        self.probe_samples = failing_run(health.min_entropy, health.alpha, health.window,
                                         health.failure_limit)
        #: Samples still to read for the probe under way (0: none).
        self.probe_left = 0
        self._owner: IFeedOwner | None = None

    def attach(self, owner: IFeedOwner, high_water: int, max_buffer: int) -> None:
        """Join ``owner``'s pool with these buffer bounds."""
        self._owner = owner
        self.high_water = high_water
        self.max_buffer = max(max_buffer, high_water)

    def samples_for(self, credit: int) -> int:
        """Samples this source alone needs to carry ``credit`` units."""
        return -(-credit // self.unit)

    @property
    def eligible(self) -> bool:
        """May give samples to a seed now: passed its startup test and not failed since."""
        return not self.left_out and self.state is SourceState.OK

    @property
    def counted(self) -> bool:
        """Counts as healthy for ``--min-sources``: not failed (a first startup counts)."""
        return not self.left_out and self.state is not SourceState.FAILED

    def take(self, n: int) -> bytes:
        """Remove and return the first ``n`` buffered samples."""
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        self.drawn += len(out)
        return out

    def drop(self) -> None:
        """Forget every buffered sample (a fault may predate its detection)."""
        self.buffer.clear()

    # -- IConsumer, for the source reader ----------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Attach the source reader; only pull producers are accepted."""
        if streaming or not callable(getattr(producer, "resumeProducing", None)):
            raise ValueError("the seed pool takes a pull producer")
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        self._pool()._pull(self)

    def unregisterProducer(self) -> None:
        """Detach the source reader."""
        self.producer = None
        self.pulling = False

    def write(self, data: bytes) -> None:
        """One chunk of raw samples from the reader."""
        self._pool()._fed(self, data)

    def source_failed(self, reason: str) -> None:
        """The reader reports that the source cannot be read."""
        self._pool()._feed_failed(self, reason)

    def source_recovered(self) -> None:
        """The reader could read the source again."""
        self._pool()._feed_recovered(self)

    def read_size(self) -> int:
        """
        How many bytes the reader should fetch next: the buffer's deficit,
        or what is left of a health probe if that is more.
        """
        return max(1, self._pool().target(self) - len(self.buffer), self.probe_left)

    @property
    def probing(self) -> bool:
        """
        The next read is a health probe beyond the buffer's deficit: the
        reader should fetch exactly :meth:`read_size` bytes, no more, so a
        slow device is not asked for more than the probe costs.
        """
        return self.probe_left > 0 and self.probe_left >= self._pool().target(self) - len(self.buffer)

    def _pool(self) -> IFeedOwner:
        if self._owner is None:
            raise RuntimeError(f"source {self.name} belongs to no seed pool")
        return self._owner


def feed_of(feeds: Sequence[SourceFeed], name: str) -> SourceFeed | None:
    """The feed called ``name``, or None."""
    return next((f for f in feeds if f.name == name), None)
