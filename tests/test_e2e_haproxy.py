"""
End to end: two appliances behind Debian's real ``haproxy``, on loopback,
with the shipped ``contrib/haproxy/haproxy.cfg`` (HTTP, HTTPS, the raw
stream and EGD).

The test's configuration is derived from the shipped file by
:func:`derive_config`: the addresses and ports are rewritten to loopback,
the EGD frontend admits loopback clients, the third node is dropped, the
check interval is shortened and the lines that need a system installation
(chroot, user, syslog, the admin socket, daemon mode) are removed; nothing
else changes.  Each appliance reads its
own FIFO, fed by ``tests/fifo_writer.py``, and listens with ``haproxy:``
endpoints that trust 127.0.0.1 (where HAProxy connects from); clients
connect from other loopback addresses (127.0.0.2 and up), so each is a
peer of its own.  Each appliance also has a plain HTTP listener that the
test reads its ``/v1/status`` and ``/health`` from.

EGD clients are told apart by node through the PID that a 0x04 request
returns, and HAProxy's stats CSV tells which node holds an open raw stream.

haproxy runs in the foreground (``-db``) as a subprocess of the test and
is stopped by its PID.  Every wait is a polling loop with a deadline.

The last test needs no HAProxy: ``--workers 2`` with ``haproxy:``
listeners, and a test client that writes the PROXY v2 header itself from
the trusted address.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from entropy_appliance.net import tls
from tests.test_e2e_starvation import (
    RECOVERY_BOUND,
    STREAM_END_BOUND,
    Writer,
    poll,
    start_writer,
)
from tests.twistd_helpers import REPO_ROOT, Appliance, free_port, start_appliance

pytestmark = pytest.mark.e2e

SHIPPED = REPO_ROOT / "contrib" / "haproxy" / "haproxy.cfg"

#: The shortened check interval; fall and rise stay as shipped.
INTER = 0.5
#: --peer-rate of the appliances: a burst of 10 requests per client and node.
PEER_RATE = 5
#: --peer-streams of the appliances.
PEER_STREAMS = 2
#: --seed-wait of the appliances: /health turns 503 after starving this long.
SEED_WAIT = 2
#: Slack for HAProxy's own reaction, on a busy machine.
SLACK = 10.0

#: The surfaces, by the port the shipped file gives them.
SHIPPED_PORTS = {8080: "http", 8443: "https", 9000: "stream", 8888: "egd"}
#: The frontends, by the bind line the shipped file gives them.
SHIPPED_BINDS = {"bind :80": "http", "bind :443": "https", "bind :9000": "stream",
                 "bind 10.0.1.10:8888": "egd", "bind 127.0.0.1:8404": "stats"}
#: The network the shipped EGD frontend admits clients from; the test's clients are on loopback.
SHIPPED_EGD_CLIENTS = "src 10.0.1.0/24"
#: Lines that need a system installation of HAProxy.
SYSTEM_LINES = (r"\s+log /dev/log .*", r"\s+chroot .*", r"\s+stats socket .*", r"\s+user .*",
                r"\s+group .*", r"\s+daemon")


def shipped_setting(name: str) -> int:
    """``fall`` or ``rise`` of the shipped default-server line."""
    return int(re.search(rf"\b{name} (\d+)\b", SHIPPED.read_text())[1])  # type: ignore[index]


FALL = shipped_setting("fall")
RISE = shipped_setting("rise")


def derive_config(shipped: str, nodes: list[dict[str, int]], front: dict[str, int], inter: float) -> str:
    """
    The shipped configuration for ``nodes`` (each: surface -> port on
    127.0.0.1) behind ``front`` (surface -> port), checked every ``inter``
    seconds.  Every rewrite must find what it rewrites.
    """
    text = shipped
    for pattern in SYSTEM_LINES:
        text, n = re.subn(rf"^{pattern}\n", "", text, flags=re.M)
        assert n == 1, pattern
    for bind, surface in SHIPPED_BINDS.items():
        assert text.count(f"    {bind}\n") == 1, bind
        text = text.replace(f"    {bind}\n", f"    bind 127.0.0.1:{front[surface]}\n")
    text, n = re.subn(r"\binter 2s\b", f"inter {int(inter * 1000)}ms", text)
    assert n == 1
    assert text.count(SHIPPED_EGD_CLIENTS) == 1
    text = text.replace(SHIPPED_EGD_CLIENTS, "src 127.0.0.0/8")

    def server(m: re.Match[str]) -> str:
        index = int(m[1])
        if index > len(nodes):
            return ""
        port = nodes[index - 1][SHIPPED_PORTS[int(m[3])]]
        return m[0].replace(m[2], f"127.0.0.1:{port}")

    text, n = re.subn(r"^\s+server node(\d) (10\.0\.0\.1\d:(\d+))(.*)\n", server, text, flags=re.M)
    assert n == 12  # three nodes for each of http, https, stream and egd
    return text


# -- clients -----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def http_get(port: int, path: str, source: str, https: ssl.SSLContext | None = None,
             timeout: float = 20.0) -> Reply:
    """One request on a new connection from ``source``."""
    conn: http.client.HTTPConnection
    if https is not None:
        conn = http.client.HTTPSConnection("localhost", port, timeout=timeout,
                                           source_address=(source, 0), context=https)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def read_stream(port: int, source: str, want: int, timeout: float = 20.0) -> int:
    """Open a raw stream from ``source`` and read up to ``want`` bytes; return how many came."""
    got = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=(source, 0)) as s:
            while got < want:
                chunk = s.recv(min(1 << 20, want - got))
                if not chunk:
                    break
                got += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return got


def open_stream(port: int, source: str, first: int = 1) -> tuple[socket.socket, int]:
    """Open a raw stream and read its first bytes (0 if it is closed unserved); keep it open."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    got = 0
    try:
        while got < first:
            chunk = s.recv(first - got)
            if not chunk:
                break
            got += len(chunk)
    except ConnectionResetError:
        pass
    return s, got


