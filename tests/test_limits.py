"""
Per-peer limits, in memory: the pure accounting of ``core.peers`` over a
task.Clock, and the real Site and raw stream behind the adapters (TCP level
in ``net.limits``, HTTP level in ``web.limits`` and ``web.requests``), each
connection on a StringTransport with its own peer address: rates, deadlines,
bandwidth, request bodies bounded before they are read, the problems that
answer requests that cannot be read, connections per peer and per process,
and the listen backlog.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolNegotiationFactory, IPullProducer, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from entropy_appliance.core.peers import (
    PeerBandwidth,
    PeerConnections,
    PeerPolicy,
    PeerRateLimiter,
    TokenBucket,
    peer_key,
)
from entropy_appliance.net.limits import (
    AcceptGuard,
    ConnectionBudget,
    PeerGuard,
    PeerLimitedFactory,
    _ProducerGate,
    fd_budget,
    guard_accepts,
    with_backlog,
)
from entropy_appliance.net.stream import StreamFactory
from entropy_appliance.web import EntropyWeb
from entropy_appliance.web.limits import LINGER_BYTES, LINGER_SECONDS, HTTPLimits, limit_site
from entropy_appliance.web.requests import DEFAULT_MAX_BODY
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


# -- request bodies, before they are read ------------------------------------------


def body_stack(**limits: Any) -> tuple[PeerLimitedFactory, Clock]:
    """The Site behind the guard with these HTTP limits (and the per-peer ones off)."""
    clock = Clock()
    web = EntropyWeb(seeded_pool(clock), clock)
    site = web.site(timeout=None, reactor=clock)
    guard = PeerGuard(PeerPolicy(rate=0, header_timeout=15, idle_timeout=0), clock)
    return limit_site(site, guard, observe=web.observe, limits=HTTPLimits(**limits)), clock


def problem_of(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = parse(raw)
    assert headers["content-type"] == "application/problem+json", raw[:300]
    problem = json.loads(body)
    assert problem["status"] == status
    return status, headers, problem


def test_a_content_length_over_max_body_is_refused_before_the_body_is_read() -> None:
    factory, clock = body_stack(max_body=1024)
    proto, t = connect(factory, "192.0.2.1")
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000000\r\n"
                       b"Expect: 100-continue\r\n\r\n")
    status, headers, problem = problem_of(t.value())
    assert status == 413 and headers["connection"] == "close"
    assert "10000000000 bytes is over this server's limit of 1024" in problem["detail"]
    assert b"100 Continue" not in t.value()  # the client is not invited to send it
    # What the client sends meanwhile is read and dropped: no request is
    # parsed out of it, and the connection closes after the linger.
    t.clear()
    proto.dataReceived(b"x" * 100_000 + b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
    assert t.value() == b"" and not t.disconnecting
    clock.advance(LINGER_SECONDS)
    assert t.disconnecting


def test_a_refused_body_that_goes_on_is_cut_at_the_linger_bytes() -> None:
    factory, _ = body_stack(max_body=1024)
    proto, t = connect(factory, "192.0.2.1")
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
    assert parse(t.value())[0] == 413
    for _ in range(LINGER_BYTES // 65536):
        proto.dataReceived(b"x" * 65536)
    assert not t.disconnecting
    proto.dataReceived(b"x" * 65536)
    assert t.disconnecting


def test_a_chunked_body_is_cut_at_max_body() -> None:
    factory, _ = body_stack(max_body=4096)
    proto, t = connect(factory, "192.0.2.1")
    channel = proto.wrappedProtocol._channel
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    (request,) = channel.requests
    for _ in range(4):
        proto.dataReceived(b"400\r\n" + b"a" * 1024 + b"\r\n")
    assert t.value() == b""  # 4096 bytes: at the limit, not past it
    assert request.content.tell() == 4096
    proto.dataReceived(b"1\r\na\r\n")
    status, _, problem = problem_of(t.value())
    assert status == 413 and "limit of 4096 bytes" in problem["detail"]
    # Nothing more is kept, whatever follows.
    for _ in range(100):
        proto.dataReceived(b"400\r\n" + b"a" * 1024 + b"\r\n")
    assert request.content.tell() == 0


def test_bodies_stay_in_memory_where_twisted_would_spool_them_to_a_file() -> None:
    """Twisted's Request writes bodies of 100 kB or more to a temporary file; ours never do."""
    from io import BytesIO

    factory, _ = body_stack(max_body=256 * 1024)
    proto, t = connect(factory, "192.0.2.1")
    channel = proto.wrappedProtocol._channel
    body = b"challenge=" + b"ab" * 100_000
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
    (request,) = channel.requests
    assert isinstance(request.content, BytesIO)
    proto.dataReceived(body[1000:])
    status, _, answer = parse(t.value())
    assert status == 400 and b"too long" in answer  # pollen's own limit, after the whole body


