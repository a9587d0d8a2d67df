"""
Benchmark: each hostile client of the issue "Safe to expose", beside a well-behaved client.

Run from the repo root::

    .venv/bin/python bench/bench_hostile.py [--seconds 10] [--rate 50] [--only 1,4,9]
        [--settle 5] [--stream-readers 1000] [--burst-interval 1] [--peer-rate 0] [--keep-logs]

For each row of the issue's table, and for a baseline with no attack before
and after them, it starts a fresh appliance (``python -m twisted entropy
--source kernel --peer-rate 0`` from this source tree, by
``tests/twistd_helpers.py``, on free 127.0.0.1 ports, with the soft
descriptor limit of the systemd unit, 16384).  Only the per-peer request
rate is off (``--peer-rate``), so that neither client is merely answered
429 and the other limits are what is measured; every other limit keeps its default (``--peer-connections``,
``--peer-streams``, ``--peer-media-rate``, ``--media-jobs``, ``--max-body``,
the header, body and idle timeouts), since the attacks are meant to meet
them.  Then, for ``--seconds``, it runs the attack from 127.0.0.1 (and
127.0.1-3.x where a row spreads over addresses) while a well-behaved client
on 127.0.0.2, in its own process, asks ``GET /v1/random?bytes=64`` over one
keep-alive HTTP/1.1 connection at ``--rate`` req/s, plus one request on a
new connection each second.  Its latencies are counted from when each
request was due, so that a stall also delays the requests queued behind it.

Rows: 1 h2 with a 2**31 window and 32 stalled 300 MB downloads on each of 3
connections; 2 h2 connection errors followed by more frames, 10 connections
at a time; 3 POSTs declaring 10 GB or sending endless chunked bodies, 10 of
each at a time, and one h2 POST declaring 10 GB a second; 4 ten parallel
4096x4096 images, one client per address, each retrying 0.2 s after a
refusal; 5 1,100 POSTs trickling a body byte every 5 s, and h2 connections
kept alive by PING or CONTINUATION frames or stalled at window 0; 6
``--stream-readers`` raw-stream readers that never read, over 16 addresses;
7 Rapid Reset, streams reset while written, and ``/%ff%fe``, over h2; 8
heads with 600 headers, 72 KB or 1 MB of headers, a 70 KB target, a bad
header, ``/%ff%fe`` and no Host, 4 clients; 9 bursts of 512 connections over
8 addresses, each asking one request, every ``--burst-interval`` seconds
(1 by default; 0 makes it a flood).

One line per row: the appliance's RSS (``VmRSS``, MB) when the attack
starts, its peak (sampled every 50 ms) and once the attacker has gone and
``--settle`` seconds have passed, its ``VmHWM``; its descriptors
(``/proc/PID/fd``) likewise; the CPU seconds it used during the attack
(utime + stime); the well-behaved client's keep-alive p50 and p99, its
slowest new-connection request, its errors; the tracebacks in the
appliance's log; and p99 over the mean of the two baselines' p99.
Figures are printed, never asserted.  The attack code is the e2e tests'
(``tests/test_e2e_hostile_h2.py`` and ``tests/test_e2e_hostile_http.py``)
where it can be imported.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _net import free_ports, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import h2.errors  # noqa: E402
import h2.exceptions  # noqa: E402
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PingFrame  # noqa: E402

from tests.test_e2e_hostile_h2 import BAD_FRAME, BIG_WINDOW, H2Client, frames, reset_mid_body  # noqa: E402
from tests.test_e2e_hostile_http import HEALTH, POLLEN, h2_post, open_many  # noqa: E402
from tests.twistd_helpers import Appliance, start_appliance  # noqa: E402

#: The well-behaved client's address; every attacker uses others.
GOOD = "127.0.0.2"
GOOD_REQUEST = b"GET /v1/random?bytes=64 HTTP/1.1\r\nHost: a\r\n\r\n"
GOOD_CLOSE = b"GET /v1/random?bytes=64 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

#: The soft descriptor limit of contrib/systemd/entropy-appliance.service.
UNIT_NOFILE = 16384

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# -- an HTTP/1.1 client that reads whole answers ---------------------------------------


class HttpConn:
    """One HTTP/1.1 connection that reads whole answers and throws their bodies away."""

    def __init__(self, port: int, source: str, deadline: float) -> None:
        self.deadline = deadline
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=self._left(),
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.scratch = bytearray(1 << 20)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline")
        return left

    def _fill(self) -> None:
        self.sock.settimeout(self._left())
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed by the server")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, rest = bytes(self.buf).partition(b"\r\n")
        self.buf = bytearray(rest)
        return line

    def _discard(self, n: int) -> None:
        taken = min(n, len(self.buf))
        del self.buf[:taken]
        n -= taken
        view = memoryview(self.scratch)
        while n > 0:
            self.sock.settimeout(self._left())
            got = self.sock.recv_into(view[:min(n, len(view))])
            if not got:
                raise ConnectionResetError("closed inside a body")
            n -= got

    def request(self, raw: bytes, deadline: float) -> int:
        """Send ``raw`` and read its whole answer by ``deadline``; its status."""
        self.deadline = deadline
        self.sock.settimeout(self._left())
        self.sock.sendall(raw)
        return self.response()

    def response(self) -> int:
        status_line = self._line()
        headers: dict[bytes, bytes] = {}
        while line := self._line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if b"content-length" in headers:
            self._discard(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while size := int(self._line().split(b";")[0], 16):
                self._discard(size + 2)
            while self._line():
                pass
        elif headers.get(b"connection", b"").lower() == b"close":
            with contextlib.suppress(ConnectionResetError):
                while True:
                    self.buf.clear()
                    self._fill()
        return status

    def close(self) -> None:
        self.sock.close()


# -- the well-behaved client ----------------------------------------------------------


def well_behaved(port: int, rate: float, limit: float, stop: Event, out: Connection) -> None:
    """
    Run in a process of its own, so that the attacker's Python work does not
    delay it: keep-alive requests at ``rate`` a second and one new connection
    a second, until ``stop`` is set or ``limit`` seconds pass; send back the
    latencies (None: an error) and the errors by kind.
    """
    keep: list[float | None] = []
    fresh: list[float | None] = []
    errors: Counter[str] = Counter()
    t0 = time.monotonic()
    end = t0 + limit

    def new_connections() -> None:
        for k in range(int(limit) + 1):
            due = t0 + k
            if stop.wait(max(0.0, due - time.monotonic())) or due > end:
                return
            try:
                c = HttpConn(port, GOOD, due + 5)
                try:
                    status = c.request(GOOD_CLOSE, due + 5)
                finally:
                    c.close()
            except (OSError, ValueError, IndexError) as e:
                errors[f"new connection: {type(e).__name__}"] += 1
                fresh.append(None)
                continue
            if status != 200:
                errors[f"new connection: {status}"] += 1
                fresh.append(None)
            else:
                fresh.append(time.monotonic() - due)

    thread = threading.Thread(target=new_connections)
    thread.start()
    conn: HttpConn | None = None
    for i in range(int(limit * rate) + 1):
        due = t0 + i / rate
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        try:
            if conn is None:
                conn = HttpConn(port, GOOD, due + 5)
            status = conn.request(GOOD_REQUEST, due + 5)
        except (OSError, ValueError, IndexError) as e:
            errors[f"keep-alive: {type(e).__name__}"] += 1
            keep.append(None)
            if conn is not None:
                conn.close()
            conn = None
            continue
        if status != 200:
            errors[f"keep-alive: {status}"] += 1
            keep.append(None)
        else:
            keep.append(time.monotonic() - due)
    if conn is not None:
        conn.close()
    thread.join()
    out.send((keep, fresh, dict(errors)))


# -- what the appliance uses ----------------------------------------------------------


def status_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of ``pid``, KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


class Sampler(threading.Thread):
    """The peak VmRSS and descriptors of a process, sampled every 50 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.halt = threading.Event()
        self.rss = self.fds = 0

    def run(self) -> None:
        for _ in range(200_000):
            try:
                self.rss = max(self.rss, status_kib(self.pid)[0])
                self.fds = max(self.fds, fd_count(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            if self.halt.wait(0.05):
                return


# -- the attacks: each runs until ``until``, closes what it opened, and says what it did ------


def sleep_until(until: float) -> None:
    time.sleep(max(0.0, until - time.monotonic()))


def close_all(clients: list[H2Client]) -> None:
    for c in clients:
        c.close()


def attack_none(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    sleep_until(until)
    return "no attack"


def attack_big_window(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 1: huge windows, 300 MB asked on every stream, nothing read."""
    clients: list[H2Client] = []
    try:
        for _ in range(3):
            c = H2Client(app, window=BIG_WINDOW, rcvbuf=4096)
            clients.append(c)
            for _ in range(32):
                c.get("/v1/random?bytes=300000000")
            c.flush()
        sleep_until(until)
        # A glimpse only, to show the streams were served, not refused.
        got = sum(c.read(0.2, limit=65536) for c in clients)
    finally:
        close_all(clients)
    return f"3 connections x 32 streams of 300 MB, window 2**31-1, not read; {got} bytes there at the end"


def attack_after_error(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 2: a connection error, then frames again and again; a new connection when one closes."""
    junk = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(100))
    live: list[H2Client] = []
    stalled: set[H2Client] = set()
    opened = failed = sent = goaways = 0
    # The server closes each about 2 s after its error, so connections come and go by hundreds.
    most = int(1000 * ns.seconds) + 10
    try:
        while time.monotonic() < until:
            while len(live) < 10 and opened < most:
                opened += 1
                try:
                    c = H2Client(app)
                    c.sock.sendall(BAD_FRAME)
                except (OSError, AssertionError):
                    failed += 1
                    break
                live.append(c)
            for c in list(live):
                if c not in stalled:
                    c.sock.settimeout(0.05)
                    try:
                        c.sock.sendall(junk)
                        sent += len(junk)
                    except TimeoutError:
                        stalled.add(c)  # no longer read: wait for the close
                    except OSError:
                        c.closed = True
                if not c.closed:
                    c.read(0.005)
                if c.closed:
                    goaways += sum(isinstance(f, GoAwayFrame) for f in frames(bytes(c.received)))
                    c.close()
                    live.remove(c)
                    stalled.discard(c)
            time.sleep(0.01 if live else 0.1)
    finally:
        close_all(live)
    return (f"{opened} connections ({failed} failed), {sent / 1e6:.1f} MB of frames sent after the "
            f"errors; {goaways} GOAWAYs over the {opened - failed - len(live)} the server closed")


HUGE_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000000\r\n\r\n"
CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
PLAIN_BODY = b"x" * 65536
CHUNKED_BODY = b"10000\r\n" + b"a" * 65536 + b"\r\n"


def attack_bodies(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 3: bodies of 10 GB and endless chunked ones, 10 of each, reopened when cut; h2 too."""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, memoryview] = {}
    opened = cut = sent = answered_413 = 0
    # Cut connections are reopened, hundreds a second: the cap only bounds a runaway.
    most = int(1000 * ns.seconds) + 20
    h2_tries: Counter[str] = Counter()
    next_h2 = time.monotonic()

    def open_one(head: bytes, body: bytes) -> None:
        nonlocal opened
        opened += 1
        s = socket.create_connection(("127.0.0.1", app.ports["http"]), timeout=5,
                                     source_address=("127.0.0.1", 0))
        s.sendall(head)
        s.setblocking(False)
        pending[s] = memoryview(body)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, body)

    def drop(s: socket.socket) -> None:
        nonlocal cut
        cut += 1
        sel.unregister(s)
        del pending[s]
        s.close()

    try:
        for i in range(20):
            open_one(*((HUGE_HEAD, PLAIN_BODY) if i % 2 else (CHUNKED_HEAD, CHUNKED_BODY)))
        while time.monotonic() < until:
            for key, events in sel.select(0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                body: bytes = key.data
                try:
                    if events & selectors.EVENT_READ:
                        data = s.recv(65536)
                        if not data:
                            raise ConnectionResetError
                        answered_413 += data.count(b" 413 ")
                    if events & selectors.EVENT_WRITE:
                        n = s.send(pending[s])
                        sent += n
                        pending[s] = pending[s][n:] or memoryview(body)
                except BlockingIOError:
                    continue
                except OSError:
                    drop(s)
                    if opened < most:
                        head = CHUNKED_HEAD if body is CHUNKED_BODY else HUGE_HEAD
                        with contextlib.suppress(OSError):
                            open_one(head, body)
            if time.monotonic() >= next_h2 and sum(h2_tries.values()) < 100:
                next_h2 = time.monotonic() + 1
                try:
                    reset, status = h2_post(app, content_length=10_000_000_000, total=4 * 1024 * 1024)
                    h2_tries["reset" if reset else str(status)] += 1
                except (OSError, AssertionError, h2.exceptions.H2Error) as e:
                    h2_tries[type(e).__name__] += 1
    finally:
        for s in list(pending):
            s.close()
        sel.close()
    h2_seen = ", ".join(f"{k} x{v}" for k, v in sorted(h2_tries.items()))
    return (f"{opened} connections, {sent / 1e6:.1f} MB of body sent, {answered_413} x 413, {cut} cut; "
            f"h2 10 GB POSTs: {h2_seen}")


IMAGE = b"GET /v1/image/random?width=4096&height=4096 HTTP/1.1\r\nHost: a\r\n\r\n"


def attack_images(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 4: ten clients, one address each, asking the largest image again and again."""
    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def client(source: str) -> None:
        conn: HttpConn | None = None
        for _ in range(10_000):
            if time.monotonic() >= until:
                break
            try:
                if conn is None:
                    conn = HttpConn(app.ports["http"], source, until)
                status = conn.request(IMAGE, until)
                label = str(status)
            except (OSError, ValueError, IndexError) as e:
                label = "cut at the end" if time.monotonic() >= until else type(e).__name__
                status = 0
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                statuses[label] += 1
            if status != 200:
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(f"127.0.3.{i}",)) for i in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "10 clients on 127.0.3.1-10: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()))


SLOW_HEAD = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
             b"Content-Length: 1000\r\n\r\nc")


def attack_slow(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 5: slow bodies, and h2 connections kept alive by frames that are not progress."""
    h2s: list[H2Client] = []
    slow: list[socket.socket] = []
    try:
        # The h2 clients first: the slow bodies then take what --peer-connections leaves.
        pinger = H2Client(app)
        h2s.append(pinger)
        continuing = H2Client(app)
        h2s.append(continuing)
        continuing.read(0.5)  # its SETTINGS acknowledged: nothing may come inside a head
        continuing.flush(HeadersFrame(1, data=b"\x82", flags=[]).serialize())
        stalled = H2Client(app, window=0)
        h2s.append(stalled)
        stalled.get("/v1/random?bytes=1000000")
        stalled.flush()
        slow = open_many(app, 1100, SLOW_HEAD, ["127.0.0.1"])
        next_byte = time.monotonic() + 5
        trickled = 0
        while time.monotonic() < until:
            for c in h2s:
                if c.closed:
                    continue
                with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
                    if c is continuing:
                        c.flush(ContinuationFrame(1, data=b"\x86", flags=[]).serialize())
                    else:
                        c.conn.ping(b"12345678")
                        c.flush()
                c.read(0.01)
            if time.monotonic() >= next_byte:
                next_byte += 5
                for s in list(slow):
                    try:
                        s.send(b"c")
                        trickled += 1
                    except OSError:
                        s.close()
                        slow.remove(s)
            time.sleep(0.3)
        still = sum(not c.closed for c in h2s)
    finally:
        close_all(h2s)
        for s in slow:
            s.close()
    return (f"1100 slow POSTs, {len(slow)} still open at the end, {trickled} body bytes trickled; "
            f"h2 PING, CONTINUATION and window-0 connections: {still} of 3 still open")


def attack_stream_readers(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 6: raw-stream readers that never read, over 16 addresses."""
    socks: list[socket.socket] = []
    try:
        for i in range(ns.stream_readers):
            s = socket.socket()
            socks.append(s)
            # Small before connect, so that the kernel holds little on our side either.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((f"127.0.1.{i % 16 + 1}", 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", app.ports["stream"]))
            if time.monotonic() >= until:
                break
        sleep_until(until)
        # Open still: the server has not closed them (no end of file waiting).
        poller = selectors.DefaultSelector()
        for s in socks:
            poller.register(s, selectors.EVENT_READ)
        ready = {key.fileobj for key, _ in poller.select(0)}
        poller.close()
        closed = 0
        for s in ready:
            assert isinstance(s, socket.socket)
            try:
                closed += s.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
    finally:
        for s in socks:
            s.close()
    return (f"{len(socks)} readers on 127.0.1.1-16, never reading; {closed} closed by the server; "
            f"{len(socks) - len(ready)} never sent a byte")


def attack_resets(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 7: Rapid Reset, streams reset while written, and a path that is not UTF-8, in rounds."""
    rounds = calm = 0
    statuses: Counter[bytes] = Counter()
    while time.monotonic() < until and rounds < 1000:
        rounds += 1
        flood: H2Client | None = None
        c: H2Client | None = None
        try:
            flood = H2Client(app, window=BIG_WINDOW)
            with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
                for _ in range(12):
                    for _ in range(100):
                        sid = flood.get("/v1/random?bytes=1000000")
                        flood.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    flood.flush()
                    flood.read(0.05)
            flood.read_until_closed(min(3.0, max(0.0, until - time.monotonic())))
            calm += h2.errors.ErrorCodes.ENHANCE_YOUR_CALM in flood.goaways
            flood.close()
            c = H2Client(app, window=BIG_WINDOW)
            reset_mid_body(c, rounds=5)
            bad = c.get("/%ff%fe")
            c.flush()
            deadline = time.monotonic() + 2
            while bad not in c.ended and not c.closed and time.monotonic() < deadline:
                c.read(0.2)
            statuses[c.status.get(bad, b"none")] += 1
        except (OSError, AssertionError, h2.exceptions.H2Error):
            statuses[b"failed"] += 1
        finally:
            for x in (flood, c):
                if x is not None:
                    x.close()
    seen = ", ".join(f"{k.decode()} x{v}" for k, v in sorted(statuses.items()))
    return (f"{rounds} rounds of 1200 Rapid Resets + 25 streams reset mid-body; "
            f"{calm} ENHANCE_YOUR_CALM; /%ff%fe: {seen}")


HEADS = [
    HEALTH + b"".join(b"X-H%d: v\r\n" % i for i in range(600)) + b"\r\n",
    HEALTH + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(9)) + b"\r\n",
    HEALTH + b"X-Big: " + b"v" * 1_000_000 + b"\r\n\r\n",
    b"GET /?challenge=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n",
    b"GET /%ff%fe HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /health HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 138\r\n\r\n"
    + POLLEN,
]


def attack_heads(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 8: heads that cannot be read, each on a new connection, 4 clients."""
    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        for i in range(100_000):
            if time.monotonic() >= until:
                return
            try:
                c = HttpConn(app.ports["http"], "127.0.0.1", until)
            except OSError as e:
                label = type(e).__name__
            else:
                try:
                    label = str(c.request(HEADS[i % len(HEADS)], until))
                except (OSError, ValueError, IndexError) as e:
                    label = "cut at the end" if time.monotonic() >= until else type(e).__name__
                finally:
                    c.close()
            with lock:
                statuses[label] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()))


def burst(port: int, n: int, sources: list[str], deadline: float) -> tuple[int, int, int]:
    """``n`` connections at once, each asking one request: (answered, failed, connects over 0.5 s)."""
    sel = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    answered = failed = slow = 0
    try:
        for i in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.bind((sources[i % len(sources)], 0))
            s.connect_ex(("127.0.0.1", port))
            started[s] = time.monotonic()
            sel.register(s, selectors.EVENT_WRITE, b"")
        while started and time.monotonic() < deadline:
            for key, events in sel.select(0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    if events & selectors.EVENT_WRITE:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, os.strerror(err))
                        slow += time.monotonic() - started[s] > 0.5
                        s.send(GOOD_CLOSE)
                        sel.modify(s, selectors.EVENT_READ, b"")
                        continue
                    data = s.recv(65536)
                    if data:
                        sel.modify(s, selectors.EVENT_READ, key.data + data[:16])
                        continue
                    answered += key.data.startswith(b"HTTP/1.1 200")
                    failed += not key.data.startswith(b"HTTP/1.1 200")
                except OSError:
                    failed += 1
                sel.unregister(s)
                del started[s]
                s.close()
    finally:
        failed += len(started)
        for s in started:
            s.close()
        sel.close()
    return answered, failed, slow


def attack_bursts(app: Appliance, until: float, ns: argparse.Namespace) -> str:
    """Row 9: a burst of 512 connections over 8 addresses every ``--burst-interval`` seconds."""
    sources = [f"127.0.2.{i}" for i in range(1, 9)]
    bursts = answered = failed = slow = 0
    next_burst = time.monotonic()
    while time.monotonic() < until and bursts < 1000:
        bursts += 1
        a, f, s = burst(app.ports["http"], 512, sources, min(until, time.monotonic() + 3))
        answered, failed, slow = answered + a, failed + f, slow + s
        next_burst += ns.burst_interval
        time.sleep(max(0.0, min(until, next_burst) - time.monotonic()))
    return (f"{bursts} bursts of 512 on 127.0.2.1-8, one every {ns.burst_interval:g} s: {answered} "
            f"answered 200, {failed} not, {slow} connects over 0.5 s")


@dataclass
class Row:
    """One line of the table."""

    key: str
    label: str
    attack: Callable[[Appliance, float, argparse.Namespace], str]
    figures: dict[str, float | None] = field(default_factory=dict)
    note: str = ""


def rows() -> list[Row]:
    return [
        Row("-", "baseline (no attack)", attack_none),
        Row("1", "h2 2^31 window, stalled 300 MB", attack_big_window),
        Row("2", "h2 error, then more frames", attack_after_error),
        Row("3", "10 GB / endless POST bodies", attack_bodies),
        Row("4", "10 parallel 4096x4096 images", attack_images),
        Row("5", "slow bodies, h2 keep-alive", attack_slow),
        Row("6", "stalled raw-stream readers", attack_stream_readers),
        Row("7", "h2 resets, /%ff%fe", attack_resets),
        Row("8", "huge/many heads, no Host", attack_heads),
        Row("9", "connection bursts", attack_bursts),
        Row("-", "baseline again", attack_none),
    ]


# -- one row --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start(home: Path, ns: argparse.Namespace) -> Appliance:
    """A fresh appliance in ``home``, with the unit's descriptor limit."""
    for _ in range(5):
        # Our own distinct ports: picked one at a time, after thousands of
        # connections, the kernel has handed out one port for all three.
        ports = dict(zip(("http", "https", "stream"), free_ports(3), strict=True))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(UNIT_NOFILE, hard), hard))
        try:
            app = start_appliance(home, "--source", "kernel", "--peer-rate", str(ns.peer_rate),
                                  f"--http=tcp:{ports['http']}:interface=127.0.0.1",
                                  f"--https=ssl:{ports['https']}:interface=127.0.0.1",
                                  f"--stream=tcp:{ports['stream']}:interface=127.0.0.1")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        app.ports.update(ports)
        for port in ports.values():
            wait_port(port)
        # A listener that cannot bind is logged, and the appliance runs on without it.
        if "CannotListenError" not in app.log():
            break
        app.stop(20)
    else:
        raise RuntimeError(f"the appliance could not listen:\n{app.log()}")
    time.sleep(1.5)  # seeded, and the first requests' imports done
    deadline = time.monotonic() + 10
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError, IndexError):
            c = HttpConn(app.ports["http"], GOOD, deadline)
            c.request(GOOD_CLOSE, deadline)
            c.close()
    return app


