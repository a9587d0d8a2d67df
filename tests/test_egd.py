"""The EGD protocol, in memory: the pure session on bytes, then the Twisted connection."""

from __future__ import annotations

import os
import random
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python import usage
from zope.interface.verify import verifyObject

from entropy_appliance.app.build import makeService
from entropy_appliance.app.options import parse_config
from entropy_appliance.core.egd import (
    EgdCommand,
    EgdParser,
    EgdRequest,
    EgdSession,
    UnknownCommand,
    encode_request,
)
from entropy_appliance.core.peers import PeerPolicy
from entropy_appliance.core.pool import FailClosed, ReseedPolicy, Starved
from entropy_appliance.core.states import PoolState
from entropy_appliance.net.egd import TWISTED_INTERNALS, EgdFactory, EgdProtocol, SendNow
from entropy_appliance.net.limits import PeerGuard, PeerLimitedFactory
from tests.test_build import ThreadCalls, spawner
from tests.test_pool import seed_fully, slow_pipeline, stuck
from tests.twistd_helpers import read_exactly
from tests.web_helpers import failed_pool, seeded_pool

PID = 4242


class CountingPool:
    """
    A pool whose bytes are a known sequence (0, 1, ... 250, 0, ...), so that
    the replies of any framing can be checked byte for byte; its state is
    set by the test.
    """

    def __init__(self, bits: int = 384) -> None:
        self.policy = ReseedPolicy(bits=bits)
        self.state = PoolState.OK
        self.pos = 0
        self.draws = 0
        self.mixed: list[bytes] = []
        self.served = 0

    def random_bytes(self, n: int, additional_input: bytes = b"", surface: str | None = None) -> bytes:
        if self.state is PoolState.FAILED:
            raise FailClosed("source failed")
        if self.state is PoolState.STARVED:
            raise Starved("reseed due")
        assert surface == "egd"
        self.draws += 1
        out = bytes((self.pos + i) % 251 for i in range(n))
        self.pos += n
        self.served += n
        return out

    def ready(self, n: int = 0) -> bool:
        return self.state is PoolState.OK

    def mix(self, data: bytes) -> None:
        self.mixed.append(data)


def expected(requests: list[EgdRequest], bits: int = 384) -> bytes:
    """The replies a healthy server gives ``requests``, one at a time, from a CountingPool."""
    pos = 0
    out = bytearray()

    def take(n: int) -> bytes:
        nonlocal pos
        data = bytes((pos + i) % 251 for i in range(n))
        pos += n
        return data

    for r in requests:
        if r.command is EgdCommand.ENTROPY:
            out += struct.pack(">I", bits)
        elif r.command is EgdCommand.READ:
            out += bytes((r.n,)) + take(r.n)
        elif r.command is EgdCommand.READ_BLOCKING:
            out += take(r.n)
        elif r.command is EgdCommand.PID:
            out += bytes((len(str(PID)),)) + str(PID).encode()
    return bytes(out)


def run(session: EgdSession, *pieces: bytes) -> tuple[bytes, bool]:
    """Feed ``pieces`` one by one, answering after each; return all output and whether it closed."""
    out = bytearray()
    closed = False
    for piece in pieces:
        session.receive(piece)
        while True:
            step = session.step()
            out += step.out
            closed = closed or step.close
            if not step.more:
                break
    return bytes(out), closed


SAMPLE = [
    EgdRequest(EgdCommand.ENTROPY),
    EgdRequest(EgdCommand.READ, 16),
    EgdRequest(EgdCommand.READ_BLOCKING, 255),
    EgdRequest(EgdCommand.WRITE, 5, 40, b"hello"),
    EgdRequest(EgdCommand.PID),
    EgdRequest(EgdCommand.READ_BLOCKING, 1),
    EgdRequest(EgdCommand.READ, 0),
    EgdRequest(EgdCommand.READ_BLOCKING, 0),
    EgdRequest(EgdCommand.WRITE, 0, 0, b""),
    EgdRequest(EgdCommand.READ_BLOCKING, 7),
]
WIRE = b"".join(encode_request(r) for r in SAMPLE)


# -- the wire format, command by command -----------------------------------------------


def test_each_command_alone() -> None:
    pool = CountingPool()
    s = EgdSession(pool, PID)
    assert run(s, b"\x00") == (struct.pack(">I", 384), False)
    assert run(s, b"\x01\x05") == (b"\x05" + bytes(range(5)), False)
    assert run(s, b"\x02\x03") == (bytes(range(5, 8)), False)
    assert run(s, b"\x03\x01\x00\x03abc") == (b"", False)
    assert pool.mixed == [b"abc"]
    assert run(s, b"\x04") == (b"\x04" + b"4242", False)
    assert s.answered == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}


