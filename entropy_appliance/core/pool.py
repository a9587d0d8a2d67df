"""
The seed pool and the reseed policy.

The pool is the consumer of the source producer: raw chunks arrive through
:meth:`SeedPool.write`, pass the SP 800-90B health tests, and the approved
samples wait in a bounded buffer.  The pool owns the one CTR_DRBG of the
process and is the only path by which random bytes leave it
(:meth:`SeedPool.random_bytes`).

The policy, in one place:

- The DRBG is instantiated only from approved samples: enough of them to
  carry ``reseed_bits * 3/2`` bits at the claimed min-entropy (entropy input
  plus nonce, SP 800-90A §8.6.7).
- It is reseeded with ``reseed_bits`` worth of approved samples whenever
  ``reseed_interval`` seconds or ``reseed_bytes`` of output have passed.
- Two states stop output, and they are kept apart (:class:`PoolState`):

  * *failed*: the source failed its health tests or cannot be read.  The
    pool fails closed at once: :meth:`random_bytes` raises
    :class:`FailClosed`, waiters are failed, and :meth:`on_failure`
    callbacks run so that open streams close.  It serves again only after a
    reseed from samples that passed a fresh startup test.  A health failure
    drops every buffered sample, because a fault may have begun before a test
    could see it.
  * *starved*: the source is healthy, but the approved samples are too few
    for a reseed that is due (or for the first instantiation).  This is
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
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from twisted.logger import Logger

from entropy_appliance.core.backoff import Backoff
from entropy_appliance.core.drbg import CtrDrbg
from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.states import PoolState, SourceState
from entropy_appliance.core.status import (
    BufferStatus,
    DrbgStatus,
    PoolStatus,
    SourceStatus,
    StarvedStatus,
)

#: The longest wait, in seconds, before a failed source is tested again.
MAX_BACKOFF = 60.0

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


class IPull(Protocol):
    """What the pool needs of its source reader: one more read, please."""

    def resumeProducing(self) -> None: ...


class SeedPool:
    """
    Health-tests raw source bytes, buffers approved samples up to a
    read-ahead target, and owns the CTR_DRBG.

    It is the consumer of a pull producer (the source reader, with the
    ``IConsumer`` method names): it asks for more only while it is below its
    target, and tells the reader how much it wants (:meth:`read_size`).
    """

    log = Logger()

    def __init__(
        self,
        clock: IClock,
        health: HealthTests,
        policy: ReseedPolicy,
        source_name: str = "kernel",
        source_kind: str = "kernel",
        high_water: int | None = None,
        getpid: Callable[[], int] = os.getpid,
        serving: bool = True,
        max_buffer: int = MAX_BUFFER,
        personalization: Callable[[], bytes] | None = None,
        block: OutputBlock | None = None,
    ) -> None:
        self._clock = clock
        self._health = health
        self.policy = policy
        self.source_name = source_name
        self.source_kind = source_kind
        self.min_entropy = health.min_entropy
        self.reseed_samples = samples_for_bits(policy.bits, self.min_entropy)
        self.instantiate_samples = samples_for_bits(
            policy.bits + policy.bits // 2, self.min_entropy
        )
        #: The buffer's floor: what it holds with no measured demand.
        self.high_water = high_water or max(4 * self.instantiate_samples, 4096)
        if self.high_water < self.instantiate_samples:
            raise ValueError("high-water mark is below one instantiation's seed")
        self.max_buffer = max(max_buffer, self.high_water)
        self._getpid = getpid
        self._personalization = personalization or self._default_personalization
        #: False in a parent that only relays seed material to workers: it
        #: never instantiates a DRBG of its own.
        self.serving = serving
        self._pid = getpid()
        self._buffer = bytearray()
        self._drbg: CtrDrbg | None = None
        self._last_reseed: float | None = None
        self._bytes_since_reseed = 0
        self._producer: IPull | None = None
        self._pulling = False
        self._source_state: SourceState = SourceState.STARTING
        self._health_retry_at: float | None = None
        self._health_backoff = Backoff(1.0, MAX_BACKOFF)
        self._source_error: str | None = None
        #: Why the pool fails closed (the source failed), or None.
        self._failure: str | None = None
        #: Since when the pool has been starved, or None.  Not yet seeded
        #: counts as starved from the start.
        self._starved_since: float | None = clock.seconds() if serving else None
        #: The samples a refused request needs at once.
        self._wanted = 0
        # Demand: samples drawn since the last measurement, and its rate.
        self._drawn = 0
        self._demand_at = clock.seconds()
        self._demand = 0.0
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

    # -- IConsumer: the producer side ---------------------------------------

    def registerProducer(self, producer: IPull, streaming: bool) -> None:
        """Attach the source reader; only pull producers are accepted."""
        if streaming or not callable(getattr(producer, "resumeProducing", None)):
            raise ValueError("the seed pool takes a pull producer")
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = producer
        self._pull()

    def unregisterProducer(self) -> None:
        """Detach the source reader."""
        self._producer = None
        self._pulling = False

    def write(self, data: bytes) -> None:
        """
        Take one chunk of raw source bytes: health-test it and keep what
        passes.
        """
        self._pulling = False
        self.counters.bytes_read += len(data)
        before = sum(self._health.failures.values())
        approved = self._health.feed(data)
        if sum(self._health.failures.values()) != before:
            # A fault may predate its detection; nothing buffered is trusted.
            self._buffer.clear()
        if approved:
            room = self.target() - len(self._buffer)
            self._buffer += approved[:room]
        self._source_state = self._health.state
        now = self._clock.seconds()
        if self._health.state is SourceState.FAILED:
            self._health_failed(now)
        elif self.serving:
            if self._needs_seed(now):
                self._try_reseed(now)
            self._wake(now)
        self._pull()

    def _health_failed(self, now: float) -> None:
        if self._health_retry_at is None:
            self.log.error(
                "entropy source {name} failed its health tests ({test}); "
                "retrying in {delay:.0f} s", name=self.source_name,
                test=self._health.last_failure, delay=self._health_backoff.delay)
            self._health_retry_at = now + self._health_backoff.next()
        self._fail(f"source failed its health tests ({self._health.last_failure})")

    def _maybe_retry_health(self, now: float) -> None:
        if self._health_retry_at is not None and now >= self._health_retry_at:
            self._health_retry_at = None
            self.log.info("re-running the startup test of {name}", name=self.source_name)
            self._health.reset()
            self._source_state = self._health.state
            self._pull()

    def source_failed(self, reason: str) -> None:
        """The producer reports that the source cannot be read."""
        self._pulling = False
        self.counters.source_errors += 1
        # A device that fails may have been failing quietly before.
        self._buffer.clear()
        if self._source_state is not SourceState.FAILED:
            self.log.error("entropy source {name} failed: {reason}",
                           name=self.source_name, reason=reason)
        self._source_state = SourceState.FAILED
        self._source_error = reason
        self._fail(f"source failed: {reason}")

    def source_recovered(self) -> None:
        """The producer could read the source again: run the startup test."""
        self.log.info("entropy source {name} is readable again; startup test",
                      name=self.source_name)
        self._health.reset()
        self._source_state = self._health.state
        self._source_error = None

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

    def target(self) -> int:
        """The buffer level the pool reads up to now."""
        ahead = int(self._demand * READ_AHEAD)
        return min(self.max_buffer, max(self.high_water, ahead, self._wanted))

    def read_size(self) -> int:
        """How many bytes the reader should fetch next: the buffer's deficit."""
        return max(1, self.target() - len(self._buffer))

    def _pull(self) -> None:
        if (
            self._producer is not None
            and not self._pulling
            and len(self._buffer) < self.target()
            and self._source_state is not SourceState.FAILED
        ):
            self._pulling = True
            self._producer.resumeProducing()

    def nudge(self) -> None:
        """Ask the producer for more if the pool is below its target."""
        self._pull()

    # -- seeding --------------------------------------------------------------

    def _needs_seed(self, now: float) -> bool:
        return self._drbg is None or self._failure is not None or self._reseed_due(now)

    def _take(self, n: int) -> bytes | None:
        self.counters.seed_draws += 1
        if len(self._buffer) < n:
            self.counters.seed_draws_short += 1
            return None
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._drawn += n
        return out

    @staticmethod
    def _default_personalization() -> bytes:
        return b"entropy-appliance|" + socket.gethostname().encode() + struct.pack(
            ">qd", os.getpid(), time.time()
        )

    def _try_reseed(self, now: float) -> bool:
        """Instantiate or reseed from the buffer; wake the waiters on success."""
        if self._source_state is SourceState.FAILED:
            return False
        if self._drbg is None:
            seed = self._take(self.instantiate_samples)
            if seed is None:
                return False
            split = self.reseed_samples
            self._drbg = CtrDrbg(
                seed[:split], nonce=seed[split:],
                personalization=self._personalization(), use_df=True,
            )
            self.log.info("DRBG instantiated from {source}", source=self.source_name)
        else:
            seed = self._take(self.reseed_samples)
            if seed is None:
                return False
            mixed, self._mixed = self._mixed, None
            self._drbg.reseed(seed, mixed.digest() if mixed is not None else b"")
        self._reseeded(now)
        return True

    def _reseeded(self, now: float) -> None:
        self._block.drop()
        self._last_reseed = now
        self._bytes_since_reseed = 0
        self.counters.reseeds += 1
        self._health_backoff.reset()
        if self._failure is not None:
            self.log.info("serving random bytes again (was: {why})", why=self._failure)
            self._failure = None
        self._wake(now)

    def _reseed_due(self, now: float) -> bool:
        return self._last_reseed is not None and (
            now - self._last_reseed >= self.policy.interval
            or self._bytes_since_reseed >= self.policy.max_bytes
        )

    def _seed_needed(self, n: int, now: float) -> int:
        """The approved samples that serving ``n`` bytes now takes."""
        cap = self.policy.max_bytes
        if self._drbg is None:
            return self.instantiate_samples + max(0, -(-n // cap) - 1) * self.reseed_samples
        due = self._reseed_due(now)
        used = 0 if due else self._bytes_since_reseed
        reseeds = int(due) + max(0, -(-(used + n) // cap) - 1)
        return reseeds * self.reseed_samples

    def _wake(self, now: float) -> None:
        """End starvation once a plain request can be served; fire the waiters that can be."""
        if self._failure is not None:
            return
        if self._starved_since is not None and len(self._buffer) >= self._seed_needed(0, now):
            if self._drbg is None and self.serving:
                self._try_reseed(now)
            self._end_starvation(now)
            self._wanted = 0
        for waiter in list(self._waiters):
            if self._failure is not None:
                return
            if waiter in self._waiters and len(self._buffer) >= self._seed_needed(waiter.n, now):
                self._waiters.remove(waiter)
                waiter.ready()
        self._pull()

    def _starve(self, now: float, wanted: int) -> None:
        self._block.drop()
        if self._starved_since is None:
            self._starved_since = now
        self._wanted = max(self._wanted, min(wanted, self.max_buffer))
        self._pull()

    def _end_starvation(self, now: float) -> None:
        if self._starved_since is not None:
            self.counters.starved_seconds += max(0.0, now - self._starved_since)
            self._starved_since = None

    def _forked(self) -> None:
        """
        This process is a fork of the one that made the DRBG and the buffer:
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
        self._buffer.clear()
        self._waiters = []
        self._starved_since = self._clock.seconds() if self.serving else None
        self._pulling = False
        after_fork = getattr(self._producer, "after_fork", None)
        if after_fork is not None:
            after_fork()
        self._pull()

    def _measure_demand(self, now: float) -> None:
        elapsed = now - self._demand_at
        if elapsed >= 0.5:
            rate = self._drawn / elapsed
            # Rise at once, decay slowly: bursts come back.
            self._demand = rate if rate > self._demand else 0.8 * self._demand + 0.2 * rate
            self._drawn = 0
            self._demand_at = now

    def tick(self) -> None:
        """
        Reseed now if a reseed is due; called on the reseed interval so that
        an idle pool still reseeds on time.  A due reseed that cannot be done
        starves the pool until samples arrive.
        """
        now = self._clock.seconds()
        self._measure_demand(now)
        self._maybe_retry_health(now)
        if not self.serving or self._failure is not None:
            self._pull()
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
        need = self._seed_needed(n, now)
        if len(self._buffer) < need:
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

    def take_raw(self, n: int) -> bytes:
        """
        Hand out ``n`` raw samples for diagnostics (a heatmap).

        While the source is healthy they come from the approved buffer, and
        are consumed so that they never seed the DRBG; only what is beyond
        one reseed's worth may be taken.  While the source is failing they
        come from the health tests' quarantine of discarded samples.  Raises
        :class:`PoolShort` rather than starving a reseed.
        """
        if SourceState.FAILED in (self._source_state, self._health.state):
            raw = self._health.quarantine(n)
            if len(raw) < n:
                raise PoolShort("not enough raw samples from the failing source")
            return raw
        if len(self._buffer) - n < self.reseed_samples:
            self._pull()
            raise PoolShort("the seed pool is too low to spare raw samples")
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._pull()
        return out

    def take_seed(self, n: int) -> bytes:
        """
        Hand out up to ``n`` approved samples as seed material for another
        process (a worker); they are consumed, so no two takers get the same
        bytes.  Raises :class:`PoolShort` when none are buffered or the
        source is failing.
        """
        if self._source_state is SourceState.FAILED or not self._buffer:
            self._pull()
            raise PoolShort("no healthy seed material buffered")
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.counters.seed_draws += 1
        self._drawn += len(out)
        self._pull()
        return out

    # -- reporting ------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """ok, starved or failed (see :class:`PoolState`)."""
        if self._failure is not None or self._source_state is SourceState.FAILED:
            return PoolState.FAILED
        if self.serving and (
                self._drbg is None or self._starved_since is not None
                or len(self._buffer) < self._seed_needed(0, self._clock.seconds())):
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
        if self._source_state is SourceState.FAILED:
            return self._source_error and f"source failed: {self._source_error}" or (
                "source failed its health tests")
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

    def status(self) -> PoolStatus:
        """One snapshot of every counter (``as_dict()`` makes it JSON)."""
        now = self._clock.seconds()
        c = self.counters
        health = self._health
        age = None if self._last_reseed is None else max(0.0, now - self._last_reseed)
        starved_now = self.starved_for()
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
            source=SourceStatus(
                name=self.source_name,
                kind=self.source_kind,
                state=self._source_state,
                error=self._source_error,
                bytes_read=c.bytes_read,
                errors=c.source_errors,
                min_entropy=self.min_entropy,
                health_failures=MappingProxyType(health.failures),
                health=health.snapshot(),
            ),
            buffer=BufferStatus(
                fill_bytes=len(self._buffer),
                fill_percent=round(100.0 * len(self._buffer) / self.target(), 2),
                high_water_bytes=self.target(),
                demand_bytes_per_second=round(self._demand, 1),
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
        )

    def reseed_age(self) -> float | None:
        """Seconds since the last reseed, or None before the first."""
        if self._last_reseed is None:
            return None
        return max(0.0, self._clock.seconds() - self._last_reseed)