def test_the_largest_request_the_document_admits_fits_the_default_max_body() -> None:
    from urllib.parse import quote

    from entropy_appliance.web.pollen import MAX_CHALLENGE

    factory, _ = body_stack()
    proto, t = connect(factory, "192.0.2.1")
    body = b"challenge=" + quote("\U0001f600" * MAX_CHALLENGE).encode()
    assert len(body) == 49_162 <= DEFAULT_MAX_BODY
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
    status, _, answer = parse(t.value())
    assert status == 200 and len(answer.split(b"\n")[0]) == 128


def test_a_slow_body_is_cut_at_the_body_timeout() -> None:
    factory, clock = body_stack(body_timeout=10)
    slow, slow_t = connect(factory, "192.0.2.1")
    slow.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n"
                      b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    for _ in range(9):  # a byte a second keeps every idle timer away
        slow.dataReceived(b"a")
        clock.advance(1)
    assert not slow_t.disconnecting
    clock.advance(1)
    assert slow_t.disconnecting and slow_t.value() == b""
    # A body that arrives in time meets no deadline, and a request without
    # a body starts none.
    prompt, prompt_t = connect(factory, "192.0.2.1", 40001)
    post_pollen(prompt, prompt_t)
    assert get(prompt, prompt_t, "/health")[0] == 200
    clock.advance(60)
    assert not prompt_t.disconnecting


def test_body_timeout_zero_means_no_deadline() -> None:
    factory, clock = body_stack(body_timeout=0)
    slow, slow_t = connect(factory, "192.0.2.1")
    slow.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
    clock.advance(3600)
    assert not slow_t.disconnecting


# -- answers to requests that cannot be read: problems, never a bare status line ---


def exchange_raw(request: bytes, **limits: Any) -> tuple[bytes, StringTransport]:
    factory, _ = body_stack(**limits)
    proto, t = connect(factory, "192.0.2.1")
    proto.dataReceived(request)
    return t.value(), t


HEAD = b"GET /health HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(("request_bytes", "status", "detail"), [
    (HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(600)) + b"\r\n", 431, "more than 500 header lines"),
    (HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 4000) for i in range(20)) + b"\r\n", 431,
     "head is over 65536 bytes"),
    (HEAD + b"X-Big: " + b"v" * (1 << 20) + b"\r\n\r\n", 431, "header line is over 65536 bytes"),
    (b"GET /?challenge=" + b"a" * 70000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414,
     "request line is over 65536 bytes"),
    (b"GET  /health HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed"),
    (HEAD + b"Bad Header: x\r\n\r\n", 400, "malformed"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "malformed"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "malformed"),
])
def test_requests_the_parser_refuses_are_answered_with_a_problem_and_closed(
        request_bytes: bytes, status: int, detail: str) -> None:
    raw, t = exchange_raw(request_bytes)
    got, headers, problem = problem_of(raw)
    assert (got, headers["connection"]) == (status, "close")
    assert detail in problem["detail"]
    assert raw.count(b"HTTP/1.1 ") == 1  # one answer, whatever followed in the same read


