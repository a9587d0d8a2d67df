"""
The Site's HTTP/1.1 fast path: the same bytes as the normal path, in memory.

Each test drives the real Site's protocol over a StringTransport, once with
the fast path on and once with it off (``site.fast = None``), and compares
what a client would read.  A StringTransport never asks a pull producer for
more by itself: :func:`drive` plays a socket that drains.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib.metadata import version as installed
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from entropy_appliance.core.peers import PeerPolicy, PeerRateLimiter
from entropy_appliance.net.body import CHUNK_SIZE as STREAM_CHUNK
from entropy_appliance.net.body import BodyWriter
from entropy_appliance.net.limits import InFlight, PeerGuard
from entropy_appliance.web import EntropyWeb
from entropy_appliance.web.app import EntropySite
from entropy_appliance.web.channel import FastHTTPChannel
from entropy_appliance.web.limits import RateLimitedResource, limit_site
from entropy_appliance.web.responses import STREAM_THRESHOLD
from tests.web_helpers import failed_pool, seeded_pool

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
    raw = exchange(site, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
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
    assert web.pool.status().served["pollen"] == 64


def test_failing_closed_answers_503_problem_json() -> None:
    for fast in (True, False):
        _, site, _ = make_site(fast, pool=failed_pool())
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


# -- streamed bodies (above 64 KiB) ----------------------------------------------

BIG = 600_000  # three chunks of STREAM_CHUNK, the last one short


def get_random(n: int, extra: bytes = b"") -> bytes:
    return b"GET /v1/random?bytes=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (n, extra)


def drive(transport: StringTransport, limit: int = 10_000) -> int:
    """Ask a registered pull producer for more, as a socket that drains would; return the asks."""
    asks = 0
    while transport.producer is not None and not transport.streaming and asks < limit:
        transport.producer.resumeProducing()
        asks += 1
    return asks


def body_length(raw: bytes) -> int:
    return len(raw.partition(b"\r\n\r\n")[2])


def test_a_streamed_body_has_the_normal_paths_head_and_exact_length() -> None:
    heads = []
    for fast in (True, False):
        _, site, _ = make_site(fast)
        proto, transport = connect(site)
        proto.dataReceived(get_random(BIG))  # type: ignore[attr-defined]
        drive(transport)
        [(head, body)] = split_responses(transport.value())
        assert len(body) == BIG and len(transport.value()) == len(head) + 4 + BIG
        heads.append(normalised(head))
    assert heads[0] == heads[1]
    assert heads[0].startswith(b"HTTP/1.1 200 OK\r\n")
    for header in (b"Content-Length: %d" % BIG, b"Content-Type: application/octet-stream",
                   b"Cache-Control: no-store", b"X-Rng-Source: ", b"X-Rng-Reseed-Age-Ms: "):
        assert header in heads[0]


def test_the_whole_size_range_takes_the_fast_path_up_to_max_bytes() -> None:
    for n in (STREAM_THRESHOLD + 1, STREAM_CHUNK, STREAM_CHUNK + 1, 10**9):
        _, site, _ = make_site()
        proto, transport = connect(site)
        proto.dataReceived(get_random(n))  # type: ignore[attr-defined]
        # A fast-path body is a pull producer on the transport itself.
        assert isinstance(transport.producer, BodyWriter) or n <= STREAM_CHUNK
        assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
        assert body_length(transport.value()) == min(n, STREAM_CHUNK)


def test_nothing_more_is_written_until_the_transport_asks() -> None:
    _, site, _ = make_site()
    proto, transport = connect(site)
    proto.dataReceived(get_random(10**9))  # type: ignore[attr-defined]
    producer = transport.producer
    assert isinstance(producer, BodyWriter) and transport.streaming is False
    # The head and one chunk, however large the body: memory is bounded.
    assert body_length(transport.value()) == STREAM_CHUNK
    proto.dataReceived(b"")  # type: ignore[attr-defined]
    assert body_length(transport.value()) == STREAM_CHUNK
    producer.resumeProducing()
    assert body_length(transport.value()) == 2 * STREAM_CHUNK
    producer.resumeProducing()
    assert body_length(transport.value()) == 3 * STREAM_CHUNK


def test_a_disconnect_mid_body_stops_the_producer_and_ends_the_response() -> None:
    web, site, clock = make_site()
    inflight = InFlight()
    site.resource = RateLimitedResource(site.resource, inflight, None, web.observe)
    proto, transport = connect(site)
    proto.dataReceived(get_random(BIG))  # type: ignore[attr-defined]
    producer = transport.producer
    assert isinstance(producer, BodyWriter) and inflight.count == 1
    served = web.pool.status().served["http"]
    proto.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    assert inflight.count == 0 and producer.ended
    written = len(transport.value())
    producer.resumeProducing()
    producer.stopProducing()
    assert len(transport.value()) == written
    assert web.pool.status().served["http"] == served  # nothing more generated
    text = web.metrics.render().decode()
    assert 'entropy_http_requests_total{method="GET",route="/v1/random",status="200"} 1.0' in text


def test_failing_closed_mid_body_aborts_the_connection_without_completing() -> None:
    web, site, clock = make_site()
    inflight = InFlight()
    site.resource = RateLimitedResource(site.resource, inflight, None, web.observe)
    proto, transport = connect(site)
    proto.dataReceived(get_random(BIG) + GET64)  # type: ignore[attr-defined]
    assert body_length(transport.value()) == STREAM_CHUNK
    web.pool.source_failed("unplugged")
    clock.advance(3601)  # a reseed is due, and there is no seed
    drive(transport)
    assert transport.disconnected  # aborted, not closed after a complete body
    assert body_length(transport.value()) == STREAM_CHUNK  # short of Content-Length
    assert transport.producer is None and inflight.count == 0
    proto.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    assert inflight.count == 0
    # The pipelined request was never answered on the broken connection.
    assert transport.value().count(b"HTTP/1.1 ") == 1


def test_failing_closed_before_the_first_byte_answers_503_on_both_paths() -> None:
    heads = []
    for fast in (True, False):
        web, site, clock = make_site(fast)
        web.pool.source_failed("unplugged")
        assert web.pool.state.value == "failed"  # at once, reseed due or not
        [(head, body)] = split_responses(exchange(site, get_random(BIG)))
        heads.append(normalised(head))
        assert json.loads(body)["status"] == 503
    assert heads[0] == heads[1]
    assert heads[0].startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: " in heads[0] and b"application/problem+json" in heads[0]


def test_requests_pipelined_behind_a_body_are_answered_after_it_in_order() -> None:
    _, site, _ = make_site()
    proto, transport = connect(site)
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    proto.dataReceived(get_random(BIG) + GET64 + POST)  # type: ignore[attr-defined]
    proto.dataReceived(health + get_random(BIG))  # type: ignore[attr-defined]
    assert transport.value().count(b"HTTP/1.1 200 OK") == 1  # the rest waits
    drive(transport)
    responses = split_responses(transport.value())
    assert [len(body) for _, body in responses[:3]] == [BIG, 64, 258]
    assert b'"status": "ok"' in responses[3][1]
    assert len(responses[4][1]) == BIG and len(responses) == 5
    assert transport.producer is not None and transport.streaming  # the channel again
    # The connection goes on taking requests.
    transport.clear()
    proto.dataReceived(GET64)  # type: ignore[attr-defined]
    assert len(split_responses(transport.value())[0][1]) == 64


def test_bodies_that_fit_one_chunk_complete_at_once_and_pipelining_goes_on() -> None:
    _, site, _ = make_site()
    raw = exchange(site, get_random(100_000) * 3 + GET64)
    assert [len(body) for _, body in split_responses(raw)] == [100_000] * 3 + [64]


def test_reading_pauses_while_much_is_pipelined_behind_a_body() -> None:
    _, site, _ = make_site()
    proto, transport = connect(site)
    proto.dataReceived(get_random(BIG))  # type: ignore[attr-defined]
    assert transport.producerState == "producing"
    for _ in range(400):  # 20 KB of requests
        proto.dataReceived(GET64[:50])  # type: ignore[attr-defined]
        proto.dataReceived(GET64[50:])  # type: ignore[attr-defined]
    assert transport.producerState == "paused"
    drive(transport)
    assert transport.producerState == "producing"
    responses = split_responses(transport.value())
    assert len(responses) == 401 and len(responses[0][1]) == BIG
    assert {len(body) for _, body in responses[1:]} == {64}


def test_a_graceful_stop_waits_for_a_streamed_body() -> None:
    web, site, _ = make_site()
    inflight = InFlight()
    site.resource = RateLimitedResource(site.resource, inflight, None, web.observe)
    proto, transport = connect(site)
    proto.dataReceived(get_random(BIG))  # type: ignore[attr-defined]
    idle: list[bool] = []
    inflight.when_idle(lambda: idle.append(True))
    assert inflight.count == 1 and idle == []
    transport.producer.resumeProducing()
    assert idle == []
    drive(transport)
    assert idle == [True] and inflight.count == 0
    assert body_length(transport.value()) == BIG


def test_streamed_bodies_are_counted_in_the_metrics() -> None:
    web, site, _ = make_site()
    proto, transport = connect(site)
    proto.dataReceived(get_random(BIG) + get_random(BIG))  # type: ignore[attr-defined]
    text = web.metrics.render().decode()
    assert 'route="/v1/random"' not in text  # counted when the response ends
    drive(transport)
    text = web.metrics.render().decode()
    assert 'entropy_http_requests_total{method="GET",route="/v1/random",status="200"} 2.0' in text
    assert web.pool.status().served["http"] == 2 * BIG


def test_formats_heads_and_sizes_out_of_range_keep_the_normal_path() -> None:
    clock = Clock()
    web = EntropyWeb(seeded_pool(clock), clock, max_bytes=BIG)
    site = web.site(reactor=clock)
    raw = exchange(site, get_random(BIG + 1))
    assert raw.startswith(b"HTTP/1.1 413 ") and b"application/problem+json" in raw
    proto, transport = connect(site)
    proto.dataReceived(b"GET /v1/random?bytes=%d&format=hex HTTP/1.1\r\nHost: x\r\n\r\n" % BIG)  # type: ignore[attr-defined]
    assert not isinstance(transport.producer, BodyWriter)
    [(head, body)] = split_responses(transport.value())
    assert b"Content-Type: text/plain" in head and len(body) == 2 * BIG
    raw = exchange(site, get_random(BIG).replace(b"GET", b"HEAD", 1))
    assert raw.startswith(b"HTTP/1.1 200 ") and body_length(raw) == 0


def test_a_rate_limit_in_front_applies_to_streamed_bodies() -> None:
    web, site, clock = make_site()
    site.resource = RateLimitedResource(site.resource, InFlight(), PeerRateLimiter(0.5, clock),
                                        web.observe)  # burst of 1
    proto, transport = connect(site)
    proto.dataReceived(get_random(BIG) + get_random(BIG))  # type: ignore[attr-defined]
    drive(transport)
    statuses = [head.split(b" ")[1] for head, _ in split_responses(transport.value())]
    assert statuses == [b"200", b"429"]


def test_peer_bandwidth_holds_a_streamed_body_back() -> None:
    clock = Clock()
    rate = 100_000
    web = EntropyWeb(seeded_pool(clock), clock)
    site = web.site(timeout=None, reactor=clock)
    guard = PeerGuard(PeerPolicy(bandwidth=rate, idle_timeout=0), clock)
    factory = limit_site(site, guard, observe=web.observe)
    addr = IPv4Address("TCP", "192.0.2.1", 40000)
    proto = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    proto.makeConnection(transport)
    proto.dataReceived(get_random(1_000_000))
    for _ in range(40):  # two seconds of a reader that takes whatever it is offered
        drive(transport, limit=1)
        clock.advance(0.05)
    sent = body_length(transport.value())
    # A second's burst, two seconds' worth, and at most the chunk that went into debt.
    assert 2 * rate <= sent <= 3 * rate + STREAM_CHUNK
    assert guard.inflight.count == 1
    for _ in range(400):
        drive(transport, limit=1)
        clock.advance(0.05)
    assert body_length(transport.value()) == 1_000_000 and guard.inflight.count == 0


def test_streamed_body_provides_the_pull_producer_interface() -> None:
    _, site, _ = make_site()
    proto, transport = connect(site)
    proto.dataReceived(get_random(BIG))  # type: ignore[attr-defined]
    assert verifyObject(IPullProducer, transport.producer)


def test_http2_connections_never_reach_the_fast_channel() -> None:
    from twisted.web._http2 import H2Connection

    _, site, _ = make_site()
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
    proto.makeConnection(transport)
    proto.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # type: ignore[attr-defined]
    assert isinstance(proto._channel, H2Connection)  # type: ignore[attr-defined]
    assert not isinstance(transport.producer, BodyWriter)


def test_longest_challenge_the_document_allows_fits_and_longer_lines_get_414() -> None:
    _, site, _ = make_site()
    # 4096 non-ASCII characters, percent-encoded UTF-8: about 36 KB of query.
    challenge = ("\u20ac" * 4096).encode()
    quoted = "".join(f"%{b:02X}" for b in challenge).encode()
    raw = exchange(site, b"GET /?challenge=" + quoted + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    raw = exchange(site, b"GET /?challenge=" + b"a" * 70000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 414")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    assert json.loads(body)["status"] == 414


def test_header_names_are_spelled_as_twisted_writes_them() -> None:
    # The lean channel writes names as given; the Klein path writes Twisted's spelling.
    from twisted.web.http_headers import Headers

    from entropy_appliance.web.formats import FORMATS
    from entropy_appliance.web.responses import pollen_response, random_headers

    pool = seeded_pool()
    names = [name for name, _ in random_headers(pool, 10, FORMATS["binary"])]
    names += [name for name, _ in pollen_response(pool, b"ab").headers]
    for name in names:
        assert next(iter(Headers({name: [b""]}).getAllRawHeaders()))[0] == name


def test_the_channel_internals_it_steers_exist_in_the_pinned_twisted() -> None:
    _, site, _ = make_site()
    proto, _ = connect(site)
    channel = proto._channel  # type: ignore[attr-defined]
    for name in ("_buffer", "_busyReceiving", "_dataBuffer", "_waitingForTransport",
                 "_receivedHeaderSize", "_HTTPChannel__first_line", "_networkProducer",
                 "_handlingRequest", "_savedTimeOut", "line_mode", "paused", "persistent"):
        assert hasattr(channel, name), name
    setup = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    low, high = re.search(r'"twisted\[[^\]]*\]>=([\d.]+),<([\d.]+)"', setup).groups()  # type: ignore[union-attr]
    version = tuple(int(p) for p in installed("twisted").split(".")[:2])
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))
