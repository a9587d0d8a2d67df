"""
The PROXY protocol layer (``entropy_appliance.net.proxy``) in memory: v1
and v2 headers, in one read or byte by byte; the client they name reaching
the per-peer limits, the logs and the raw stream; the trusted proxies;
refusals of bad, late and forged headers; and how ``haproxy:`` listeners
are configured and built.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError

from entropy_appliance.app.options import parse_config
from entropy_appliance.core.peers import PeerPolicy
from entropy_appliance.net.egd import EgdFactory
from entropy_appliance.net.limits import PeerLimitedFactory
from entropy_appliance.net.proxy import ProxyHeaderFactory, TrustedProxies, split_proxy
from entropy_appliance.net.tls import TLSServerFactory
from tests.test_limits import http_stack, parse, stream_stack

PROXY = "10.0.0.10"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, port: int = 40000, dest: str = "10.0.0.11", dport: int = 8080) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {dest} {port} {dport}\r\n".encode()


def v2(source: str | None, port: int = 40000, dest: str = "10.0.0.11", dport: int = 8080,
       tlv: bytes = b"") -> bytes:
    """A v2 header: PROXY over TCP from ``source``, or LOCAL when ``source`` is None."""
    if source is None:
        return V2_SIGNATURE + b"\x20\x00" + struct.pack("!H", len(tlv)) + tlv
    ip = ipaddress.ip_address(source)
    if ip.version == 4:
        body = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack("!HH", port, dport)
        fam = b"\x11"
    else:
        body = (socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, dest)
                + struct.pack("!HH", port, dport))
        fam = b"\x21"
    body += tlv
    return V2_SIGNATURE + b"\x21" + fam + struct.pack("!H", len(body)) + body


class Recorder(Protocol):
    """Notes what it was built for and what it read; writes at once, as the raw stream does."""

    def __init__(self, addr: Any) -> None:
        self.addr = addr
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Recording(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        p = Recorder(addr)
        p.factory = self
        self.built.append(p)
        return p


def proxied(inner: Any, trusted: str = "10.0.0.0/24", clock: Clock | None = None,
            timeout: float = 15.0) -> ProxyHeaderFactory:
    return ProxyHeaderFactory(inner, TrustedProxies([trusted]), clock or Clock(), timeout)


def accept(factory: ProxyHeaderFactory, host: str = PROXY, port: int = 50000) -> tuple[Any, StringTransport]:
    """A connection from ``host`` as a listening port makes it: None if refused at once."""
    addr = IPv4Address("TCP", host, port)
    proto = factory.buildProtocol(addr)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.11", 8080), peerAddress=addr)
    if proto is not None:
        proto.makeConnection(transport)
    return proto, transport


# -- headers ------------------------------------------------------------------------


@pytest.mark.parametrize("header", [v1("192.0.2.7"), v2("192.0.2.7"),
                                    v2("192.0.2.7", tlv=b"\x04\x00\x03abc")])
@pytest.mark.parametrize("pieces", ["whole", "bytewise"])
def test_the_header_names_the_client_and_nothing_is_written_before_it(header: bytes, pieces: str) -> None:
    inner = Recording()
    proto, transport = accept(proxied(inner))
    data = header + b"GET / HTTP/1.1\r\n"
    chunks = [data] if pieces == "whole" else [data[i:i + 1] for i in range(len(data))]
    for c in chunks[:-1]:
        proto.dataReceived(c)
        if not inner.built:
            # Until the header is whole: no protocol, not a byte written.
            assert transport.value() == b""
    proto.dataReceived(chunks[-1])
    (client,) = inner.built
    assert (client.addr.host, client.addr.port) == ("192.0.2.7", 40000)
    assert client.received == b"GET / HTTP/1.1\r\n"
    assert proto.getPeer() == client.addr and proto.getHost().port == 8080
    assert transport.value() == b"hello" and not transport.disconnecting


def test_ipv6_clients_of_both_versions() -> None:
    for header in (v1("2001:db8::7", dest="2001:db8::1"), v2("2001:db8::7", dest="2001:db8::1")):
        inner = Recording()
        proto, _ = accept(proxied(inner))
        proto.dataReceived(header)
        assert isinstance(inner.built[0].addr, IPv6Address)
        assert inner.built[0].addr.host == "2001:db8::7"


@pytest.mark.parametrize("header", [v2(None), b"PROXY UNKNOWN\r\n",
                                    b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"])
def test_a_header_without_an_address_is_the_proxys_own_connection(header: bytes) -> None:
    """HAProxy's health checks send LOCAL: served as the balancer itself."""
    inner = Recording()
    factory = proxied(inner)
    proto, _ = accept(factory)
    proto.dataReceived(header + b"GET /health")
    assert inner.built[0].addr.host == PROXY and inner.built[0].received == b"GET /health"
    assert factory.counts == {"local": 1}


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",                                    # no header at all
    b"PROXY TCP4 192.0.2.7 10.0.0.11 40000\r\n",              # an address missing
    b"PROXY TCP4 192.0.2.7 10.0.0.11 40000 99999\r\n",        # a port out of range
    b"PROXY TCP4 2001:db8::7 10.0.0.11 40000 8080\r\n",       # the wrong family
    b"PROXY TCP4 example.org 10.0.0.11 40000 8080\r\n",       # not an address
    b"PROXY TCP4 192.0.2.7 10.0.0.11 x 8080\r\n",             # not a port
    b"PROXY TCP4 " + b"1" * 120 + b"\r\n",                    # longer than v1 allows
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),           # version 3
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),           # UDP
    V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),            # too short for its addresses
])
def test_a_bad_header_closes_the_connection_unserved(data: bytes) -> None:
    inner = Recording()
    factory = proxied(inner)
    with capturedLogs() as events:
        proto, transport = accept(factory)
        proto.dataReceived(data)
    assert inner.built == [] and transport.value() == b""
    assert transport.disconnected
    assert factory.counts == {"invalid-header": 1}
    assert "sent no valid PROXY header" in formatEvent(events[-1])


