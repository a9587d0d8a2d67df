"""
Per-peer limits, in memory: the pure accounting of ``core.peers`` over a
task.Clock, and the real Site and raw stream behind the adapters (TCP level
in ``net.limits``, HTTP level in ``web.limits``), each connection on a
StringTransport with its own peer address.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IProtocolNegotiationFactory, IPullProducer, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from entropy_appliance.core.peers import (
    PeerBandwidth,
    PeerConnections,
    PeerPolicy,
    PeerRateLimiter,
    TokenBucket,
    peer_key,
)
from entropy_appliance.net.limits import PeerGuard, PeerLimitedFactory, _ProducerGate
from entropy_appliance.net.stream import StreamFactory
from entropy_appliance.web import EntropyWeb
from entropy_appliance.web.limits import limit_site
from tests.web_helpers import seeded_pool

# -- pure accounting -------------------------------------------------------------


def test_token_bucket_burst_then_rate() -> None:
    b = TokenBucket(rate=5.0, burst=10.0, now=0.0)
    assert [b.take(0.0) for _ in range(10)] == [0.0] * 10
    assert b.take(0.0) == pytest.approx(0.2)
    assert b.take(0.1) == pytest.approx(0.1)
    assert b.take(0.2) == 0.0
    assert b.take(100.0) == 0.0 and b.tokens == pytest.approx(9.0)  # refills to the burst only


def test_token_bucket_spend_into_debt() -> None:
    b = TokenBucket(rate=100.0, burst=100.0, now=0.0)
    assert b.spend(0.0, 350) == pytest.approx(2.5)
    assert b.debt(1.0) == pytest.approx(1.5)
    assert b.debt(2.5) == 0.0
    assert not b.full(2.5) and b.full(3.5)


def test_rate_limiter_counts_each_peer_apart() -> None:
    clock = Clock()
    limiter = PeerRateLimiter(2.0, clock)
    assert [limiter.check("10.0.0.1") for _ in range(4)] == [0.0] * 4
    assert limiter.check("10.0.0.1") == pytest.approx(0.5)
    assert limiter.check("10.0.0.2") == 0.0
    clock.advance(0.5)
    assert limiter.check("10.0.0.1") == 0.0


def test_rate_limiter_forgets_quiet_peers() -> None:
    clock = Clock()
    limiter = PeerRateLimiter(10.0, clock)
    for i in range(1000):
        limiter.check(f"10.0.{i // 256}.{i % 256}")
    assert limiter.tracked() == 1000
    clock.advance(61)
    limiter.check("10.9.9.9")
    assert limiter.tracked() == 1


def test_connection_count() -> None:
    c = PeerConnections(2)
    assert c.acquire("a") and c.acquire("a") and not c.acquire("a")
    assert c.acquire("b")
    c.release("a")
    assert c.count("a") == 1 and c.acquire("a")


def test_bandwidth_account() -> None:
    clock = Clock()
    bw = PeerBandwidth(1000, clock)
    assert bw.spend("a", 1000) == 0.0
    assert bw.spend("a", 500) == pytest.approx(0.5)
    assert bw.spend("b", 1000) == 0.0
    clock.advance(0.25)
    assert bw.wait("a") == pytest.approx(0.25)


def test_peer_keys() -> None:
    assert peer_key(IPv4Address("TCP", "192.0.2.7", 1)) == "192.0.2.7"
    assert peer_key(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 1)) == "2001:db8:1:2::/64"
    assert peer_key(IPv6Address("TCP", "2001:db8:1:2:bbbb::9", 1)) == "2001:db8:1:2::/64"
    assert peer_key(IPv6Address("TCP", "::ffff:192.0.2.7", 1)) == "192.0.2.7"
    assert peer_key(UNIXAddress(b"/run/x.sock")) == "UNIXAddress"


# -- the HTTP surface ------------------------------------------------------------


def http_stack(policy: PeerPolicy, clock: Clock | None = None) -> tuple[PeerGuard, PeerLimitedFactory, Clock]:
    """The appliance's Site behind the guard, as tap.py wires it."""
    clock = clock or Clock()
    web = EntropyWeb(seeded_pool(clock), clock)
    site = web.site(timeout=None, reactor=clock)
    guard = PeerGuard(policy, clock)
    return guard, limit_site(site, guard, observe=web.observe), clock


