"""
The Site's HTTP/1.1 fast path: the same bytes as the normal path, in memory.

Each test drives the real Site's protocol over a StringTransport, once with
the fast path on and once with it off (``site.fast = None``), and compares
what a client would read.
"""

from __future__ import annotations

import hashlib
import os
import re

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from entropy_appliance.limits import InFlight, PeerRateLimiter, RateLimitedResource
from entropy_appliance.web import EntropyWeb
from entropy_appliance.web.app import EntropySite
from entropy_appliance.web.fastpath import FastHTTPChannel
from tests.web_helpers import seeded_pool, unseeded_pool

CHALLENGE = hashlib.sha512(os.urandom(64)).hexdigest().encode()
POST = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\n"
        b"Content-Length: %d\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
        % (len(CHALLENGE) + 10)) + b"challenge=" + CHALLENGE
GET64 = b"GET /v1/random?bytes=64 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def make_site(fast: bool = True, pool: object = None) -> tuple[EntropyWeb, EntropySite, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    web = EntropyWeb(pool if pool is not None else seeded_pool(clock), clock)  # type: ignore[arg-type]
    site = web.site(reactor=clock)
    assert isinstance(site, EntropySite)
    if not fast:
        site.fast = None
    return web, site, clock


def connect(site: EntropySite) -> tuple[object, StringTransport]:
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    return proto, transport


def exchange(site: EntropySite, *chunks: bytes) -> bytes:
    proto, transport = connect(site)
    for chunk in chunks:
        proto.dataReceived(chunk)  # type: ignore[attr-defined]
    return transport.value()


def split_responses(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each response in ``raw``, by Content-Length."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\nContent-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        out.append((head, rest[:length]))
        raw = rest[length:]
    return out


def normalised(head: bytes) -> bytes:
    """The head without its Date (the normal path reads the wall clock)."""
    return re.sub(rb"\r\nDate: [^\r]*", b"", head)


def test_the_site_speaks_through_the_fast_channel() -> None:
    _, site, _ = make_site()
    proto, _ = connect(site)
    assert isinstance(proto._channel, FastHTTPChannel)  # type: ignore[attr-defined]


def test_pollen_reply_is_the_same_on_both_paths() -> None:
    results = []
    for fast in (True, False):
        _, site, _ = make_site(fast)
        [(head, body)] = split_responses(exchange(site, POST))
        # Only the fast path dates its answers by the injected clock.
        assert (b"\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT" in head) == fast
        results.append(normalised(head))
        first, second, empty = body.split(b"\n")
        assert first == hashlib.sha512(CHALLENGE).hexdigest().encode()
        assert len(second) == 128 and empty == b""
    assert results[0] == results[1]
    assert results[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nCache-Control: no-store" in results[0]
    assert b"\r\nX-Rng-Source: " in results[0]


def test_small_random_is_the_same_on_both_paths() -> None:
    heads = []
    for fast in (True, False):
        _, site, _ = make_site(fast)
        [(head, body)] = split_responses(exchange(site, GET64))
        heads.append(normalised(head))
        assert len(body) == 64
    assert heads[0] == heads[1]
    assert b"Content-Type: application/octet-stream" in heads[0]


def test_the_fast_path_writes_the_date_header() -> None:
    _, site, clock = make_site()
    [(head, _)] = split_responses(exchange(site, GET64))
    assert b"\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT" in head


def test_every_response_gets_fresh_randomness() -> None:
    _, site, _ = make_site()
    bodies = [body for _, body in split_responses(exchange(site, GET64 * 4 + POST * 3))]
    assert len(bodies) == 7
    assert len(set(bodies)) == 7


def test_pipelined_requests_mixing_fast_and_normal_ones_answer_in_order() -> None:
    _, site, _ = make_site()
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = exchange(site, GET64 + POST + health + GET64 + POST)
    responses = split_responses(raw)
    assert [len(body) for _, body in responses][:2] == [64, 258]
    assert b'"status": "ok"' in responses[2][1]
    assert [len(body) for _, body in responses][3:] == [64, 258]


def test_a_request_split_across_reads_is_answered_once_and_whole() -> None:
    _, site, _ = make_site()
    proto, transport = connect(site)
    for i in range(len(POST)):
        proto.dataReceived(POST[i:i + 1])  # type: ignore[attr-defined]
    proto.dataReceived(GET64)  # type: ignore[attr-defined]
    responses = split_responses(transport.value())
    assert [len(body) for _, body in responses] == [258, 64]


def test_chunked_upload_and_connection_close_take_the_normal_path() -> None:
    _, site, _ = make_site()
    body = b"challenge=" + CHALLENGE
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
               + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    proto, transport = connect(site)
    proto.dataReceived(chunked)  # type: ignore[attr-defined]
    proto.dataReceived(GET64.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))  # type: ignore[attr-defined]
    responses = split_responses(transport.value())
    assert responses[0][1].split(b"\n")[0] == hashlib.sha512(CHALLENGE).hexdigest().encode()
    assert b"\r\nConnection: close" in responses[1][0]
    assert len(responses[1][1]) == 64
    assert transport.disconnecting


def test_other_requests_are_untouched() -> None:
    # An encoded challenge, HTTP/1.0, a big body, HEAD and a bad size all go the normal way.
    for fast in (True, False):
        _, site, _ = make_site(fast)
        raw = exchange(site, b"GET /v1/random?bytes=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 ")
        assert b"application/problem+json" in raw
    _, site, _ = make_site()
    raw = exchange(site, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ") and b"pollinate" in raw
    raw = exchange(site, b"GET /v1/random?bytes=100000 HTTP/1.1\r\nHost: x\r\n\r\n")
    [(head, body)] = split_responses(raw)
    assert len(body) == 100000
    raw = exchange(site, b"GET /v1/random?bytes=64 HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 200 ") or raw.startswith(b"HTTP/1.1 200 ")


def test_fast_requests_are_counted_in_the_metrics() -> None:
    web, site, _ = make_site()
    exchange(site, GET64 * 2 + POST)
    text = web.metrics.render().decode()
    assert 'entropy_http_requests_total{method="GET",route="/v1/random",status="200"} 2.0' in text
    assert 'entropy_http_requests_total{method="POST",route="/",status="200"} 1.0' in text
    assert web.pool.status()["served"]["pollen"] == 64


def test_failing_closed_answers_503_problem_json() -> None:
    for fast in (True, False):
        _, site, _ = make_site(fast, pool=unseeded_pool())
        raw = exchange(site, POST)
        assert raw.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: " in raw
        assert b"application/problem+json" in raw


def test_a_rate_limit_in_front_still_applies() -> None:
    web, site, clock = make_site()
    limiter = PeerRateLimiter(1.0, clock)  # burst of 2
    site.resource = RateLimitedResource(site.resource, InFlight(), limiter, web.observe)
    raw = exchange(site, GET64 + POST + GET64)
    statuses = [head.split(b" ")[1] for head, _ in split_responses(raw)]
    assert statuses == [b"200", b"200", b"429"]


def test_an_unknown_front_resource_turns_the_fast_path_off() -> None:
    from twisted.web.resource import Resource

    class Teapot(Resource):
        isLeaf = True

        def render(self, request: object) -> bytes:
            request.setResponseCode(418)  # type: ignore[attr-defined]
            request.setHeader(b"Content-Length", b"0")  # type: ignore[attr-defined]
            return b""

    _, site, _ = make_site()
    site.resource = Teapot()
    assert exchange(site, GET64).startswith(b"HTTP/1.1 418 ")