def read_exactly(s: socket.socket, n: int) -> bytes:
    """``n`` bytes of ``s``, or fewer if it closes first."""
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
    except ConnectionResetError:
        pass
    return bytes(buf)


def open_egd(port: int, source: str) -> tuple[socket.socket, int | None]:
    """
    Open an EGD connection from ``source`` and ask for the server's PID
    (0x04), which tells the two nodes apart; None if it was closed
    unanswered.  The connection stays open.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    s.sendall(b"\x04")
    length = read_exactly(s, 1)
    if not length:
        return s, None
    return s, int(read_exactly(s, length[0]))


def egd_read(s: socket.socket, n: int) -> int:
    """A blocking read (0x02) of ``n`` bytes on ``s``: how many came."""
    s.sendall(bytes([2, n]))
    return len(read_exactly(s, n))


def ends_within(s: socket.socket, seconds: float) -> bool:
    """Read ``s`` (discarding) until the far end closes it; False if still open after ``seconds``."""
    deadline = time.monotonic() + seconds
    buf = bytearray(1 << 16)
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if s.recv_into(buf) == 0:
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def close_all(sockets: list[tuple[socket.socket, object]]) -> None:
    for s, _ in sockets:
        s.close()


# -- the rig -------------------------------------------------------------------------


@dataclass
class Node:
    app: Appliance
    writer: Writer

    def ask(self, path: str) -> Reply:
        """From the test's own address, on the plain listener; waits out a 429."""
        for _ in range(20):
            r = http_get(self.app.ports["admin"], path, "127.0.0.7")
            if r.status != 429:
                return r
            time.sleep(float(r.headers.get("retry-after", "1")))
        raise AssertionError(f"{path}: 429 for 20 tries")

    def served(self) -> dict[str, int]:
        r = self.ask("/v1/status")
        assert r.status == 200, r
        served: dict[str, int] = json.loads(r.body)["served"]
        return served

    def health(self) -> int:
        return self.ask("/health").status