def test_parser_reads_every_field() -> None:
    p = EgdParser()
    p.feed(WIRE)
    got = []
    while (r := p.next()) is not None:
        got.append(r)
    assert got == SAMPLE
    assert p.buffered == 0


def test_every_split_gives_the_same_replies() -> None:
    want = expected(SAMPLE)
    for cut in range(len(WIRE) + 1):
        assert run(EgdSession(CountingPool(), PID), WIRE[:cut], WIRE[cut:]) == (want, False), cut
    for a in range(0, len(WIRE), 7):
        for b in range(a, len(WIRE) + 1, 11):
            pieces = (WIRE[:a], WIRE[a:b], WIRE[b:])
            assert run(EgdSession(CountingPool(), PID), *pieces) == (want, False), (a, b)
    byte_by_byte = [WIRE[i:i + 1] for i in range(len(WIRE))]
    assert run(EgdSession(CountingPool(), PID), *byte_by_byte) == (want, False)
    # Coalesced: the whole sample three times in one read.
    assert run(EgdSession(CountingPool(), PID), WIRE * 3) == (expected(SAMPLE * 3), False)


def random_requests(rng: random.Random, count: int) -> list[EgdRequest]:
    out = []
    for _ in range(count):
        c = rng.choice([0, 1, 2, 2, 2, 2, 3, 4])
        if c in (1, 2):
            out.append(EgdRequest(EgdCommand(c), rng.randrange(256)))
        elif c == 3:
            data = rng.randbytes(rng.randrange(256))
            out.append(EgdRequest(EgdCommand.WRITE, len(data), rng.randrange(65536), data))
        else:
            out.append(EgdRequest(EgdCommand(c)))
    return out


def test_a_thousand_pipelined_mixed_commands_in_random_pieces() -> None:
    rng = random.Random(12)
    requests = random_requests(rng, 1000)
    wire = b"".join(encode_request(r) for r in requests)
    pieces = []
    pos = 0
    while pos < len(wire):
        n = rng.choice([1, 2, 3, 17, 255, 4096])
        pieces.append(wire[pos:pos + n])
        pos += n
    pool = CountingPool()
    session = EgdSession(pool, PID, backlog=64)
    out, closed = run(session, *pieces)
    assert not closed
    assert out == expected(requests)
    assert pool.mixed == [r.data for r in requests if r.command is EgdCommand.WRITE and r.data]
    assert sum(session.answered.values()) == 1000
    assert session.pending == 0 and session.buffered == 0


def test_pipelined_blocking_reads_are_one_draw_each_run() -> None:
    pool = CountingPool()
    session = EgdSession(pool, PID)
    out, _ = run(session, b"\x02\xff" * 64)
    assert out == bytes(i % 251 for i in range(64 * 255))
    assert pool.draws == 1


def test_a_large_batch_is_answered_in_bounded_steps() -> None:
    pool = CountingPool()
    session = EgdSession(pool, PID, backlog=2000, max_step=64 * 1024)
    session.receive(b"\x02\xff" * 2000)
    sizes = []
    while True:
        step = session.step()
        sizes.append(len(step.out))
        if not step.more:
            break
    assert sum(sizes) == 2000 * 255
    assert max(sizes) <= 64 * 1024 + 255


# -- states of the pool -----------------------------------------------------------------


def test_starved_reports_zero_and_holds_back_what_follows_a_blocking_read() -> None:
    pool = CountingPool()
    pool.state = PoolState.STARVED
    session = EgdSession(pool, PID)
    session.receive(b"\x00\x01\x10\x02\x08\x00\x04")
    step = session.step()
    assert step.out == b"\x00\x00\x00\x00" + b"\x00"  # 0 bits; count 0
    assert step.wait == 8 and not step.close
    assert session.step().wait == 8  # still waiting, nothing behind it answered
    pool.state = PoolState.OK
    step = session.step()
    assert step.out == bytes(range(8)) + struct.pack(">I", 384) + b"\x044242"
    assert not step.wait and not step.close


def test_failed_reports_zero_and_a_blocking_read_closes_without_a_byte() -> None:
    pool = CountingPool()
    pool.state = PoolState.FAILED
    session = EgdSession(pool, PID)
    out, closed = run(session, b"\x00\x01\x20")
    assert (out, closed) == (b"\x00\x00\x00\x00\x00", False)
    out, closed = run(session, b"\x02\x20\x00")
    assert (out, closed) == (b"", True)
    assert pool.served == 0
    assert not session.wants_input


