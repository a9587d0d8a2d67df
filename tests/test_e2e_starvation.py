"""
End to end: the appliance on a FIFO source fed by ``tests/fifo_writer.py``.

A starved pool (source healthy, seed short for a reseed that is due) is
backpressure: streams pause and stay open, HTTP requests wait a bounded time
and answer 200 or 503.  A failed source (stuck, biased, end of file) closes
streams, answers 503, and is retried until a healthy writer is back, without
a restart.  Every wait below is a polling loop with a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from entropy_appliance.core.health import HealthTests
from tests.fifo_writer import biased_bytes, stuck_bytes
from tests.twistd_helpers import Appliance, start_appliance

pytestmark = pytest.mark.e2e

WRITER = Path(__file__).resolve().with_name("fifo_writer.py")

#: The appliance's default --seed-wait: how long a request waits for seed.
SEED_WAIT = 5.0
#: An open stream ends within 5 s of the health tests seeing a fault; the
#: tests allow this much from the moment the writer turns bad.
STREAM_END_BOUND = 15.0
#: A healthy writer is back; serving resumes within this (backoff included).
RECOVERY_BOUND = 60.0
#: An HTTP answer, 200 or 503, comes within the seed wait plus this slack.
ANSWER_SLACK = 5.0
BIG = 200_000_000


# -- the writer ----------------------------------------------------------------


@dataclass
class Writer:
    """One ``fifo_writer.py`` subprocess and its control file."""

    process: subprocess.Popen[bytes]
    control: Path

    def set_mode(self, mode: str) -> None:
        """Switch the writer's mode (atomically; it re-reads within 0.1 s)."""
        tmp = self.control.with_name(self.control.name + ".tmp")
        tmp.write_text(mode + "\n", encoding="ascii")
        os.replace(tmp, self.control)

    def stop(self) -> None:
        """Stop the writer by its PID if it is still running."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_writer(fifo: Path, control: Path, mode: str) -> Writer:
    """Start a writer in ``mode``; it waits in open() until a reader comes."""
    writer = Writer(subprocess.Popen([sys.executable, str(WRITER), str(fifo), str(control)]),
                    control)
    writer.set_mode(mode)
    return writer


# -- HTTP and stream clients ---------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def get(app: Appliance, path: str) -> Answer:
    """GET ``path`` over plain HTTP; any connection error propagates."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", app.ports["http"],
                                      timeout=SEED_WAIT + 2 * ANSWER_SLACK)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        headers = {k.lower(): v for k, v in r.getheaders()}
        return Answer(r.status, headers, body, time.monotonic() - start)
    finally:
        conn.close()


def status(app: Appliance) -> dict[str, Any]:
    a = get(app, "/v1/status")
    assert a.status == 200, a
    doc: dict[str, Any] = a.json()
    return doc


def assert_503_problem(a: Answer) -> None:
    """A 503 in problem+json with a usable Retry-After."""
    assert a.status == 503, (a.status, a.body[:200])
    assert a.headers.get("content-type", "").startswith("application/problem+json"), a.headers
    assert int(a.headers["retry-after"]) >= 1, a.headers
    assert a.json()["status"] == 503


def names_state(a: Answer, state: str) -> bool:
    """The /health body names ``state`` (as ``state``, or as ``status`` outside problem+json)."""
    body = a.json()
    return state in (body.get("state"), body.get("status"))


