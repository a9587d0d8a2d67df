"""
The seed pool, the source producer and their fault handling, in memory.

The producer runs with a synchronous "thread pool" and a task.Clock, so each
test drives the whole pipeline (source -> producer -> health -> pool ->
DRBG) deterministically.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import (
    FailClosed,
    OutputBlock,
    PoolShort,
    PoolState,
    ReseedPolicy,
    SeedPool,
    Starved,
)
from entropy_appliance.core.states import SourceState
from entropy_appliance.net.waiting import when_ready
from entropy_appliance.source.producer import SourceProducer
from entropy_appliance.source.sources import DeviceSource, SourceError


class FakeSource:
    """A source whose bytes come from a function; it can be made to fail."""

    name = "fake"
    kind = "device"

    def __init__(self, make: Callable[[int], bytes] = os.urandom) -> None:
        self.make = make
        self.error: str | None = None
        self.reads = 0
        self.bytes_read = 0
        self.closed = False

    def read(self, n: int) -> bytes:
        self.reads += 1
        if self.error:
            raise SourceError(self.error)
        data = self.make(n)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self.closed = True


def sync_run(job: Callable[[], bytes]) -> Deferred[bytes]:
    return maybeDeferred(job)


def pipeline(
    source: FakeSource | DeviceSource,
    h: float = 8.0,
    interval: float = 1.0,
    max_bytes: int = 64 * 1024 * 1024,
    high_water: int | None = None,
    run: Callable[[Callable[[], bytes]], Deferred[bytes]] = sync_run,
) -> tuple[SeedPool, SourceProducer, Clock]:
    clock = Clock()
    pool = SeedPool(clock, HealthTests(h), ReseedPolicy(interval, max_bytes, 384),
                    source_name=source.name, source_kind=source.kind, high_water=high_water)
    producer = SourceProducer(source, pool, run, clock, chunk_size=1024)
    producer.start()
    return pool, producer, clock


def test_interfaces() -> None:
    pool, producer, _ = pipeline(FakeSource())
    assert verifyObject(IPullProducer, producer)
    # The pool is pure: it takes a pull producer by its IConsumer method names.
    with pytest.raises(ValueError):
        SeedPool(Clock(), HealthTests(8.0), ReseedPolicy()).registerProducer(producer, True)


def test_core_imports_nothing_of_twisted_internet() -> None:
    import subprocess
    import sys

    code = ("import sys, entropy_appliance.core.pool, entropy_appliance.core.health, "
            "entropy_appliance.core.drbg, entropy_appliance.core.backoff; "
            "print(sorted(m for m in sys.modules if m.startswith('twisted.internet')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_healthy_pipeline_serves_drbg_output() -> None:
    pool, _, clock = pipeline(FakeSource())
    out = pool.random_bytes(1000, surface="test")
    assert len(out) == 1000
    assert out != pool.random_bytes(1000)
    st = pool.status()
    assert st.healthy is True
    assert st.source.state is SourceState.OK
    assert st.drbg.reseeds == 1
    assert st.served == {"test": 1000}
    assert st.drbg.bytes_generated == 2000


def test_pool_pulls_only_to_high_water() -> None:
    source = FakeSource()
    pool, _, _ = pipeline(source, high_water=8192)
    # The startup test (1024 samples) plus at most the high-water mark
    # plus one chunk in flight: the device is not read further.
    assert source.bytes_read <= 1024 + 8192 + 1024 + 1024
    reads = source.reads
    pool.nudge()
    assert source.reads == reads
    assert pool.status().buffer.fill_bytes <= 8192


def test_reseeds_on_interval_and_on_bytes() -> None:
    pool, _, clock = pipeline(FakeSource(), interval=2.0, max_bytes=10_000)
    pool.random_bytes(10)
    assert pool.status().drbg.reseeds == 1
    clock.advance(2.0)
    pool.random_bytes(10)
    assert pool.status().drbg.reseeds == 2
    pool.random_bytes(10_000)
    pool.random_bytes(1)
    assert pool.status().drbg.reseeds == 3
    clock.advance(0.5)
    assert pool.status().drbg.reseed_age_seconds == pytest.approx(0.5)


def test_not_seeded_means_starved_not_failed() -> None:
    clock = Clock()
    pool = SeedPool(clock, HealthTests(8.0), ReseedPolicy())
    with pytest.raises(Starved) as e:
        pool.random_bytes(16)
    assert "first seed" in e.value.reason
    assert e.value.retry_after >= 1
    assert pool.state is PoolState.STARVED
    assert pool.status().state is PoolState.STARVED


def stuck(n: int) -> bytes:
    return b"\x42" * n


def biased(n: int) -> bytes:
    # Every other sample is 0x00: no long runs, so the RCT stays quiet,
    # but 0x00 fills half of every APT window.
    rnd = bytearray(os.urandom(n))
    rnd[::2] = bytes(len(rnd[::2]))
    for i in range(1, n, 2):
        if rnd[i] == 0:
            rnd[i] = 1
    return bytes(rnd)


def drain_until_failure(pool: SeedPool, test: str) -> None:
    """Consume buffered samples so that the producer reads fresh (faulty) ones."""
    for _ in range(1000):
        if pool.status().source.health_failures.get(test):
            return
        try:
            pool.take_raw(512)
        except PoolShort:
            pool.nudge()
    raise AssertionError(f"the {test} never fired")


@pytest.mark.parametrize("fault,test", [(stuck, "rct"), (biased, "apt")])
def test_health_fault_fails_closed_at_once(
    fault: Callable[[int], bytes], test: str
) -> None:
    source = FakeSource()
    pool, producer, clock = pipeline(source, interval=1.0)
    assert len(pool.random_bytes(64)) == 64
    source.make = fault
    drain_until_failure(pool, test)
    st = pool.status()
    assert st.source.health_failures[test] >= 1
    assert st.buffer.fill_bytes == 0
    # Failed, not starved: no byte leaves from this moment, reseed due or not.
    with pytest.raises(FailClosed) as e:
        pool.random_bytes(16)
    assert not isinstance(e.value, Starved)
    assert pool.healthy is False
    assert pool.status().state is PoolState.FAILED
    assert pool.status().healthy is False


def test_stuck_source_is_declared_failed_then_retried_with_backoff() -> None:
    source = FakeSource(stuck)
    pool, producer, clock = pipeline(source)
    assert pool.status().source.state is SourceState.FAILED
    reads = source.reads
    clock.advance(0.5)
    pool.tick()
    assert source.reads == reads  # no retry before the backoff
    source.make = os.urandom
    clock.advance(0.6)
    pool.tick()
    assert source.reads > reads
    assert pool.status().source.state is SourceState.OK
    assert len(pool.random_bytes(32)) == 32


def test_failed_source_heatmap_reads_quarantine() -> None:
    pool, _, _ = pipeline(FakeSource(stuck))
    raw = pool.take_raw(1024)
    assert raw == b"\x42" * 1024


class ManualRun:
    """A thread pool stand-in whose reads complete only when the test says."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], bytes], Deferred[bytes]]] = []

    def __call__(self, job: Callable[[], bytes]) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.pending.append((job, d))
        return d

    def complete(self, count: int = 1_000) -> None:
        for _ in range(count):
            if not self.pending:
                return
            job, d = self.pending.pop(0)
            d.callback(job())