@dataclass
class Pool:
    nodes: list[Node]
    front: dict[str, int]
    haproxy: subprocess.Popen[bytes]
    log: Path
    cafile: Path

    def rows(self) -> list[dict[str, str]]:
        """HAProxy's stats CSV: a row per server (and per frontend and backend)."""
        r = http_get(self.front["stats"], "/;csv", "127.0.0.1")
        assert r.status == 200, r
        return list(csv.DictReader(io.StringIO(r.body.decode().lstrip("# "))))

    def servers(self) -> dict[tuple[str, str], str]:
        """HAProxy's status of each server, by (backend, server)."""
        return {(row["pxname"], row["svname"]): row["status"] for row in self.rows()
                if row["svname"].startswith("node")}

    def sessions(self, backend: str) -> dict[str, int]:
        """The connections open to each server of ``backend`` now, by server."""
        return {row["svname"]: int(row["scur"]) for row in self.rows()
                if row["pxname"] == backend and row["svname"].startswith("node")}

    def idle(self, backend: str) -> bool:
        """No connection open to any server of ``backend`` (those the test closed have ended)."""
        return set(self.sessions(backend).values()) == {0}

    def state_of(self, node: str) -> set[str]:
        return {status for (_, server), status in self.servers().items() if server == node}

    def get(self, path: str, source: str) -> Reply:
        return http_get(self.front["http"], path, source)

    def haproxy_log(self) -> str:
        return self.log.read_text(errors="replace")


def stop_haproxy(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    key, cert = tmp_path / "pool.key", tmp_path / "pool.pem"
    # One certificate for the pool, on every node: what a pinning client needs (see the config).
    tls.generate_self_signed(str(key), str(cert), hostname="localhost")
    writers: list[Writer] = []
    apps: list[Appliance] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        for i in (1, 2):
            home = tmp_path / f"node{i}"
            home.mkdir()
            fifo = home / "rng.fifo"
            os.mkfifo(fifo)
            writers.append(start_writer(fifo, home / "writer.mode", "fast"))
            apps.append(start_appliance(
                home, "--source", f"device:{fifo}", "--reseed-bytes", "65536", "--reseed-interval", "1",
                "--trusted-proxy", "127.0.0.1", "--peer-rate", str(PEER_RATE),
                "--peer-streams", str(PEER_STREAMS), "--seed-wait", str(SEED_WAIT),
                "--tls-key", str(key), "--tls-cert", str(cert),
                ports={"http": "--http=haproxy:tcp:{port}:interface=127.0.0.1",
                       "https": "--https=haproxy:ssl:{port}:interface=127.0.0.1",
                       "stream": "--stream=haproxy:tcp:{port}:interface=127.0.0.1",
                       "egd": "--egd=haproxy:tcp:{port}:interface=127.0.0.1",
                       "admin": "--http=tcp:{port}:interface=127.0.0.1"}))
        front = {name: free_port() for name in ("http", "https", "stream", "egd", "stats")}
        config = tmp_path / "haproxy.cfg"
        config.write_text(derive_config(SHIPPED.read_text(), [a.ports for a in apps], front, INTER))
        log = tmp_path / "haproxy.log"
        with open(log, "wb") as out:
            haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=out,
                                       stderr=subprocess.STDOUT)
        rig = Pool([Node(a, w) for a, w in zip(apps, writers, strict=True)], front, haproxy, log, cert)
        poll("haproxy answers", lambda: _answers(rig), 20)
        poll("haproxy sees both nodes up",
             lambda: all(rig.state_of(n) == {"UP"} for n in ("node1", "node2")), 30)
        yield rig
    finally:
        if haproxy is not None:
            stop_haproxy(haproxy)
        for a in apps:
            a.stop()
        for w in writers:
            w.stop()


def _answers(rig: Pool) -> bool:
    try:
        rig.servers()
    except OSError:
        return False
    return True


def grew(before: dict[str, int], after: dict[str, int], surface: str) -> int:
    return after.get(surface, 0) - before.get(surface, 0)


# -- the tests -----------------------------------------------------------------------


