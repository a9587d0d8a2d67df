"""
Every source is read and health-tested at least once per reseed interval,
seed needed or not, in memory (``task.Clock``): an idle pool whose source
turns stuck or biased fails closed within the bound the README states; a
slow healthy source is never reported failed for it; the probe goes on
after a recovery; an idle buffer is renewed; and with several sources the
one that sticks is left out while the others serve.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from entropy_appliance.core.feed import SourceFeed
from entropy_appliance.core.health import HealthTests, failing_run
from entropy_appliance.core.pool import FailClosed, PoolState, ReseedPolicy, SeedPool
from entropy_appliance.core.states import SourceState
from entropy_appliance.source.producer import SourceProducer
from tests.fifo_writer import biased_bytes
from tests.test_pool import FakeSource, stuck, sync_run

INTERVAL = 1.0

#: What the README promises: a source that turns stuck or biased is failed
#: within three reseed intervals plus the time the device takes to deliver
#: two probes (zero here: every read is answered at once).
BOUND = 3 * INTERVAL


class Switch:
    """Random bytes until told otherwise: the mode of a stand-in device."""

    def __init__(self) -> None:
        self.make: Callable[[int], bytes] = os.urandom

    def __call__(self, n: int) -> bytes:
        return self.make(n)


def idle_pool(*claims: float, min_sources: int = 1,
              run: Callable[[Clock], Callable[[Callable[[], bytes]], Deferred[bytes]]] | None = None,
              ) -> tuple[SeedPool, list[FakeSource], list[Switch], Clock]:
    """A serving pool over one switchable fake device per claim, started and seeded."""
    clock = Clock()
    switches = [Switch() for _ in claims]
    sources = []
    for i, sw in enumerate(switches):
        src = FakeSource(sw)
        src.name = f"/dev/fake{i}"
        sources.append(src)
    feeds = [SourceFeed(HealthTests(h), s.name, s.kind) for s, h in zip(sources, claims, strict=True)]
    pool = SeedPool(clock, None, ReseedPolicy(INTERVAL, 64 * 1024 * 1024, 384), feeds=feeds,
                    min_sources=min_sources)
    for src, feed in zip(sources, feeds, strict=True):
        runner = sync_run if run is None else run(clock)
        SourceProducer(src, feed, runner, clock, chunk_size=1024).start()
    settle(pool, clock, 4 * INTERVAL)
    assert pool.state is PoolState.OK, pool.closed_reason
    return pool, sources, switches, clock


def settle(pool: SeedPool, clock: Clock, seconds: float,
           until: Callable[[], bool] = lambda: False) -> float:
    """
    Run the reseed schedule (a tick every half interval, as CoreService
    does) for ``seconds`` with no client at all; stop early once ``until()``.
    Returns the seconds that passed.
    """
    step = INTERVAL / 2
    passed = 0.0
    while passed < seconds and not until():
        # Reads that take time (deferLater) finish inside the step.
        for _ in range(10):
            clock.advance(step / 10)
        passed += step
        pool.tick()
    return passed


def test_an_idle_pool_whose_source_turns_stuck_fails_closed_within_the_bound() -> None:
    # At 8 bits a reseed takes 48 samples: the buffer alone would last ~60 reseeds.
    pool, (src,), (sw,), clock = idle_pool(8.0)
    ended: list[FailClosed] = []
    pool.on_failure(ended.append)
    # Idle for a while: nothing is asked of the pool, and the source is still read.
    before = src.bytes_read
    settle(pool, clock, 10 * INTERVAL)
    assert src.bytes_read > before
    assert pool.state is PoolState.OK
    sw.make = stuck
    took = settle(pool, clock, 10 * INTERVAL, until=lambda: pool.state is PoolState.FAILED)
    assert pool.state is PoolState.FAILED and took <= BOUND, (took, pool.closed_reason)
    # Open streams are told (they end), and nothing is served.
    assert ended and "rct" in ended[0].reason
    try:
        pool.random_bytes(16)
    except FailClosed:
        pass
    else:
        raise AssertionError("a failed pool served bytes")
    assert pool.status().sources[0].state is SourceState.FAILED


def test_an_idle_pool_whose_source_turns_biased_fails_closed_within_the_bound() -> None:
    pool, _, (sw,), clock = idle_pool(1.0)
    sw.make = biased_bytes
    took = settle(pool, clock, 10 * INTERVAL, until=lambda: pool.state is PoolState.FAILED)
    assert pool.state is PoolState.FAILED and took <= BOUND, (took, pool.closed_reason)
    assert "apt" in (pool.closed_reason or "")


def test_the_probe_costs_one_failing_run_per_interval_and_renews_the_buffer() -> None:
    pool, (src,), _, clock = idle_pool(1.0)
    feed = pool.feeds[0]
    probe = failing_run(1.0)
    assert feed.probe_samples == probe
    old = bytes(feed.buffer)
    before = src.bytes_read
    seconds = settle(pool, clock, 60 * INTERVAL)
    spent = src.bytes_read - before
    # A probe per interval at most; at least one per interval and a half
    # (the schedule ticks every half interval).
    assert seconds / (1.5 * INTERVAL) * probe - probe <= spent <= seconds / INTERVAL * probe + probe
    # The buffer stays at its target, and nothing in it is left from before.
    assert len(feed.buffer) <= pool.target(feed)
    new = bytes(feed.buffer)
    assert not any(old[i:i + 64] in new for i in range(0, len(old) - 64, 64))


def test_a_slow_healthy_source_is_not_reported_failed() -> None:
    # A device giving 256 bytes per read, a read every 0.25 s: 1 KB/s, so a
    # probe takes two seconds, longer than the interval.
    def slow(clock: Clock) -> Callable[[Callable[[], bytes]], Deferred[bytes]]:
        def run(job: Callable[[], bytes]) -> Deferred[bytes]:
            return deferLater(clock, 0.25, job)
        return run

    pool, (src,), (sw,), clock = idle_pool(8.0, run=slow)
    sw.make = lambda n: os.urandom(min(n, 256))
    states = set()
    for _ in range(60):
        settle(pool, clock, INTERVAL)
        states.add((pool.state, pool.status().sources[0].state))
        assert len(pool.random_bytes(32)) == 32
    assert states == {(PoolState.OK, SourceState.OK)}
    # One read at a time, never more than the device gives.
    assert src.bytes_read <= 60 * INTERVAL / 0.25 * 256 + 8192


def test_the_probe_goes_on_after_a_recovery() -> None:
    pool, _, (sw,), clock = idle_pool(8.0)
    sw.make = stuck
    settle(pool, clock, 10 * INTERVAL, until=lambda: pool.state is PoolState.FAILED)
    assert pool.state is PoolState.FAILED
    sw.make = os.urandom
    # The backoff (1 s, then doubling) lets the startup test run again.
    settle(pool, clock, 10 * INTERVAL, until=lambda: pool.state is PoolState.OK)
    assert pool.state is PoolState.OK
    assert len(pool.random_bytes(64)) == 64
    settle(pool, clock, 5 * INTERVAL)
    sw.make = stuck
    took = settle(pool, clock, 10 * INTERVAL, until=lambda: pool.state is PoolState.FAILED)
    assert pool.state is PoolState.FAILED and took <= BOUND, took


def test_one_idle_source_of_two_sticks_it_is_failed_and_the_other_serves() -> None:
    pool, _, (first, _second), clock = idle_pool(1.0, 2.0)
    first.make = stuck
    a = pool.feeds[0]
    took = settle(pool, clock, 10 * INTERVAL, until=lambda: a.left_out)
    assert took <= BOUND
    assert pool.state is PoolState.OK
    assert [s.state for s in pool.status().sources] == [SourceState.FAILED, SourceState.OK]
    assert len(pool.random_bytes(64)) == 64


def test_with_min_sources_two_an_idle_source_that_sticks_fails_the_pool_closed() -> None:
    pool, _, (_first, second), clock = idle_pool(1.0, 2.0, min_sources=2)
    second.make = stuck
    took = settle(pool, clock, 10 * INTERVAL, until=lambda: pool.state is PoolState.FAILED)
    assert pool.state is PoolState.FAILED and took <= BOUND, took
    assert "1 of 2 sources healthy" in (pool.closed_reason or "")


def test_a_relaying_parent_probes_its_sources_too() -> None:
    clock = Clock()
    sw = Switch()
    src = FakeSource(sw)
    feed = SourceFeed(HealthTests(1.0), src.name, src.kind)
    pool = SeedPool(clock, None, ReseedPolicy(INTERVAL, 64 * 1024 * 1024, 384), feeds=[feed],
                    serving=False)
    marks: list[FailClosed] = []
    pool.on_failure(marks.append)
    SourceProducer(src, feed, sync_run, clock, chunk_size=1024).start()
    settle(pool, clock, 4 * INTERVAL)
    assert pool.state is PoolState.OK
    sw.make = stuck
    took = settle(pool, clock, 10 * INTERVAL, until=lambda: bool(marks))
    # The parent fails (and so writes the failure mark to its workers) in time.
    assert marks and took <= BOUND, took


def test_a_probe_asks_the_device_for_its_own_size_not_a_whole_chunk() -> None:
    asked: list[int] = []

    def recording(n: int) -> bytes:
        asked.append(n)
        return os.urandom(n)

    for consumer in ("feed", "pool"):
        clock = Clock()
        src = FakeSource(recording)
        pool = SeedPool(clock, HealthTests(8.0), ReseedPolicy(INTERVAL, 64 * 1024 * 1024, 384))
        # A reader with 4 KiB chunks, registered with the feed or (one source) with the pool.
        SourceProducer(src, pool.feeds[0] if consumer == "feed" else pool, sync_run, clock,
                       chunk_size=4096).start()
        settle(pool, clock, 4 * INTERVAL)
        asked.clear()
        settle(pool, clock, 10 * INTERVAL)
        probe = pool.feeds[0].probe_samples
        # Idle: only probes, each of exactly its size.
        assert asked and set(asked) == {probe}, (consumer, asked)