def test_take_raw_never_starves_reseed() -> None:
    run = ManualRun()
    pool, _, _ = pipeline(FakeSource(), high_water=4096, run=run)
    run.complete()
    assert len(run.pending) == 0 or pool.status().buffer.fill_bytes >= 4096 - 1024
    with pytest.raises(PoolShort):
        for _ in range(100):
            pool.take_raw(256)
    assert pool.status().buffer.fill_bytes >= pool.reseed_samples
    assert len(pool.random_bytes(16)) == 16


def test_slow_device_one_read_in_flight() -> None:
    run = ManualRun()
    pool, _, _ = pipeline(FakeSource(), run=run)
    assert len(run.pending) == 1
    pool.nudge()
    pool.nudge()
    assert len(run.pending) == 1
    with pytest.raises(FailClosed):
        pool.random_bytes(1)
    run.complete()
    assert len(pool.random_bytes(1)) == 1


def test_source_error_backoff_and_recovery() -> None:
    source = FakeSource()
    pool, producer, clock = pipeline(source)
    source.error = "EIO reading /dev/fake: Input/output error"
    for _ in range(100):
        if pool.status().source.state is SourceState.FAILED:
            break
        try:
            pool.take_raw(512)
        except PoolShort:
            pool.nudge()
    st = pool.status().source
    assert st.state is SourceState.FAILED
    assert "EIO" in st.error
    assert st.errors == 1
    clock.advance(1.0)  # first retry after 1 s, still failing
    assert pool.status().source.errors == 2
    clock.advance(1.0)  # the next wait is 2 s
    assert pool.status().source.errors == 2
    clock.advance(1.0)
    assert pool.status().source.errors == 3
    clock.advance(2.0)  # reseed deadline passed: closed
    with pytest.raises(FailClosed) as e:
        pool.random_bytes(1)
    assert "EIO" in e.value.reason
    source.error = None
    clock.advance(4.0)
    assert pool.status().source.state is SourceState.OK
    assert len(pool.random_bytes(8)) == 8


