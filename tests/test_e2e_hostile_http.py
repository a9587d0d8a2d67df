"""
End to end: one hostile HTTP client at a time against ``twist entropy``.

Each test starts the appliance as a subprocess on loopback, runs one attack
of the issue "Safe to expose" with a bounded number of connections and
bytes, and asserts a bound with a wide margin: the resident set size
(``VmRSS``), the open descriptors of ``/proc/PID/fd`` and the temporary
files among them, what the client reads back, and a log free of
tracebacks.  Bounds, never timings: a deadline only stops a broken server
from hanging the run.

- Request bodies (row 3): a ``Content-Length`` of 10 GB gets 413 before a
  byte of the body is read, an endless chunked body is cut at
  ``--max-body``, and neither is spooled to a file; the same over HTTP/2.
- Slow bodies (row 5): 1,100 slow POSTs from one address hold at most
  ``--peer-connections`` descriptors and are cut at ``--body-timeout``,
  while another address is served; with few descriptors left, connections
  past the budget are refused, logged once, and service resumes.
- Heads that cannot be read (row 8): 431, 414 and 400, as problem+json.
- The listen backlog (row 9), as ``ss -ltn`` shows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from tests.twistd_helpers import Appliance, start_appliance

pytestmark = pytest.mark.e2e

#: Options for an appliance that serves HTTP only, from the kernel.
PLAIN = ("--source", "kernel", "--stream", "none", "--https", "none")

#: How much the server may grow during an attack (buffers, Python's arenas).
RSS_SLACK_KIB = 32 * 1024


# -- helpers ----------------------------------------------------------------------


@contextlib.contextmanager
def appliance(tmp_path: Path, *args: str, nofile: int | None = None,
              ports: dict[str, str] | None = None) -> Iterator[Appliance]:
    """An appliance for one test; ``nofile``: start it with that soft descriptor limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    try:
        app = start_appliance(tmp_path, *args, ports=ports)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield app
    finally:
        app.stop()
    assert "Traceback" not in app.log(), app.log()


def fds(app: Appliance) -> list[str]:
    """What each open descriptor of the server points at."""
    out = []
    for fd in os.listdir(f"/proc/{app.pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.append(os.readlink(f"/proc/{app.pid}/fd/{fd}"))
    return out


def spooled(app: Appliance) -> list[str]:
    """Open files of the server that are deleted or temporary (its own log aside): a spooled body."""
    tmp = tempfile.gettempdir()
    return [t for t in fds(app)
            if t.endswith("(deleted)") or (t.startswith(tmp) and not t.startswith(str(app.cwd)))]


def raise_own_fd_limit(need: int) -> None:
    """Let this test process open ``need`` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, 4096)), hard))


def connect(app: Appliance, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", app.ports["http"]), timeout=10,
                                 source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length: (status, headers, body)."""
    s.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response head: {raw!r}")
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def problem(response: tuple[int, dict[str, str], bytes]) -> dict[str, object]:
    status, headers, body = response
    assert headers["content-type"] == "application/problem+json", response
    doc: dict[str, object] = json.loads(body)
    assert doc["status"] == status
    return doc


def send_until_cut(s: socket.socket, chunk: bytes, limit: int) -> int:
    """Send ``chunk`` again and again until the server cuts the connection; the bytes sent."""
    s.setblocking(False)
    poller = select.poll()
    poller.register(s, select.POLLOUT)
    sent = 0
    deadline = time.monotonic() + 30
    while sent < limit and time.monotonic() < deadline:
        if not poller.poll(500):
            continue
        try:
            sent += s.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return sent
        except BlockingIOError:
            continue
    raise AssertionError(f"the server took {sent} bytes without cutting the connection")


def get(app: Appliance, path: str, source: str = "127.0.0.1") -> int:
    with connect(app, source) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        return read_response(s)[0]


POLLEN = b"challenge=" + b"ab" * 64


def post_pollen(app: Appliance, source: str = "127.0.0.1") -> int:
    with connect(app, source) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(POLLEN), POLLEN))
        return read_response(s)[0]


# -- row 3: request bodies ----------------------------------------------------------


