"""
End to end: the appliance under twistd reading two FIFOs (fed by
``tests/fifo_writer.py``) and the kernel at once.

- One FIFO turns stuck: the raw stream keeps flowing, ``/v1/status`` shows
  that source failed, and the seed's sources (``X-RNG-Source``) leave it out.
- With ``--min-sources 2``, the other FIFO turns stuck too: only the kernel
  is left, and the open stream ends within the bound the README states.
- With ``--workers 2`` and two FIFOs: no 16-byte block repeats over 50 MB,
  and each FIFO has exactly one reader, the parent.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_e2e_starvation import (
    STREAM_END_BOUND,
    StreamReader,
    Writer,
    get,
    poll,
    serving,
    start_writer,
    status,
)
from tests.twistd_helpers import Appliance, assert_new_blocks, read_raw_stream, start_appliance

pytestmark = pytest.mark.e2e


@dataclass
class Rig:
    """An appliance reading two FIFOs, each filled by its own writer, and the kernel."""

    app: Appliance
    fifos: list[Path]
    writers: list[Writer]


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in doc["sources"]}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    fifos = [tmp_path / "rng0.fifo", tmp_path / "rng1.fifo"]
    writers = []
    for i, fifo in enumerate(fifos):
        os.mkfifo(fifo)
        writers.append(start_writer(fifo, tmp_path / f"writer{i}.mode", "fast"))
    try:
        app = start_appliance(tmp_path, "--source", f"device:{fifos[0]}", "--source", f"device:{fifos[1]}",
                              "--source", "kernel", "--min-sources", "2",
                              "--reseed-interval", "1", "--https", "none")
        try:
            poll("the appliance serves", lambda: serving(app), 30)
            yield Rig(app, fifos, writers)
        finally:
            app.stop()
    finally:
        for w in writers:
            w.stop()


def test_one_stuck_fifo_is_left_out_and_a_second_one_ends_the_stream(rig: Rig) -> None:
    app = rig.app
    f0, f1 = (str(f) for f in rig.fifos)
    # All three sources give to the seed.
    poll("every source gives to the seed",
         lambda: all(s["state"] == "ok" and s["share"] > 0 for s in status(app)["sources"]), 30)
    assert get(app, "/v1/random?bytes=16").headers["x-rng-source"] == f"{f0}, {f1}, kernel"
    stream = StreamReader(app.ports["stream"]).start()
    try:
        poll("the stream flows", lambda: stream.received > 1_000_000, 30)

        rig.writers[0].set_mode("stuck")
        poll("/v1/status shows the stuck FIFO failed",
             lambda: by_name(status(app))[f0]["state"] == "failed", STREAM_END_BOUND)
        doc = status(app)
        assert doc["state"] == "ok" and doc["healthy"]
        assert by_name(doc)[f0]["health_failures"]["rct"] > 0
        assert by_name(doc)[f1]["state"] == "ok" and by_name(doc)["kernel"]["state"] == "ok"
        # Its samples leave the seed: the next reseeds come from the others.
        poll("the seed's sources leave the stuck FIFO out",
             lambda: get(app, "/v1/random?bytes=16").headers["x-rng-source"] == f"{f1}, kernel", 10)
        assert by_name(status(app))[f0]["share"] == 0
        # The stream keeps flowing.
        before = stream.received
        poll("the stream keeps flowing", lambda: stream.received > before + 10_000_000, 30)
        assert stream.ended is None
        assert f"entropy source {f0} left out; carrying on with 2 of 3 sources" in app.log()

        # The second FIFO sticks too: one source left, --min-sources 2: closed.
        rig.writers[1].set_mode("stuck")
        start = time.monotonic()
        assert stream.wait_ended(STREAM_END_BOUND), "the stream did not end"
        assert time.monotonic() - start <= STREAM_END_BOUND
        assert stream.ended in ("eof", "reset")
        doc = status(app)
        assert doc["state"] == "failed" and not doc["healthy"]
        assert "1 of 3 sources healthy, 2 needed" in doc["reason"]
        answer = get(app, "/v1/random?bytes=16")
        assert answer.status == 503
    finally:
        stream.close()


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def readers_of(path: str, exclude: set[int]) -> set[int]:
    """The pids (other than ``exclude``) with ``path`` open, from /proc/*/fd."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in exclude:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    pids.add(int(pid))
            except OSError:
                continue
    return pids


def test_two_workers_two_fifos_no_repeated_block_and_one_reader_each(tmp_path: Path) -> None:
    fifos = [tmp_path / "rng0.fifo", tmp_path / "rng1.fifo"]
    writers = []
    for i, fifo in enumerate(fifos):
        os.mkfifo(fifo)
        writers.append(start_writer(fifo, tmp_path / f"writer{i}.mode", "fast"))
    try:
        app = start_appliance(tmp_path, "--source", f"device:{fifos[0]}", "--source", f"device:{fifos[1]}",
                              "--workers", "2", "--https", "none")
        try:
            deadline = time.monotonic() + 30
            healthy: set[int] = set()
            while len(healthy) < 2 and time.monotonic() < deadline:
                try:
                    doc = _json(app.url("http", "/v1/status"))
                    if doc["healthy"]:
                        healthy.add(doc["worker"]["pid"])
                except OSError:
                    pass
                time.sleep(0.05)
            assert len(healthy) == 2, "the workers never became healthy"
            # Each worker names the parent's sources as the sources of its seed.
            assert doc["source"]["name"] == f"{fifos[0]}, {fifos[1]} (via parent)"
            seen: set[bytes] = set()
            total = 0
            for _ in range(50):
                want = 1_000_000
                assert_new_blocks(read_raw_stream(app.ports["stream"], want), seen)
                total += want
            assert total >= 50_000_000
            # Each FIFO has one reader: the parent; no worker opened it.
            writer_pids = {w.process.pid for w in writers}
            for fifo in fifos:
                assert readers_of(str(fifo), writer_pids) == {app.pid}, fifo
            assert healthy.isdisjoint(readers_of(str(fifos[0]), writer_pids) | {app.pid})
        finally:
            app.stop()
    finally:
        for w in writers:
            w.stop()