def test_unknown_command_ends_after_the_requests_before_it() -> None:
    session = EgdSession(CountingPool(), PID)
    out, closed = run(session, b"\x02\x04\x05\x02\x04")
    assert out == bytes(range(4)) and closed
    assert not session.wants_input
    p = EgdParser()
    p.feed(b"\x00\xfe")
    assert p.next() == EgdRequest(EgdCommand.ENTROPY)
    assert p.next() is None
    assert isinstance(p.error, UnknownCommand) and p.error.command == 0xFE


def test_the_backlog_is_bounded_whatever_the_client_sends() -> None:
    pool = CountingPool()
    pool.state = PoolState.STARVED
    session = EgdSession(pool, PID, backlog=100)
    session.receive(b"\x02\x10" * 5000 + b"\x03\x00\x00\xff" + b"x" * 255)
    assert session.step().wait
    assert session.pending == 100
    assert not session.wants_input
    pool.state = PoolState.OK
    out, _ = run(session, b"")
    assert len(out) == 5000 * 16
    assert session.wants_input and session.pending == 0
    assert pool.mixed == [b"x" * 255]


def test_entropy_figure_is_the_reseed_bits_never_output_bytes() -> None:
    pool = CountingPool(bits=512)
    assert run(EgdSession(pool, PID), b"\x00") == (struct.pack(">I", 512), False)


# -- the Twisted connection over a real pool ------------------------------------------------


def connect(pool: Any, backlog: int = 1024) -> tuple[EgdProtocol, StringTransport, EgdFactory]:
    factory = EgdFactory(pool, backlog=backlog, pid=PID)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, factory


def test_connection_is_a_push_producer_on_its_transport() -> None:
    proto, transport, _ = connect(seeded_pool())
    assert verifyObject(IPushProducer, proto)
    assert transport.producer is proto and transport.streaming is True


def test_served_bytes_are_counted_under_egd() -> None:
    pool = seeded_pool()
    proto, transport, _ = connect(pool)
    proto.dataReceived(b"\x02\xff" * 4 + b"\x01\x10")
    data = transport.value()
    assert len(data) == 4 * 255 + 17 and data[4 * 255] == 16
    assert len(set(data[i:i + 16] for i in range(0, 1020, 16))) == 1020 // 16 + 1
    assert pool.status().served["egd"] == 4 * 255 + 16


def test_a_reader_that_does_not_read_gets_no_more_replies() -> None:
    pool = seeded_pool()
    proto, transport, _ = connect(pool, backlog=10)
    proto.pauseProducing()  # the transport's buffer is full
    proto.dataReceived(b"\x02\x40" * 50)
    assert transport.value() == b""
    assert proto.session.pending == 10
    assert transport.producerState == "paused"  # it stopped reading
    proto.resumeProducing()
    assert len(transport.value()) == 50 * 64
    assert transport.producerState == "producing"


def test_starved_pool_holds_the_replies_then_sends_them_in_order() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    proto, transport, _ = connect(pool)
    pool._buffer.clear()
    clock.advance(1.0)  # a reseed is due, and there is no seed for it
    proto.dataReceived(b"\x00\x01\x08\x02\x20\x00\x04")
    assert transport.value() == b"\x00\x00\x00\x00\x00"
    assert not transport.disconnecting
    assert pool.state is PoolState.STARVED
    clock.advance(30.0)
    assert not transport.disconnecting
    held.deliver()
    data = transport.value()
    assert len(data) == 5 + 32 + 4 + 5
    assert data[37:41] == struct.pack(">I", 384) and data[41:] == b"\x044242"
    assert pool.status().served["egd"] == 32


def test_source_failure_closes_a_waiting_blocking_read_without_a_byte() -> None:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    proto, transport, _ = connect(pool)
    pool._buffer.clear()
    clock.advance(1.0)
    proto.dataReceived(b"\x02\x20")
    source.make = stuck
    held.deliver(3)
    assert pool.state is PoolState.FAILED
    assert transport.value() == b""
    assert transport.disconnecting
    assert transport.producer is None