def test_huge_and_endless_bodies_get_413_are_cut_and_never_spooled(tmp_path: Path) -> None:
    with appliance(tmp_path, "--source", "kernel", "--stream", "none") as app:
        rss0 = app.rss_kib()
        # A 10 GB Content-Length: 413 before the body, then the body is
        # discarded and the connection closes after at most 1 MiB of it.
        huge = [connect(app) for _ in range(10)]
        for s in huge:
            s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000000\r\n\r\n")
        for s in huge:
            doc = problem(read_response(s))
            assert doc["status"] == 413 and "10000000000 bytes" in str(doc["detail"])
        sent = [send_until_cut(s, b"x" * 65536, 64 * 1024 * 1024) for s in huge]
        # 1 MiB discarded, plus what the two sockets' buffers held.
        assert max(sent) < 16 * 1024 * 1024, sent
        print(f"10 GB Content-Length: 413, then cut after at most {max(sent)} bytes sent")
        # An endless chunked body: cut at --max-body with a 413, then closed.
        endless = [connect(app) for _ in range(10)]
        for s in endless:
            s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            s.sendall(b"10000\r\n" + b"a" * 65536 + b"\r\n" + b"1\r\na\r\n")
        for s in endless:
            assert problem(read_response(s))["status"] == 413
        sent = [send_until_cut(s, b"1000\r\n" + b"a" * 4096 + b"\r\n", 64 * 1024 * 1024) for s in endless]
        assert max(sent) < 16 * 1024 * 1024, sent
        print(f"endless chunked body: 413, then cut after at most {max(sent)} bytes sent")
        assert spooled(app) == []
        for s in huge + endless:
            s.close()
        # The same over HTTP/2: no file, and the stream is cut.
        cut, answered = h2_post(app, content_length=10_000_000_000, total=32 * 1024 * 1024)
        assert cut or answered == 413
        print(f"HTTP/2, 10 GB declared: stream reset {cut}, status {answered}")
        cut, answered = h2_post(app, content_length=100_000, total=100_000)
        assert answered == 413
        assert spooled(app) == []
        print(f"RSS {rss0} -> {app.rss_kib()} KiB; descriptors {len(fds(app))}, none spooled")
        assert app.rss_kib() - rss0 < RSS_SLACK_KIB
        assert post_pollen(app) == 200


def h2_post(app: Appliance, content_length: int, total: int) -> tuple[bool, int | None]:
    """
    POST ``total`` bytes of body on one HTTP/2 stream that declares
    ``content_length``; (the stream was reset, the status answered).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", app.ports["https"]), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":path", "/"), (":scheme", "https"),
                              (":authority", "localhost"), ("content-length", str(content_length)),
                              ("content-type", "application/x-www-form-urlencoded")])
        s.sendall(conn.data_to_send())
        status: int | None = None
        reset = False
        sent = 0
        s.settimeout(10)

        def take(data: bytes) -> None:
            nonlocal status, reset
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamReset):
                    reset = True
                elif isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])

        while sent < total and not reset and status is None:
            n = min(16384, total - sent, conn.local_flow_control_window(1))
            if n > 0:
                conn.send_data(1, b"x" * n, end_stream=sent + n == total)
                sent += n
                s.sendall(conn.data_to_send())
            readable, _, _ = select.select([s], [], [], 0 if n > 0 else 5)
            if readable or n <= 0:
                data = s.recv(65536)
                if not data:
                    break
                take(data)
                s.sendall(conn.data_to_send())
        while status is None and not reset:
            data = s.recv(65536)
            if not data:
                break
            take(data)
        assert sent < total or status is not None or reset
        return reset, status


# -- row 5: slow bodies, and descriptors --------------------------------------------


def open_many(app: Appliance, n: int, first_bytes: bytes, sources: list[str]) -> list[socket.socket]:
    """``n`` connections spread over ``sources``, each sending ``first_bytes`` then nothing more."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.bind((sources[i % len(sources)], 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", app.ports["http"]))
        socks.append(s)
    pending = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(1000):
            with contextlib.suppress(OSError):  # refused: accepted and closed at once
                pending[fd].send(first_bytes)
            poller.unregister(fd)
            del pending[fd]
    return socks