@pytest.mark.parametrize(("request_bytes", "detail"), [
    (b"GET /%ff%fe HTTP/1.1\r\nHost: a\r\n\r\n", "not UTF-8"),
    (b"GET /health HTTP/1.1\r\n\r\n", "must have a Host header"),
    (b"GET /v1/random?bytes=16 HTTP/1.1\r\n\r\n", "must have a Host header"),
    (b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 16\r\n\r\n"
     b"challenge=abcdef", "must have a Host header"),
    (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
    (b"GET /health HTTP/1.1\r\nHost: a b\r\n\r\n", "not a host name"),
    (b"GET /health HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n", "not a host name"),
])
def test_requests_no_route_could_read_get_400_problem_json(request_bytes: bytes, detail: str) -> None:
    raw, t = exchange_raw(request_bytes)
    status, _, problem = problem_of(raw)
    assert status == 400 and detail in problem["detail"]
    assert not t.disconnecting  # a whole request, answered: the connection goes on


def test_a_method_on_star_other_than_options_gets_405_problem_json() -> None:
    raw, _ = exchange_raw(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, problem = problem_of(raw)
    assert status == 405 and headers["allow"] == "OPTIONS" and "use OPTIONS *" in problem["detail"]
    raw, _ = exchange_raw(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse(raw)[0] == 200


def test_hosts_that_are_fine() -> None:
    for host in (b"a", b"example.org:8080", b"[::1]:8443", b"192.0.2.1", b""):
        raw, _ = exchange_raw(b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert parse(raw)[0] == 200, host
    raw, _ = exchange_raw(b"GET /health HTTP/1.0\r\n\r\n")
    assert parse(raw)[0] == 200


# -- connections per peer, and the process's budget ------------------------------


def test_peer_connections_refuses_a_peers_next_http_connection_logged_once() -> None:
    factory, _ = body_stack(connections=2)
    addr = IPv4Address("TCP", "192.0.2.1", 9)
    held = [connect(factory, "192.0.2.1", port) for port in (1, 2)]
    with capturedLogs() as events:
        assert all(factory.buildProtocol(addr) is None for _ in range(50))
        other, other_t = connect(factory, "192.0.2.2", 3)
        assert get(other, other_t, "/health")[0] == 200
        for proto, t in held:
            t.loseConnection()
            proto.connectionLost(Failure(ConnectionDone()))
        assert factory.buildProtocol(addr) is not None
    lines = [formatEvent(e) for e in events]
    assert len(lines) == 2, lines
    assert "refused a connection from 192.0.2.1: it already has 2 open" in lines[0]
    assert "192.0.2.1 has no connection left; 50 of its connections were refused" in lines[1]


def test_peer_connections_zero_means_no_limit() -> None:
    factory, _ = body_stack(connections=0)
    for port in range(200):
        connect(factory, "192.0.2.1", port)


def test_the_connection_budget_spans_every_listener_and_is_logged_once() -> None:
    clock = Clock()
    guard = PeerGuard(PeerPolicy(streams=0), clock, budget=ConnectionBudget(10))
    web = EntropyWeb(seeded_pool(clock), clock)
    http = limit_site(web.site(timeout=None, reactor=clock), guard, limits=HTTPLimits(connections=0))
    stream = guard.wrap_stream(StreamFactory(seeded_pool(clock)))
    open_ = [connect(http, f"192.0.2.{i}", 1) for i in range(6)]
    open_ += [connect(stream, f"198.51.100.{i}", 1) for i in range(4)]
    with capturedLogs() as events:
        assert http.buildProtocol(IPv4Address("TCP", "203.0.113.1", 1)) is None
        assert stream.buildProtocol(IPv4Address("TCP", "203.0.113.2", 1)) is None
        assert all(http.buildProtocol(IPv4Address("TCP", "203.0.113.3", p)) is None for p in range(100))
        # The open connections are served all the while.
        assert get(*open_[0], "/health")[0] == 200
        for proto, t in open_[:2]:
            t.loseConnection()
            proto.connectionLost(Failure(ConnectionDone()))
        assert http.buildProtocol(IPv4Address("TCP", "203.0.113.3", 1)) is not None
    lines = [formatEvent(e) for e in events]
    assert len(lines) == 2, lines
    assert "refusing new connections: 10 are open" in lines[0] and "LimitNOFILE" in lines[0]
    assert "accepting new connections again (8 open); 102 were refused" in lines[1]
    assert guard.budget is not None and guard.budget.open == 9


def test_the_last_of_the_budget_is_kept_for_clients_with_no_connection_yet() -> None:
    """Peers that fill the budget, however many, leave its reserve to newcomers."""
    factory, _ = body_stack(connections=0)
    budget = ConnectionBudget(12, reserve=4)
    factory.budget = budget
    # Four attacking peers fill what is not reserved, two connections each.
    for port in range(2):
        for peer in range(4):
            connect(factory, f"198.51.100.{peer}", port)
    assert budget.open == 8
    assert factory.buildProtocol(IPv4Address("TCP", "198.51.100.0", 9)) is None
    # Newcomers still get in, one connection each, until the budget is full.
    newcomers = [connect(factory, f"192.0.2.{i}", 1) for i in range(4)]
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.0", 2)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.99", 1)) is None
    assert budget.open == 12
    assert get(*newcomers[0], "/health")[0] == 200


def test_the_default_budget_is_the_fd_limit_less_a_reserve() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    guard = PeerGuard(PeerPolicy(), Clock())
    assert guard.budget is not None and guard.budget.limit == fd_budget() == soft - max(64, soft // 8)


# -- listen backlog, options -------------------------------------------------------


@pytest.mark.parametrize(("description", "expected"), [
    ("tcp:8080", "tcp:8080:backlog=1024"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=1024"),
    ("ssl:8443:privateKey=k.pem:certKey=c.pem", "ssl:8443:privateKey=k.pem:certKey=c.pem:backlog=1024"),
    ("tcp6:8080:interface=\\:\\:1", "tcp6:8080:interface=\\:\\:1:backlog=1024"),
    ("unix:/run/entropy.sock", "unix:/run/entropy.sock:backlog=1024"),
    ("tcp:8080:backlog=7", "tcp:8080:backlog=7"),
    ("ssl:8443:backlog=4096:interface=::1", "ssl:8443:backlog=4096:interface=::1"),
    ("systemd:domain=INET:name=http", "systemd:domain=INET:name=http"),
])
def test_endpoints_get_a_larger_backlog_unless_they_name_one(description: str, expected: str) -> None:
    assert with_backlog(description) == expected


def test_the_listeners_listen_with_the_backlog(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.testing import MemoryReactor

    from entropy_appliance.app.build import _listening_endpoints
    from entropy_appliance.app.options import parse_config

    monkeypatch.chdir(tmp_path)
    config = parse_config(["--http", "tcp:8080", "--http", "tcp:8081:backlog=5", "--https", "ssl:8443",
                           "--https", "tcp:8444", "--stream", "tcp:9000"])
    reactor = MemoryReactor()
    for _, endpoint in _listening_endpoints(config, reactor):
        endpoint.listen(object())
    backlogs = [port[2] for port in reactor.tcpServers] + [port[3] for port in reactor.sslServers]
    assert backlogs == [1024, 1024, 5, 1024, 1024]


def test_the_http_limit_options() -> None:
    from twisted.python.usage import UsageError

    from entropy_appliance.app.options import parse_config

    assert parse_config([]).http_limits == HTTPLimits() == HTTPLimits(65536, 15.0, 64)
    limits = parse_config([], {"ENTROPY_MAX_BODY": "8K", "ENTROPY_BODY_TIMEOUT": "2.5",
                               "ENTROPY_PEER_CONNECTIONS": "0"}).http_limits
    assert limits == HTTPLimits(8192, 2.5, 0)
    for argv, message in [(["--max-body", "100"], "--max-body '100': must be between 1K and 16M"),
                          (["--max-body", "1G"], "--max-body '1G': must be between 1K and 16M"),
                          (["--body-timeout", "-1"], "--body-timeout '-1': must be seconds"),
                          (["--peer-connections", "x"], "--peer-connections 'x': must be an integer")]:
        with pytest.raises(UsageError, match=re.escape(message)):
            parse_config(argv)


# -- accept failures -------------------------------------------------------------


class FailingListener:
    """A listening socket whose ``accept`` fails as a system out of descriptors does."""

    def __init__(self, errno_: int) -> None:
        self.errno = errno_
        self.accepts = 0

    def accept(self) -> Any:
        self.accepts += 1
        raise OSError(self.errno, os.strerror(self.errno))

    def fileno(self) -> int:
        return 99

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8080)


def test_a_port_whose_accept_fails_pauses_instead_of_spinning_and_logs_once() -> None:
    """
    Twisted's own tcp.Port, run as the reactor would while its socket stays
    readable: without the guard, each turn fails and logs again at once.
    """
    from twisted.internet import tcp
    from twisted.internet.testing import MemoryReactor

    reactor, clock = MemoryReactor(), Clock()
    port = tcp.Port(0, StreamFactory(seeded_pool()), reactor=reactor)
    assert isinstance(port._logger, Logger)  # the pinned Twisted's accept loop logs there
    listener = FailingListener(errno.ENFILE)
    port.socket, port.connected, port.numberAccepts = listener, True, 1  # type: ignore[assignment]
    guard_accepts(port, clock)
    port.startReading()

    def turns(n: int) -> None:
        for _ in range(n):
            if port in reactor.readers:
                port.doRead()

    with capturedLogs() as events:
        turns(100)
        assert listener.accepts == 1 and port not in reactor.readers  # paused, not spinning
        clock.advance(1.0)
        assert port in reactor.readers
        turns(100)  # still failing: paused again, nothing more logged
        assert listener.accepts == 2 and port not in reactor.readers
        listener.errno = errno.EAGAIN  # descriptors again: nothing waits
        clock.advance(1.0)
        turns(100)
        assert port in reactor.readers
        clock.advance(1.0)
    lines = [formatEvent(e) for e in events]
    assert len(lines) == 2, lines
    assert "could not accept a connection" in lines[0] and "ENFILE" in lines[0]
    assert "accepting connections on" in lines[1] and "2 accepts failed" in lines[1]


def test_emfile_recovery_is_counted_not_logged_line_by_line() -> None:
    clock = Clock()
    stopped: list[str] = []

    class Port:
        connected = True

        def stopReading(self) -> None:  # noqa: N802
            stopped.append("stop")

        def startReading(self) -> None:  # noqa: N802
            stopped.append("start")

        def getHost(self) -> IPv4Address:  # noqa: N802
            return IPv4Address("TCP", "127.0.0.1", 8080)

    guard = AcceptGuard(Port(), clock)
    with capturedLogs() as events:
        guard({"log_format": "EMFILE encountered; releasing reserved file descriptor."})
        for i in range(500):
            guard({"log_format": "EMFILE recovery: Closed socket from {address}", "address": i})
        guard({"log_format": "Re-reserving EMFILE recovery file descriptor."})
        clock.advance(1.0)  # reading again
        clock.advance(1.0)  # and nothing failed since
    lines = [formatEvent(e) for e in events]
    assert len(lines) == 2 and stopped == ["stop", "start"]
    assert "(EMFILE:" in lines[0]
    assert "1 accepts failed, and Twisted closed 500 waiting connections" in lines[1]
