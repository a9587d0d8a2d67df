"""ANU QRNG's API in memory (StubTreq): both shapes, limits, error shape, keys, fail closed, starved."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from entropy_appliance.web.compat import ApiKeys, CompatConfig
from tests.test_web_routes import start, starved_web
from tests.web_helpers import call, failed_pool, header, make_web


def get(stub: Any, url: str, **kwargs: Any) -> tuple[Any, Any]:
    resp, body = call(stub, "GET", url, **kwargs)
    assert header(resp, "Content-Type") == "application/json"
    return resp, json.loads(body)


@pytest.mark.parametrize("path", ["/API/jsonI.php", "/anu/", "/anu"])
def test_uint8_and_uint16_in_anus_shape(path: str) -> None:
    web, stub = make_web()
    resp, doc = get(stub, f"http://a{path}?length=1024&type=uint8")
    assert resp.code == 200
    assert set(doc) == {"type", "length", "data", "success"}
    assert doc["type"] == "uint8" and doc["length"] == 1024 and doc["success"] is True
    assert len(doc["data"]) == 1024 and all(0 <= v <= 255 for v in doc["data"])
    # 1024 bytes take every value of a byte about four times: a stuck or narrow encoding would not.
    assert len(set(doc["data"])) > 200
    assert header(resp, "Cache-Control") == "no-store" and header(resp, "X-RNG-Source")
    resp, doc = get(stub, f"http://a{path}?length=500&type=uint16")
    assert doc["type"] == "uint16" and len(doc["data"]) == 500
    assert all(0 <= v <= 65535 for v in doc["data"]) and max(doc["data"]) > 255
    assert web.pool.status().served["anu"] == 1024 + 1000


def test_hex16_blocks() -> None:
    _, stub = make_web()
    resp, doc = get(stub, "http://a/API/jsonI.php?length=10&type=hex16&size=4")
    assert resp.code == 200
    # The legacy API names hex16 answers "string", as ANU's does.
    assert doc["type"] == "string" and doc["size"] == 4 and doc["length"] == 10
    assert all(re.fullmatch("[0-9a-f]{8}", block) for block in doc["data"])
    assert len(set(doc["data"])) == 10
    _, doc = get(stub, "http://a/anu/?length=3&type=hex16")
    assert doc["type"] == "hex16" and doc["size"] == 1
    assert all(re.fullmatch("[0-9a-f]{2}", block) for block in doc["data"])


@pytest.mark.parametrize("query", [
    "length=0&type=uint8", "length=1025&type=uint8", "length=abc&type=uint8", "type=uint8",
    "length=5", "length=5&type=int32", "length=5&type=hex16&size=0", "length=5&type=hex16&size=1025",
    "length=&type=uint8",
])
def test_bad_parameters_are_400_in_anus_shape(query: str) -> None:
    web, stub = make_web()
    resp, doc = get(stub, f"http://a/API/jsonI.php?{query}")
    assert resp.code == 400
    assert doc["success"] is False and doc["message"]
    assert "anu" not in web.pool.status().served


def test_keys_are_accepted_or_checked() -> None:
    _, stub = make_web()
    resp, _ = get(stub, "http://a/anu/?length=1&type=uint8", headers={"x-api-key": "anything"})
    assert resp.code == 200
    _, stub = make_web(compat=CompatConfig(keys=ApiKeys(frozenset({"k1"}))))
    for path in ("/anu/", "/API/jsonI.php"):
        resp, doc = get(stub, f"http://a{path}?length=1&type=uint8", headers={"x-api-key": "k1"})
        assert resp.code == 200 and doc["success"] is True
        for headers in ({"x-api-key": "k2"}, {}):
            resp, doc = get(stub, f"http://a{path}?length=1&type=uint8", headers=headers)
            assert resp.code == 403 and doc == {"message": "Forbidden"}


def test_failed_pool_is_503_in_anus_shape() -> None:
    _, stub = make_web(failed_pool())
    resp, doc = get(stub, "http://a/API/jsonI.php?length=4&type=uint8")
    assert resp.code == 503 and header(resp, "Retry-After")
    assert doc["success"] is False and "EIO" in doc["message"]
    assert "data" not in doc


def test_starved_request_waits_then_is_answered() -> None:
    _, stub, held, clock = starved_web(seed_wait=5.0)
    results = start(stub, "http://a/API/jsonI.php?length=4&type=uint8")
    clock.advance(2.0)
    stub.flush()
    assert results == []
    held.deliver()
    stub.flush()
    [(resp, body)] = results
    assert resp.code == 200 and len(json.loads(body)["data"]) == 4


def test_starved_past_the_wait_is_503() -> None:
    _, stub, _, clock = starved_web(seed_wait=3.0)
    results = start(stub, "http://a/anu/?length=4&type=uint8")
    clock.advance(3.1)
    stub.flush()
    [(resp, body)] = results
    assert resp.code == 503 and json.loads(body)["success"] is False


def test_off_means_404() -> None:
    _, stub = make_web(compat=CompatConfig(apis=frozenset({"randomorg"})))
    resp, _ = call(stub, "GET", "http://a/API/jsonI.php?length=1&type=uint8")
    assert resp.code == 404
    doc = json.loads(call(stub, "GET", "http://a/openapi.json")[1])
    assert "/API/jsonI.php" not in doc["paths"] and "/json-rpc/4/invoke" in doc["paths"]


def test_requests_are_counted_by_route_in_metrics() -> None:
    _, stub = make_web()
    call(stub, "GET", "http://a/API/jsonI.php?length=1&type=uint8")
    call(stub, "GET", "http://a/anu?length=1&type=uint8")
    call(stub, "GET", "http://a/anu/?length=0&type=uint8")
    text = call(stub, "GET", "http://a/metrics")[1].decode()
    assert 'entropy_http_requests_total{method="GET",route="/API/jsonI.php",status="200"} 1.0' in text
    assert 'entropy_http_requests_total{method="GET",route="/anu/",status="200"} 1.0' in text
    assert 'entropy_http_requests_total{method="GET",route="/anu/",status="400"} 1.0' in text
    assert 'entropy_served_bytes_total{surface="anu"} 2.0' in text