def test_failed_pool_answers_zero_and_closes_on_a_blocking_read() -> None:
    pool = failed_pool()
    proto, transport, _ = connect(pool)
    proto.dataReceived(b"\x00\x01\x20")
    assert transport.value() == b"\x00\x00\x00\x00\x00"
    assert not transport.disconnecting
    proto.dataReceived(b"\x02\x20\x00")
    assert transport.value() == b"\x00\x00\x00\x00\x00"
    assert transport.disconnecting
    assert "egd" not in pool.status().served


def test_unknown_command_closes_and_logs_at_debug_only() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        proto, transport, _ = connect(seeded_pool())
        proto.dataReceived(b"\x02\x02\x99\x02\x02")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(transport.value()) == 2
    assert transport.disconnecting
    mine = [e for e in events if "EGD" in e.get("log_format", "")]
    assert mine and all(e["log_level"] is LogLevel.debug for e in mine)


def test_client_entropy_is_mixed_in_never_credited() -> None:
    pool = seeded_pool()
    proto, transport, _ = connect(pool)
    before = pool.status()
    proto.dataReceived(b"\x03\x10\x00\x04abcd")
    after = pool.status()
    assert transport.value() == b""
    assert pool._mixed is not None  # folded in as additional input at the next reseed
    assert after.buffer.fill_bytes == before.buffer.fill_bytes
    assert after.source.bytes_read == before.source.bytes_read


def test_close_all_and_connection_lost() -> None:
    proto, transport, factory = connect(seeded_pool())
    assert factory.close_all() == 1
    assert transport.disconnecting
    proto.connectionLost()
    assert factory.live == set()
    proto.dataReceived(b"\x02\x10")
    assert transport.value() == b""


@pytest.mark.parametrize("backlog", [0, -1])
def test_backlog_must_be_positive(backlog: int) -> None:
    with pytest.raises(ValueError):
        EgdSession(CountingPool(), PID, backlog=backlog)


# -- the option and the listeners of every role ------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    return tmp_path


NO_WEB = ["--source", "kernel", "--stream", "none", "--http", "none", "--https", "none"]


def test_egd_is_off_unless_asked_for() -> None:
    assert parse_config([]).egd == ()
    assert parse_config(["--egd", "unix:/run/e.sock", "--egd", "tcp:8888:interface=127.0.0.1"]).egd == (
        "unix:/run/e.sock", "tcp:8888:interface=127.0.0.1")
    assert parse_config([], {"ENTROPY_EGD": "unix:/run/e.sock tcp:8888"}).egd == (
        "unix:/run/e.sock", "tcp:8888")
    with pytest.raises(usage.UsageError, match="--egd 'tcp:eight' is not a valid server endpoint"):
        parse_config(["--egd", "tcp:eight"])
    with pytest.raises(usage.UsageError, match="--egd none cannot be combined"):
        parse_config(["--egd", "none", "--egd", "tcp:8888"])


def test_single_process_listens_for_egd_on_tcp_and_unix(in_tmp: Path) -> None:
    reactor = MemoryReactorClock()
    sock = str(in_tmp / "egd.sock")
    tree = makeService(parse_config([*NO_WEB, "--egd", "tcp:18888:interface=127.0.0.1",
                                     "--egd", f"unix:{sock}"]), reactor=reactor)
    listeners = tree.phase("listeners")
    assert [(s.kind, s.description) for s in listeners] == [  # type: ignore[attr-defined]
        ("egd", "tcp:18888:interface=127.0.0.1"), ("egd", f"unix:{sock}")]
    for listener in listeners:
        listener.privilegedStartService()
    ((port, tcp_factory, _, interface),) = reactor.tcpServers
    ((path, unix_factory, *_),) = reactor.unixServers
    assert (port, interface, path) == (18888, "127.0.0.1", sock)
    for factory in (tcp_factory, unix_factory):
        # Behind the per-peer limits of the raw stream.
        assert isinstance(factory, PeerLimitedFactory)
        assert isinstance(factory.wrappedFactory, EgdFactory)
        assert factory.connections is not None and factory.connections.limit == 64


def test_stop_closes_egd_connections(in_tmp: Path) -> None:
    reactor = MemoryReactorClock()
    ThreadCalls(reactor)
    tree = makeService(parse_config([*NO_WEB, "--egd", "tcp:18888"]), reactor=reactor)
    tree.privilegedStartService()
    tree.startService()
    ((_, factory, *_),) = reactor.tcpServers
    client = IPv4Address("TCP", "127.0.0.1", 40000)
    transport = StringTransport(peerAddress=client)
    factory.buildProtocol(client).makeConnection(transport)
    tree.stopService()
    assert transport.disconnecting


