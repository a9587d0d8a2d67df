"""
Several sources at once, in memory: the combining rule and its credit
arithmetic, one source failing among others, all failing, recovery,
``--min-sources``, the relay to workers, the options, and what status,
metrics, headers and the heatmap say about each source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from entropy_appliance.app.options import Options, parse_config
from entropy_appliance.app.systemd import status_line
from entropy_appliance.core.feed import CREDIT_SCALE, SourceFeed, allot, credit_units
from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import FailClosed, PoolShort, PoolState, ReseedPolicy, SeedPool, Starved
from entropy_appliance.core.states import SourceState
from entropy_appliance.source.producer import SourceProducer
from entropy_appliance.source.sources import SourceSpec, parse_source
from tests.test_pool import FakeSource, stuck, sync_run
from tests.web_helpers import call, header, make_web

BITS = 384


class Named(FakeSource):
    """A fake source with a name and kind of its own."""

    def __init__(self, name: str, kind: str = "device",
                 make: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__(make)
        self.name = name
        self.kind = kind


def several(*sources: tuple[Named, float], min_sources: int = 1, interval: float = 1.0,
            serving: bool = True) -> tuple[SeedPool, list[SourceProducer], Clock]:
    """A pool over ``(source, H)`` pairs, each read by its own producer (synchronously)."""
    clock = Clock()
    feeds = [SourceFeed(HealthTests(h), s.name, s.kind) for s, h in sources]
    pool = SeedPool(clock, None, ReseedPolicy(interval, 64 * 1024 * 1024, BITS), feeds=feeds,
                    min_sources=min_sources, serving=serving)
    producers = [SourceProducer(s, feed, sync_run, clock, chunk_size=1024)
                 for (s, _), feed in zip(sources, feeds, strict=True)]
    for p in producers:
        p.start()
    return pool, producers, clock


def by_name(pool: SeedPool) -> dict[str, SourceFeed]:
    return {f.name: f for f in pool.feeds}


def reseed(pool: SeedPool, clock: Clock) -> None:
    """Let a reseed fall due and happen."""
    clock.advance(pool.policy.interval)
    pool.tick()


# -- the combining rule ----------------------------------------------------------------


def test_allot_splits_the_credit_evenly_and_a_short_source_gives_all_it_has() -> None:
    eight, one = credit_units(8.0), credit_units(1.0)
    credit = BITS * CREDIT_SCALE
    # Two sources with plenty: 192 bits each, 24 samples at 8 bits, 192 at 1 bit.
    assert allot([(1000, eight), (1000, one)], credit) == [24, 192]
    # A source that holds less than its share gives it all; the other makes up the rest.
    assert allot([(1000, eight), (50, one)], credit) == [42, 50]
    # Together too little: nothing is taken.
    assert allot([(10, eight), (50, one)], credit) is None
    # Every source that has samples gives some; one with none gives none.
    assert allot([(1000, eight), (0, one), (1000, eight)], credit) == [24, 0, 24]
    # min_sources: at least that many must give.
    assert allot([(1000, eight), (0, one)], credit, min_sources=2) is None
    # The credit taken always reaches what was asked, by less than a sample per source over it.
    h7 = credit_units(7.0)
    take = allot([(1000, h7), (1000, one), (1000, h7)], credit)
    assert take is not None
    got = take[0] * h7 + take[1] * one + take[2] * h7
    assert credit <= got < credit + 2 * h7 + one


def test_instantiation_and_reseed_credit_the_sum_of_samples_times_each_claim() -> None:
    fast, slow = Named("/dev/qrandom0", "quantis"), Named("/dev/hwrng", "hwrng")
    pool, producers, clock = several((fast, 8.0), (slow, 1.0))
    reseed(pool, clock)
    for p in producers:
        p.stopProducing()  # nothing refills: what leaves the buffers went into a seed
    feeds = by_name(pool)
    held = {name: len(f.buffer) for name, f in feeds.items()}
    # What an instantiation takes: entropy input 384 bits and nonce 192 bits,
    # each split evenly, in the order the sources were given: (192 + 96) bits
    # are 24 + 12 samples at H=8, and 192 + 96 samples at H=1.
    parts = pool._take([pool.reseed_credit, pool.nonce_credit])
    assert parts is not None and [len(p) for p in parts] == [24 + 192, 12 + 96]
    taken = {name: held[name] - len(f.buffer) for name, f in feeds.items()}
    assert taken == {"/dev/qrandom0": 36, "/dev/hwrng": 288}
    assert 36 * 8 + 288 * 1 >= 1.5 * BITS
    assert [(s.name, s.share, s.in_seed) for s in pool.status().sources] == [
        ("/dev/qrandom0", 0.5, True), ("/dev/hwrng", 0.5, True)]
    # The headers of random answers name the sources of the current seed.
    assert pool.source_name == "/dev/qrandom0, /dev/hwrng"
    assert pool.source_kind == "quantis, hwrng"
    held = {name: len(f.buffer) for name, f in feeds.items()}
    reseeds = pool.status().drbg.reseeds
    reseed(pool, clock)
    assert pool.status().drbg.reseeds == reseeds + 1
    taken = {name: held[name] - len(f.buffer) for name, f in feeds.items()}
    assert taken == {"/dev/qrandom0": 24, "/dev/hwrng": 192}


def test_a_slow_source_gives_what_it_has_and_the_others_make_up_the_rest() -> None:
    fast, slow = Named("kernel", "kernel"), Named("/dev/hwrng", "hwrng")
    pool, producers, clock = several((fast, 8.0), (slow, 1.0))
    slow_feed = by_name(pool)["/dev/hwrng"]
    pool.random_bytes(16)
    producers[1].stopProducing()  # the slow device delivers nothing more
    slow_feed.buffer[:] = slow_feed.buffer[:100]
    reseed(pool, clock)
    assert pool.healthy
    st = {s.name: s for s in pool.status().sources}
    # 100 bits from the device, the other 284 from the kernel, rounded up to
    # whole samples: 36 samples, 288 bits.
    assert st["/dev/hwrng"].share == pytest.approx(100 / 388, abs=1e-4)
    assert st["kernel"].share == pytest.approx(288 / 388, abs=1e-4)
    # Once it has none, the kernel alone seeds (min_sources 1), and the headers say so.
    reseed(pool, clock)
    assert pool.healthy and pool.source_name == "kernel"


# -- failures --------------------------------------------------------------------------


def test_one_of_two_sources_sticks_serving_continues_and_status_names_it() -> None:
    good, bad = Named("/dev/qrandom0", "quantis"), Named("/dev/hwrng", "hwrng")
    pool, _, clock = several((good, 7.0), (bad, 1.0))
    failures: list[FailClosed] = []
    pool.on_failure(failures.append)
    pool.random_bytes(100)
    bad.make = stuck
    bad_feed = by_name(pool)["/dev/hwrng"]
    bad_feed.buffer.clear()
    pool.nudge()  # the stuck device is read again
    assert bad_feed.state is SourceState.FAILED
    assert bad_feed.buffer == b""  # its buffer is dropped
    assert failures == []  # the pool does not fail closed: the other source carries on
    for _ in range(3):
        reseed(pool, clock)
        assert len(pool.random_bytes(1000)) == 1000
        assert pool.source_name == "/dev/qrandom0"  # its samples never enter a seed
    doc = pool.status().as_dict()
    assert doc["state"] == "ok"
    named = {s["name"]: s for s in doc["sources"]}
    assert named["/dev/hwrng"]["state"] == "failed" and named["/dev/hwrng"]["share"] == 0
    assert named["/dev/hwrng"]["health_failures"]["rct"] > 0
    assert named["/dev/qrandom0"]["state"] == "ok" and named["/dev/qrandom0"]["share"] == 1.0
    line = status_line(pool.status())
    assert "sources /dev/qrandom0 (quantis) ok, /dev/hwrng (hwrng) failed" in line
    assert line.startswith("serving")


def test_both_sources_fail_and_the_pool_fails_closed() -> None:
    a, b = Named("/dev/a"), Named("/dev/b")
    pool, _, clock = several((a, 1.0), (b, 1.0))
    failures: list[FailClosed] = []
    pool.on_failure(failures.append)
    pool.random_bytes(100)
    a.make = stuck
    by_name(pool)["/dev/a"].buffer.clear()
    pool.nudge()
    assert failures == [] and pool.healthy
    b.error = "EIO reading /dev/b: Input/output error"
    by_name(pool)["/dev/b"].buffer.clear()
    pool.nudge()
    assert failures and pool.state is PoolState.FAILED
    with pytest.raises(FailClosed) as e:
        pool.random_bytes(1)
    assert not isinstance(e.value, Starved)
    assert "0 of 2 sources healthy" in e.value.reason and "/dev/b" in e.value.reason
    assert status_line(pool.status()).startswith("FAILING CLOSED")


def test_a_failed_source_is_taken_back_after_its_startup_test() -> None:
    good, bad = Named("/dev/good"), Named("/dev/bad")
    pool, _, clock = several((good, 1.0), (bad, 1.0))
    pool.random_bytes(100)
    bad.make = stuck
    bad_feed = by_name(pool)["/dev/bad"]
    bad_feed.buffer.clear()
    pool.nudge()
    assert bad_feed.left_out
    bad.make = os.urandom  # the fault clears
    for _ in range(4):  # past the first backoff (1 s)
        reseed(pool, clock)
    assert not bad_feed.left_out and bad_feed.state is SourceState.OK
    reseed(pool, clock)
    assert pool.source_name == "/dev/good, /dev/bad"
    assert {s.name: s.share for s in pool.status().sources} == {"/dev/good": 0.5, "/dev/bad": 0.5}


def test_min_sources_two_with_one_failed_fails_closed_until_it_is_back() -> None:
    a, b = Named("/dev/a"), Named("kernel", "kernel")
    pool, _, clock = several((a, 1.0), (b, 8.0), min_sources=2)
    failures: list[FailClosed] = []
    pool.on_failure(failures.append)
    pool.random_bytes(100)
    a.make = stuck
    by_name(pool)["/dev/a"].buffer.clear()
    pool.nudge()
    assert failures and pool.state is PoolState.FAILED
    with pytest.raises(FailClosed, match="1 of 2 sources healthy, 2 needed"):
        pool.random_bytes(1)
    # The kernel alone is healthy and has seed, yet nothing is served.
    reseed(pool, clock)
    with pytest.raises(FailClosed):
        pool.random_bytes(1)
    a.make = os.urandom
    for _ in range(4):
        reseed(pool, clock)
    assert pool.healthy and len(pool.random_bytes(10)) == 10
    assert pool.source_name == "/dev/a, kernel"


def test_min_sources_two_draws_on_two_sources_and_starves_while_one_has_nothing() -> None:
    a, b = Named("/dev/a"), Named("kernel", "kernel")
    pool, producers, clock = several((a, 1.0), (b, 8.0), min_sources=2)
    pool.random_bytes(100)
    producers[0].stopProducing()  # /dev/a is healthy but slow: nothing more arrives
    by_name(pool)["/dev/a"].buffer.clear()
    clock.advance(1.0)
    with pytest.raises(Starved):  # starved, not failed: both sources are healthy
        pool.random_bytes(1)
    assert pool.state is PoolState.STARVED


def test_starved_not_failed_when_healthy_sources_hold_too_little() -> None:
    a, b = Named("/dev/a"), Named("/dev/b")
    pool, producers, clock = several((a, 1.0), (b, 1.0))
    pool.random_bytes(100)
    for p in producers:
        p.stopProducing()
    for f in pool.feeds:
        f.buffer[:] = f.buffer[:100]  # 200 bits together, 384 needed
    clock.advance(1.0)
    with pytest.raises(Starved):
        pool.random_bytes(1)
    assert pool.state is PoolState.STARVED and pool.status().reason


# -- workers ---------------------------------------------------------------------------


def test_the_relay_combines_every_source_and_never_over_credits() -> None:
    fast, slow = Named("kernel", "kernel"), Named("/dev/hwrng", "hwrng")
    pool, producers, _ = several((fast, 8.0), (slow, 1.0), serving=False)
    assert pool.relay_min_entropy == 1.0
    for p in producers:
        p.stopProducing()
    feeds = by_name(pool)
    before = {n: len(f.buffer) for n, f in feeds.items()}
    chunk = pool.take_seed(4096)
    taken = {n: before[n] - len(f.buffer) for n, f in feeds.items()}
    # A worker credits each byte at 1 bit; the sources' own claims carry at least that.
    assert taken["kernel"] > 0 and taken["/dev/hwrng"] > 0
    assert len(chunk) == taken["kernel"] + taken["/dev/hwrng"]
    assert taken["kernel"] * 8 + taken["/dev/hwrng"] * 1 >= len(chunk) * 1
    assert taken["kernel"] * 8 + taken["/dev/hwrng"] * 1 >= 4096
    assert pool.take_seed(4096) != chunk  # consumed: never handed out twice


def test_the_relay_stops_while_too_few_sources_are_healthy() -> None:
    a, b = Named("/dev/a"), Named("/dev/b")
    pool, _, _ = several((a, 1.0), (b, 1.0), min_sources=2, serving=False)
    assert pool.take_seed(100)
    a.make = stuck
    by_name(pool)["/dev/a"].buffer.clear()
    pool.nudge()
    with pytest.raises(PoolShort):
        pool.take_seed(100)


# -- options ---------------------------------------------------------------------------


def fifo(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    os.mkfifo(path)
    return str(path)


def test_sources_from_the_command_line_and_the_environment(tmp_path: Path) -> None:
    x, y = fifo(tmp_path, "x"), fifo(tmp_path, "y")
    c = parse_config(["--source", f"device:{x},min-entropy=0.5", "--source", f"device:{y}",
                      "--source", "kernel", "--min-sources", "2", "--https", "none"])
    assert c.sources == (SourceSpec("device", x, 0.5), SourceSpec("device", y), SourceSpec("kernel"))
    assert c.min_sources == 2 and c.source == SourceSpec("device", x, 0.5)
    # Per-source claims first, --min-entropy for the rest, the kind's default last.
    assert [s.claim(None) for s in c.sources] == [0.5, 1.0, 8.0]
    assert [s.claim(2.0) for s in c.sources] == [0.5, 2.0, 2.0]
    options = Options()
    options.environ = {"ENTROPY_SOURCE": f"device:{x}  kernel", "ENTROPY_MIN_SOURCES": "2"}
    options.parseOptions(["--https", "none"])
    assert options.config.sources == (SourceSpec("device", x), SourceSpec("kernel"))
    assert options.config.min_sources == 2


@pytest.mark.parametrize("argv, message", [
    (["--source", "kernel", "--source", "kernel"], "--source kernel is given twice"),
    (["--source", "usb"], "unknown source 'usb'"),
    (["--source", "kernel,min-entropy=9"], "min-entropy must be a number with 0 < H <= 8"),
    (["--source", "kernel,min-entropy=0"], "min-entropy must be a number with 0 < H <= 8"),
    (["--source", "kernel,h=1"], "unknown option 'h=1'"),
    (["--source", "auto,min-entropy=1"], "auto takes no min-entropy"),
    (["--source", "auto", "--source", "kernel"], "auto stands alone"),
    (["--source", "kernel", "--min-sources", "2"], "--min-sources 2 is more than the 1 source given"),
    (["--source", "kernel", "--min-sources", "0"], "--min-sources '0'"),
])
def test_bad_sources_fail_at_startup(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        parse_config([*argv, "--https", "none"])
    assert message in str(e.value)


def test_the_same_device_by_two_paths_is_given_twice(tmp_path: Path) -> None:
    x = fifo(tmp_path, "x")
    os.symlink(x, tmp_path / "link")
    with pytest.raises(usage.UsageError, match="given twice"):
        parse_config(["--source", f"device:{x}", "--source", f"device:{tmp_path}/link", "--https", "none"])


def test_a_missing_device_is_retried_unless_min_sources_cannot_be_met(tmp_path: Path) -> None:
    missing = f"device:{tmp_path}/qrandom9"
    c = parse_config(["--source", missing, "--source", "kernel", "--https", "none"])
    assert c.sources[0] == SourceSpec("quantis", f"{tmp_path}/qrandom9")
    with pytest.raises(usage.UsageError, match="No such file"):
        parse_config(["--source", missing, "--source", "kernel", "--min-sources", "2", "--https", "none"])
    with pytest.raises(usage.UsageError, match="No such file"):
        parse_config(["--source", missing, "--https", "none"])
    # Not a device at all is never retried.
    with pytest.raises(usage.UsageError, match="not a character device"):
        parse_config(["--source", f"device:{tmp_path}", "--source", "kernel", "--https", "none"])


def test_a_device_that_cannot_be_opened_starts_failed_and_is_retried(tmp_path: Path) -> None:
    from entropy_appliance.source.sources import DeviceSource

    path = tmp_path / "late"
    device = DeviceSource(str(path))
    kernel = Named("kernel", "kernel")
    clock = Clock()
    feeds = [SourceFeed(HealthTests(1.0), device.name, device.kind),
             SourceFeed(HealthTests(8.0), "kernel", "kernel")]
    pool = SeedPool(clock, None, ReseedPolicy(1.0, 64 * 1024 * 1024, BITS), feeds=feeds)
    producers = [SourceProducer(device, feeds[0], sync_run, clock, chunk_size=1024),
                 SourceProducer(kernel, feeds[1], sync_run, clock, chunk_size=1024)]
    for p in producers:
        p.start()
    assert feeds[0].state is SourceState.FAILED and "cannot open" in (feeds[0].error or "")
    assert pool.healthy and pool.source_name == "kernel"
    path.write_bytes(os.urandom(1 << 20))  # the device appears
    for _ in range(4):
        clock.advance(1.0)
        pool.tick()
    assert feeds[0].state is SourceState.OK and not feeds[0].left_out
    assert pool.source_name == f"{path}, kernel"


def test_parse_source_syntax() -> None:
    assert parse_source("kernel,min-entropy=7.5") == SourceSpec("kernel", None, 7.5)
    assert SourceSpec("kernel", None, 7.5).text() == "kernel,min-entropy=7.5"
    assert SourceSpec("hwrng", "/dev/hwrng").text() == "device:/dev/hwrng"


# -- what the surfaces say -------------------------------------------------------------


def test_status_metrics_headers_and_heatmap_per_source() -> None:
    a, k = Named("/dev/qrandom0", "quantis"), Named("kernel", "kernel")
    pool, _, clock = several((a, 7.0), (k, 8.0))
    reseed(pool, clock)
    web, stub = make_web(pool)
    resp, body = call(stub, "GET", "http://a/v1/random?bytes=16")
    assert resp.code == 200 and header(resp, "X-RNG-Source") == "/dev/qrandom0, kernel"
    resp, body = call(stub, "GET", "http://a/v1/status")
    doc = json.loads(body)
    assert [(s["name"], s["kind"], s["min_entropy"], s["state"]) for s in doc["sources"]] == [
        ("/dev/qrandom0", "quantis", 7.0, "ok"), ("kernel", "kernel", 8.0, "ok")]
    assert all(s["bytes_read"] > 0 and s["health_failures"] == {"rct": 0, "apt": 0}
               for s in doc["sources"])
    assert sum(s["share"] for s in doc["sources"]) == pytest.approx(1.0)
    assert doc["source"]["name"] == "/dev/qrandom0, kernel" and doc["min_sources"] == 1
    resp, body = call(stub, "GET", "http://a/metrics")
    text = body.decode()
    assert 'entropy_source_state{source="/dev/qrandom0",state="ok"} 1.0' in text
    assert 'entropy_source_state{source="kernel",state="ok"} 1.0' in text
    assert 'entropy_health_failures_total{source="kernel",test="rct"} 0.0' in text
    assert 'entropy_source_min_entropy{source="/dev/qrandom0"} 7.0' in text
    assert 'entropy_source_read_bytes_total{source="kernel"}' in text
    # The heatmap of one source, by name; an unknown name is a 404 problem.
    for f in pool.feeds:
        f.buffer += os.urandom(8192)
    resp, body = call(stub, "GET", "http://a/v1/image/heatmap?source=kernel&width=64&height=64")
    assert resp.code == 200 and body.startswith(b"\x89PNG")
    assert header(resp, "X-RNG-Source") == "kernel" and header(resp, "X-RNG-Source-Kind") == "kernel"
    resp, body = call(stub, "GET", "http://a/v1/image/heatmap?source=/dev/nope")
    assert resp.code == 404 and header(resp, "Content-Type") == "application/problem+json"
    problem = json.loads(body)
    assert "/dev/nope" in problem["detail"] and "/dev/qrandom0, kernel" in problem["detail"]


def test_min_sources_above_what_auto_finds_fails_at_startup(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from entropy_appliance.app import build
    from entropy_appliance.source.detection import detect_all

    monkeypatch.chdir(tmp_path)
    found = len(detect_all())
    config = parse_config(["--source", "auto", "--min-sources", str(found + 1), "--https", "none"])
    with pytest.raises(usage.UsageError, match=f"--source auto found only {found} source"):
        build.makeService(config, reactor=MemoryReactorClock())
    # As many as it finds is fine.
    config = parse_config(["--source", "auto", "--min-sources", str(found), "--https", "none"])
    tree = build.makeService(config, reactor=MemoryReactorClock())
    assert tree.getServiceNamed("pipeline").pool.min_sources == found