def connect(factory: Any, host: str, port: int = 40000) -> tuple[Any, StringTransport]:
    addr = IPv4Address("TCP", host, port)
    proto = factory.buildProtocol(addr)
    assert proto is not None
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=addr)
    proto.makeConnection(transport)
    return proto, transport


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def get(proto: Any, transport: StringTransport, path: str = "/v1/random?bytes=16&format=hex") -> tuple[
        int, dict[str, str], bytes]:
    transport.clear()
    proto.dataReceived(f"GET {path} HTTP/1.1\r\nHost: appliance\r\n\r\n".encode())
    return parse(transport.value())


def test_a_burst_from_one_peer_is_limited_while_another_is_served() -> None:
    guard, factory, clock = http_stack(PeerPolicy(rate=5))
    greedy, greedy_t = connect(factory, "192.0.2.1")
    polite, polite_t = connect(factory, "192.0.2.2")
    codes = [get(greedy, greedy_t)[0] for _ in range(10)]
    assert codes == [200] * 10  # the burst is 2R
    status, headers, body = get(greedy, greedy_t)
    assert status == 429
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 429 and problem["title"] == "Too Many Requests"
    assert "too many requests" in problem["detail"]
    # Meanwhile the other client is served as usual, on its own budget.
    assert [get(polite, polite_t)[0] for _ in range(5)] == [200] * 5
    # The greedy client gets R more per second.
    clock.advance(1.0)
    assert [get(greedy, greedy_t)[0] for _ in range(6)] == [200] * 5 + [429]


def post_pollen(proto: Any, transport: StringTransport) -> int:
    transport.clear()
    body = b"challenge=" + b"ab" * 32
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return parse(transport.value())[0]


def test_the_hot_paths_are_limited_too() -> None:
    """pollinate's POST / and small GET /v1/random may be answered inline; the limit still holds."""
    _, factory, clock = http_stack(PeerPolicy(rate=3))
    greedy, greedy_t = connect(factory, "192.0.2.1")
    polite, polite_t = connect(factory, "192.0.2.2")
    assert [post_pollen(greedy, greedy_t) for _ in range(7)] == [200] * 6 + [429]
    assert get(greedy, greedy_t, "/v1/random?bytes=16")[0] == 429
    assert [post_pollen(polite, polite_t) for _ in range(3)] == [200] * 3
    assert [get(polite, polite_t, "/v1/random?bytes=16")[0] for _ in range(3)] == [200] * 3
    clock.advance(1)
    assert get(greedy, greedy_t, "/v1/random?bytes=16")[0] == 200


def test_rate_zero_means_no_limit() -> None:
    guard, factory, _ = http_stack(PeerPolicy(rate=0))
    proto, t = connect(factory, "192.0.2.1")
    assert {get(proto, t)[0] for _ in range(100)} == {200}


def test_limited_requests_are_counted_in_the_metrics() -> None:
    guard, factory, clock = http_stack(PeerPolicy(rate=1))
    proto, t = connect(factory, "192.0.2.1")
    assert [get(proto, t, "/health")[0] for _ in range(3)] == [200, 200, 429]
    clock.advance(1)
    _, _, body = get(proto, t, "/metrics")
    assert 'entropy_http_requests_total{method="GET",route="/health",status="429"} 1.0' in body.decode()


def test_slow_request_head_is_cut_off() -> None:
    _, factory, clock = http_stack(PeerPolicy(header_timeout=15, idle_timeout=120))
    slow, slow_t = connect(factory, "192.0.2.1")
    slow.dataReceived(b"GET /health HTTP/1.1\r\n")
    for i in range(2):  # a header line every 5 s keeps the idle timer away
        clock.advance(5)
        assert not slow_t.disconnecting
        slow.dataReceived(b"X-Slow-%d: 1\r\n" % i)
    clock.advance(5)
    assert slow_t.disconnecting and slow_t.value() == b""
    # A prompt client on its own connection is unaffected.
    fast, fast_t = connect(factory, "192.0.2.1", 40001)
    assert get(fast, fast_t, "/health")[0] == 200


def test_slow_head_of_a_second_request_is_cut_off_too() -> None:
    _, factory, clock = http_stack(PeerPolicy(header_timeout=10))
    proto, t = connect(factory, "192.0.2.1")
    assert get(proto, t, "/health")[0] == 200
    clock.advance(30)  # idle between requests is fine (under the idle timeout)
    proto.dataReceived(b"GET /health HTTP/1.1\r\n")
    clock.advance(9)
    assert not t.disconnecting
    clock.advance(1)
    assert t.disconnecting