def test_a_header_that_does_not_arrive_in_time_closes_the_connection() -> None:
    clock = Clock()
    inner = Recording()
    proto, transport = accept(proxied(inner, clock=clock, timeout=15))
    proto.dataReceived(b"PROXY TCP4 192.0.2.7")
    clock.advance(14.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected and inner.built == []
    # A header in time cancels the deadline.
    proto, transport = accept(proxied(inner, clock=clock, timeout=15))
    proto.dataReceived(v2("192.0.2.7"))
    clock.advance(60)
    assert not transport.disconnected and clock.getDelayedCalls() == []


def test_the_wrapped_protocol_hears_the_connection_end() -> None:
    inner = Recording()
    proto, _ = accept(proxied(inner))
    proto.dataReceived(v1("192.0.2.7"))
    proto.connectionLost(None)
    assert inner.built[0].lost
    # Closed before its header: nothing to tell, nothing left registered.
    factory = proxied(inner)
    proto, _ = accept(factory)
    proto.connectionLost(None)
    assert factory.protocols == {}


# -- trust ----------------------------------------------------------------------------


def test_trusted_proxies() -> None:
    t = TrustedProxies(["10.0.0.0/24", "2001:db8::/64"])
    assert t.trusts(IPv4Address("TCP", "10.0.0.200", 1))
    assert not t.trusts(IPv4Address("TCP", "10.0.1.1", 1))
    assert t.trusts(IPv6Address("TCP", "::ffff:10.0.0.3", 1))  # a dual-stack listener
    assert t.trusts(IPv6Address("TCP", "2001:db8::99", 1))
    assert not t.trusts(IPv6Address("TCP", "2001:db8:1::99", 1))
    # A unix socket's file mode decides who connects.
    assert t.trusts(UNIXAddress(b"/run/entropy/http.sock"))
    assert TrustedProxies.parse("10.0.0.5") == "10.0.0.5/32"
    with pytest.raises(ValueError, match="is not an IP network"):
        TrustedProxies.parse("proxy.lan")


def test_a_connection_from_an_untrusted_address_is_closed_unread_and_logged_once() -> None:
    inner = Recording()
    factory = proxied(inner)
    with capturedLogs() as events:
        for port in (1, 2, 3):
            proto, _ = accept(factory, "198.51.100.9", port)
            assert proto is None  # a listening port closes it at once, before reading
    assert inner.built == [] and factory.counts == {"untrusted": 3}
    assert [formatEvent(e) for e in events] == [
        "closed a connection from 198.51.100.9: it is not a trusted proxy (--trusted-proxy); "
        "its connections to PROXY listeners are closed unread (logged once per address)"]


def test_a_forged_header_gets_no_other_peers_budget() -> None:
    """
    Per-peer limits through the proxy: each client the balancer names has
    its own budget, the balancer's own health checks do not spend theirs,
    and a client that forges a header from outside the trusted network is
    closed before its header is read, so it spends nobody's budget either.
    """
    _, site, _ = http_stack(PeerPolicy(rate=2))  # a burst of 4 per peer
    factory = proxied(site)

    def request_as(header: bytes, host: str = PROXY) -> int | None:
        proto, transport = accept(factory, host)
        if proto is None:
            return None
        proto.dataReceived(header + b"GET /v1/random?bytes=8 HTTP/1.1\r\nHost: a\r\n\r\n")
        return parse(transport.value())[0]

    assert [request_as(v2("192.0.2.2")) for _ in range(5)] == [200] * 4 + [429]
    # The forger, from outside the trusted network, claims to be 192.0.2.3.
    assert [request_as(v1("192.0.2.3"), host="198.51.100.9") for _ in range(10)] == [None] * 10
    assert [request_as(v1("192.0.2.3")) for _ in range(5)] == [200] * 4 + [429]
    # The balancer's own (LOCAL) connections have a budget of their own too.
    assert request_as(v2(None)) == 200


def test_per_peer_stream_limits_count_the_real_client() -> None:
    _, streams, _ = stream_stack(PeerPolicy(streams=2))
    factory = proxied(streams)
    transports = []
    for client in ("192.0.2.2", "192.0.2.2", "192.0.2.2", "192.0.2.3"):
        proto, transport = accept(factory)
        proto.dataReceived(v2(client))
        transports.append(transport)
    # The third stream of 192.0.2.2 is closed with nothing sent; 192.0.2.3 is served.
    assert [t.disconnecting or t.disconnected for t in transports] == [False, False, True, False]
    assert transports[2].value() == b""
    transports[3].producer.resumeProducing()
    assert len(transports[3].value()) == 64 * 1024


# -- configuration and wiring ---------------------------------------------------------


def test_split_proxy() -> None:
    assert split_proxy("haproxy:tcp:8080") == ("tcp:8080", True)
    assert split_proxy("tcp:8080") == ("tcp:8080", False)


def test_a_proxy_listener_needs_a_trusted_proxy(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"'haproxy:tcp:9000' reads a PROXY header.*--trusted-proxy CIDR"):
        parse_config(["--stream", "haproxy:tcp:9000"])
    with pytest.raises(UsageError, match="--trusted-proxy: 'x' is not an IP network"):
        parse_config(["--stream", "haproxy:tcp:9000", "--trusted-proxy", "x"])
    with pytest.raises(UsageError, match="cannot be combined"):
        parse_config(["--trusted-proxy", "none", "--trusted-proxy", "10.0.0.1"])
    config = parse_config(["--stream", "haproxy:tcp:9000"],
                          {"ENTROPY_TRUSTED_PROXY": "10.0.0.10 192.0.2.0/28"})
    assert config.trusted_proxies == ("10.0.0.10/32", "192.0.2.0/28")
    assert parse_config([]).trusted_proxies == ()


def test_every_surface_gets_the_proxy_layer_outermost(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Each listener is made from ``listeners(config)``: a ``haproxy:`` one gets
    the header reader as its outermost factory (outside TLS for https), and
    listens on the socket the rest of its description names.
    """
    from twisted.internet.testing import MemoryReactorClock

    from entropy_appliance.app.build import _Listener, _listening_endpoints, build_single, listeners

    monkeypatch.chdir(tmp_path)
    config = parse_config(["--source", "kernel", "--stream", "haproxy:tcp:9000", "--stream", "tcp:9001",
                           "--http", "haproxy:tcp:8080", "--https", "haproxy:ssl:8443:backlog=7",
                           "--egd", "haproxy:tcp:8888", "--egd", "tcp:8889",
                           "--trusted-proxy", "127.0.0.1"])
    assert [(x.kind, x.proxied) for x in listeners(config)] == [
        ("stream", True), ("stream", False), ("http", True), ("https", True), ("egd", True), ("egd", False)]
    reactor = MemoryReactorClock()
    for service in build_single(config, reactor):
        if isinstance(service, _Listener):
            service.privilegedStartService()
    ports = {port: factory for port, factory, _, _ in reactor.tcpServers}
    assert sorted(ports) == [8080, 8443, 8888, 8889, 9000, 9001]
    assert [p[2] for p in reactor.tcpServers if p[0] == 8443] == [7]
    for port in (8080, 8443, 8888, 9000):
        assert isinstance(ports[port], ProxyHeaderFactory), port
    for port in (8889, 9001):
        assert not isinstance(ports[port], ProxyHeaderFactory), port
    assert isinstance(ports[8443].wrappedFactory, TLSServerFactory)
    # EGD: the header reader, then the per-peer limits, then the EGD server.
    assert isinstance(ports[8888].wrappedFactory, PeerLimitedFactory)
    assert isinstance(ports[8888].wrappedFactory.wrappedFactory, EgdFactory)
    assert ports[8888].counts is ports[9000].counts  # one count of outcomes for /v1/status
    assert ports[9000].trusted.networks == (ipaddress.ip_network("127.0.0.1/32"),)
    assert [x.socket for x, _ in _listening_endpoints(config, reactor)][:2] == [
        "tcp:9000:backlog=1024", "tcp:9001:backlog=1024"]


def test_egd_behind_the_proxy_keys_its_per_peer_limits_on_the_real_client(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    ``--egd haproxy:tcp:PORT`` as ``makeService`` builds it: a client named
    by the balancer's header is answered, its third connection is refused
    by ``--peer-streams 2`` (which counts raw streams and EGD connections
    together), another client through the same balancer still is answered,
    and a forged header from outside ``--trusted-proxy`` is closed unread
    without spending anyone's budget.
    """
    from twisted.internet.testing import MemoryReactorClock

    from entropy_appliance.app.build import _Listener, build_single

    monkeypatch.chdir(tmp_path)
    config = parse_config(["--source", "kernel", "--stream", "none", "--http", "none", "--https", "none",
                           "--egd", "haproxy:tcp:8888:interface=127.0.0.1", "--peer-streams", "2",
                           "--trusted-proxy", PROXY])
    reactor = MemoryReactorClock()
    for service in build_single(config, reactor):
        if isinstance(service, _Listener):
            service.privilegedStartService()
    ((_, factory, _, _),) = reactor.tcpServers
    pid = str(os.getpid()).encode()

    def egd_as(header: bytes, host: str = PROXY) -> tuple[bytes, StringTransport] | None:
        """Connect from ``host``, send ``header`` and a 0x04 (the server's PID): what came back."""
        proto, transport = accept(factory, host)
        if proto is None:
            return None
        proto.dataReceived(header + b"\x04")
        return transport.value(), transport

    with capturedLogs() as events:
        held = [egd_as(v2("192.0.2.2")) for _ in range(2)]
        assert [reply for reply, _ in held] == [bytes([len(pid)]) + pid] * 2  # type: ignore[misc]
        third = egd_as(v2("192.0.2.2"))
        assert third is not None
        assert third[0] == b"" and (third[1].disconnecting or third[1].disconnected)
        # The forger claims 192.0.2.3 from outside the trusted network: closed before a byte is read.
        assert [egd_as(v1("192.0.2.3"), host="198.51.100.9") for _ in range(5)] == [None] * 5
        # The real 192.0.2.3, through the balancer, has its whole budget.
        other = [egd_as(v2("192.0.2.3")) for _ in range(2)]
        assert [reply for reply, _ in other] == [bytes([len(pid)]) + pid] * 2  # type: ignore[misc]
    logged = " ".join(formatEvent(e) for e in events)
    # The log names the client, not the balancer.
    assert "refused a connection from 192.0.2.2: it already has 2 open" in logged
    assert f"refused a connection from {PROXY}" not in logged
    assert factory.counts["proxied"] == 4 and factory.counts["untrusted"] == 5