def test_fifo_writer_stops_gives_eof(tmp_path: Path) -> None:
    fifo = tmp_path / "rng.fifo"
    os.mkfifo(fifo)
    payload = os.urandom(64 * 1024)
    # Hold a read end open so that the writer can open at once; the source
    # then sees the payload followed by EOF when the writer closes.
    keeper = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(fifo, os.O_WRONLY)

    def writer() -> None:
        with os.fdopen(wfd, "wb") as f:
            f.write(payload)

    t = threading.Thread(target=writer, daemon=True)
    source = DeviceSource(str(fifo))
    pool, producer, clock = pipeline(source, h=8.0, high_water=256 * 1024,
                                     run=lambda job: deferToThreadAndWait(job, t))
    st = pool.status().source
    assert st.state is SourceState.FAILED
    assert "end of file" in st.error
    with pytest.raises(FailClosed) as e:
        pool.random_bytes(16)
    assert not isinstance(e.value, Starved)
    assert pool.status().state is PoolState.FAILED
    producer.stopProducing()
    producer.stopProducing()  # idempotent
    os.close(keeper)


def deferToThreadAndWait(job: Callable[[], bytes], writer: threading.Thread) -> Deferred[bytes]:
    """Run the read inline, starting the writer on the first read."""
    if not writer.is_alive() and writer.ident is None:
        writer.start()
    return maybeDeferred(job)


def test_fork_is_detected_and_child_reseeds() -> None:
    pid = [100]
    clock = Clock()
    health = HealthTests(8.0)
    pool = SeedPool(clock, health, ReseedPolicy(), getpid=lambda: pid[0])
    producer = SourceProducer(FakeSource(), pool, sync_run, clock, chunk_size=1024)
    producer.start()
    pool.random_bytes(16)
    before = pool.status().drbg.reseeds
    pid[0] = 101
    pool.random_bytes(16)
    assert pool.status().drbg.reseeds == before + 1


#: The pool's part of the /v1/status document, key by key (None: a value).
#: The dashboard and the OpenAPI Status schema read these keys.
STATUS_SHAPE = {
    "state": None, "healthy": None, "reason": None,
    "starved": {"seconds": None, "total_seconds": None, "waits": None, "refusals": None},
    "source": {
        "name": None, "kind": None, "state": None, "error": None, "bytes_read": None,
        "errors": None, "min_entropy": None, "health_failures": {"rct": None, "apt": None},
        "health": {"state": None, "rct_cutoff": None, "apt_cutoff": None, "apt_window": None,
                   "samples_tested": None, "samples_discarded": None},
        "buffered_bytes": None, "share": None, "in_seed": None, "left_out": None,
    },
    "pool": {"fill_bytes": None, "fill_percent": None, "high_water_bytes": None,
             "demand_bytes_per_second": None, "pressure": None, "seed_draws": None,
             "seed_draws_short": None},
    "drbg": {"mechanism": None, "reseeds": None, "reseed_failures": None, "reseed_age_seconds": None,
             "reseed_interval_seconds": None, "reseed_bytes": None, "reseed_bits": None,
             "bytes_since_reseed": None, "bytes_generated": None},
    "served": {"http": None},
    "fail_closed_refusals": None,
    "sources": None, "min_sources": None,
}


def shape(doc: object) -> object:
    return {k: shape(v) for k, v in doc.items()} if isinstance(doc, dict) else None