def peak_fds(app: Appliance, seconds: float) -> int:
    """The most descriptors the server has open, sampled for ``seconds``."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, len(fds(app)))
        time.sleep(0.02)
    return peak


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_slow_bodies_from_one_address_hold_few_descriptors_and_are_cut(tmp_path: Path) -> None:
    """1,100 POSTs whose bodies never come, from one address: others are served meanwhile."""
    raise_own_fd_limit(1300)
    with appliance(tmp_path, *PLAIN, "--peer-connections", "50", "--body-timeout", "3",
                   "--peer-rate", "0") as app:
        fd0, rss0 = len(fds(app)), app.rss_kib()
        head = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 1000\r\n\r\nc")
        attack = open_many(app, 1100, head, ["127.0.0.1"])
        try:
            peak = peak_fds(app, 1.0)
            assert peak <= fd0 + 50 + 10, (fd0, peak)
            # Another client is served while the attacker holds its 50.
            assert get(app, "/health", "127.0.0.2") == 200
            assert post_pollen(app, "127.0.0.2") == 200
            # The held bodies are cut at the deadline: the descriptors come back.
            assert wait_for(lambda: len(fds(app)) <= fd0 + 2, 15), len(fds(app))
            assert post_pollen(app) == 200  # and the attacker's address is served again
            print(f"1,100 slow bodies: descriptors {fd0} -> at most {peak} -> {len(fds(app))}; "
                  f"RSS {rss0} -> {app.rss_kib()} KiB")
            assert app.rss_kib() - rss0 < RSS_SLACK_KIB
        finally:
            for s in attack:
                s.close()
        log = app.log()
        assert log.count("refused a connection from 127.0.0.1") == 1, log
        assert "127.0.0.1 has no connection left" in log
        assert "its request body took longer than 3" in log


def test_a_descriptor_shortage_refuses_new_connections_logged_once(tmp_path: Path) -> None:
    """
    With 256 descriptors, 400 slow heads from 20 addresses: past the budget
    (256 less 64) their connections are refused at once, logged once; a
    client already connected is served throughout, and so is a newcomer
    (the budget's reserve), and everyone once the slow heads are cut.
    """
    with appliance(tmp_path, *PLAIN, "--peer-connections", "0", "--header-timeout", "6",
                   "--peer-rate", "0", nofile=256) as app:
        raise_own_fd_limit(1000)
        fd0 = len(fds(app))
        keep = connect(app, "127.0.0.2")
        ask = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
        keep.sendall(ask)
        assert read_response(keep)[0] == 200
        attack = open_many(app, 400, b"GET /health HTTP/1.1\r\n", [f"127.0.1.{i}" for i in range(1, 21)])
        try:
            peak = max(peak_fds(app, 1.0), len(fds(app)))
            # The budget is 192 connections, the last 24 kept for newcomers.
            # The floor allows a few descriptors of slack: what else the
            # process holds (the source, pipes, the log) moves under load,
            # and a sample may fall between an accept and a refusal.
            assert 192 - 24 - 8 <= peak - fd0 and peak < 256, (fd0, peak)
            keep.sendall(ask)
            assert read_response(keep)[0] == 200
            assert get(app, "/health", "127.0.0.3") == 200
            assert "accepting new connections again" not in app.log()  # the attack still holds
            assert wait_for(lambda: "accepting new connections again" in app.log(), 15), app.log()
            assert get(app, "/health", "127.0.0.3") == 200
            print(f"400 slow heads with 256 descriptors: at most {peak} open")
        finally:
            for s in attack:
                s.close()
            keep.close()
        log = app.log()
        assert log.count("refusing new connections") == 1, log
        assert "EMFILE" not in log and "Could not accept" not in log, log


# -- row 8: heads that cannot be read ------------------------------------------------


HEALTH = b"GET /health HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(("request_bytes", "status", "closes"), [
    (HEALTH + b"".join(b"X-H%d: v\r\n" % i for i in range(600)) + b"\r\n", 431, True),
    (HEALTH + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(9)) + b"\r\n", 431, True),
    (HEALTH + b"X-Big: " + b"v" * 1_000_000 + b"\r\n\r\n", 431, True),
    (b"GET /?challenge=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, True),
    (b"GET /health HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n", 400, True),
    (b"GET /%ff%fe HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    (b"GET /health HTTP/1.1\r\n\r\n", 400, False),
    (b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 138\r\n\r\n"
     + POLLEN, 400, False),
])
def test_heads_that_cannot_be_read_get_problem_json(hostile_app: Appliance, request_bytes: bytes,
                                                    status: int, closes: bool) -> None:
    with connect(hostile_app) as s:
        s.sendall(request_bytes)
        response = read_response(s)
        assert problem(response)["status"] == status
        assert (response[1].get("connection") == "close") is closes
        if not closes:  # a whole request was read and answered: the connection goes on
            s.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(s)[0] == 200


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with appliance(tmp_path_factory.mktemp("heads"), *PLAIN, "--peer-rate", "0") as app:
        yield app


# -- row 9: the listen backlog -------------------------------------------------------


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``: Send-Q in ``ss -ltn``."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True, timeout=10).stdout.split()
    return int(out[2])


def test_endpoints_listen_with_a_backlog_of_1024_unless_they_name_one(tmp_path: Path) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with appliance(tmp_path, "--source", "kernel", ports={
            "named": "--http=tcp:{port}:interface=127.0.0.1:backlog=77"}) as app:
        for name in ("http", "https", "stream"):
            assert listen_backlog(app.ports[name]) == min(1024, somaxconn), name
        assert listen_backlog(app.ports["named"]) == 77


def test_https_connections_past_the_peer_limit_are_refused_before_the_handshake(tmp_path: Path) -> None:
    """
    --peer-connections on the HTTPS port: a refused connection is closed
    before any TLS handshake, and the log holds no traceback.
    """
    app = start_appliance(tmp_path, "--source", "kernel", "--peer-connections", "2",
                          "--stream", "none", "--http", "none")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(2):
            raw = socket.create_connection(("127.0.0.1", app.ports["https"]), timeout=10)
            held.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        refused = 0
        for _ in range(20):
            raw = socket.create_connection(("127.0.0.1", app.ports["https"]), timeout=10)
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    pass
            except (ssl.SSLError, OSError):
                refused += 1
            finally:
                raw.close()
        assert refused == 20
        # The two held connections still work.
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held[0].recv(64).startswith(b"HTTP/1.1 200")
        assert "Traceback" not in app.log()
    finally:
        for s in held:
            s.close()
        app.stop()
