"""
End to end: a source that turns bad is seen within a bound even when no
client asks for anything, because every source is read and health-tested
at least once per reseed interval (twistd, FIFO devices fed by
``tests/fifo_writer.py``).

- One FIFO, no client reading any byte: the writer turns stuck, and
  ``/health`` answers 503 within the bound; after the writer recovers and
  the node serves again, a second fault is seen just as fast.
- With ``--workers 2``, idle: every worker fails closed through the
  parent's in-band failure mark within the workers' bound.
- Two FIFOs and the kernel (the FIFOs claiming 7 and 2 bits per sample):
  while a raw stream reads, the FIFO that sticks shows ``failed`` in
  ``/v1/status`` within the bound, and the stream keeps flowing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_e2e_starvation import (
    RECOVERY_BOUND,
    Writer,
    get,
    names_state,
    poll,
    start_writer,
    status,
)
from tests.twistd_helpers import start_appliance

pytestmark = pytest.mark.e2e

#: README: a source that turns stuck is failed within 3 reseed intervals
#: plus the time the device takes to deliver two probes and the output it
#: had buffered before the fault.  With the 1 s default, a FIFO of one page
#: and a writer that keeps up, that is about 7 s; the tests allow this much.
IDLE_FAIL_BOUND = 15.0
#: With --workers, add what a worker reads through before the parent's
#: failure mark (README: up to 7.5 reseed intervals more, 11 s at 1 s).
WORKERS_FAIL_BOUND = IDLE_FAIL_BOUND + 15.0


@dataclass
class PacedReader:
    """
    Reads one raw-stream connection at about ``rate`` bytes per second, in
    a thread: a client that takes what it needs, so reseeds come on the
    interval rather than every ``--reseed-bytes``.
    """

    port: int
    rate: int = 2_000_000
    received: int = 0
    ended: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PacedReader:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                while not self._stop.is_set():
                    ahead = self.received / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(min(ahead, 0.1))
                        continue
                    chunk = s.recv(65536)
                    if not chunk:
                        self.ended = "eof"
                        return
                    self.received += len(chunk)
        except OSError as e:
            self.ended = type(e).__name__

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(35)


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in doc["sources"]}


def health(app: Any) -> int:
    return get(app, "/health").status


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[tuple[list[Path], list[Writer]]]:
    paths = [tmp_path / "rng0.fifo", tmp_path / "rng1.fifo"]
    writers = []
    try:
        for i, fifo in enumerate(paths):
            os.mkfifo(fifo)
            writers.append(start_writer(fifo, tmp_path / f"writer{i}.mode", "fast"))
        yield paths, writers
    finally:
        for w in writers:
            w.stop()


def test_an_idle_node_whose_fifo_sticks_turns_503_within_the_bound(
        tmp_path: Path, fifos: tuple[list[Path], list[Writer]]) -> None:
    (fifo, _), (writer, _) = fifos
    # A device claiming 7 bits per sample (a Quantis card's claim) gives only
    # 55 samples to each reseed: its buffer alone would last ~20 reseeds.
    app = start_appliance(tmp_path, "--source", f"device:{fifo},min-entropy=7", "--https", "none")
    try:
        # No client ever asks for a byte: the node seeds itself and is healthy.
        poll("/health turns 200", lambda: health(app) == 200, 30)
        # Idle, its source is still read (the health probe).
        read = status(app)["source"]["bytes_read"]
        poll("the idle source is read", lambda: status(app)["source"]["bytes_read"] > read + 2048, 10)

        writer.set_mode("stuck")
        poll("/health turns 503 with no client", lambda: health(app) == 503, IDLE_FAIL_BOUND)
        answer = get(app, "/health")
        assert names_state(answer, "failed"), answer.body
        doc = status(app)
        assert doc["state"] == "failed" and doc["source"]["state"] == "failed", doc["source"]
        assert doc["source"]["health_failures"]["rct"] > 0
        assert get(app, "/v1/random?bytes=16").status == 503

        # The writer recovers; the node is back, and the probe goes on.
        writer.set_mode("fast")
        poll("/health is 200 again", lambda: health(app) == 200, RECOVERY_BOUND)
        writer.set_mode("stuck")
        poll("/health turns 503 again", lambda: health(app) == 503, IDLE_FAIL_BOUND)
    finally:
        app.stop()


def test_the_fifo_that_sticks_shows_failed_while_the_stream_flows(
        tmp_path: Path, fifos: tuple[list[Path], list[Writer]]) -> None:
    (f1, f2), (w1, _) = fifos
    # The FIFO that sticks claims 7 bits per sample: it gives ~18 samples to
    # each reseed, so its buffer alone would last for many seconds of stream.
    app = start_appliance(tmp_path, "--source", f"device:{f1},min-entropy=7",
                          "--source", f"device:{f2},min-entropy=2",
                          "--source", "kernel", "--https", "none")
    stream = PacedReader(app.ports["stream"])
    try:
        poll("every source is ok", lambda: all(s["state"] == "ok" for s in status(app)["sources"]), 30)
        stream.start()
        poll("the stream flows", lambda: stream.received > 4_000_000, 30)

        w1.set_mode("stuck")
        poll("/v1/status shows the stuck FIFO failed",
             lambda: by_name(status(app))[str(f1)]["state"] == "failed", IDLE_FAIL_BOUND)
        doc = status(app)
        assert doc["state"] == "ok" and doc["healthy"], doc
        assert by_name(doc)[str(f1)]["health_failures"]["rct"] > 0
        assert by_name(doc)[str(f2)]["state"] == "ok" and by_name(doc)["kernel"]["state"] == "ok"
        before = stream.received
        poll("the stream keeps flowing", lambda: stream.received > before + 4_000_000, 30)
        assert stream.ended is None
    finally:
        stream.close()
        app.stop()


def test_idle_workers_fail_closed_through_the_failure_mark_within_the_bound(
        tmp_path: Path, fifos: tuple[list[Path], list[Writer]]) -> None:
    (fifo, _), (writer, _) = fifos
    app = start_appliance(tmp_path, "--source", f"device:{fifo},min-entropy=7", "--workers", "2",
                          "--https", "none", timeout=60)
    try:
        # Each /health answer comes from one of the workers, as the kernel picks.
        poll("every worker is healthy", lambda: all(health(app) == 200 for _ in range(6)), 60)
        writer.set_mode("stuck")
        # Each worker logs (through the parent) that it fails closed.
        poll("both workers fail closed", lambda: all(
            f"worker {i}: [entropy_appliance.core.pool.SeedPool#error] failing closed" in app.log()
            for i in (0, 1)), WORKERS_FAIL_BOUND, every=0.5)
        assert all(health(app) == 503 for _ in range(6))
        assert get(app, "/v1/random?bytes=16").status == 503
    finally:
        app.stop()