def test_status_document_keeps_every_key_in_plain_json_types() -> None:
    pool, _, clock = pipeline(FakeSource())
    pool.random_bytes(10, surface="http")
    doc = pool.status().as_dict()
    assert shape(doc) == STATUS_SHAPE
    assert json.loads(json.dumps(doc)) == doc
    # Enums leave as their plain string values.
    assert type(doc["state"]) is str and doc["state"] == "ok"
    assert type(doc["source"]["state"]) is str and doc["source"]["state"] == "ok"
    assert type(doc["source"]["health"]["state"]) is str
    assert [type(k) for k in doc["source"]["health_failures"]] == [str, str]
    assert doc["source"]["health_failures"] == {"rct": 0, "apt": 0}
    assert doc["served"] == {"http": 10}
    assert 0.0 <= doc["pool"]["pressure"] <= 1.0


def test_status_is_a_snapshot() -> None:
    pool, _, clock = pipeline(FakeSource())
    st = pool.status()
    pool.random_bytes(10, surface="http")
    assert st.served == {} and st.drbg.bytes_generated == 0
    assert pool.status().served == {"http": 10}
    with pytest.raises(TypeError):
        st.served["http"] = 1  # type: ignore[index]


def test_never_serves_from_unseeded_when_source_is_bad_from_start() -> None:
    pool, _, clock = pipeline(FakeSource(stuck))
    for _ in range(5):
        clock.advance(1.0)
        with pytest.raises(FailClosed):
            pool.random_bytes(1)
    assert pool.status().drbg.reseeds == 0


def test_real_fork_child_never_repeats_parent_output() -> None:
    """After os.fork() both processes hold the same DRBG state in memory;
    the child must drop it and seed itself before its first output."""
    from entropy_appliance.source.sources import KernelSource

    clock = Clock()
    pool = SeedPool(clock, HealthTests(8.0), ReseedPolicy())
    producer = SourceProducer(KernelSource(), pool, sync_run, clock, chunk_size=1024)
    producer.start()
    pool.random_bytes(32)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(w, pool.random_bytes(4096))
        finally:
            os._exit(0)
    os.close(w)
    parent = pool.random_bytes(4096)
    child = b""
    while len(child) < 4096:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 4096
    blocks = {parent[i:i + 16] for i in range(0, 4096, 16)}
    assert not any(child[i:i + 16] in blocks for i in range(0, 4096, 16))


# -- starved is backpressure, not failure -------------------------------------------


