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
- A reseed that is due but cannot be done (no approved samples) makes the
  pool *fail closed*: :meth:`random_bytes` raises :class:`FailClosed` until a
  reseed succeeds.  A health failure drops every buffered sample, because a
  fault may have begun before a test could see it.
- A fork is detected by a changed pid; the child reseeds before its first
  output, or fails closed.

Everything here is synchronous and takes its clock as a parameter.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IConsumer, IProducer, IPullProducer
from twisted.logger import Logger
from zope.interface import implementer

from entropy_appliance.drbg import CtrDrbg, ReseedRequired
from entropy_appliance.health import HealthTests

#: The longest wait, in seconds, before a failed source is tested again.
MAX_BACKOFF = 60.0

__all__ = [
    "FailClosed",
    "PoolShort",
    "SeedPool",
    "ReseedPolicy",
    "IClock",
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
        if self.max_bytes < 1:
            raise ValueError("reseed bytes must be >= 1")
        if self.bits < 256:
            raise ValueError("reseed bits must be >= 256 (AES-256 security strength)")


@dataclass
class _Counters:
    bytes_read: int = 0
    source_errors: int = 0
    seed_draws: int = 0
    seed_draws_short: int = 0
    reseeds: int = 0
    reseed_failures: int = 0
    fail_closed_refusals: int = 0
    bytes_generated: int = 0
    served: dict[str, int] = field(default_factory=dict)


def samples_for_bits(bits: int, min_entropy: float) -> int:
    """
    How many 8-bit samples carry ``bits`` of min-entropy at ``min_entropy``
    bits per sample.
    """
    return math.ceil(bits / min_entropy)


@implementer(IConsumer)
class SeedPool:
    """
    Health-tests raw source bytes, buffers approved samples up to a
    high-water mark, and owns the CTR_DRBG.

    It is the consumer of an :class:`IPullProducer` (the source reader): it
    asks for more only while it is below ``high_water``.
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
        self.high_water = high_water or max(4 * self.instantiate_samples, 4096)
        if self.high_water < self.instantiate_samples:
            raise ValueError("high-water mark is below one instantiation's seed")
        self._getpid = getpid
        #: False in a parent that only relays seed material to workers: it
        #: never instantiates a DRBG of its own.
        self.serving = serving
        self._pid = getpid()
        self._buffer = bytearray()
        self._drbg: CtrDrbg | None = None
        self._last_reseed: float | None = None
        self._bytes_since_reseed = 0
        self._producer: IPullProducer | None = None
        self._pulling = False
        self._source_state = "starting"
        self._health_retry_at: float | None = None
        self._health_backoff = 1.0
        self._source_error: str | None = None
        self._closed_reason: str | None = "not yet seeded"
        self.counters = _Counters()

    # -- IConsumer: the producer side ---------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Attach the source reader; only pull producers are accepted."""
        if streaming or not IPullProducer.providedBy(producer):
            raise ValueError("the seed pool takes a pull producer")
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = cast(IPullProducer, producer)
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
            room = self.high_water - len(self._buffer)
            self._buffer += approved[:room]
        self._source_state = self._health.state
        if self._health.state == "failed":
            self._health_failed(self._clock.seconds())
        elif self.serving and self._needs_seed():
            self._try_reseed(self._clock.seconds())
        self._pull()

    def _health_failed(self, now: float) -> None:
        if self._health_retry_at is None:
            self.log.error(
                "entropy source {name} failed its health tests ({test}); "
                "retrying in {delay:.0f} s", name=self.source_name,
                test=self._health.last_failure, delay=self._health_backoff)
            self._health_retry_at = now + self._health_backoff
            # write() has already dropped the buffer; the DRBG runs on only
            # until its next reseed is due.
            self._health_backoff = min(self._health_backoff * 2, MAX_BACKOFF)

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
        if self._source_state != "failed":
            self.log.error("entropy source {name} failed: {reason}",
                           name=self.source_name, reason=reason)
        self._source_state = "failed"
        self._source_error = reason

    def source_recovered(self) -> None:
        """The producer could read the source again: run the startup test."""
        self.log.info("entropy source {name} is readable again; startup test",
                      name=self.source_name)
        self._health.reset()
        self._source_state = self._health.state
        self._source_error = None

    def _pull(self) -> None:
        if (
            self._producer is not None
            and not self._pulling
            and len(self._buffer) < self.high_water
            and self._source_state != "failed"
        ):
            self._pulling = True
            self._producer.resumeProducing()

    def nudge(self) -> None:
        """Ask the producer for more if the pool is below its mark."""
        self._pull()

    # -- seeding --------------------------------------------------------------

    def _needs_seed(self) -> bool:
        return self._drbg is None or self._closed_reason is not None

    def _take(self, n: int) -> bytes | None:
        self.counters.seed_draws += 1
        if len(self._buffer) < n:
            self.counters.seed_draws_short += 1
            return None
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def _personalization(self) -> bytes:
        return b"entropy-appliance|" + socket.gethostname().encode() + struct.pack(
            ">qd", self._getpid(), time.time()
        )

    def _try_reseed(self, now: float) -> bool:
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
            self._drbg.reseed(seed)
        self._last_reseed = now
        self._bytes_since_reseed = 0
        self.counters.reseeds += 1
        if self._closed_reason is not None:
            self.log.info("serving random bytes (was: {why})", why=self._closed_reason)
        self._closed_reason = None
        self._health_backoff = 1.0
        self._pull()
        return True

    def _reseed_due(self, now: float) -> bool:
        assert self._last_reseed is not None
        return (
            now - self._last_reseed >= self.policy.interval
            or self._bytes_since_reseed >= self.policy.max_bytes
        )

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
        self._buffer.clear()
        self._closed_reason = "process forked; waiting for fresh seed material"
        self._pulling = False
        after_fork = getattr(self._producer, "after_fork", None)
        if after_fork is not None:
            after_fork()
        self._pull()

    def tick(self) -> None:
        """
        Reseed now if a reseed is due; called on the reseed interval so that
        an idle pool still reseeds, and fails closed on time.
        """
        now = self._clock.seconds()
        self._maybe_retry_health(now)
        if not self.serving:
            return
        if self._drbg is None or self._closed_reason is not None or self._reseed_due(now):
            self._reseed_or_close(now)

    def _reseed_or_close(self, now: float) -> None:
        if not self._try_reseed(now):
            self.counters.reseed_failures += 1
            if self._closed_reason is None:
                self.log.error("reseed due and no healthy seed material: failing closed")
            self._closed_reason = self._explain_shortage()

    def _explain_shortage(self) -> str:
        if self._source_state == "failed":
            return self._source_error and f"source failed: {self._source_error}" or (
                "source failed its health tests")
        if self._drbg is None:
            return "not yet seeded"
        return "reseed due and no healthy seed material available"

    # -- output ---------------------------------------------------------------

    def random_bytes(self, n: int, additional_input: bytes = b"",
                     surface: str | None = None) -> bytes:
        """
        Return ``n`` bytes of CTR_DRBG output, or raise :class:`FailClosed`.

        ``surface`` (e.g. ``"stream"``, ``"http"``) is counted in the
        bytes-served figures.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        now = self._clock.seconds()
        if self._getpid() != self._pid:
            self._forked()
        if self._closed_reason is not None or self._drbg is None or self._reseed_due(now):
            self._reseed_or_close(now)
            if self._closed_reason is not None:
                self.counters.fail_closed_refusals += 1
                raise FailClosed(self._closed_reason, self.retry_after())
        assert self._drbg is not None
        try:
            out = self._drbg.generate(n, additional_input)
        except ReseedRequired:
            self._reseed_or_close(now)
            if self._closed_reason is not None:
                raise FailClosed(self._closed_reason, self.retry_after()) from None
            out = self._drbg.generate(n, additional_input)
        self._bytes_since_reseed += n
        self.counters.bytes_generated += n
        if surface is not None:
            served = self.counters.served
            served[surface] = served.get(surface, 0) + n
        return out

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
        if self._source_state == "failed" or self._health.state == "failed":
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
        if self._source_state == "failed" or not self._buffer:
            self._pull()
            raise PoolShort("no healthy seed material buffered")
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.counters.seed_draws += 1
        self._pull()
        return out

    # -- reporting ------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while random bytes may be served."""
        return self._closed_reason is None and self._drbg is not None

    @property
    def closed_reason(self) -> str | None:
        """Why the pool fails closed, or None."""
        return self._closed_reason

    def status(self) -> dict[str, Any]:
        """One snapshot of every counter, JSON-ready."""
        now = self._clock.seconds()
        c = self.counters
        health = self._health
        age = None if self._last_reseed is None else max(0.0, now - self._last_reseed)
        return {
            "healthy": self.healthy,
            "reason": self._closed_reason,
            "source": {
                "name": self.source_name,
                "kind": self.source_kind,
                "state": self._source_state,
                "error": self._source_error,
                "bytes_read": c.bytes_read,
                "errors": c.source_errors,
                "min_entropy": self.min_entropy,
                "health_failures": dict(health.failures),
                "health": {
                    "state": health.state,
                    "rct_cutoff": health.rct_cutoff_value,
                    "apt_cutoff": health.apt_cutoff_value,
                    "apt_window": health.window,
                    "samples_tested": health.samples_tested,
                    "samples_discarded": health.samples_discarded,
                },
            },
            "pool": {
                "fill_bytes": len(self._buffer),
                "fill_percent": round(100.0 * len(self._buffer) / self.high_water, 2),
                "high_water_bytes": self.high_water,
                "pressure": (c.seed_draws_short / c.seed_draws) if c.seed_draws else 0.0,
                "seed_draws": c.seed_draws,
                "seed_draws_short": c.seed_draws_short,
            },
            "drbg": {
                "mechanism": "CTR_DRBG AES-256 use df",
                "reseeds": c.reseeds,
                "reseed_failures": c.reseed_failures,
                "reseed_age_seconds": age,
                "reseed_interval_seconds": self.policy.interval,
                "reseed_bytes": self.policy.max_bytes,
                "reseed_bits": self.policy.bits,
                "bytes_since_reseed": self._bytes_since_reseed,
                "bytes_generated": c.bytes_generated,
            },
            "served": dict(c.served),
            "fail_closed_refusals": c.fail_closed_refusals,
        }

    def reseed_age(self) -> float | None:
        """Seconds since the last reseed, or None before the first."""
        if self._last_reseed is None:
            return None
        return max(0.0, self._clock.seconds() - self._last_reseed)
