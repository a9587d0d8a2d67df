"""The web routes in memory (StubTreq): bytes, formats, UUIDs, status, health, errors."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

import pytest

from tests.test_pool import seed_fully, slow_pipeline
from tests.web_helpers import call, failed_pool, header, make_web

RANDOM_HEADERS = ["Cache-Control", "X-RNG-Source", "X-RNG-Reseed-Age-ms", "X-RNG-Reseed-Interval-ms"]


def decode(fmt: str, body: bytes) -> bytes:
    """The raw bytes inside a /v1/random body of format ``fmt``."""
    if fmt == "binary":
        return body
    if fmt == "hex":
        return binascii.unhexlify(body)
    if fmt == "base64":
        return base64.b64decode(body, validate=True)
    doc = json.loads(body)
    assert doc["format"] == "base64"
    data = base64.b64decode(doc["data"], validate=True)
    assert doc["bytes"] == len(data)
    return data


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_random_default_binary(scheme: str) -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", f"{scheme}://appliance/v1/random?bytes=16")
    assert resp.code == 200
    assert len(body) == 16
    assert header(resp, "Content-Type") == "application/octet-stream"
    assert header(resp, "Cache-Control") == "no-store"
    for name in RANDOM_HEADERS:
        assert header(resp, name), name
    assert header(resp, "X-RNG-Reseed-Interval-ms") == "3600000"


@pytest.mark.parametrize("fmt,ctype", [("binary", "application/octet-stream"),
                                       ("hex", "text/plain"), ("base64", "text/plain"),
                                       ("json", "application/json")])
@pytest.mark.parametrize("n", [1, 2, 3, 1000, 65536, 65537, 300_001])
def test_random_every_format_and_size(fmt: str, ctype: str, n: int) -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", f"http://a/v1/random?bytes={n}&format={fmt}")
    assert resp.code == 200
    assert header(resp, "Content-Type").startswith(ctype)
    raw = decode(fmt, body)
    assert len(raw) == n
    assert resp.length == len(body)


def test_random_bodies_differ() -> None:
    _, stub = make_web()
    bodies = {call(stub, "GET", "http://a/v1/random?bytes=32")[1] for _ in range(5)}
    assert len(bodies) == 5


def test_head_gives_headers_without_generating() -> None:
    web, stub = make_web()
    before = web.pool.status().drbg.bytes_generated
    resp, body = call(stub, "HEAD", "http://a/v1/random?bytes=1000000")
    assert resp.code == 200 and body == b""
    assert web.pool.status().drbg.bytes_generated == before


@pytest.mark.parametrize("query", ["", "bytes=", "bytes=abc", "bytes=-1", "bytes=0", "bytes=1.5",
                                   "bytes=0x10", "bytes=16&format=xml", "bytes=16&format=BINARY",
                                   "bytes=16&format=",
                                   "bytes=" + "9" * 5000])
def test_random_bad_input_is_400_problem(query: str) -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", f"http://a/v1/random?{query}")
    assert resp.code == 400
    assert header(resp, "Content-Type") == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["title"] == "Bad Request"
    assert problem["detail"] and problem["type"]


def test_random_above_max_bytes_is_413() -> None:
    _, stub = make_web(max_bytes=1000)
    assert call(stub, "GET", "http://a/v1/random?bytes=1000")[0].code == 200
    resp, body = call(stub, "GET", "http://a/v1/random?bytes=1001")
    assert resp.code == 413
    assert "1000" in json.loads(body)["detail"]


def test_unknown_path_404_and_wrong_method_405() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "http://a/v2/nothing")
    assert resp.code == 404
    assert json.loads(body)["status"] == 404
    assert header(resp, "Content-Type") == "application/problem+json"
    resp, body = call(stub, "DELETE", "http://a/v1/random?bytes=1")
    assert resp.code == 405
    assert set(header(resp, "Allow").split(", ")) == {"GET", "HEAD"}
    assert json.loads(body)["status"] == 405
    resp, _ = call(stub, "PUT", "http://a/")
    assert resp.code == 405
    assert "POST" in header(resp, "Allow")
    # The mounted media app answers its own paths the same way.
    resp, body = call(stub, "DELETE", "http://a/v1/image/random")
    assert resp.code == 405 and json.loads(body)["status"] == 405
    assert set(header(resp, "Allow").split(", ")) == {"GET", "HEAD"}
    resp, body = call(stub, "GET", "http://a/v1/image/nothing")
    assert resp.code == 404 and header(resp, "Content-Type") == "application/problem+json"


def test_requests_are_counted_by_route_in_either_app() -> None:
    web, stub = make_web()
    call(stub, "GET", "http://a/v1/uuid")
    call(stub, "GET", "http://a/v1/image/random?width=2&height=2")
    call(stub, "GET", "http://a/v1/image/nothing")
    text = web.metrics.render().decode()
    for route, status in [("/v1/uuid", 200), ("/v1/image/random", 200), ("other", 404)]:
        assert f'{{method="GET",route="{route}",status="{status}"}} 1.0' in text


@pytest.mark.parametrize("path", ["/v1/random?bytes=16", "/v1/random?bytes=200000",
                                  "/v1/integers?min=1&max=6", "/v1/uuid"])
def test_fail_closed_is_503_with_retry_after(path: str) -> None:
    _, stub = make_web(failed_pool())
    resp, body = call(stub, "GET", "http://a" + path)
    assert resp.code == 503
    assert int(header(resp, "Retry-After")) >= 1
    problem = json.loads(body)
    assert problem["status"] == 503 and "source failed" in problem["detail"]


def test_uuids() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "http://a/v1/uuid?count=50")
    assert resp.code == 200
    assert header(resp, "Cache-Control") == "no-store"
    values = json.loads(body)
    assert len(values) == len(set(values)) == 50
    for text in values:
        u = uuid.UUID(text)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == text
    assert len(json.loads(call(stub, "GET", "http://a/v1/uuid")[1])) == 1
    for bad in ["0", "1001", "x", "-5", ""]:
        assert call(stub, "GET", f"http://a/v1/uuid?count={bad}")[0].code == 400


def test_status_has_snapshot_version_uptime_listeners_and_extras() -> None:
    def broken() -> object:
        raise RuntimeError("not ready")

    web, stub = make_web(listeners=["tcp:8080"], version="9.9",
                         status_extras={"onion": lambda: {"state": "published"}, "broken": broken})
    resp, body = call(stub, "GET", "http://a/v1/status")
    assert resp.code == 200
    doc = json.loads(body)
    assert doc["version"] == "9.9" and doc["listeners"] == ["tcp:8080"]
    uptime = doc["uptime_seconds"]
    assert isinstance(uptime, float) and uptime >= 0
    assert doc["healthy"] is True and doc["drbg"]["reseeds"] >= 1
    assert doc["onion"] == {"state": "published"}
    assert "not ready" in doc["broken"]["error"]


def test_health() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "http://a/health")
    assert resp.code == 200 and json.loads(body)["status"] == "ok"
    _, stub = make_web(failed_pool())
    resp, body = call(stub, "GET", "http://a/health")
    assert resp.code == 503
    assert header(resp, "Content-Type") == "application/problem+json"
    doc = json.loads(body)
    assert doc["status"] == 503 and doc["state"] == "failed" and "EIO" in doc["reason"]
    assert header(resp, "Retry-After")


def test_health_carries_drands_members() -> None:
    """A monitor written for drand reads current < expected as unhealthy, current == expected as healthy."""
    web, stub = make_web()
    doc = json.loads(call(stub, "GET", "http://a/health")[1])
    assert doc["current"] == doc["expected"] == web.pool.status().drbg.reseeds >= 1
    _, stub = make_web(failed_pool())
    resp, body = call(stub, "GET", "http://a/health")
    doc = json.loads(body)
    assert resp.code == 503 and header(resp, "Content-Type") == "application/problem+json"
    assert doc["current"] == 0 and doc["expected"] == 1


def test_landing_page_links_routes() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "https://a/")
    assert resp.code == 200
    assert header(resp, "Content-Type").startswith("text/html")
    for route in [b"/v1/random", b"/v1/integers", b"/v1/uuid", b"/v1/status", b"/health",
                  b"/metrics", b"/openapi.json"]:
        assert b'href="' + route in body


# -- starved: requests wait a bounded time -------------------------------------------


def starved_web(seed_wait: float = 5.0) -> tuple[Any, Any, Any, Any]:
    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    pool._buffer.clear()
    clock.advance(1.0)  # a reseed is due, and there is no seed for it
    web, stub = make_web(pool, clock=clock, seed_wait=seed_wait)
    return web, stub, held, clock


def start(stub: Any, url: str, method: str = "GET", **kwargs: Any) -> list[Any]:
    results: list[Any] = []
    d = stub.request(method, url, **kwargs)
    d.addCallback(lambda resp: stub.content(resp).addCallback(lambda body: (resp, body)))
    d.addBoth(results.append)
    stub.flush()
    return results


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/random?bytes=32"), ("GET", "/v1/integers?min=1&max=6"), ("GET", "/v1/uuid"),
    ("POST", "/"), ("GET", "/v1/random?bytes=200000"),
])
def test_starved_request_waits_and_is_answered_after_the_reseed(method: str, path: str) -> None:
    web, stub, held, clock = starved_web()
    kwargs = {"data": {"challenge": "abc"}} if method == "POST" else {}
    results = start(stub, "http://a" + path, method, **kwargs)
    assert results == []  # waiting, not refused
    clock.advance(2.0)
    stub.flush()
    assert results == []
    held.deliver()
    stub.flush()
    [(resp, body)] = results
    assert resp.code == 200 and body
    assert web.pool.status().starved.waits >= 1


def test_starved_past_the_wait_is_503_with_retry_after() -> None:
    web, stub, held, clock = starved_web(seed_wait=3.0)
    results = start(stub, "http://a/v1/random?bytes=32")
    clock.advance(2.9)
    stub.flush()
    assert results == []
    clock.advance(0.2)
    stub.flush()
    [(resp, body)] = results
    assert resp.code == 503
    assert int(header(resp, "Retry-After")) >= 1
    assert header(resp, "Content-Type") == "application/problem+json"
    assert "refilling" in json.loads(body)["detail"]
    assert web.pool._waiters == []  # the wait was withdrawn


def test_status_health_and_metrics_never_wait_for_seed() -> None:
    web, stub, held, clock = starved_web()
    for path in ["/v1/status", "/health", "/metrics", "/openapi.json"]:
        [(resp, _)] = start(stub, "http://a" + path)
        assert resp.code == 200, path
    [(_, body)] = start(stub, "http://a/v1/status")
    doc = json.loads(body)
    assert doc["state"] == "starved" and doc["healthy"] is False
    assert doc["starved"]["seconds"] >= 0


def test_health_stays_200_while_briefly_starved_then_503() -> None:
    web, stub, held, clock = starved_web(seed_wait=5.0)
    web.pool.ready()  # a request found it short: starved from now
    clock.advance(4.0)
    [(resp, body)] = start(stub, "http://a/health")
    assert resp.code == 200 and json.loads(body)["status"] == "starved"
    clock.advance(2.0)
    [(resp, body)] = start(stub, "http://a/health")
    assert resp.code == 503
    doc = json.loads(body)
    assert doc["state"] == "starved" and "longer than" in doc["detail"]
    assert header(resp, "Retry-After")
    held.deliver()
    [(resp, body)] = start(stub, "http://a/health")
    assert resp.code == 200 and json.loads(body)["status"] == "ok"


def test_source_failure_while_waiting_answers_503_at_once() -> None:
    web, stub, held, clock = starved_web(seed_wait=30.0)
    results = start(stub, "http://a/v1/random?bytes=32")
    assert results == []
    web.pool.source_failed("EIO")
    stub.flush()
    [(resp, body)] = results
    assert resp.code == 503 and "EIO" in json.loads(body)["detail"]
