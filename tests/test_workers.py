"""Worker processes: inherited sockets, seed relay, restarts, fork safety."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure

from entropy_appliance.app.workers import (
    InheritedPort,
    ParentWatch,
    WorkerSupervisor,
    encode_worker_fds,
    parse_worker_fds,
)
from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import PoolShort, ReseedPolicy, SeedPool
from entropy_appliance.tap import Options
from tests.test_pool import FakeSource, pipeline
from tests.twistd_helpers import assert_new_blocks, read_raw_stream, start_appliance


def test_ports_round_trip() -> None:
    ports = [InheritedPort("stream", 5, "INET"), InheritedPort("https", 7, "INET6")]
    assert parse_worker_fds(encode_worker_fds(ports)) == ports
    for bad in ["stream:x:INET", "stream:5:IPX", "stream:1:INET", "stream"]:
        with pytest.raises(ValueError):
            parse_worker_fds(bad)


def test_relay_pool_hands_out_each_sample_once_and_never_seeds_itself() -> None:
    clock = Clock()
    pool = SeedPool(clock, HealthTests(8.0), ReseedPolicy(), serving=False)
    from entropy_appliance.source.producer import SourceProducer
    from tests.test_pool import sync_run

    SourceProducer(FakeSource(), pool, sync_run, clock, chunk_size=1024).start()
    a = pool.take_seed(4096)
    b = pool.take_seed(4096)
    # Up to 4096 each (the buffer is topped up in steps, not after every draw).
    assert 0 < len(a) <= 4096 and 0 < len(b) <= 4096
    assert a != b and a[:512] not in b and b[:512] not in a
    clock.advance(5)
    pool.tick()
    assert pool.status().drbg.reseeds == 0


def test_relay_pool_short_when_source_failed() -> None:
    from tests.test_pool import stuck

    pool, _, _ = pipeline(FakeSource(stuck))
    with pytest.raises(PoolShort):
        pool.take_seed(16)


def test_parent_watch_stops_an_orphan() -> None:
    clock = Clock()
    ppid = [10]
    stopped: list[bool] = []
    watch = ParentWatch(clock, lambda: stopped.append(True), getppid=lambda: ppid[0])
    watch.startService()
    clock.advance(1)
    assert not stopped
    ppid[0] = 1
    clock.advance(1)
    assert stopped == [True]
    watch.stopService()
    clock.advance(10)
    assert stopped == [True]  # no more checks once stopped


class FakeProcess:
    """What the supervisor keeps of a spawned worker."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class ProcessClock(Clock):
    """A clock that also spawns (fake) processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any,
                     childFDs: Any) -> FakeProcess:
        self.spawned.append(FakeProcess(len(self.spawned) + 100))
        return self.spawned[-1]


def test_a_dying_worker_restarts_after_a_growing_delay_that_a_healthy_minute_resets() -> None:
    """Restart delays: 1 s, doubling up to 30 s; back to 1 s after a minute up."""
    reactor = ProcessClock()
    supervisor = WorkerSupervisor(reactor, 1, [], [], os.urandom, env={})
    supervisor.startService()

    def crash_after(seconds: float) -> float:
        reactor.advance(seconds)
        worker, _ = supervisor.workers[0]
        worker.processEnded(Failure(ProcessTerminated(exitCode=1)))
        assert 0 not in supervisor.workers
        (restart,) = reactor.getDelayedCalls()
        delay = restart.getTime() - reactor.seconds()
        reactor.advance(delay)
        assert 0 in supervisor.workers
        return delay

    assert [crash_after(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert crash_after(61) == 1
    assert crash_after(0.5) == 2
    assert supervisor.restarts == 9 and len(reactor.spawned) == 10
    supervisor.stopService()
    assert reactor.spawned[-1].signals == ["TERM"]


def _status(app_url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(app_url, timeout=10) as r:
        return json.loads(r.read())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
def test_two_workers_50mb_no_repeated_block_restart_and_stop(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, "--source", "kernel", "--workers", "2", "--https", "none")
    try:
        # Until a worker has its first seed it fails closed: wait until
        # both answer /health with 200.
        deadline = time.monotonic() + 30
        healthy: set[int] = set()
        while len(healthy) < 2 and time.monotonic() < deadline:
            try:
                status = _status(app.url("http", "/v1/status"))
                if status["healthy"]:
                    healthy.add(status["worker"]["pid"])
            except OSError:
                pass
            time.sleep(0.05)
        assert len(healthy) == 2, "the workers never became healthy"
        # Several connections: the kernel spreads them over both workers.
        seen: set[bytes] = set()
        pids: set[int] = set()
        total = 0
        for _ in range(60):
            pids.add(_status(app.url("http", "/v1/status"))["worker"]["pid"])
            want = 1_000_000
            assert_new_blocks(read_raw_stream(app.ports["stream"], want), seen)
            total += want
        assert total >= 50_000_000
        assert len(pids) == 2, f"connections reached only workers {pids}"

        # A crashed worker is restarted.
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        new: set[int] = set()
        while time.monotonic() < deadline:
            try:
                new.add(_status(app.url("http", "/v1/status"))["worker"]["pid"])
            except OSError:
                pass
            if new - pids:
                break
            time.sleep(0.2)
        assert new - pids, "the killed worker was not replaced"
        assert "restarting in" in app.log()
        workers = pids | new
    finally:
        app.stop()
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "workers outlived the parent"


def parse_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cores: int | None,
                  argv: list[str], env: dict[str, str] | None = None) -> Options:
    """Parse the appliance's options on a machine that reports ``cores`` processors."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores or 1)))
    options = Options()
    options.environ = env or {}
    options.parseOptions(["--source", "kernel", "--https", "none", *argv])
    return options


