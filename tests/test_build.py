"""
The composition, in memory: ``makeService(config, reactor=MemoryReactorClock())``
builds the whole tree for each role (single process, parent with workers,
worker), and these tests check which listeners and services exist, their
stop phases, and one stop that drains a response in flight.
"""

from __future__ import annotations

import os
import queue
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure

from entropy_appliance.app.build import makeService
from entropy_appliance.app.lifecycle import STOP_PHASES, Lifecycle
from entropy_appliance.app.options import Config, parse_config
from entropy_appliance.app.workers import AdoptedPort, HeldPort
from entropy_appliance.net.stream import StreamFactory
from entropy_appliance.net.waiting import when_ready
from entropy_appliance.source.detection import detect, detect_all
from entropy_appliance.source.sources import DEFAULT_MIN_ENTROPY, SourceSpec
from entropy_appliance.web.app import EntropySite
from tests.test_signals import SlowClientTransport, fired
from tests.test_workers import FakeProcess

LOCAL = ["--stream", "tcp:19000:interface=127.0.0.1", "--http", "tcp:18080:interface=127.0.0.1",
         "--https", "ssl:18443:interface=127.0.0.1"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The self-signed pair and the onion key are created under the working directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


def config(*argv: str) -> Config:
    return parse_config(["--source", "kernel", *argv])


def names(tree: Lifecycle) -> dict[str, str]:
    """Named service -> its phase."""
    return {s.name: tree.phase_of(s) for s in tree if s.name is not None}


def start_order(tree: Lifecycle) -> list[str]:
    return [tree.phase_of(s) for s in tree]


class ThreadCalls:
    """
    ``callFromThread`` for a MemoryReactorClock: the source's reader thread
    queues its results, and the test runs them on its own thread.
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self._calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        reactor.callFromThread = self._put  # type: ignore[attr-defined]

    def _put(self, f: Callable[..., Any], *args: Any) -> None:
        self._calls.put((f, args))

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            f, args = self._calls.get(timeout=10)
            f(*args)


# -- one process ------------------------------------------------------------------


def test_single_process_listens_on_every_endpoint_with_one_site() -> None:
    reactor = MemoryReactorClock()
    tree = makeService(config(*LOCAL), reactor=reactor)
    assert tree.phases == STOP_PHASES
    assert names(tree) == {"pipeline": "pipeline", "reload": "signals", "drain": "drain",
                           "notify": "notify"}
    assert start_order(tree) == ["pipeline", "signals", "drain",
                                 "listeners", "listeners", "listeners", "notify"]
    described = [(listener.kind, listener.description) for listener in tree.phase("listeners")]  # type: ignore[attr-defined]
    assert described == [("stream", LOCAL[1]), ("http", LOCAL[3]), ("https", LOCAL[5])]
    for listener in tree.phase("listeners"):
        listener.privilegedStartService()
    ((stream_port, stream, _, stream_on), (http_port, http, _, http_on),
     (https_port, https, _, https_on)) = reactor.tcpServers
    assert (stream_port, http_port, https_port) == (19000, 18080, 18443)
    assert stream_on == http_on == https_on == "127.0.0.1"
    assert isinstance(stream.wrappedFactory, StreamFactory)
    # ONE Site, behind the same limits, on HTTP and HTTPS.
    assert https.wrappedFactory is http and isinstance(http.wrappedFactory, EntropySite)
    assert (Path("certs") / "server.key").exists()  # created by makeService


def test_none_turns_surfaces_off() -> None:
    reactor = MemoryReactorClock()
    tree = makeService(config("--stream", "none", "--http", "tcp:18080", "--https", "none",
                              "--compat", "none"), reactor=reactor)
    (listener,) = tree.phase("listeners")
    listener.privilegedStartService()
    assert [p for p, *_ in reactor.tcpServers] == [18080] and reactor.sslServers == []
    # No TLS pair, and no signing key for a RANDOM.ORG API that is off.
    assert not Path("certs").exists()


def test_the_signing_key_is_made_once_and_kept(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "signing.pem"
    args = ("--stream", "none", "--http", "tcp:18080", "--https", "none", "--signing-key", str(key))
    makeService(config(*args), reactor=MemoryReactorClock())
    assert key.stat().st_mode & 0o777 == 0o600
    first = key.read_bytes()
    makeService(config(*args), reactor=MemoryReactorClock())
    assert key.read_bytes() == first


def test_stop_closes_listeners_drains_then_stops_the_pipeline() -> None:
    """SIGTERM during a 1 MiB response to a slow reader: it completes, then the pipeline stops."""
    reactor = MemoryReactorClock()
    calls = ThreadCalls(reactor)
    tree = makeService(config("--stream", "tcp:19000", "--http", "tcp:18080", "--https", "none"),
                       reactor=reactor)
    tree.privilegedStartService()
    tree.startService()
    pipeline = tree.getServiceNamed("pipeline")
    seeded = fired(when_ready(pipeline.pool))
    calls.run_until(lambda: bool(seeded))

    (_, stream, *_), (_, http, *_) = reactor.tcpServers
    client = IPv4Address("TCP", "127.0.0.1", 40000)
    raw = StringTransport(peerAddress=client)
    stream.buildProtocol(client).makeConnection(raw)
    web = SlowClientTransport(peerAddress=client)
    proto = http.buildProtocol(client)
    proto.makeConnection(web)
    proto.dataReceived(b"GET /v1/random?bytes=1048576 HTTP/1.1\r\nHost: a\r\n\r\n")

    stopped = fired(tree.stopService())
    assert not stopped and pipeline.running
    assert raw.disconnecting  # the raw stream is closed at once
    assert not any(s.running for s in tree.phase("listeners"))
    for _ in range(200):
        if web.disconnecting:
            break
        assert pipeline.running  # seed for the response until it is done
        web.read_all()
    # Once the response is out, the drain closes the connection.
    assert web.disconnecting and not stopped and pipeline.running
    proto.connectionLost(Failure(ConnectionDone()))
    assert stopped and not pipeline.running
    head, _, body = (web.received + web.value()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 1048576


def test_the_reseed_schedule_ticks_on_the_reactor_clock() -> None:
    """Every half interval, not at start (no seed can be in yet): a due reseed with no seed fails then."""
    reactor = MemoryReactorClock()
    ThreadCalls(reactor)  # the reader's results are never run: no seed arrives
    tree = makeService(config("--https", "none", "--reseed-interval", "2"), reactor=reactor)
    pipeline = tree.getServiceNamed("pipeline")
    pipeline.startService()
    try:
        assert pipeline.pool.status().drbg.reseed_failures == 0
        reactor.advance(0.9)
        assert pipeline.pool.status().drbg.reseed_failures == 0
        reactor.advance(0.1)
        assert pipeline.pool.status().drbg.reseed_failures == 1
        reactor.advance(1.0)
        assert pipeline.pool.status().drbg.reseed_failures == 2
    finally:
        pipeline.stopService()
    reactor.advance(10)
    assert pipeline.pool.status().drbg.reseed_failures == 2


def test_auto_is_resolved_by_make_service_not_by_parsing() -> None:
    c = parse_config(["--source", "auto", "--https", "none"])
    assert c.source.kind == "auto" and c.min_entropy is None
    tree = makeService(c, reactor=MemoryReactorClock())
    expected = detect_all()
    assert expected[-1] == SourceSpec("kernel") and expected[0] == detect()
    # Every device found, and the kernel beside them.
    assert tree.getServiceNamed("pipeline").pool.source_kind == ", ".join(s.kind for s in expected)


# -- the parent of workers -------------------------------------------------------


def spawner(reactor: MemoryReactorClock) -> list[list[str]]:
    """Give ``reactor`` a spawnProcess that records each command line."""
    spawned: list[list[str]] = []

    def spawnProcess(proto: Any, executable: str, args: list[str], **kwargs: Any) -> FakeProcess:
        spawned.append(list(args))
        return FakeProcess(1000 + len(spawned))

    reactor.spawnProcess = spawnProcess  # type: ignore[attr-defined]
    return spawned


def test_parent_holds_every_socket_and_spawns_the_workers() -> None:
    reactor = MemoryReactorClock()
    spawned = spawner(reactor)
    tree = makeService(parse_config(["--source", "auto", "--workers", "3", *LOCAL]), reactor=reactor)
    assert names(tree) == {"pipeline": "pipeline", "reload": "signals", "workers": "workers",
                           "notify": "notify"}
    assert start_order(tree) == ["pipeline", "signals", "listeners", "listeners", "listeners",
                                 "workers", "notify"]
    listeners = tree.phase("listeners")
    assert all(isinstance(p, HeldPort) for p in listeners)
    assert [p.kind for p in listeners] == ["stream", "http", "https"]  # type: ignore[attr-defined]
    assert not tree.getServiceNamed("pipeline").pool.serving  # it relays, never serves
    tree.getServiceNamed("workers").startService()
    assert len(spawned) == 3
    argv = spawned[0][spawned[0].index("entropy") + 1:]
    # The workers get the command line with each detected source named, with its claim.
    named = [argv[i + 1] for i, a in enumerate(argv) if a == "--source"]
    assert "auto" not in named and argv[argv.index("--workers") + 1] == "3"
    assert named == [s.text() + f",min-entropy={DEFAULT_MIN_ENTROPY[s.kind]!r}" for s in detect_all()]
    assert [args[-2:] for args in spawned] == [["--worker-index", str(i)] for i in range(3)]


# -- a worker ---------------------------------------------------------------------


@pytest.fixture
def inherited() -> Iterator[str]:
    """A ``--worker-fds`` value naming three real (inherited-like) sockets."""
    socks = [socket.socket() for _ in range(3)]
    fds = [os.dup(s.fileno()) for s in socks]
    yield f"stream:{fds[0]}:INET,http:{fds[1]}:INET,https:{fds[2]}:INET"
    for s in socks:
        s.close()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass  # adopted: the worker closed its copy


def worker_config(fds: str, index: int, *extra: str) -> Config:
    return config("--workers", "2", *LOCAL, *extra, "--worker-fds", fds, "--worker-index", str(index))


def test_worker_serves_on_the_inherited_sockets(inherited: str) -> None:
    reactor = MemoryReactorClock()
    tree = makeService(worker_config(inherited, 1), reactor=reactor)
    assert names(tree) == {"pipeline": "pipeline", "reload": "signals", "parent-watch": "signals",
                           "drain": "drain"}
    assert start_order(tree) == ["pipeline", "signals", "signals", "drain",
                                 "listeners", "listeners", "listeners"]
    assert all(isinstance(p, AdoptedPort) for p in tree.phase("listeners"))
    pool = tree.getServiceNamed("pipeline").pool
    assert pool.source_name == "kernel (via parent)" and pool.serving
    for listener in tree.phase("listeners"):
        listener.startService()
    expected = [int(item.split(":")[1]) for item in inherited.split(",")]
    assert [fd for fd, *_ in reactor.adoptedPorts] == expected
    (_, _, stream), (_, _, http), (_, _, https) = reactor.adoptedPorts
    assert isinstance(stream.wrappedFactory, StreamFactory)
    # The parent's ssl: socket is plain TCP to the worker: TLS around the same Site.
    assert isinstance(https, TLSMemoryBIOFactory) and https.wrappedFactory is http


def test_a_worker_reads_the_proxy_header_on_haproxy_sockets(inherited: str) -> None:
    """The parent hands on plain sockets; the worker puts PROXY outermost, outside TLS."""
    from entropy_appliance.net.proxy import ProxyHeaderFactory

    proxied = ["--stream", "haproxy:tcp:19000:interface=127.0.0.1",
               "--http", "tcp:18080:interface=127.0.0.1",
               "--https", "haproxy:ssl:18443:interface=127.0.0.1", "--trusted-proxy", "127.0.0.1"]
    c = config("--workers", "2", *proxied, "--worker-fds", inherited, "--worker-index", "1")
    reactor = MemoryReactorClock()
    tree = makeService(c, reactor=reactor)
    for listener in tree.phase("listeners"):
        listener.startService()
    (_, _, stream), (_, _, http), (_, _, https) = reactor.adoptedPorts
    assert isinstance(stream, ProxyHeaderFactory)
    assert isinstance(stream.wrappedFactory.wrappedFactory, StreamFactory)
    assert not isinstance(http, ProxyHeaderFactory)
    assert isinstance(https, ProxyHeaderFactory)
    assert isinstance(https.wrappedFactory, TLSMemoryBIOFactory)
    assert https.wrappedFactory.wrappedFactory is http


def test_a_worker_reads_the_proxy_header_on_an_haproxy_egd_socket() -> None:
    from entropy_appliance.net.egd import EgdFactory
    from entropy_appliance.net.proxy import ProxyHeaderFactory

    sock = socket.socket()
    fd = os.dup(sock.fileno())
    try:
        c = config("--workers", "2", "--stream", "none", "--http", "none", "--https", "none",
                   "--egd", "haproxy:tcp:18888:interface=127.0.0.1", "--trusted-proxy", "10.0.0.10",
                   "--worker-fds", f"egd:{fd}:INET", "--worker-index", "0")
        reactor = MemoryReactorClock()
        for listener in makeService(c, reactor=reactor).phase("listeners"):
            listener.startService()
        ((_, _, egd),) = reactor.adoptedPorts
        assert isinstance(egd, ProxyHeaderFactory) and egd.trusted.trusts(IPv4Address("TCP", "10.0.0.10", 1))
        assert isinstance(egd.wrappedFactory.wrappedFactory, EgdFactory)  # inside the per-peer limits
    finally:
        sock.close()
        try:
            os.close(fd)
        except OSError:
            pass  # adopted: the worker closed its copy


def test_worker_zero_alone_publishes_the_onion_service(inherited: str, tmp_path: Path) -> None:
    onion = ["--onion", "--tor-control", "tcp:127.0.0.1:9051", "--onion-key", str(tmp_path / "onion.key")]
    first = makeService(worker_config(inherited, 0, *onion), reactor=MemoryReactorClock())
    assert first.phase_of(first.getServiceNamed("onion")) == "onion"
    assert stat.S_IMODE(os.stat(tmp_path / "onion.key").st_mode) == 0o600
    other = makeService(worker_config(inherited, 1, *onion), reactor=MemoryReactorClock())
    assert other.phase("onion") == ()


def test_single_process_publishes_the_onion_service_created_at_build(tmp_path: Path) -> None:
    key = tmp_path / "onion.key"
    c = config("--https", "none", "--onion", "--tor-control", "unix:/run/tor/control",
               "--onion-key", str(key))
    assert not key.exists()  # parsing creates nothing
    tree = makeService(c, reactor=MemoryReactorClock())
    assert key.exists() and names(tree)["onion"] == "onion"
    assert start_order(tree)[-2:] == ["onion", "notify"]


def test_a_worker_takes_systemd_endpoints_on_trust(inherited: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Under socket activation only the parent can look a systemd: socket up
    (LISTEN_PID is its pid); a worker adopts what the parent passed it.
    """
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    activated = ["--stream", "systemd:domain=INET:name=stream", "--http", "systemd:domain=INET:name=http",
                 "--https", "systemd:domain=INET:name=https"]
    with pytest.raises(usage.UsageError, match="--stream 'systemd:domain=INET:name=stream' is not a valid"):
        config(*activated)
    c = config(*activated, "--worker-fds", inherited, "--worker-index", "0")
    assert c.role == "worker" and c.http == ("systemd:domain=INET:name=http",)