def run_row(row: Row, home: Path, ns: argparse.Namespace) -> None:
    home.mkdir()
    app = start(home, ns)
    pid = app.pid
    try:
        rss0 = status_kib(pid)[0]
        fd0 = fd_count(pid)
        ctx = multiprocessing.get_context("fork")
        stop = ctx.Event()
        receive, send = ctx.Pipe(duplex=False)
        # Forked before any attack socket exists, so that it holds none of them.
        client = ctx.Process(target=well_behaved, args=(app.ports["http"], ns.rate, ns.seconds + 120,
                                                        stop, send))
        client.start()
        sampler = Sampler(pid)
        sampler.start()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        try:
            row.note = row.attack(app, t0 + ns.seconds, ns)
        except Exception as e:  # noqa: BLE001 -- one failed attack must not lose the other rows
            row.note = f"the attack failed: {e!r}"
        finally:
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            stop.set()
            sampler.halt.set()
            result = receive.recv() if receive.poll(30) else ([], [], {"client": 1})
            client.join(10)
            if client.is_alive():
                client.kill()
            sampler.join()
        deadline = time.monotonic() + ns.settle
        while fd_count(pid) > fd0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
        rss_end, hwm = status_kib(pid)
        keep, fresh, errors = result
        ok = [x for x in keep if x is not None]
        row.figures = {
            "rss0": rss0 / 1024, "rss_peak": sampler.rss / 1024, "rss_end": rss_end / 1024,
            "hwm": hwm / 1024, "fd0": fd0, "fd_peak": sampler.fds, "fd_end": fd_count(pid),
            "cpu": cpu1 - cpu0, "p50": percentile(ok, 0.5), "p99": percentile(ok, 0.99),
            "new_max": max((x for x in fresh if x is not None), default=None),
            "errors": sum(errors.values()), "requests": len(keep) + len(fresh),
        }
        if errors:
            row.note += "; well-behaved client's errors: " + ", ".join(
                f"{k} x{v}" for k, v in sorted(errors.items()))
        if t1 - t0 > ns.seconds + 0.5:
            row.note += f"; the attack took {t1 - t0:.1f} s"
    finally:
        alive = app.process.poll() is None
        try:
            app.stop(20)
        except AssertionError:
            row.note += f"; appliance did not stop cleanly (exit {app.process.returncode})"
        if not alive:
            row.note += f"; APPLIANCE EXITED DURING THE ROW ({app.process.returncode})"
        row.figures["tb"] = app.log().count("Traceback")