def test_parent_holds_the_egd_socket_and_a_worker_serves_it(in_tmp: Path) -> None:
    reactor = MemoryReactorClock()
    spawner(reactor)
    args = [*NO_WEB, "--http", "tcp:18080:interface=127.0.0.1", "--egd", "tcp:18888:interface=127.0.0.1"]
    args.remove("--http")
    args.remove("none")
    parent = makeService(parse_config([*args, "--workers", "2"]), reactor=reactor)
    assert [p.kind for p in parent.phase("listeners")] == ["http", "egd"]  # type: ignore[attr-defined]
    socks = [socket.socket() for _ in range(2)]
    fds = [os.dup(s.fileno()) for s in socks]
    try:
        worker = makeService(parse_config([*args, "--workers", "2", "--worker-fds",
                                           f"http:{fds[0]}:INET,egd:{fds[1]}:INET",
                                           "--worker-index", "1"]), reactor=reactor)
        for listener in worker.phase("listeners"):
            listener.startService()
        (_, _, http), (_, _, egd) = reactor.adoptedPorts
        assert isinstance(egd.wrappedFactory, EgdFactory)
        assert not isinstance(http.wrappedFactory, EgdFactory)
    finally:
        for s in socks:
            s.close()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass  # adopted: the worker closed its copy


class NoDelayTransport(StringTransport):
    """A TCP-like transport that records TCP_NODELAY."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - the transport's name
        self.no_delay = enabled


class UnixLikeTransport(StringTransport):
    """A unix socket's transport: it has the method, and the socket refuses the option."""

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        raise OSError(95, "Operation not supported")


def test_replies_are_not_held_back_by_nagle() -> None:
    factory = EgdFactory(seeded_pool(), pid=PID)
    tcp = NoDelayTransport()
    factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)).makeConnection(tcp)
    assert tcp.no_delay
    unix = UnixLikeTransport()
    proto = factory.buildProtocol(None)
    proto.makeConnection(unix)
    proto.dataReceived(b"\x02\x08")
    assert len(unix.value()) == 8


def test_a_run_of_blocking_reads_stops_at_the_step_size_and_at_other_commands() -> None:
    p = EgdParser()
    p.feed(b"\x02\xff" * 10 + b"\x00" + b"\x02\x01")
    assert p.next_blocking_run(100, 3 * 255 + 10) == (3, 3 * 255)
    assert p.next_blocking_run(5, 10_000) == (5, 5 * 255)
    assert p.next_blocking_run(100, 10_000) == (2, 2 * 255)
    assert p.next_blocking_run(100, 10_000) == (0, 0)
    assert p.next() == EgdRequest(EgdCommand.ENTROPY)
    assert p.next_blocking_run(100, 10_000) == (1, 1)
    p.feed(b"\x02")
    assert p.next_blocking_run(100, 10_000) == (0, 0)  # the size has not arrived yet
    p.feed(b"\x07")
    assert p.next_blocking_run(100, 10_000) == (1, 7)


# -- the idle timeout --------------------------------------------------------------------------


def egd_stack(idle: float) -> tuple[PeerLimitedFactory, Clock]:
    clock = Clock()
    guard = PeerGuard(PeerPolicy(idle_timeout=idle, bandwidth=0), clock)
    return guard.wrap_stream(EgdFactory(seeded_pool(clock), pid=PID)), clock


def egd_connect(factory: PeerLimitedFactory, port: int) -> tuple[Any, StringTransport]:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", port))
    proto = factory.buildProtocol(transport.getPeer())
    assert proto is not None
    proto.makeConnection(transport)
    return proto, transport


def test_a_client_that_asks_for_nothing_is_not_idle() -> None:
    """QEMU keeps its connection for the life of the guest, and asks only now and then."""
    factory, clock = egd_stack(idle=30)
    proto, transport = egd_connect(factory, 1)
    proto.dataReceived(b"\x02\x10")
    assert len(transport.value()) == 16
    clock.advance(300)
    assert not transport.disconnecting
    proto.dataReceived(b"\x02\x10")
    assert len(transport.value()) == 32


def test_a_client_that_does_not_read_its_replies_is_idle() -> None:
    factory, clock = egd_stack(idle=30)
    proto, transport = egd_connect(factory, 2)
    transport.producer.pauseProducing()  # its socket is full: the client stopped reading
    proto.dataReceived(b"\x02\x10" * 3)
    assert transport.value() == b""
    clock.advance(31)
    assert transport.disconnecting


# -- replies leave at once, over a real socket ---------------------------------------------------