@pytest.mark.parametrize(("cores", "given", "expected"), [
    (6, "auto", 6),
    (6, " AUTO ", 6),
    (2, "auto", 2),
    (64, "auto", 64),
    (96, "auto", 64),  # more cores than workers allowed: the most allowed
    (1, "auto", 1),
    (6, "3", 3),
])
def test_workers_auto_is_one_per_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      cores: int | None, given: str, expected: int) -> None:
    """``--workers auto`` becomes the usable core count (at most 64); a number stays that number."""
    options = parse_workers(monkeypatch, tmp_path, cores, ["--workers", given])
    assert options.config.workers == expected


def test_workers_auto_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ENTROPY_WORKERS=auto is resolved like the option, and the option wins over it."""
    assert parse_workers(monkeypatch, tmp_path, 4, [], {"ENTROPY_WORKERS": "auto"}).config.workers == 4
    assert parse_workers(monkeypatch, tmp_path, 4, ["--workers", "2"],
                         {"ENTROPY_WORKERS": "auto"}).config.workers == 2


@pytest.mark.parametrize("given", ["0", "65", "-1", "many", "auto4", ""])
def test_workers_bad_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: str) -> None:
    """Anything but 1-64 or auto is refused with a message that names the option."""
    with pytest.raises(usage.UsageError, match="--workers"):
        parse_workers(monkeypatch, tmp_path, 6, ["--workers", given])


@pytest.mark.e2e
def test_workers_bad_values_stop_twistd(tmp_path: Path) -> None:
    from tests.test_e2e_stream import TWISTD

    for bad, message in [("0", "--workers"), ("many", "--workers")]:
        out = subprocess.run([*TWISTD, "-n", "--pidfile=", "entropy", "--workers", bad],
                             cwd=tmp_path, capture_output=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert out.returncode != 0
        assert message in (out.stdout + out.stderr).decode()


@pytest.mark.e2e
def test_workers_auto_starts_one_worker_per_core(tmp_path: Path) -> None:
    """
    ``twistd entropy --workers auto`` runs as many workers as this machine
    has processors: each reports the count in /v1/status, and the parent
    logs starting each of them and no more.
    """
    cores = min(64, len(os.sched_getaffinity(0)))
    app = start_appliance(tmp_path, "--source", "kernel", "--workers", "auto", "--https", "none")
    try:
        deadline = time.monotonic() + 30
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                status = _status(app.url("http", "/v1/status"))
            except OSError:
                status = {}
            if status.get("healthy"):
                break
            time.sleep(0.05)
        assert status.get("healthy"), "the appliance never became healthy"
        if cores == 1:
            assert "worker" not in status  # one process serves alone
            assert "worker 0 started" not in app.log()
        else:
            assert status["worker"]["of"] == cores
            started = set(re.findall(r"worker (\d+) started \(pid \d+\)", app.log()))
            assert started == {str(i) for i in range(cores)}, app.log()
    finally:
        app.stop()


def test_parent_source_failure_makes_each_worker_fail_closed() -> None:
    """
    The parent marks its failed source in-band; the worker's own health
    tests reject the mark, so the worker fails closed (not merely starved).
    """
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from entropy_appliance.app.workers import WorkerSupervisor, _Worker
    from entropy_appliance.core.health import HealthTests, failing_run
    from entropy_appliance.core.pool import PoolState, ReseedPolicy, SeedPool

    mark = bytes(failing_run(8.0, 2.0 ** -30))
    supervisor = WorkerSupervisor(Clock(), 1, [], [], lambda n: os.urandom(n), env={},
                                  failure_mark=mark)
    worker = _Worker(supervisor, 0)
    pipe = StringTransport()
    worker.makeConnection(pipe)
    supervisor.workers[0] = (worker, None)
    supervisor.source_failed()
    assert pipe.value().endswith(mark)

    clock = Clock()
    pool = SeedPool(clock, HealthTests(8.0, alpha=2.0 ** -30), ReseedPolicy())
    for _ in range(4):
        pool.write(os.urandom(4096))
    assert pool.state is PoolState.OK
    pool.write(pipe.value()[-len(mark) - 100:])  # what the worker reads from its stdin
    assert pool.state is PoolState.FAILED