def cell(value: float | None, width: int, digits: int = 0) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def print_table(done: list[Row]) -> None:
    print(f"{'#':2}{'attack':32}{'RSS MB start':>13}{'peak':>6}{'end':>6}{'HWM':>6}"
          f"{'fds start':>10}{'peak':>6}{'end':>6}{'CPU s':>7}"
          f"{'p50 ms':>8}{'p99 ms':>8}{'conn max':>9}{'errors':>7}{'tb':>6}{'p99/base':>9}")
    baselines = [p for r in done if r.key == "-" and (p := r.figures.get("p99")) is not None]
    base = sum(baselines) / len(baselines) if baselines else None
    for r in done:
        f = r.figures
        p99 = f.get("p99")
        ms = {k: None if (v := f.get(k)) is None else 1000 * v for k in ("p50", "p99", "new_max")}
        print(f"{r.key:2}{r.label:32}{cell(f.get('rss0'), 13)}{cell(f.get('rss_peak'), 6)}"
              f"{cell(f.get('rss_end'), 6)}{cell(f.get('hwm'), 6)}{cell(f.get('fd0'), 10)}"
              f"{cell(f.get('fd_peak'), 6)}{cell(f.get('fd_end'), 6)}{cell(f.get('cpu'), 7, 2)}"
              f"{cell(ms['p50'], 8, 2)}{cell(ms['p99'], 8, 2)}{cell(ms['new_max'], 9, 1)}"
              f"{cell(f.get('errors'), 7)}{cell(f.get('tb'), 6)}"
              f"{cell(p99 / base if p99 and base else None, 9, 2)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each attack's length")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="the well-behaved client's keep-alive requests a second")
    parser.add_argument("--only", default=None, metavar="ROWS",
                        help="comma-separated rows to run, e.g. 1,4,9 (the baselines always run)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds the appliance gets to let go once the attacker has gone")
    parser.add_argument("--stream-readers", type=int, default=1000, help="row 6's stalled readers")
    parser.add_argument("--burst-interval", type=float, default=1.0,
                        help="seconds from one burst of row 9 to the next (0: back to back, a flood)")
    parser.add_argument("--peer-rate", type=int, default=0,
                        help="the appliance's --peer-rate (default 0: off)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the appliances' directories")
    ns = parser.parse_args()
    wanted = None if ns.only is None else set(ns.only.split(","))
    # Row 5 and 6 and the bursts hold over a thousand sockets of their own.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench_hostile: {ns.seconds:g} s per attack; well-behaved client on {GOOD}: "
          f"{ns.rate:g} req/s keep-alive GET /v1/random?bytes=64 + 1 new connection/s; "
          f"host CPUs {os.cpu_count()}; load average {load}")
    print(f"appliance: python -m twisted entropy --source kernel --peer-rate {ns.peer_rate} "
          f"(every other limit at its default), fresh for each row, soft fd limit {UNIT_NOFILE}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_hostile."))
    done: list[Row] = []
    try:
        for i, row in enumerate(rows()):
            if wanted is not None and row.key != "-" and row.key not in wanted:
                continue
            run_row(row, tmp / f"{i:02d}-{row.key}", ns)
            done.append(row)
            print(f"  {row.key} {row.label}: done (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        print()
        print_table(done)
        print()
        for r in done:
            print(f"{r.key} {r.label}: {r.note}")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average at the end: {load}")
        if ns.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
