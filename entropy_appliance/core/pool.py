"""
The seed pool and the reseed policy.

Each source has a :class:`~entropy_appliance.core.feed.SourceFeed`, the
consumer of that source's producer: raw chunks arrive through its
``write``, pass that source's SP 800-90B health tests (cutoffs from its own
claimed min-entropy), and the approved samples wait in its bounded buffer.
(A pool of one source is also that source's consumer itself:
:meth:`SeedPool.write`.)  The pool owns the one CTR_DRBG of the process and
is the only path by which random bytes leave it
(:meth:`SeedPool.random_bytes`).

The policy, in one place:

- The DRBG is instantiated only from approved samples: enough of them to
  carry ``reseed_bits`` bits of entropy input and half as much of nonce
  (SP 800-90A §8.6.7).
- It is reseeded with ``reseed_bits`` worth of approved samples whenever
  ``reseed_interval`` seconds or ``reseed_bytes`` of output have passed.
- Each seed takes samples from every healthy source that has any, credited
  with each source's own claim, the credit split evenly among them
  (:func:`~entropy_appliance.core.feed.allot`), concatenated in the order
  the sources were given; the derivation function conditions the whole.
  A source still in its startup test joins from the next reseed.
- Two states stop output, and they are kept apart (:class:`PoolState`):

  * *failed*: fewer than ``min_sources`` sources are healthy (with one
    source: it failed its health tests or cannot be read).  A source that
    fails is left out of every seed, its buffer dropped, until it passes
    its startup test again.  The pool fails closed at once: :meth:`random_bytes` raises
    :class:`FailClosed`, waiters are failed, and :meth:`on_failure`
    callbacks run so that open streams close.  It serves again only after a
    reseed from samples that passed a fresh startup test.  A health failure
    drops every buffered sample, because a fault may have begun before a test
    could see it.
  * *starved*: enough sources are healthy, but their approved samples
    carry too little credit for a reseed that is due (or for the first
    instantiation).  This is
    backpressure: :meth:`random_bytes` raises :class:`Starved` (a
    :class:`FailClosed`, so a caller that does not wait still refuses), and
    :meth:`wait` calls back once enough seed has arrived
    (:func:`entropy_appliance.net.waiting.when_ready` makes a Deferred of it).

- No byte ever leaves an overdue DRBG: a request that would cross a
  ``reseed_bytes`` boundary is split there and reseeded in between, and it is
  refused whole, before any output, unless every reseed it needs is in the
  buffer.
- The buffer reads ahead of demand: its target is the seed that the reseeds
  of the last seconds consumed, times :data:`READ_AHEAD` seconds, between the
  base mark and ``max_buffer``; the reader is asked for chunks as large as the
  deficit.
- Every healthy source is read at least once per reseed interval, seed
  needed or not: a source not read for that long gets a health probe of
  :func:`~entropy_appliance.core.health.failing_run` samples, the run of one
  value that fails it persistently.  So a source that turns stuck or biased
  fails (and the pool fails closed, per ``min_sources``) within a bound even
  with no client at all.  Approved samples beyond the target push the oldest
  out, so an idle buffer is also renewed.
- A fork is detected by a changed pid; the child reseeds before its first
  output, or fails closed.
- Small requests (below :data:`BLOCK_BYTES`, with no additional input) are
  served from an :class:`OutputBlock`: one ``generate`` of the block's size,
  handed out in slices, each byte once.  A 64-byte answer then costs a slice
  instead of three AES key setups.  The block is dropped at every reseed,
  after a fork, and when the pool starves or fails, so no byte of it is older
  than the last reseed or reaches another process; the README
  ("Performance") says why SP 800-90A's guarantees still hold.
- Client data that should reach the DRBG without a ``generate`` of its own
  (pollen's challenge) is hashed by :meth:`SeedPool.mix` and folded in at
  the next reseed as its additional input.

Everything here is synchronous, imports nothing of ``twisted.internet``, and
takes its clock, pid and personalization as parameters.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from twisted.logger import Logger

from entropy_appliance.core.drbg import CtrDrbg
from entropy_appliance.core.feed import CREDIT_SCALE, IPull, SourceFeed, allot, credit_units, feed_of
from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.states import HealthTest, PoolState, SourceState
from entropy_appliance.core.status import (
    BufferStatus,
    DrbgStatus,
    PoolStatus,
    SourceStatus,
    StarvedStatus,
)

#: Seconds of measured seed demand that the buffer holds ahead.
READ_AHEAD = 2.0

#: The default bound of the read-ahead buffer, in samples.
MAX_BUFFER = 4 * 1024 * 1024

#: The smallest ``reseed_bytes``: below it a single request would need more
#: reseeds than a bounded buffer can promise.
MIN_RESEED_BYTES = 4096

#: The size of the per-process block of DRBG output that small requests are
#: served from; requests of this size or more bypass it.
BLOCK_BYTES = 16 * 1024

__all__ = [
    "FailClosed",
    "Starved",
    "PoolState",
    "PoolShort",
    "SeedPool",
    "ReseedPolicy",
    "IClock",
    "OutputBlock",
    "BLOCK_BYTES",
]


class IClock(Protocol):
    """The one thing the pool needs of a clock."""

    def seconds(self) -> float: ...


class FailClosed(Exception):
    """
    No random byte may leave the process now.

    ``reason`` is a short human sentence; ``retry_after`` is a hint in
    seconds for HTTP ``Retry-After``.
    """

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Starved(FailClosed):
    """
    The source is healthy but seed is short for a reseed that is due: wait
    (:meth:`SeedPool.wait`) rather than give up.  It is a
    :class:`FailClosed`, so a caller that cannot wait still refuses.
    """


@dataclass(eq=False)
class _Waiter:
    n: int
    ready: Callable[[], object]
    failed: Callable[[FailClosed], object]


def _nothing() -> None:
    """Withdraw a wait that is already over."""


class OutputBlock:
    """
    One ``generate`` of DRBG output, handed out in slices: every byte at
    most once, in order, and none after :meth:`drop`.
    """

    __slots__ = ("size", "_data", "_pos")

    def __init__(self, size: int = BLOCK_BYTES) -> None:
        if size < 1:
            raise ValueError("block size must be >= 1")
        self.size = size
        self._data = b""
        self._pos = 0

    def take(self, n: int) -> bytes | None:
        """The next ``n`` bytes, or None if fewer are left (then :meth:`fill`)."""
        pos = self._pos
        end = pos + n
        if end > len(self._data):
            return None
        self._pos = end
        return self._data[pos:end]

    def fill(self, data: bytes) -> None:
        """Replace what is left with ``data``, fresh from the DRBG."""
        self._data = data
        self._pos = 0

    def drop(self) -> None:
        """Forget what is left: it is never handed out."""
        self._data = b""
        self._pos = 0

    @property
    def left(self) -> int:
        """Bytes not handed out yet."""
        return len(self._data) - self._pos


class PoolShort(Exception):
    """
    The pool cannot spare raw samples without starving the next reseed.
    """


@dataclass(frozen=True)
class ReseedPolicy:
    """When to reseed and with how much entropy."""

    interval: float = 1.0
    max_bytes: int = 64 * 1024 * 1024
    bits: int = 384

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError("reseed interval must be > 0 seconds")
        if self.bits < 256:
            raise ValueError("reseed bits must be >= 256 (AES-256 security strength)")
        if self.max_bytes < MIN_RESEED_BYTES:
            raise ValueError(f"reseed bytes must be >= {MIN_RESEED_BYTES}")


@dataclass
class _Counters:
    bytes_read: int = 0
    source_errors: int = 0
    seed_draws: int = 0
    seed_draws_short: int = 0
    reseeds: int = 0
    reseed_failures: int = 0
    fail_closed_refusals: int = 0
    starved_refusals: int = 0
    starved_waits: int = 0
    starved_seconds: float = 0.0
    bytes_generated: int = 0
    served: dict[str, int] = field(default_factory=dict)


def samples_for_bits(bits: int, min_entropy: float) -> int:
    """
    How many 8-bit samples carry ``bits`` of min-entropy at ``min_entropy``
    bits per sample.
    """
    return math.ceil(bits / min_entropy)


class SeedPool:
    """
    Health-tests raw source bytes, buffers approved samples up to a
    read-ahead target, and owns the CTR_DRBG.

    Each source is a :class:`~entropy_appliance.core.feed.SourceFeed` with
    its own health tests, buffer, backoff and state; its reader (a pull
    producer) writes to the feed, and the pool asks a reader for more only
    while that feed is below its target.  Every seed takes approved samples
    from every healthy source (:func:`~entropy_appliance.core.feed.allot`).
    A pool made with one ``health`` and no ``feeds`` has one source, and is
    itself the consumer of its reader (``registerProducer``, ``write``,
    :meth:`read_size`), as before there were several.

    ``min_sources``: the pool fails closed while fewer sources are healthy,
    and each seed draws on at least that many.
    """

    log = Logger()

    def __init__(
        self,
        clock: IClock,
        health: HealthTests | None,
        policy: ReseedPolicy,
        source_name: str = "kernel",
        source_kind: str = "kernel",
        high_water: int | None = None,
        getpid: Callable[[], int] = os.getpid,
        serving: bool = True,
        max_buffer: int = MAX_BUFFER,
        personalization: Callable[[], bytes] | None = None,
        block: OutputBlock | None = None,
        feeds: Sequence[SourceFeed] | None = None,
        min_sources: int = 1,
    ) -> None:
        self._clock = clock
        self.policy = policy
        if feeds is None:
            if health is None:
                raise ValueError("a seed pool needs health tests or feeds")
            feeds = [SourceFeed(health, source_name, source_kind)]
        if not feeds:
            raise ValueError("a seed pool needs at least one source")
        names = [f.name for f in feeds]
        if len(set(names)) != len(names):
            raise ValueError("each source may be given once")
        if not 1 <= min_sources <= len(feeds):
            raise ValueError(f"min_sources must be between 1 and {len(feeds)}")
        self.feeds: tuple[SourceFeed, ...] = tuple(feeds)
        self.min_sources = min_sources
        #: Credit, in units of 1/CREDIT_SCALE bit, of a reseed's entropy
        #: input, and of an instantiation's nonce (half as much).
        self.reseed_credit = policy.bits * CREDIT_SCALE
        self.nonce_credit = self.reseed_credit // 2
        first = self.feeds[0]
        self.min_entropy = first.min_entropy
        self.reseed_samples = first.samples_for(self.reseed_credit)
        self.instantiate_samples = self.reseed_samples + first.samples_for(self.nonce_credit)
        for feed in self.feeds:
            alone = feed.samples_for(self.reseed_credit) + feed.samples_for(self.nonce_credit)
            floor = high_water or max(4 * alone, 4096)
            if floor < alone:
                raise ValueError("high-water mark is below one instantiation's seed")
            feed.attach(self, floor, max_buffer)
        #: The buffer's floor: what it holds with no measured demand.
        self.high_water = first.high_water
        self.max_buffer = first.max_buffer
        #: The lowest claim of any source: what a worker credits relayed seed at.
        self.relay_min_entropy = min(f.min_entropy for f in self.feeds)
        self._relay_unit = credit_units(self.relay_min_entropy)
        self._getpid = getpid
        self._personalization = personalization or self._default_personalization
        #: False in a parent that only relays seed material to workers: it
        #: never instantiates a DRBG of its own.
        self.serving = serving
        self._pid = getpid()
        self._drbg: CtrDrbg | None = None
        self._last_reseed: float | None = None
        self._bytes_since_reseed = 0
        #: Why the pool fails closed (too few healthy sources), or None.
        self._failure: str | None = None
        #: Since when the pool has been starved, or None.  Not yet seeded
        #: counts as starved from the start.
        self._starved_since: float | None = clock.seconds() if serving else None
        self._demand_at = clock.seconds()
        #: Who waits for how many bytes: (n, ready, failed).
        self._waiters: list[_Waiter] = []
        self._failure_callbacks: set[Callable[[FailClosed], object]] = set()
        self.counters = _Counters()
        #: Small requests' output: at most a sixteenth of a reseed's worth,
        #: so that a refill seldom runs into a reseed boundary.
        self._block = block if block is not None else OutputBlock(BLOCK_BYTES)
        self._block.size = max(1, min(self._block.size, policy.max_bytes // 16))
        #: What :meth:`mix` took since the last reseed, or None.
        self._mixed: hashlib._Hash | None = None
        #: The names and kinds of the sources of the current seed, as the
        #: X-RNG-Source headers give them: every source before the first.
        self._seed_names = ", ".join(names)
        self._seed_kinds = ", ".join(f.kind for f in self.feeds)
        self._seed_feeds: tuple[SourceFeed, ...] = ()
        self._healthy = 0
        self._eligible_feeds: list[SourceFeed] = []
        #: What each source gave to the last seed, while nothing failed since.
        self._last_given: list[int] | None = None
        self._recount()
        #: The credit units of the last seed.
        self._seed_credit = 0

    # -- the one source of a single-source pool ---------------------------------

    @property
    def _buffer(self) -> bytearray:
        """The first source's buffer of approved samples."""
        return self.feeds[0].buffer

    @_buffer.setter
    def _buffer(self, value: bytearray) -> None:
        self.feeds[0].buffer = bytearray(value)

    @property
    def source_name(self) -> str:
        """The sources of the current seed (every source before the first), comma-separated."""
        return self._seed_names

    @property
    def source_kind(self) -> str:
        """The kinds of :attr:`source_name`'s sources, in the same order."""
        return self._seed_kinds

    def feed(self, name: str) -> SourceFeed | None:
        """The source called ``name``, or None."""
        return feed_of(self.feeds, name)

    def registerProducer(self, producer: IPull, streaming: bool) -> None:
        """Attach the reader of the first (usually only) source."""
        self.feeds[0].registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Detach the reader of the first source."""
        self.feeds[0].unregisterProducer()

    def write(self, data: bytes) -> None:
        """
        Take one chunk of raw bytes of the first source: health-test it and
        keep what passes.
        """
        self._fed(self.feeds[0], data)

    def source_failed(self, reason: str) -> None:
        """The first source's reader reports that it cannot be read."""
        self._feed_failed(self.feeds[0], reason)

    def source_recovered(self) -> None:
        """The first source's reader could read it again: run the startup test."""
        self._feed_recovered(self.feeds[0])

    # -- what each source's reader brings -----------------------------------------

    def _fed(self, feed: SourceFeed, data: bytes) -> None:
        now = self._clock.seconds()
        feed.pulling = False
        feed.read_at = now
        feed.probe_left = max(0, feed.probe_left - len(data))
        feed.bytes_read += len(data)
        health = feed.health
        before = sum(health.failures.values())
        approved = health.feed(data)
        if sum(health.failures.values()) != before:
            # A fault may predate its detection; nothing buffered is trusted.
            feed.drop()
        if feed.state is not health.state:
            feed.state = health.state
            self._recount()
        if feed.left_out and feed.state is SourceState.OK:
            feed.left_out = False
            feed.error = None
            self._recount()
            if len(self.feeds) > 1:
                self.log.warn("entropy source {name} passed its startup test again: taken back "
                              "({n} of {total} sources healthy)", name=feed.name,
                              n=self._counted(), total=len(self.feeds))
        if approved:
            # The freshest samples are kept: beyond the target, the oldest go.
            feed.buffer += approved
            excess = len(feed.buffer) - self.target(feed)
            if excess > 0:
                del feed.buffer[:excess]
        if feed.state is SourceState.FAILED:
            self._health_failed(feed, now)
        elif self.serving:
            if self._needs_seed(now):
                self._try_reseed(now)
            self._wake(now)
        elif self._failure is not None and self._counted() >= self.min_sources:
            # A relaying parent never reseeds: it recovers once enough
            # sources have passed their startup test again.
            self.log.info("relaying seed again (was: {why})", why=self._failure)
            self._failure = None
        self._pull(feed)

    def _named(self, feed: SourceFeed, what: str) -> str:
        """``source failed ...``, naming the source when there are several."""
        return f"source {feed.name} {what}" if len(self.feeds) > 1 else f"source {what}"

    def _health_failed(self, feed: SourceFeed, now: float) -> None:
        health = feed.health
        if feed.retry_at is None:
            self.log.error(
                "entropy source {name} failed its health tests ({test}); "
                "retrying in {delay:.0f} s", name=feed.name,
                test=health.last_failure, delay=feed.backoff.delay)
            feed.retry_at = now + feed.backoff.next()
        self._feed_down(feed, self._named(feed, f"failed its health tests ({health.last_failure})"))

    def _maybe_retry_health(self, feed: SourceFeed, now: float) -> None:
        if feed.retry_at is not None and now >= feed.retry_at:
            feed.retry_at = None
            self.log.info("re-running the startup test of {name}", name=feed.name)
            feed.health.reset()
            feed.state = feed.health.state
            self._recount()
            self._pull(feed)

    def _feed_failed(self, feed: SourceFeed, reason: str) -> None:
        """A reader reports that its source cannot be read."""
        feed.pulling = False
        feed.read_at = self._clock.seconds()
        feed.probe_left = 0
        feed.errors += 1
        self.counters.source_errors += 1
        if feed.state is not SourceState.FAILED:
            self.log.error("entropy source {name} failed: {reason}", name=feed.name, reason=reason)
        feed.state = SourceState.FAILED
        feed.error = reason
        self._recount()
        self._feed_down(feed, self._named(feed, f"failed: {reason}"))

    def _feed_recovered(self, feed: SourceFeed) -> None:
        """A reader could read its source again: run the startup test."""
        self.log.info("entropy source {name} is readable again; startup test", name=feed.name)
        feed.health.reset()
        feed.state = feed.health.state
        feed.error = None
        self._recount()

    def _feed_down(self, feed: SourceFeed, reason: str) -> None:
        """
        A source failed: drop its buffer (a device that fails may have been
        failing quietly before), leave it out of every seed until it passes
        its startup test again, and fail closed if too few sources are left.
        """
        feed.drop()
        feed.probe_left = 0
        first = not feed.left_out
        feed.left_out = True
        self._last_given = None
        self._recount()
        healthy = self._counted()
        if healthy < self.min_sources:
            if len(self.feeds) > 1:
                reason = (f"{reason}; {healthy} of {len(self.feeds)} sources healthy, "
                          f"{self.min_sources} needed")
            self._fail(reason)
        elif first:
            self.log.warn("entropy source {name} left out; carrying on with {n} of {total} "
                          "sources", name=feed.name, n=healthy, total=len(self.feeds))

    def _counted(self) -> int:
        """How many sources count as healthy for ``min_sources``."""
        return self._healthy

    def _recount(self) -> None:
        """Count the healthy and the eligible sources again, after any source's state changed."""
        self._healthy = sum(1 for f in self.feeds if f.counted)
        self._eligible_feeds = [f for f in self.feeds if f.eligible]

    def _fail(self, reason: str) -> None:
        """Fail closed now: refuse, fail every waiter, tell every watcher."""
        self._block.drop()
        if self._failure is None:
            self.log.error("failing closed: {reason}", reason=reason)
        self._failure = reason
        if self._starved_since is not None:
            self._end_starvation(self._clock.seconds())
        error = FailClosed(reason, self.retry_after())
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.failed(error)
        for callback in list(self._failure_callbacks):
            callback(error)

    def target(self, feed: SourceFeed | None = None) -> int:
        """The buffer level a source (the first by default) is read up to now."""
        f = feed or self.feeds[0]
        ahead = int(f.demand * READ_AHEAD)
        return min(f.max_buffer, max(f.high_water, ahead, f.wanted))

    def read_size(self) -> int:
        """How many bytes the first source's reader should fetch next: its buffer's deficit."""
        return self.feeds[0].read_size()

    @property
    def probing(self) -> bool:
        """Whether the first source's next read is only a health probe (read at its size)."""
        return self.feeds[0].probing

    def _pull(self, feed: SourceFeed) -> None:
        if feed.producer is None or feed.pulling or feed.state is SourceState.FAILED:
            return
        target = self.target(feed)
        # A buffer that is merely topped up waits until a quarter of it is
        # gone, so that each read brings a useful amount rather than the few
        # samples of one reseed; a pool that waits for seed reads at once.
        if feed.wanted or self._starved_since is not None or feed.state is not SourceState.OK:
            low = target
        else:
            low = target - target // 4
        if len(feed.buffer) < low or feed.probe_left:
            feed.pulling = True
            feed.producer.resumeProducing()

    def _pull_all(self) -> None:
        for feed in self.feeds:
            self._pull(feed)

    def nudge(self) -> None:
        """Ask each reader for more if its source is below its target."""
        self._pull_all()

    # -- seeding --------------------------------------------------------------

    def _needs_seed(self, now: float) -> bool:
        return self._drbg is None or self._failure is not None or self._reseed_due(now)

    def _eligible(self) -> list[SourceFeed]:
        return self._eligible_feeds

    def _plan_takes(self, feeds: Sequence[SourceFeed],
                    credits: Sequence[int]) -> list[list[int]] | None:
        """
        How many samples each of ``feeds`` gives to each seed of ``credits``
        (credit units each), in turn; None if they cannot carry them all.
        The even split of :func:`~entropy_appliance.core.feed.allot` is
        computed directly while every source holds its share (the usual
        case, once per reseed), and by ``allot`` otherwise.
        """
        if len(feeds) < self.min_sources:
            return None
        avail = [len(f.buffer) for f in feeds]
        units = [f.unit for f in feeds]
        plans = []
        for credit in credits:
            count = sum(1 for a in avail if a)
            take = [-(-credit // (count * u)) if a else 0 for a, u in zip(avail, units, strict=True)]
            if count < self.min_sources or any(t > a for t, a in zip(take, avail, strict=True)):
                found = allot(list(zip(avail, units, strict=True)), credit, self.min_sources)
                if found is None:
                    return None
                take = found
            avail = [a - t for a, t in zip(avail, take, strict=True)]
            plans.append(take)
        return plans

    def _take(self, credits: Sequence[int]) -> list[bytes] | None:
        """
        Take one seed for each of ``credits`` (credit units each) from every
        eligible source, all or nothing; None if the sources cannot carry
        them now.  Each part is the sources' samples concatenated in the
        order the sources were given.
        """
        self.counters.seed_draws += 1
        feeds = self._eligible() if self._counted() >= self.min_sources else []
        plans = self._plan_takes(feeds, credits)
        if plans is None:
            self.counters.seed_draws_short += 1
            return None
        parts = [b"".join([f.take(t) for f, t in zip(feeds, take, strict=True) if t]) for take in plans]
        self._record_seed(feeds, [sum(column) for column in zip(*plans, strict=True)])
        return parts

    def _record_seed(self, feeds: Sequence[SourceFeed], given: Sequence[int]) -> None:
        """Remember what each source gave to the seed, and the seed's sources."""
        if given == self._last_given and len(feeds) == len(self.feeds):
            return
        self._last_given = list(given) if len(feeds) == len(self.feeds) else None
        for f in self.feeds:
            f.given = 0
        for f, t in zip(feeds, given, strict=True):
            f.given = t
            if t:
                f.backoff.reset()
        self._seed_credit = sum(f.given * f.unit for f in feeds)
        used = tuple(f for f in self.feeds if f.given)
        if used != self._seed_feeds:
            self._seed_feeds = used
            self._seed_names = ", ".join(f.name for f in used)
            self._seed_kinds = ", ".join(f.kind for f in used)

    def _share(self, feed: SourceFeed) -> float:
        """A source's share of the credited entropy of the last seed, 0..1."""
        if not feed.given or not self._seed_credit:
            return 0.0
        return round(feed.given * feed.unit / self._seed_credit, 4)

    def _can_seed(self, instantiate: bool, reseeds: int) -> bool:
        """Whether the sources hold the seed of an instantiation (if asked) and ``reseeds`` reseeds."""
        if not instantiate and not reseeds:
            return True
        if self._counted() < self.min_sources:
            return False
        if len(self.feeds) == 1:
            feed = self.feeds[0]
            need = reseeds * self.reseed_samples + (self.instantiate_samples if instantiate else 0)
            return feed.eligible and len(feed.buffer) >= need
        feeds = self._eligible()
        credits = [self.reseed_credit, self.nonce_credit] if instantiate else []
        credits += [self.reseed_credit] * reseeds
        total = sum(credits)
        if sum(len(f.buffer) * f.unit for f in feeds) < total:
            return False
        count = sum(1 for f in feeds if f.buffer)
        if count >= self.min_sources and all(
                len(f.buffer) >= -(-total // (count * f.unit)) + len(credits) for f in feeds):
            # Every source holds its even share of every seed, rounding included.
            return True
        return self._plan_takes(feeds, credits) is not None

    @staticmethod
    def _default_personalization() -> bytes:
        return b"entropy-appliance|" + socket.gethostname().encode() + struct.pack(
            ">qd", os.getpid(), time.time()
        )

    def _try_reseed(self, now: float) -> bool:
        """Instantiate or reseed from the sources; wake the waiters on success."""
        if self._counted() < self.min_sources:
            return False
        if self._drbg is None:
            parts = self._take([self.reseed_credit, self.nonce_credit])
            if parts is None:
                return False
            self._drbg = CtrDrbg(
                parts[0], nonce=parts[1],
                personalization=self._personalization(), use_df=True,
            )
            self.log.info("DRBG instantiated from {source}", source=self._seed_names)
        else:
            parts = self._take([self.reseed_credit])
            if parts is None:
                return False
            mixed, self._mixed = self._mixed, None
            self._drbg.reseed(parts[0], mixed.digest() if mixed is not None else b"")
        self._reseeded(now)
        return True

    def _reseeded(self, now: float) -> None:
        self._block.drop()
        self._last_reseed = now
        self._bytes_since_reseed = 0
        self.counters.reseeds += 1
        if self._failure is not None:
            self.log.info("serving random bytes again (was: {why})", why=self._failure)
            self._failure = None
        self._wake(now)

    def _reseed_due(self, now: float) -> bool:
        return self._last_reseed is not None and (
            now - self._last_reseed >= self.policy.interval
            or self._bytes_since_reseed >= self.policy.max_bytes
        )

    def _plan(self, n: int, now: float) -> tuple[bool, int]:
        """Whether serving ``n`` bytes now instantiates first, and how many reseeds it takes."""
        cap = self.policy.max_bytes
        if self._drbg is None:
            return True, max(0, -(-n // cap) - 1)
        due = self._reseed_due(now)
        used = 0 if due else self._bytes_since_reseed
        return False, int(due) + max(0, -(-(used + n) // cap) - 1)

    def _seed_ok(self, n: int, now: float) -> bool:
        """Whether the sources hold every seed that serving ``n`` bytes now takes."""
        return self._can_seed(*self._plan(n, now))

    def _seed_needed(self, n: int, now: float) -> int:
        """The credit units that serving ``n`` bytes now takes."""
        instantiate, reseeds = self._plan(n, now)
        return (self.reseed_credit + self.nonce_credit if instantiate else 0) + (
            reseeds * self.reseed_credit)

    def _wake(self, now: float) -> None:
        """End starvation once a plain request can be served; fire the waiters that can be."""
        if self._failure is not None:
            return
        if self._starved_since is not None and self._seed_ok(0, now):
            if self._drbg is None and self.serving:
                self._try_reseed(now)
            self._end_starvation(now)
            for feed in self.feeds:
                feed.wanted = 0
        for waiter in list(self._waiters):
            if self._failure is not None:
                return
            if waiter in self._waiters and self._seed_ok(waiter.n, now):
                self._waiters.remove(waiter)
                waiter.ready()
        self._pull_all()

    def _starve(self, now: float, credit: int) -> None:
        self._block.drop()
        if self._starved_since is None:
            self._starved_since = now
        for feed in self.feeds:
            feed.wanted = max(feed.wanted, min(feed.samples_for(credit), feed.max_buffer))
        self._pull_all()

    def _end_starvation(self, now: float) -> None:
        if self._starved_since is not None:
            self.counters.starved_seconds += max(0.0, now - self._starved_since)
            self._starved_since = None

    def _forked(self) -> None:
        """
        This process is a fork of the one that made the DRBG and the buffers:
        both are shared with the parent, so both are dropped, and the child
        instantiates anew from samples it reads itself.
        """
        self.log.warn("fork detected (pid {old} -> {new}): discarding DRBG state and seed buffer",
                      old=self._pid, new=self._getpid())
        self._pid = self._getpid()
        self._drbg = None
        self._block.drop()
        self._mixed = None
        self._last_reseed = None
        self._waiters = []
        self._starved_since = self._clock.seconds() if self.serving else None
        for feed in self.feeds:
            feed.drop()
            feed.pulling = False
            after_fork = getattr(feed.producer, "after_fork", None)
            if after_fork is not None:
                after_fork()
        self._pull_all()

    def _measure_demand(self, now: float) -> None:
        elapsed = now - self._demand_at
        if elapsed >= 0.5:
            for feed in self.feeds:
                rate = feed.drawn / elapsed
                # Rise at once, decay slowly: bursts come back.
                feed.demand = rate if rate > feed.demand else 0.8 * feed.demand + 0.2 * rate
                feed.drawn = 0
            self._demand_at = now

    def _probe(self, feed: SourceFeed, now: float) -> None:
        """
        Read a healthy source that has not been read for a reseed interval:
        one health probe of :attr:`~SourceFeed.probe_samples` samples, so
        that a source that turns stuck or biased fails (and the pool fails
        closed if too few are left) within a bound even when no seed is
        needed.  What the probe approves joins the buffer, the oldest
        samples beyond the target making room.
        """
        if (feed.state is not SourceState.OK or feed.producer is None or feed.pulling
                or feed.probe_left or feed.read_at is None
                or now - feed.read_at < self.policy.interval):
            return
        feed.probe_left = feed.probe_samples
        self._pull(feed)

    def tick(self) -> None:
        """
        Reseed now if a reseed is due; called twice per reseed interval so
        that an idle pool still reseeds on time.  A due reseed that cannot
        be done starves the pool until samples arrive.  A failed source whose
        backoff has passed runs its startup test again.  A healthy source
        that has not been read for a reseed interval is probed
        (:meth:`_probe`).
        """
        now = self._clock.seconds()
        self._measure_demand(now)
        for feed in self.feeds:
            self._maybe_retry_health(feed, now)
            self._probe(feed, now)
        if not self.serving or self._failure is not None:
            self._pull_all()
            return
        if self._needs_seed(now) and not self._try_reseed(now):
            self.counters.reseed_failures += 1
            self._starve(now, self._seed_needed(0, now))
        self._wake(now)

    # -- output ---------------------------------------------------------------

    def _check(self, n: int, now: float) -> None:
        """Raise FailClosed or Starved unless ``n`` bytes can be served now."""
        if self._getpid() != self._pid:
            self._forked()
        if self._failure is not None:
            self.counters.fail_closed_refusals += 1
            raise FailClosed(self.closed_reason or "source failed", self.retry_after())
        if not self._seed_ok(n, now):
            need = self._seed_needed(n, now)
            self.counters.seed_draws_short += 1
            if self._drbg is None:
                self._refuse_starved(now, need, "waiting for the first seed")
            self._refuse_starved(now, need, "reseed due and the seed pool is refilling")
        if self._drbg is None and self.serving:
            self._try_reseed(now)

    def _refuse_starved(self, now: float, wanted: int, reason: str) -> None:
        self._starve(now, wanted)
        self.counters.starved_refusals += 1
        raise Starved(reason, self.retry_after())

    def ready(self, n: int = 0) -> bool:
        """
        Whether ``random_bytes(n)`` would be served now (a due reseed is done
        here).  False marks the pool starved or reports it failed; it never
        raises.
        """
        try:
            self._check(n, self._clock.seconds())
        except FailClosed:
            return False
        return True

    def wait(self, n: int, ready: Callable[[], object],
             failed: Callable[[FailClosed], object]) -> Callable[[], None]:
        """
        Call ``ready()`` once ``random_bytes(n)`` can be served (at once if
        it can now), or ``failed(error)`` if the source fails first.
        Returns the function that withdraws the wait.
        """
        try:
            self._check(n, self._clock.seconds())
        except Starved:
            pass
        except FailClosed as e:
            failed(e)
            return _nothing
        else:
            ready()
            return _nothing
        self.counters.starved_waits += 1
        waiter = _Waiter(n, ready, failed)
        self._waiters.append(waiter)

        def withdraw() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

        return withdraw

    def on_failure(self, callback: Callable[[FailClosed], object]) -> Callable[[], None]:
        """
        Call ``callback`` each time the pool fails closed (the source
        failed); returns the function that removes it.
        """
        self._failure_callbacks.add(callback)
        return lambda: self._failure_callbacks.discard(callback)

    def random_bytes(self, n: int, additional_input: bytes = b"",
                     surface: str | None = None) -> bytes:
        """
        Return ``n`` bytes of CTR_DRBG output, or raise :class:`Starved` or
        :class:`FailClosed` before producing any.

        ``surface`` (e.g. ``"stream"``, ``"http"``) is counted in the
        bytes-served figures.  A request smaller than the block, with no
        ``additional_input``, is a slice of the pool's :class:`OutputBlock`;
        ``additional_input`` always gets a ``generate`` of its own, so that it
        is mixed in before the bytes it is given with.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        now = self._clock.seconds()
        self._check(n, now)
        drbg = self._drbg
        assert drbg is not None
        if self._reseed_due(now):
            self._try_reseed(now)
        room = self.policy.max_bytes - self._bytes_since_reseed
        block = self._block
        sliced = None
        if n < block.size and not additional_input:
            sliced = block.take(n)
            if sliced is None and room >= block.size:
                block.fill(drbg.generate(block.size))
                self._bytes_since_reseed += block.size
                sliced = block.take(n)
        if sliced is not None:
            out = sliced
        elif n <= room:
            out = drbg.generate(n, additional_input)
            self._bytes_since_reseed += n
        else:
            out = self._generate_split(drbg, n, room, additional_input, now)
        self.counters.bytes_generated += n
        if surface is not None:
            served = self.counters.served
            served[surface] = served.get(surface, 0) + n
        return out

    def mix(self, data: bytes) -> None:
        """
        Fold ``data`` (client-supplied, credited with no entropy) into the
        DRBG at the next reseed, as additional input: its SHA-512 over
        everything mixed since the last one.
        """
        if self._mixed is None:
            self._mixed = hashlib.sha512()
        self._mixed.update(len(data).to_bytes(4, "big"))
        self._mixed.update(data)

    def _generate_split(self, drbg: CtrDrbg, n: int, room: int, additional_input: bytes,
                        now: float) -> bytes:
        """Serve ``n`` bytes across reseed boundaries (``_check`` saw the seed)."""
        parts = [drbg.generate(room, additional_input)] if room else []
        left = n - room
        while left:
            if not self._try_reseed(now):
                raise AssertionError("seed vanished between the check and the reseed")
            piece = min(left, self.policy.max_bytes)
            parts.append(drbg.generate(piece))
            self._bytes_since_reseed = piece
            left -= piece
        return b"".join(parts)

    def retry_after(self) -> float:
        """A hint, in seconds, for when to try again after FailClosed."""
        return max(1.0, self.policy.interval)

    def take_raw(self, n: int, source: str | None = None) -> bytes:
        """
        Hand out ``n`` raw samples of one source (the first by default) for
        diagnostics (a heatmap).

        While the source is healthy they come from its approved buffer, and
        are consumed so that they never seed the DRBG; only what is beyond
        one reseed's worth may be taken.  While the source is failing they
        come from its health tests' quarantine of discarded samples.  Raises
        :class:`PoolShort` rather than starving a reseed, and KeyError for a
        source the pool does not have.
        """
        feed = self.feeds[0] if source is None else self.feed(source)
        if feed is None:
            raise KeyError(source)
        if feed.left_out or SourceState.FAILED in (feed.state, feed.health.state):
            raw = feed.health.quarantine(n)
            if len(raw) < n:
                raise PoolShort("not enough raw samples from the failing source")
            return raw
        if len(feed.buffer) - n < feed.samples_for(self.reseed_credit):
            self._pull(feed)
            raise PoolShort("the seed pool is too low to spare raw samples")
        out = bytes(feed.buffer[:n])
        del feed.buffer[:n]
        self._pull(feed)
        return out

    def take_seed(self, n: int) -> bytes:
        """
        Hand out combined seed material for another process (a worker):
        approved samples from every healthy source, in the order the sources
        were given, carrying at least ``n`` samples' worth of credit at the
        lowest claim of any source (:attr:`relay_min_entropy`), so that a
        taker that credits every byte at that claim never over-credits.
        They are consumed, so no two takers get the same bytes.  Raises
        :class:`PoolShort` when too few sources are healthy or none has
        samples.
        """
        if self._failure is not None or self._counted() < self.min_sources:
            self._pull_all()
            raise PoolShort("no healthy seed material buffered")
        if len(self.feeds) == 1:
            feed = self.feeds[0]
            if not feed.eligible or not feed.buffer:
                self._pull(feed)
                raise PoolShort("no healthy seed material buffered")
            self.counters.seed_draws += 1
            out = feed.take(n)
            self._pull(feed)
            return out
        feeds = self._eligible()
        held = sum(len(f.buffer) * f.unit for f in feeds)
        credit = min(n * self._relay_unit, held)
        parts = self._take([credit]) if credit else None
        self._pull_all()
        if not parts:
            raise PoolShort("no healthy seed material buffered")
        return parts[0]

    # -- reporting ------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """ok, starved or failed (see :class:`PoolState`)."""
        if self._failure is not None or self._counted() < self.min_sources:
            return PoolState.FAILED
        if self.serving and (
                self._drbg is None or self._starved_since is not None
                or not self._seed_ok(0, self._clock.seconds())):
            return PoolState.STARVED
        return PoolState.OK

    @property
    def healthy(self) -> bool:
        """True while random bytes may be served."""
        return self.state is PoolState.OK

    @property
    def closed_reason(self) -> str | None:
        """Why no byte is served now, or None."""
        if self._failure is not None:
            return self._failure
        if self._counted() < self.min_sources:
            return f"{self._counted()} of {len(self.feeds)} sources healthy, {self.min_sources} needed"
        if self._drbg is None:
            return "waiting for the first seed"
        if self.state is PoolState.STARVED:
            return "reseed due and the seed pool is refilling"
        return None

    def starved_for(self) -> float:
        """Seconds the pool has been starved without a break (0 if it is not)."""
        if self._starved_since is None:
            return 0.0
        return max(0.0, self._clock.seconds() - self._starved_since)

    def _feed_status(self, feed: SourceFeed) -> SourceStatus:
        health = feed.health
        state = SourceState.FAILED if feed.left_out and feed.state is SourceState.OK else feed.state
        return SourceStatus(
            name=feed.name,
            kind=feed.kind,
            state=state,
            error=feed.error,
            bytes_read=feed.bytes_read,
            errors=feed.errors,
            min_entropy=feed.min_entropy,
            health_failures=MappingProxyType(dict(health.failures)),
            health=health.snapshot(),
            buffered_bytes=len(feed.buffer),
            share=self._share(feed),
            in_seed=feed.given > 0,
            left_out=feed.left_out,
        )

    def _overall(self, sources: Sequence[SourceStatus]) -> SourceStatus:
        """
        The one ``source`` of the status document: the source itself when
        there is one, else all of them together (names and kinds joined,
        counters summed, the lowest claim, the best state among the sources
        that count, or failed when too few do).
        """
        if len(sources) == 1:
            return sources[0]
        failures: dict[HealthTest, int] = {}
        for one in sources:
            for test, count in one.health_failures.items():
                failures[test] = failures.get(test, 0) + count
        if self._counted() < self.min_sources:
            state = SourceState.FAILED
        else:
            order = (SourceState.OK, SourceState.STARTUP, SourceState.STARTING)
            states = {f.state for f in self.feeds if f.counted}
            state = next((s for s in order if s in states), SourceState.FAILED)
        errors = [f"{s.name}: {s.error}" for s in sources if s.error]
        return SourceStatus(
            name=", ".join(s.name for s in sources),
            kind=", ".join(s.kind for s in sources),
            state=state,
            error="; ".join(errors) or None,
            bytes_read=sum(s.bytes_read for s in sources),
            errors=sum(s.errors for s in sources),
            min_entropy=min(s.min_entropy for s in sources),
            health_failures=MappingProxyType(failures),
            health=sources[0].health,
            buffered_bytes=sum(s.buffered_bytes for s in sources),
            share=1.0,
            in_seed=any(s.in_seed for s in sources),
            left_out=all(s.left_out for s in sources),
        )

    def status(self) -> PoolStatus:
        """One snapshot of every counter (``as_dict()`` makes it JSON)."""
        now = self._clock.seconds()
        c = self.counters
        age = None if self._last_reseed is None else max(0.0, now - self._last_reseed)
        starved_now = self.starved_for()
        sources = tuple(self._feed_status(f) for f in self.feeds)
        fill = sum(len(f.buffer) for f in self.feeds)
        target = sum(self.target(f) for f in self.feeds)
        demand = sum(f.demand for f in self.feeds)
        return PoolStatus(
            state=self.state,
            healthy=self.healthy,
            reason=self.closed_reason,
            starved=StarvedStatus(
                seconds=starved_now,
                total_seconds=c.starved_seconds + starved_now,
                waits=c.starved_waits,
                refusals=c.starved_refusals,
            ),
            source=self._overall(sources),
            buffer=BufferStatus(
                fill_bytes=fill,
                fill_percent=round(100.0 * fill / target, 2),
                high_water_bytes=target,
                demand_bytes_per_second=round(demand, 1),
                pressure=(c.seed_draws_short / c.seed_draws) if c.seed_draws else 0.0,
                seed_draws=c.seed_draws,
                seed_draws_short=c.seed_draws_short,
            ),
            drbg=DrbgStatus(
                mechanism="CTR_DRBG AES-256 use df",
                reseeds=c.reseeds,
                reseed_failures=c.reseed_failures,
                reseed_age_seconds=age,
                reseed_interval_seconds=self.policy.interval,
                reseed_bytes=self.policy.max_bytes,
                reseed_bits=self.policy.bits,
                bytes_since_reseed=self._bytes_since_reseed,
                bytes_generated=c.bytes_generated,
            ),
            served=MappingProxyType(dict(c.served)),
            fail_closed_refusals=c.fail_closed_refusals,
            sources=sources,
            min_sources=self.min_sources,
        )

    def reseed_age(self) -> float | None:
        """Seconds since the last reseed, or None before the first."""
        if self._last_reseed is None:
            return None
        return max(0.0, self._clock.seconds() - self._last_reseed)