class HeldReads:
    """A reader "thread" whose reads complete only when the test lets them."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], bytes], Deferred[bytes]]] = []
        self.sizes: list[int] = []

    def __call__(self, job: Callable[[], bytes]) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.pending.append((job, d))
        return d

    def deliver(self, times: int = 1) -> None:
        for _ in range(times):
            if not self.pending:
                return
            job, d = self.pending.pop(0)
            data = job()
            self.sizes.append(len(data))
            d.callback(data)


def slow_pipeline(max_bytes: int = 64 * 1024 * 1024,
                  h: float = 8.0) -> tuple[SeedPool, FakeSource, HeldReads, Clock]:
    source = FakeSource()
    held = HeldReads()
    clock = Clock()
    pool = SeedPool(clock, HealthTests(h), ReseedPolicy(1.0, max_bytes, 384),
                    source_name=source.name, source_kind=source.kind)
    SourceProducer(source, pool, held, clock, chunk_size=1024).start()
    return pool, source, held, clock


def seed_fully(pool: SeedPool, held: HeldReads) -> None:
    for _ in range(100):
        if pool.ready():
            return
        held.deliver()
    raise AssertionError("the pool never seeded")


def test_due_reseed_without_seed_is_starved_and_waiters_resume() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    # Use up every buffered sample, then let the reseed come due.
    pool._buffer.clear()
    clock.advance(1.0)
    with pytest.raises(Starved):
        pool.random_bytes(64)
    assert pool.state is PoolState.STARVED
    assert pool.status().healthy is False
    waited = when_ready(pool, 64)
    got: list[object] = []
    waited.addBoth(got.append)
    clock.advance(2.5)
    assert got == []  # nobody is hung up on while the source is healthy
    assert pool.starved_for() == pytest.approx(2.5)
    held.deliver()
    assert got == [None]
    assert len(pool.random_bytes(64)) == 64
    st = pool.status()
    assert st.state is PoolState.OK
    assert st.starved.waits == 1
    assert st.starved.seconds == 0
    assert st.starved.total_seconds == pytest.approx(2.5)


def test_source_failure_fails_waiters_and_tells_watchers() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    pool._buffer.clear()
    clock.advance(1.0)
    told: list[FailClosed] = []
    pool.on_failure(told.append)
    waited = when_ready(pool)
    outcome: list[object] = []
    waited.addErrback(lambda f: outcome.append(f.value))
    source.make = stuck
    held.deliver(3)
    assert pool.state is PoolState.FAILED
    assert len(outcome) == 1 and isinstance(outcome[0], FailClosed)
    assert not isinstance(outcome[0], Starved)
    assert len(told) == 1
    late: list[object] = []
    when_ready(pool).addErrback(lambda f: late.append(f.value))
    assert len(late) == 1 and isinstance(late[0], FailClosed)  # already failed: at once


def test_cancelled_wait_is_withdrawn() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    pool._buffer.clear()
    clock.advance(1.0)
    waited = when_ready(pool)
    waited.addErrback(lambda f: None)
    waited.cancel()
    assert pool._waiters == []


def test_no_byte_leaves_an_overdue_drbg() -> None:
    # reseed_bytes 4096: a 10000-byte request is cut at each boundary and
    # reseeded in between, never 4097 bytes from one seed.
    pool, source, held, clock = slow_pipeline(max_bytes=4096)
    seed_fully(pool, held)
    held.deliver(5)
    reseeds = pool.status().drbg.reseeds
    assert len(pool.random_bytes(10000)) == 10000
    st = pool.status().drbg
    assert st.reseeds == reseeds + 2
    assert st.bytes_since_reseed == 10000 - 2 * 4096


def test_request_short_of_its_reseeds_is_refused_before_any_output() -> None:
    pool, source, held, clock = slow_pipeline(max_bytes=4096)
    seed_fully(pool, held)
    pool._buffer = pool._buffer[:pool.reseed_samples]  # one reseed's worth, not three
    generated = pool.status().drbg.bytes_generated
    with pytest.raises(Starved):
        pool.random_bytes(3 * 4096 + 1)
    assert pool.status().drbg.bytes_generated == generated
    # The refusal asks the reader for what the request needs.
    assert pool.target() >= 3 * pool.reseed_samples
    waited = when_ready(pool, 3 * 4096 + 1)
    fired: list[object] = []
    waited.addCallback(fired.append)
    held.deliver(3)
    assert fired == [None]
    assert len(pool.random_bytes(3 * 4096 + 1)) == 3 * 4096 + 1


def test_read_ahead_follows_demand_up_to_a_bound() -> None:
    # A device with H=1 and reseeds every 4096 bytes: 384 samples per 4 KiB
    # of output.  Heavy demand raises the target and the size of each read.
    pool, source, held, clock = slow_pipeline(max_bytes=4096, h=1.0)
    seed_fully(pool, held)
    base = pool.target()
    for _ in range(20):
        held.deliver(4)
        try:
            pool.random_bytes(4096)
        except Starved:
            pass
    clock.advance(0.5)
    pool.tick()
    assert pool.target() > base
    assert pool.target() <= pool.max_buffer
    held.deliver(2)  # the read in flight, then one sized by the new target
    assert max(held.sizes) > 1024  # the reader was asked for more than its floor


# -- the block of DRBG output that small requests are served from -------------


class TrackingBlock(OutputBlock):
    """An :class:`OutputBlock` that records every fill and every slice it hands out."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.fills: list[bytes] = []
        #: (fill index, start, end) of each slice handed out.
        self.slices: list[tuple[int, int, int]] = []
        self.drops = 0

    def fill(self, data: bytes) -> None:
        super().fill(data)
        self.fills.append(data)

    def drop(self) -> None:
        super().drop()
        self.drops += 1

    def take(self, n: int) -> bytes | None:
        out = super().take(n)
        if out:
            start = len(self.fills[-1]) - self.left - n
            assert out == self.fills[-1][start:start + n]
            self.slices.append((len(self.fills) - 1, start, start + n))
        return out


def block_pool(block: OutputBlock, max_bytes: int = 64 * 1024 * 1024,
               getpid: Callable[[], int] = os.getpid) -> tuple[SeedPool, Clock]:
    clock = Clock()
    pool = SeedPool(clock, HealthTests(8.0), ReseedPolicy(1.0, max_bytes, 384), getpid=getpid,
                    block=block)
    pool.write(os.urandom(4096))
    assert pool.ready()
    return pool, clock