def test_head_timeout_spares_a_long_response_and_a_request_body() -> None:
    _, factory, clock = http_stack(PeerPolicy(header_timeout=5))
    proto, t = connect(factory, "192.0.2.1")
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    clock.advance(4)
    proto.dataReceived(b"challenge=abcdef")
    clock.advance(20)
    assert not t.disconnecting
    status, _, body = parse(t.value())
    assert status == 200 and len(body.split(b"\n")[0]) == 128


class SlowReader(StringTransport):
    """A client that reads only when told: its transport pauses a push producer past 64 KiB unread."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.received = b""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming and len(self.value()) > 64 * 1024:
            self.producer.pauseProducing()

    def read(self) -> None:
        """Take what was sent; the transport asks for more."""
        self.received += self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()


@pytest.mark.parametrize("path", ["/v1/random?bytes=1000000", "/v1/random?bytes=1000000&format=hex"])
def test_a_head_pipelined_behind_a_long_response_is_timed_from_when_it_is_read(path: str) -> None:
    """The binary body takes the fast path, the hex one the Request path: both wait alike."""
    _, factory, clock = http_stack(PeerPolicy(header_timeout=5, idle_timeout=0))
    addr = IPv4Address("TCP", "192.0.2.1", 40000)
    proto = factory.buildProtocol(addr)
    t = SlowReader(peerAddress=addr)
    proto.makeConnection(t)
    proto.dataReceived(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\n".encode())
    clock.advance(30)  # the response is still being sent to its slow reader
    assert not t.disconnecting and t.producer is not None
    for _ in range(100):
        if t.producer is None:
            break
        t.read()
    status, headers, body = parse(t.received + t.value())
    assert status == 200 and len(body) == int(headers["content-length"])
    clock.advance(4.9)  # the half-sent head is read now, and has five seconds
    assert not t.disconnecting
    clock.advance(0.1)
    assert t.disconnecting


def test_idle_http_connection_is_closed() -> None:
    _, factory, clock = http_stack(PeerPolicy(idle_timeout=60))
    proto, t = connect(factory, "192.0.2.1")
    assert get(proto, t, "/health")[0] == 200
    clock.advance(59)
    assert get(proto, t, "/health")[0] == 200  # activity restarts the timer
    clock.advance(59)
    assert not t.disconnecting
    clock.advance(1)
    assert t.disconnecting


def test_alpn_list_of_the_site_is_visible_through_the_wrapper() -> None:
    _, factory, _ = http_stack(PeerPolicy())
    assert IProtocolNegotiationFactory.providedBy(factory)
    assert b"h2" in factory.acceptableProtocols()


# -- the raw stream --------------------------------------------------------------


def stream_stack(policy: PeerPolicy, clock: Clock | None = None,
                 guard: PeerGuard | None = None) -> tuple[PeerGuard, PeerLimitedFactory, Clock]:
    clock = clock or Clock()
    guard = guard or PeerGuard(policy, clock)
    return guard, guard.wrap_stream(StreamFactory(seeded_pool(clock), chunk_size=64 * 1024)), clock


def test_peer_streams_refuses_the_next_connection_of_that_peer_only() -> None:
    _, factory, _ = stream_stack(PeerPolicy(streams=2))
    addr = IPv4Address("TCP", "192.0.2.1", 1)
    first, first_t = connect(factory, "192.0.2.1", 1)
    connect(factory, "192.0.2.1", 2)
    assert factory.buildProtocol(addr) is None  # a listening port closes it at once
    other, other_t = connect(factory, "192.0.2.2", 3)
    other_t.producer.resumeProducing()
    assert len(other_t.value()) == 64 * 1024
    first_t.loseConnection()
    first.connectionLost(None)
    assert factory.buildProtocol(addr) is not None


def test_peer_streams_zero_means_no_limit() -> None:
    _, factory, _ = stream_stack(PeerPolicy(streams=0))
    for port in range(200):
        connect(factory, "192.0.2.1", port)


def test_a_stream_client_that_stops_reading_is_closed() -> None:
    _, factory, clock = stream_stack(PeerPolicy(idle_timeout=30))
    reader, reader_t = connect(factory, "192.0.2.1", 1)
    stalled, stalled_t = connect(factory, "192.0.2.1", 2)
    for _ in range(10):  # the reader drains a chunk every 5 s; the other never reads
        clock.advance(5)
        reader_t.producer.resumeProducing()
    assert stalled_t.disconnecting
    assert not reader_t.disconnecting


def drain(transports: list[StringTransport], clock: Clock, seconds: float, step: float = 0.05) -> None:
    """Simulate readers that take everything as fast as the server offers it."""
    for _ in range(round(seconds / step)):
        for t in transports:
            if t.producer is not None:
                t.producer.resumeProducing()
        clock.advance(step)


def test_bandwidth_is_capped_per_peer_across_its_connections() -> None:
    rate = 200_000
    _, factory, clock = stream_stack(PeerPolicy(bandwidth=rate, idle_timeout=0))
    a = [connect(factory, "192.0.2.1", p)[1] for p in (1, 2, 3)]
    (b,) = [connect(factory, "192.0.2.2", 4)[1]]
    drain(a + [b], clock, 10)
    sent_a = sum(len(t.value()) for t in a)
    sent_b = len(b.value())
    # One second of burst plus at most one chunk per connection beyond the rate.
    assert 10 * rate <= sent_a <= 11 * rate + 3 * 64 * 1024
    assert 10 * rate <= sent_b <= 11 * rate + 64 * 1024


class Fetcher:
    """
    An HTTP/1.1 client on one keep-alive connection that reads every body as
    fast as the server offers it and asks for the next as soon as one is in.
    """

    def __init__(self, factory: PeerLimitedFactory, host: str, port: int, size: int) -> None:
        self.proto, self.transport = connect(factory, host, port)
        self.size = size
        self.bodies = 0
        self._earlier = 0
        self._ask()

    def _ask(self) -> None:
        self._earlier += len(self.transport.value())
        self.transport.clear()
        self.proto.dataReceived(b"GET /v1/random?bytes=%d HTTP/1.1\r\nHost: a\r\n\r\n" % self.size)

    def step(self) -> None:
        """Take what the server offers; on a complete body, ask for the next."""
        if self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        raw = self.transport.value()
        if b"\r\n\r\n" in raw:
            status, headers, body = parse(raw)
            assert status == 200
            if len(body) == int(headers["content-length"]):
                self.bodies += 1
                self._ask()

    @property
    def received(self) -> int:
        """Every byte this connection has been sent (heads included, as the limit counts them)."""
        return self._earlier + len(self.transport.value())


def test_bandwidth_is_shared_between_stream_and_http() -> None:
    """
    One peer reading a raw stream and fetching HTTP bodies back to back on
    two connections, for ten simulated seconds, is sent one budget's worth
    per second in all (plus the first second's burst), not a budget per
    surface; another peer meanwhile has a budget of its own.
    """
    rate, seconds, step = 1_000_000, 10, 0.05
    clock = Clock()
    policy = PeerPolicy(bandwidth=rate, idle_timeout=0)
    guard, http, _ = http_stack(policy, clock)
    _, stream, _ = stream_stack(policy, clock, guard)
    _, stream_t = connect(stream, "192.0.2.1", 1)
    fetchers = [Fetcher(http, "192.0.2.1", port, 300_000) for port in (2, 3)]
    other = Fetcher(http, "192.0.2.2", 4, 300_000)
    for _ in range(round(seconds / step)):
        if stream_t.producer is not None:
            stream_t.producer.resumeProducing()
        for f in [*fetchers, other]:
            f.step()
        clock.advance(step)
    streamed = len(stream_t.value())
    fetched = sum(f.received for f in fetchers)
    # Both surfaces were served: the stream, and whole HTTP bodies.
    assert streamed >= 64 * 1024 and sum(f.bodies for f in fetchers) >= 1
    # At most one chunk per connection goes out past the budget (64 KiB for
    # the stream, 256 KiB for an HTTP body); a budget per surface would send
    # about twice the ceiling.
    assert seconds * rate <= streamed + fetched <= (seconds + 1) * rate + 64 * 1024 + 2 * 256 * 1024
    assert seconds * rate <= other.received <= (seconds + 1) * rate + 256 * 1024


def test_gate_provides_both_producer_interfaces() -> None:
    gate = _ProducerGate(object(), True)
    assert verifyObject(IPushProducer, gate) and verifyObject(IPullProducer, gate)