def socket_connection(factory: Any, sndbuf: int = 0) -> tuple[Any, tcp.Server, socket.socket, MemoryReactor]:
    """
    ``factory``'s protocol on a real loopback TCP connection, its transport
    Twisted's own (``tcp.Server``) on a reactor that never runs: whatever
    the client receives was sent while the requests were being read.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        if sndbuf:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        client.connect(listener.getsockname())
        server_sock, addr = listener.accept()
    if sndbuf:
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    client.settimeout(10)
    reactor = MemoryReactor()
    proto = factory.buildProtocol(IPv4Address("TCP", *addr))
    fd = tcp.Server(server_sock, proto, addr, None, 1, reactor)  # type: ignore[arg-type]
    proto.makeConnection(fd)
    fd.startReading()
    return proto, fd, client, reactor


def proxy_wrapped(factory: Any) -> Any:
    """``factory`` as Twisted's ``haproxy:`` endpoint wraps it (a PROXY header's wrapper)."""

    class Listen:
        def listen(self, wrapped: Any) -> Any:
            self.factory = wrapped
            return succeed(None)

    endpoint = Listen()
    proxyEndpoint(endpoint).listen(factory)  # type: ignore[arg-type]
    return endpoint.factory


def test_twisted_still_has_what_send_now_relies_on() -> None:
    """Twisted is pinned; this fails first if a release renames what SendNow reaches into."""
    fd = FileDescriptor(MemoryReactor())  # type: ignore[arg-type]
    assert [name for name in TWISTED_INTERNALS if not hasattr(fd, name)] == []
    assert fd.dataBuffer == b"" and fd._tempDataBuffer == []
    assert SendNow.find(fd) is not None


@pytest.mark.parametrize("proxy", [False, True])
def test_replies_leave_while_the_requests_are_read(proxy: bool) -> None:
    """
    No second reactor iteration: the reply is on the wire before the reactor
    could run again, behind the per-peer guard, and behind a PROXY header's
    wrapper too.
    """
    guard = PeerGuard(PeerPolicy(idle_timeout=30, bandwidth=0), Clock())
    pool = seeded_pool()
    factory: Any = guard.wrap_stream(EgdFactory(pool, pid=PID))
    if proxy:
        factory = proxy_wrapped(factory)
    proto, fd, client, reactor = socket_connection(factory)
    with client:
        if proxy:
            proto.dataReceived(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 8888\r\n")
            assert proto.getPeer().host == "192.0.2.7"
            proto = proto.wrappedProtocol
        egd = proto.wrappedProtocol
        assert isinstance(egd._send_now, SendNow) and egd._send_now.fd is fd
        for _ in range(3):
            proto.dataReceived(b"\x02\xff" * 64 + b"\x04")
            reply = read_exactly(client, 64 * 255 + 1 + len(str(PID)))
            assert reply.endswith(bytes((len(str(PID)),)) + str(PID).encode())
            assert fd not in reactor.getWriters()  # nothing left for the reactor to send
        assert pool.status().served["egd"] == 3 * 64 * 255


def test_a_client_that_does_not_read_is_held_back_over_a_real_socket() -> None:
    """
    The socket fills: what it does not take stays buffered (bounded), the
    connection stops answering and reading, and once the client reads,
    every reply arrives, none lost or doubled.
    """
    guard = PeerGuard(PeerPolicy(idle_timeout=0, bandwidth=0), Clock())
    proto, fd, client, reactor = socket_connection(
        guard.wrap_stream(EgdFactory(seeded_pool(), backlog=64, pid=PID)), sndbuf=4096)
    with client:
        egd = proto.wrappedProtocol
        sent = 0
        for _ in range(40):
            proto.dataReceived(b"\x02\xff" * 100)
            sent += 100
        buffered = len(fd.dataBuffer) - fd.offset + fd._tempDataLen
        assert 0 < buffered <= fd.bufferSize + 64 * 1024
        assert fd in reactor.getWriters()  # the reactor sends the rest when the socket has room
        assert fd.producerPaused and egd.session.pending > 0  # it stopped answering
        assert egd.reading_paused and fd not in reactor.getReaders()  # and stopped reading
        assert egd.session.pending <= 64
        client.setblocking(False)
        received = 0
        for _ in range(100_000):
            if received == sent * 255:
                break
            try:
                received += len(client.recv(1 << 16))
            except BlockingIOError:
                fd.doWrite()  # what the reactor does when the socket has room
        assert received == sent * 255
        assert not egd.reading_paused and egd.session.pending == 0