def test_small_requests_are_slices_of_one_generate() -> None:
    block = TrackingBlock(1024)
    pool, _ = block_pool(block)
    a, b = pool.random_bytes(64), pool.random_bytes(64)
    assert len(block.fills) == 1 and a + b == block.fills[0][:128]
    assert len(pool.random_bytes(1024)) == 1024  # the block's size: its own generate
    assert pool.random_bytes(8, additional_input=b"x") not in block.fills[0]
    assert block.slices == [(0, 0, 64), (0, 64, 128)]
    status = pool.status()
    assert status.drbg.bytes_generated == 64 + 64 + 1024 + 8  # handed out, not generated
    assert status.drbg.bytes_since_reseed == 1024 + 1024 + 8


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1500), st.sampled_from(["plain", "input", "tick", "wait"])),
                min_size=1, max_size=120))
def test_no_byte_is_handed_out_twice(requests: list[tuple[int, str]]) -> None:
    block = TrackingBlock(1024)
    # Reseeds every 16 KiB of output as well as every second.
    pool, clock = block_pool(block, max_bytes=16 * 1024)
    for n, how in requests:
        pool.write(os.urandom(1024))
        if how == "tick":
            clock.advance(1.0)
            pool.tick()
        elif how == "wait":
            clock.advance(0.4)
        out = pool.random_bytes(n, additional_input=b"in" if how == "input" else b"")
        assert len(out) == n
    # Within a fill the slices follow each other without overlap; a dropped
    # fill is never handed out from again, and every fill is fresh output.
    ends: dict[int, int] = {}
    for fill, start, end in block.slices:
        assert start >= ends.get(fill, 0)
        ends[fill] = end
    order = [fill for fill, _, _ in block.slices]
    assert order == sorted(order)
    fresh = {data[:16] for data in block.fills}
    assert len(fresh) == len(block.fills)


def test_a_reseed_drops_the_block() -> None:
    block = TrackingBlock(1024)
    pool, clock = block_pool(block)
    pool.random_bytes(64)
    rest = block.fills[-1][64:]
    clock.advance(1.0)
    pool.write(os.urandom(1024))
    pool.tick()
    assert block.left == 0
    after = pool.random_bytes(64)
    assert len(block.fills) == 2 and after == block.fills[1][:64] and after not in rest


def test_a_fork_drops_the_block() -> None:
    pid = [100]
    block = TrackingBlock(1024)
    pool, _ = block_pool(block, getpid=lambda: pid[0])
    pool.random_bytes(64)
    parent_rest = block.fills[-1][64:]
    pid[0] = 101
    with pytest.raises(Starved):
        pool.random_bytes(64)  # the child has no seed of its own yet
    assert block.left == 0
    pool.write(os.urandom(4096))
    child = pool.random_bytes(64)
    assert child not in parent_rest and child == block.fills[-1][:64]


def test_starving_and_failing_drop_the_block() -> None:
    block = TrackingBlock(1024)
    pool, clock = block_pool(block)
    pool.random_bytes(64)
    pool._buffer.clear()
    clock.advance(1.0)
    pool.tick()
    assert pool.state is PoolState.STARVED and block.left == 0
    pool.write(os.urandom(4096))
    pool.random_bytes(64)
    assert block.left > 0
    pool.source_failed("unplugged")
    assert pool.state is PoolState.FAILED and block.left == 0
    with pytest.raises(FailClosed):
        pool.random_bytes(64)


def test_mixed_data_reaches_the_drbg_at_the_next_reseed() -> None:
    import random

    def twin() -> SeedPool:
        rng = random.Random(7)
        pool = SeedPool(Clock(), HealthTests(8.0), ReseedPolicy(), personalization=lambda: b"p")
        pool.write(rng.randbytes(4096))
        pool.random_bytes(16)
        pool._buffer[:] = rng.randbytes(len(pool._buffer))
        return pool

    a, b = twin(), twin()
    a.mix(b"challenge")
    assert a.random_bytes(64) == b.random_bytes(64)  # not before the reseed
    a._clock.advance(1.0)  # type: ignore[attr-defined]
    b._clock.advance(1.0)  # type: ignore[attr-defined]
    a.tick()
    b.tick()
    assert a.random_bytes(64) != b.random_bytes(64)