def test_the_shipped_configuration_is_valid() -> None:
    result = subprocess.run(["haproxy", "-c", "-f", str(SHIPPED)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_spread_failover_recovery_and_real_client_budgets(pool: Pool) -> None:
    node1, node2 = pool.nodes
    context = ssl.create_default_context(cafile=str(pool.cafile))

    # 1. Both healthy: clients are spread over both nodes.
    before = [n.served() for n in pool.nodes]
    for _ in range(8):
        r = pool.get("/v1/random?bytes=1000", "127.0.0.4")
        assert r.status == 200 and len(r.body) == 1000, r
    streams = [open_stream(pool.front["stream"], "127.0.0.4", 100_000) for _ in range(2)]
    for s, got in streams:
        assert got == 100_000
        s.close()
    # HTTPS passes through to a node, its TLS session and PROXY header intact.
    r = http_get(pool.front["https"], "/v1/random?bytes=32", "127.0.0.4", https=context)
    assert r.status == 200 and len(r.body) == 32
    # EGD: two long connections (leastconn), one on each node, which answers with its own PID.
    pids = sorted(n.app.pid for n in pool.nodes)
    vms = [open_egd(pool.front["egd"], "127.0.0.4") for _ in range(2)]
    try:
        assert sorted(pid or 0 for _, pid in vms) == pids, (vms, pool.haproxy_log()[-2000:])
        assert [egd_read(s, 255) for s, _ in vms] == [255, 255]
    finally:
        close_all(vms)
    after = [n.served() for n in pool.nodes]
    for b, a in zip(before, after, strict=True):
        assert grew(b, a, "http") >= 1000, (before, after)
        assert grew(b, a, "stream") >= 100_000, (before, after)
        assert grew(b, a, "egd") >= 255, (before, after)

    # 2. The per-peer limits count the real client, not the balancer.
    greedy, polite = "127.0.0.2", "127.0.0.3"
    statuses: list[int] = []
    while statuses[-2:] != [429, 429]:
        assert len(statuses) < 300, statuses
        statuses.append(pool.get("/v1/random?bytes=8", greedy).status)
    r = pool.get("/v1/random?bytes=8", greedy)
    assert r.status == 429 and r.headers["content-type"] == "application/problem+json"
    # The other client, through the same balancer, still has its whole budget.
    assert [pool.get("/v1/random?bytes=8", polite).status for _ in range(6)] == [200] * 6
    held = [open_stream(pool.front["stream"], greedy) for _ in range(2 * PEER_STREAMS)]
    try:
        assert [got for _, got in held] == [1] * (2 * PEER_STREAMS)  # PEER_STREAMS on each node
        extra, got = open_stream(pool.front["stream"], greedy)
        extra.close()
        assert got == 0, "a third stream of one client on one node was served"
        assert read_stream(pool.front["stream"], polite, 10_000) == 10_000
    finally:
        for s, _ in held:
            s.close()
    # The same for EGD, whose connections --peer-streams counts too (other clients here).
    poll("HAProxy's EGD connections end", lambda: pool.idle("entropy_egd"), SLACK)
    greedy_vm, polite_vm = "127.0.0.8", "127.0.0.9"
    held_egd = [open_egd(pool.front["egd"], greedy_vm) for _ in range(2 * PEER_STREAMS)]
    try:
        assert sorted(pid or 0 for _, pid in held_egd) == sorted(pids * PEER_STREAMS), held_egd
        extra, pid = open_egd(pool.front["egd"], greedy_vm)
        extra.close()
        assert pid is None, "a third EGD connection of one client on one node was answered"
        other, pid = open_egd(pool.front["egd"], polite_vm)
        assert pid in pids and egd_read(other, 255) == 255
        other.close()
    finally:
        close_all(held_egd)
    # A forged header straight to a node, from outside --trusted-proxy, is not read.
    with socket.create_connection(("127.0.0.1", node1.app.ports["http"]), timeout=10,
                                  source_address=(greedy, 0)) as s:
        s.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 5555 80\r\nGET /v1/random?bytes=8 HTTP/1.0\r\n\r\n")
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
    assert "closed a connection from 127.0.0.2: it is not a trusted proxy" in node1.app.log()
    # The log names the real client that met the stream limit, not the balancer.
    assert "refused a connection from 127.0.0.2: it already has 2 open" in node1.app.log() + node2.app.log()
    assert "refused a connection from 127.0.0.8: it already has 2 open" in node1.app.log() + node2.app.log()
    proxy = json.loads(node1.ask("/v1/status").body)["proxy"]
    assert proxy["trusted"] == ["127.0.0.1/32"]
    connections = proxy["connections"]
    assert connections["untrusted"] >= 1 and connections["proxied"] >= 10, connections
    assert connections["local"] >= 1, connections  # HAProxy's health checks
    metrics = node1.ask("/metrics").body.decode()
    assert re.search(r'^entropy_proxy_connections_total\{outcome="untrusted"\} [1-9]', metrics, re.M), metrics

    # 3. Node 1's source gets stuck: it fails closed, and HAProxy takes it out.
    # A quiet EGD connection on each node first, as QEMU keeps one for its guest's life.
    poll("HAProxy's EGD connections end", lambda: pool.idle("entropy_egd"), SLACK)
    vms = [open_egd(pool.front["egd"], "127.0.0.10") for _ in range(2)]
    on_node = {pid: s for s, pid in vms}
    assert sorted(on_node) == pids, vms  # type: ignore[type-var]
    start = time.monotonic()
    node1.writer.set_mode("stuck")
    # No client needs to ask node 1 for anything: every source is health-tested
    # at least once per reseed interval, so an idle node fails closed in time.
    poll("node 1's /health turns 503", lambda: node1.health() == 503, STREAM_END_BOUND)
    frozen = node1.served()
    bound = STREAM_END_BOUND + FALL * INTER + SLACK
    poll("HAProxy marks node 1 down", lambda: pool.state_of("node1") == {"DOWN"},
         bound - (time.monotonic() - start))
    assert pool.state_of("node2") == {"UP"}
    healthy = node2.served()
    for _ in range(6):
        r = pool.get("/v1/random?bytes=1000", "127.0.0.5")
        assert r.status == 200 and len(r.body) == 1000, (r, pool.haproxy_log()[-2000:])
    for _ in range(2):
        assert read_stream(pool.front["stream"], "127.0.0.5", 100_000) == 100_000
    r = http_get(pool.front["https"], "/v1/random?bytes=32", "127.0.0.5", https=context)
    assert r.status == 200 and len(r.body) == 32
    # Node 1 keeps an EGD connection that owes nothing open even while failed; HAProxy ended it
    # when it marked node 1 down (on-marked-down shutdown-sessions), so the guest's QEMU
    # reconnects, to node 2.  The connection on node 2 goes on.
    try:
        assert ends_within(on_node[node1.app.pid], SLACK), "the EGD connection to node 1 is still open"
        assert egd_read(on_node[node2.app.pid], 255) == 255
        for _ in range(3):
            s, pid = open_egd(pool.front["egd"], "127.0.0.10")
            with s:
                assert pid == node2.app.pid and egd_read(s, 255) == 255
    finally:
        close_all(vms)
    assert node1.served() == frozen, "node 1 served bytes after its /health turned 503"
    now = node2.served()
    assert grew(healthy, now, "http") >= 6032 and grew(healthy, now, "stream") >= 200_000
    assert grew(healthy, now, "egd") >= 4 * 255

    # 4. Node 1 recovers, and HAProxy puts it back in rotation.
    node1.writer.set_mode("fast")
    poll("HAProxy marks node 1 up again", lambda: pool.state_of("node1") == {"UP"},
         RECOVERY_BOUND + RISE * INTER + SLACK, every=0.5)
    back = node1.served()
    for _ in range(6):
        r = pool.get("/v1/random?bytes=1000", "127.0.0.6")
        assert r.status == 200, r
    assert grew(back, node1.served(), "http") >= 1000
    poll("HAProxy's EGD connections end", lambda: pool.idle("entropy_egd"), SLACK)
    vms = [open_egd(pool.front["egd"], "127.0.0.6") for _ in range(2)]
    close_all(vms)
    assert sorted(pid or 0 for _, pid in vms) == pids, vms

    # 5. Node 1 starves (its source slows to a trickle, healthy): its open streams pause
    # rather than close, and once /health turns 503 (after --seed-wait of starving) HAProxy
    # marks it down and ends them (on-marked-down shutdown-sessions); the client reconnects,
    # to node 2.
    poll("HAProxy's stream connections end", lambda: pool.idle("entropy_stream"), SLACK)
    streams = []
    try:
        for _ in range(2):
            streams.append(open_stream(pool.front["stream"], "127.0.0.11", 1000))
            poll("HAProxy counts the stream", lambda: sum(pool.sessions("entropy_stream").values())
                 == len(streams), SLACK)
            if pool.sessions("entropy_stream")["node1"] == 1:
                break
        assert pool.sessions("entropy_stream") == {"node1": 1, "node2": len(streams) - 1}
        on_node1 = streams[-1][0]
        start = time.monotonic()
        node1.writer.set_mode("rate:1")
        # Reading on keeps asking node 1 for bytes, so it starves.
        assert ends_within(on_node1, SEED_WAIT + STREAM_END_BOUND + FALL * INTER + SLACK), (
            f"the stream on node 1 is still open {time.monotonic() - start:.0f} s after it starved")
        assert pool.state_of("node1") == {"DOWN"} and node1.health() == 503
        # Starved, not failed: the node itself keeps its streams open (they pause).
        assert json.loads(node1.ask("/v1/status").body)["state"] == "starved"
        healthy = node2.served()
        assert read_stream(pool.front["stream"], "127.0.0.11", 100_000) == 100_000
        assert grew(healthy, node2.served(), "stream") >= 100_000
    finally:
        close_all(streams)
    assert pool.haproxy.poll() is None



# -- workers ------------------------------------------------------------------------


def proxy_v2(client: str, port: int = 40000, dest: str = "127.0.0.1", dport: int = 80) -> bytes:
    """A PROXY v2 header, as HAProxy's send-proxy-v2 writes it, for ``client`` over TCP/IPv4."""
    body = socket.inet_aton(client) + socket.inet_aton(dest) + struct.pack("!HH", port, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(body)) + body


def proxied_get(port: int, client: str, path: str, source: str = "127.0.0.1") -> Reply:
    """One request from ``source``, on a new connection that first names ``client`` in a PROXY header."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    s.sendall(proxy_v2(client))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.sock = s  # already connected, header sent
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def test_workers_read_the_proxy_header(tmp_path: Path) -> None:
    """
    ``--workers 2`` with ``haproxy:`` listeners: a worker (not the parent)
    answers a connection that begins with a PROXY v2 header from the trusted
    address, and keys ``--peer-rate`` on the client the header names, so that
    one client's 429 leaves another its budget; EGD is answered the same way.
    """
    app = start_appliance(tmp_path, "--source", "kernel", "--workers", "2", "--https", "none",
                          "--stream", "none", "--trusted-proxy", "127.0.0.1", "--peer-rate", "1",
                          ports={"http": "--http=haproxy:tcp:{port}:interface=127.0.0.1",
                                 "egd": "--egd=haproxy:tcp:{port}:interface=127.0.0.1"})
    port = app.ports["http"]
    try:
        poll("the workers serve",
             lambda: proxied_get(port, "198.51.100.1", "/v1/random?bytes=8").status == 200, 60)
        doc = json.loads(proxied_get(port, "198.51.100.2", "/v1/status").body)
        assert doc["worker"]["pid"] != app.pid and doc["proxy"]["trusted"] == ["127.0.0.1/32"]
        assert doc["proxy"]["connections"]["proxied"] >= 1, doc["proxy"]
        # --peer-rate 1: a burst of 2 per client in each worker; then 429, for that client only.
        greedy, polite = "203.0.113.5", "203.0.113.6"
        statuses: list[int] = []
        while statuses[-2:] != [429, 429]:
            assert len(statuses) < 100, statuses
            statuses.append(proxied_get(port, greedy, "/v1/random?bytes=8").status)
        assert set(statuses) == {200, 429}, statuses
        r = proxied_get(port, greedy, "/v1/random?bytes=8")
        assert r.status == 429 and r.headers["content-type"] == "application/problem+json"
        r = proxied_get(port, polite, "/v1/random?bytes=8")
        assert r.status == 200 and len(r.body) == 8
        # The same header from an address outside --trusted-proxy is closed unread.
        with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=("127.0.0.2", 0)) as s:
            s.sendall(proxy_v2(polite) + b"GET /v1/random?bytes=8 HTTP/1.0\r\n\r\n")
            assert read_exactly(s, 1024) == b""
        # EGD, through a PROXY header too: a worker answers (0x04: its PID), and serves bytes.
        with socket.create_connection(("127.0.0.1", app.ports["egd"]), timeout=20) as s:
            s.sendall(proxy_v2(polite) + b"\x04\x02\x20")
            pid = int(read_exactly(s, read_exactly(s, 1)[0]))
            assert len(read_exactly(s, 32)) == 32
        assert pid != app.pid and pid in worker_pids(app.pid)
        # A worker's log reaches the parent's through a pipe, a moment later.
        poll("the worker logs the untrusted address",
             lambda: "closed a connection from 127.0.0.2: it is not a trusted proxy" in app.log(), SLACK)
    finally:
        app.stop()


def worker_pids(parent: int) -> set[int]:
    """The processes whose parent is ``parent``."""
    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        if f"PPid:\t{parent}" in lines:
            out.add(int(status.parent.name))
    return out
