"""
End to end, as a hostile client would try it: costly routes and stalled raw
readers against ``twistd entropy`` with default options.

- 10 parallel requests for the largest image (and one more than a peer's
  budget holds): the peak RSS of the server stays under the figure that
  ``web/media.py`` states, ``/health`` answers meanwhile, the peer past its
  budget gets 429, and the memory comes back afterwards.
- 1,000 raw-stream readers that never read (from 20 source addresses, under
  ``--peer-streams``): RSS stays under 150 MB, and falls back once they
  leave.

These are bounds with generous margins, not timings.  RSS is read from
``/proc/PID/status`` (``VmRSS`` sampled, and the kernel's own peak,
``VmHWM``).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.twistd_helpers import Appliance, start_appliance

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024

#: What web/media.py states for 10 parallel largest images with the defaults.
IMAGES_PEAK = 300 * MIB
#: The issue's goal for 1,000 stalled raw readers.
STALLED_PEAK = 150 * MIB

LARGEST = "/v1/image/random?width=4096&height=4096&mode=rgb"


def memory(app: Appliance) -> dict[str, int]:
    """VmRSS and VmHWM of the server, in bytes."""
    out = {}
    for line in Path(f"/proc/{app.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def settles(app: Appliance, below: int, within: float) -> int:
    """The RSS once it is under ``below``, or the last one read after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        rss = memory(app)["VmRSS"]
        if rss < below or time.monotonic() > deadline:
            return rss
        time.sleep(0.2)


def get(port: int, path: str, source: str = "127.0.0.1",
        timeout: float = 30.0) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def while_running(work: list[threading.Thread], probe: Callable[[], None]) -> None:
    """Run ``work`` to its end, calling ``probe`` meanwhile."""
    for t in work:
        t.start()
    while any(t.is_alive() for t in work):
        probe()
        time.sleep(0.05)
    for t in work:
        t.join()


def test_parallel_largest_images_are_bounded_and_health_answers(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, "--source", "kernel", "--https=none", "--stream=none")
    try:
        port = app.ports["http"]
        assert get(port, "/health")[0] == 200
        idle = memory(app)["VmRSS"]
        # Two addresses ask for three images each, and six for one: 10
        # within the budgets, and one past each of the first two's.
        sources = ["127.0.0.2"] * 3 + ["127.0.0.3"] * 3 + [f"127.0.0.{i}" for i in range(4, 10)]
        answers: list[tuple[str, int, bytes, dict[str, str]]] = []

        def fetch(source: str) -> None:
            status, body, headers = get(port, LARGEST, source)
            answers.append((source, status, body[:32], headers))

        health: list[float] = []
        peak = [0]
        asked = [0.0]

        def probe() -> None:
            peak[0] = max(peak[0], memory(app)["VmRSS"])
            if time.monotonic() - asked[0] >= 0.2:
                asked[0] = start = time.monotonic()
                assert get(port, "/health", timeout=10)[0] == 200
                health.append(time.monotonic() - start)

        while_running([threading.Thread(target=fetch, args=(s,)) for s in sources], probe)

        statuses = sorted(status for _, status, _, _ in answers)
        assert len(answers) == 12
        # One 429 per address that asked for three: the budget holds two.
        assert statuses.count(429) == 2, statuses
        for _, status, head, headers in answers:
            if status == 200:
                # A PNG of 4096 x 4096 pixels, 8-bit RGB (IHDR).
                assert head[:8] == b"\x89PNG\r\n\x1a\n"
                assert struct.unpack(">IIBB", head[16:26]) == (4096, 4096, 8, 2)
                assert int(headers["Content-Length"]) > 48 * MIB
            else:
                assert status in (429, 503), status
                assert headers["Content-Type"] == "application/problem+json"
                assert int(headers["Retry-After"]) >= 1
        assert statuses.count(200) >= 2, statuses
        hwm = memory(app)["VmHWM"]
        assert max(peak[0], hwm) < IMAGES_PEAK, (idle, peak[0], hwm)
        # /health kept answering while the images were made.
        assert len(health) >= 5 and max(health) < 2.0, health
        # The work's memory goes back to the system once it is done.
        assert settles(app, idle + 64 * MIB, within=5.0) < idle + 64 * MIB
    finally:
        app.stop()


def test_a_thousand_stalled_raw_readers_hold_little(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, "--source", "kernel", "--https=none", "--http=none")
    readers: list[socket.socket] = []
    try:
        port = app.ports["stream"]
        time.sleep(0.5)
        idle = memory(app)["VmRSS"]
        # 50 readers from each of 20 addresses: under --peer-streams (64).
        for i in range(1000):
            s = socket.socket()
            s.bind((f"127.0.0.{10 + i // 50}", 0))
            s.connect(("127.0.0.1", port))
            readers.append(s)
        # Every reader is served (the kernel holds what each one took)...
        for s in readers[::100]:
            assert s.recv(1)
        # ...and then none reads: the server writes until each socket is full.
        time.sleep(3.0)
        held = memory(app)
        assert held["VmRSS"] < STALLED_PEAK, (idle, held)
        assert held["VmHWM"] < STALLED_PEAK, (idle, held)
        for s in readers:
            s.close()
        readers.clear()
        # The memory comes back once they have left.
        after = settles(app, idle + 16 * MIB, within=10.0)
        assert after < idle + 16 * MIB, (idle, held, after)
    finally:
        for s in readers:
            s.close()
        app.stop()