def poll(what: str, check: Callable[[], bool], timeout: float, every: float = 0.2) -> float:
    """Call ``check`` until it is true; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


@dataclass
class StreamReader:
    """Reads one raw-stream connection as fast as it can, in a thread."""

    port: int
    received: int = 0
    ended: str | None = None  # "eof", "reset" or "timeout" once it stops
    _stop: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StreamReader:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        buf = bytearray(1 << 20)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                while not self._stop.is_set():
                    n = s.recv_into(buf)
                    if not n:
                        self.ended = "eof"
                        return
                    self.received += n
        except (ConnectionResetError, BrokenPipeError):
            self.ended = "reset"
        except TimeoutError:
            self.ended = "timeout"
        finally:
            self._done.set()

    def wait_ended(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(35)


def first_bytes_of_new_stream(app: Appliance, want: int, timeout: float) -> tuple[int, str]:
    """Open a stream and read up to ``want`` bytes; return (count, how it stopped)."""
    got = 0
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(("127.0.0.1", app.ports["stream"]), timeout=timeout) as s:
            while got < want:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = s.recv(min(1 << 20, want - got))
                if not chunk:
                    return got, "eof"
                got += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return got, "reset"
    except TimeoutError:
        return got, "timeout"
    return got, "open"


# -- the rig -------------------------------------------------------------------------


@dataclass
class Rig:
    """An appliance reading a FIFO that a writer fills."""

    app: Appliance
    fifo: Path
    tmp: Path
    writers: list[Writer] = field(default_factory=list)

    @property
    def writer(self) -> Writer:
        """The latest writer."""
        return self.writers[-1]

    def new_writer(self, mode: str) -> Writer:
        """Start another writer on the same FIFO, with its own control file."""
        w = start_writer(self.fifo, self.tmp / f"writer{len(self.writers)}.mode", mode)
        self.writers.append(w)
        return w


def serving(app: Appliance) -> bool:
    a = get(app, "/v1/random?bytes=64")
    return a.status == 200 and len(a.body) == 64


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    fifo = tmp_path / "rng.fifo"
    os.mkfifo(fifo)
    writers = [start_writer(fifo, tmp_path / "writer0.mode", "fast")]
    try:
        app = start_appliance(tmp_path, "--source", f"device:{fifo}", "--reseed-bytes", "65536",
                              "--reseed-interval", "1", "--https", "none")
        try:
            poll("the appliance serves from the FIFO", lambda: serving(app), 30)
            yield Rig(app, fifo, tmp_path, writers)
        finally:
            app.stop()
    finally:
        for w in writers:
            w.stop()


# -- the writer itself ---------------------------------------------------------------


def test_writer_faults_are_the_ones_the_health_tests_name() -> None:
    """``biased`` trips the APT and never the RCT; ``stuck`` trips the RCT."""
    for _ in range(20):
        h = HealthTests(1.0)
        h.feed(os.urandom(4096))
        assert h.state == "ok"
        for _ in range(16):
            if h.state == "failed":
                break
            h.feed(biased_bytes(4096))
        assert h.state == "failed" and h.last_failure == "apt"
        assert h.failures["rct"] == 0 and h.failures["apt"] >= 1
    h = HealthTests(1.0)
    h.feed(os.urandom(4096))
    h.feed(stuck_bytes(4096))
    assert h.state == "failed" and h.last_failure == "rct"


# -- starved: backpressure -----------------------------------------------------------


def test_writer_that_keeps_up_streams_200mb_without_eof(rig: Rig) -> None:
    buf = bytearray(1 << 20)
    got = 0
    deadline = time.monotonic() + 120
    with socket.create_connection(("127.0.0.1", rig.app.ports["stream"]), timeout=30) as s:
        while got < BIG:
            assert time.monotonic() < deadline, f"only {got} bytes within 120 s"
            n = s.recv_into(buf, min(len(buf), BIG - got))
            assert n, f"stream closed after {got} bytes:\n{rig.app.log()[-2000:]}"
            got += n
    assert got == BIG
    assert rig.app.process.poll() is None


def test_slow_writer_pauses_streams_and_requests_without_hanging_up(rig: Rig) -> None:
    before = status(rig.app)["starved"]
    rig.writer.set_mode("rate:20000")
    stream = StreamReader(rig.app.ports["stream"]).start()
    try:
        answers: list[Answer] = []
        healths: list[Answer] = []
        marks = [stream.received]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                # Three requests at once, then a /health check, about a second a round.
                answers += pool.map(lambda _: get(rig.app, "/v1/random?bytes=64"), range(3))
                healths.append(get(rig.app, "/health"))
                time.sleep(1.0)
                marks.append(stream.received)
        doc = status(rig.app)
        assert stream.ended is None, f"stream ended ({stream.ended}) after {stream.received} bytes"
    finally:
        stream.close()
    # The stream kept going: bytes arrived in the first half and in the second.
    assert marks[2] > marks[0] and marks[4] > marks[2], marks
    for a in answers:
        assert a.seconds < SEED_WAIT + ANSWER_SLACK, a
        if a.status == 200:
            assert len(a.body) == 64
        else:
            assert_503_problem(a)
    # Short waits for seed are not a failure of the appliance.
    assert [h.status for h in healths] == [200] * len(healths), healths
    assert all(h.json()["status"] in ("ok", "starved") for h in healths), healths
    assert doc["state"] in ("ok", "starved"), doc["state"]
    assert doc["healthy"] is (doc["state"] == "ok")
    # The test is only worth something if the pool really ran short.
    after = doc["starved"]
    assert (after["total_seconds"] > before["total_seconds"] or after["waits"] > before["waits"]
            or after["seconds"] > 0), (before, after)
    assert rig.app.process.poll() is None


# -- failed: fail closed, then recover -----------------------------------------------


def assert_failed_closed(rig: Rig, stream: StreamReader) -> dict[str, Any]:
    """The open stream ends, /health and /v1/random answer 503, a new stream gets nothing."""
    assert stream.wait_ended(STREAM_END_BOUND), (
        f"stream still open {STREAM_END_BOUND:.0f} s after the fault "
        f"({stream.received} bytes)")
    assert stream.ended in ("eof", "reset"), stream.ended
    poll("/health answers 503", lambda: get(rig.app, "/health").status == 503, STREAM_END_BOUND)
    health = get(rig.app, "/health")
    assert health.status == 503
    assert int(health.headers["retry-after"]) >= 1
    assert health.headers.get("content-type", "").startswith("application/problem+json")
    assert names_state(health, "failed"), health.body
    assert_503_problem(get(rig.app, "/v1/random?bytes=64"))
    got, how = first_bytes_of_new_stream(rig.app, 1, 5.0)
    assert (got, how) in ((0, "eof"), (0, "reset")), (got, how)
    doc = status(rig.app)
    assert doc["state"] == "failed" and doc["healthy"] is False, doc
    return doc


def assert_serves_again(rig: Rig) -> None:
    """Without a restart: /v1/random answers 200 and a new stream yields bytes."""
    pid = rig.app.pid
    poll("serving again after the writer recovered", lambda: serving(rig.app), RECOVERY_BOUND,
         every=0.5)
    got, how = first_bytes_of_new_stream(rig.app, 1_000_000, 15.0)
    assert got == 1_000_000, (got, how)
    assert rig.app.process.poll() is None and rig.app.pid == pid
    doc = status(rig.app)
    assert doc["state"] in ("ok", "starved") and doc["source"]["error"] is None, doc


def test_stuck_writer_fails_closed_then_recovers_without_restart(rig: Rig) -> None:
    before = status(rig.app)["source"]["health_failures"]
    stream = StreamReader(rig.app.ports["stream"]).start()
    try:
        poll("the stream flows", lambda: stream.received > 0, 15)
        rig.writer.set_mode("stuck")
        doc = assert_failed_closed(rig, stream)
    finally:
        stream.close()
    assert doc["source"]["health_failures"]["rct"] > before["rct"], doc["source"]
    rig.writer.set_mode("fast")
    assert_serves_again(rig)


def test_biased_writer_is_caught_by_the_apt(rig: Rig) -> None:
    before = status(rig.app)["source"]["health_failures"]
    stream = StreamReader(rig.app.ports["stream"]).start()
    try:
        poll("the stream flows", lambda: stream.received > 0, 15)
        rig.writer.set_mode("biased")
        doc = assert_failed_closed(rig, stream)
    finally:
        stream.close()
    failures = doc["source"]["health_failures"]
    assert failures["apt"] > before["apt"], doc["source"]
    assert failures["rct"] == before["rct"], doc["source"]


def test_writer_exit_fails_the_source_then_a_new_writer_is_read(rig: Rig) -> None:
    stream = StreamReader(rig.app.ports["stream"]).start()
    try:
        poll("the stream flows", lambda: stream.received > 0, 15)
        rig.writer.set_mode("exit")
        assert rig.writer.process.wait(10) == 0
        assert stream.wait_ended(STREAM_END_BOUND), "stream still open after end of file"
    finally:
        stream.close()
    poll("/v1/status reports the source failed",
         lambda: status(rig.app)["state"] == "failed", STREAM_END_BOUND)
    doc = status(rig.app)
    assert doc["source"]["state"] == "failed" and doc["source"]["error"], doc["source"]
    health = get(rig.app, "/health")
    assert health.status == 503 and int(health.headers["retry-after"]) >= 1
    assert names_state(health, "failed"), health.body
    assert_503_problem(get(rig.app, "/v1/random?bytes=64"))
    assert rig.app.process.poll() is None
    # A writer opens the FIFO again: the appliance's next retry reads it.
    rig.new_writer("fast")
    assert_serves_again(rig)
