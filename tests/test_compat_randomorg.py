"""
RANDOM.ORG's JSON-RPC release 4 in memory (StubTreq): the methods and their
limits, the JSON-RPC 2.0 envelope and batches, RANDOM.ORG's error codes,
keys, budgets, signatures, failing closed and waiting while starved.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from treq.testing import StubTreq
from twisted.internet.task import Clock

from entropy_appliance.core.peers import PeerBandwidth, PeerRateLimiter
from entropy_appliance.net.limits import InFlight
from entropy_appliance.web.compat import ApiKeys, CompatConfig, PeerBudget, SigningKey
from entropy_appliance.web.compat.keys import UNLIMITED
from entropy_appliance.web.compat.randomorg import MAX_BATCH
from entropy_appliance.web.compat.signing import canonical
from entropy_appliance.web.limits import RateLimitedResource
from tests.test_web_routes import start, starved_web
from tests.web_helpers import call, failed_pool, header, make_web, seeded_pool

INVOKE = "http://a/json-rpc/4/invoke"

#: One key for the whole module: making an RSA key takes a moment.
KEY = SigningKey.generate()


def web_and_stub(**kwargs: Any) -> tuple[Any, StubTreq]:
    return make_web(signing=KEY, **kwargs)


def post(stub: StubTreq, body: Any, raw: bytes | None = None) -> tuple[Any, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    resp, out = call(stub, "POST", INVOKE, data=data, headers={"Content-Type": "application/json"})
    assert header(resp, "Content-Type") == "application/json"
    return resp, json.loads(out)


def rpc(method: str, request_id: Any = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": {"apiKey": "key", **params},
            "id": request_id}


def result(stub: StubTreq, method: str, **params: Any) -> dict[str, Any]:
    resp, doc = post(stub, rpc(method, **params))
    assert resp.code == 200, doc
    assert doc["jsonrpc"] == "2.0" and doc["id"] == 1 and "error" not in doc, doc
    return doc["result"]


def error(stub: StubTreq, body: Any, status: int = 200) -> dict[str, Any]:
    resp, doc = post(stub, body)
    assert resp.code == status, doc
    assert "result" not in doc and doc["jsonrpc"] == "2.0"
    return doc


# -- the basic methods ---------------------------------------------------------------


def test_generate_integers() -> None:
    _, stub = web_and_stub()
    res = result(stub, "generateIntegers", n=1000, min=1, max=6)
    data = res["random"]["data"]
    assert len(data) == 1000 and set(data) == {1, 2, 3, 4, 5, 6}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", res["random"]["completionTime"])
    assert res["bitsUsed"] > 0 and res["advisoryDelay"] == 0
    assert res["bitsLeft"] == res["requestsLeft"] == UNLIMITED
    data = result(stub, "generateIntegers", n=10, min=-10**9, max=10**9, base=16)["random"]["data"]
    assert all(isinstance(v, str) and -10**9 <= int(v, 16) <= 10**9 for v in data)
    data = result(stub, "generateIntegers", n=10, min=0, max=9, replacement=False)["random"]["data"]
    assert sorted(data) == list(range(10))


def test_generate_integer_sequences() -> None:
    _, stub = web_and_stub()
    data = result(stub, "generateIntegerSequences", n=3, length=[1, 2, 5], min=[0, 10, 100],
                  max=[0, 11, 104], replacement=[True, True, False])["random"]["data"]
    assert data[0] == [0] and len(data[1]) == 2 and set(data[1]) <= {10, 11}
    assert sorted(data[2]) == [100, 101, 102, 103, 104]
    data = result(stub, "generateIntegerSequences", n=2, length=4, min=1, max=52,
                  base=2)["random"]["data"]
    assert [len(s) for s in data] == [4, 4] and all(1 <= int(v, 2) <= 52 for s in data for v in s)


def test_generate_decimal_fractions_gaussians_strings() -> None:
    _, stub = web_and_stub()
    data = result(stub, "generateDecimalFractions", n=100, decimalPlaces=3)["random"]["data"]
    assert all(0 <= v < 1 and round(v, 3) == v for v in data)
    data = result(stub, "generateGaussians", n=100, mean=10, standardDeviation=2,
                  significantDigits=5)["random"]["data"]
    assert all(isinstance(v, float) and len(f"{v:.4e}".split("e")[0].replace(".", "").lstrip("-")) == 5
               for v in data)
    assert 5 < sum(data) / 100 < 15
    data = result(stub, "generateStrings", n=50, length=8, characters="abc")["random"]["data"]
    assert all(re.fullmatch("[abc]{8}", s) for s in data)
    data = result(stub, "generateStrings", n=9, length=2, characters="abc",
                  replacement=False)["random"]["data"]
    assert sorted(data) == sorted(a + b for a in "abc" for b in "abc")


def test_generate_uuids_and_blobs() -> None:
    web, stub = web_and_stub()
    data = result(stub, "generateUUIDs", n=1000)["random"]["data"]
    assert len(set(data)) == 1000 and all(uuid.UUID(u).version == 4 for u in data)
    data = result(stub, "generateBlobs", n=2, size=1024)["random"]["data"]
    assert [len(base64.b64decode(b)) for b in data] == [128, 128]
    data = result(stub, "generateBlobs", n=1, size=16, format="hex")["random"]["data"]
    assert re.fullmatch("[0-9a-f]{4}", data[0])
    assert web.pool.status().served["randomorg"] >= 16 * 1000 + 256 + 2


def test_get_usage() -> None:
    _, stub = web_and_stub()
    result(stub, "generateBlobs", n=1, size=64)
    res = result(stub, "getUsage")
    assert res["status"] == "running" and res["totalRequests"] == 1 and res["totalBits"] == 64
    assert res["bitsLeft"] == res["requestsLeft"] == UNLIMITED


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("method,params,code", [
    ("generateIntegers", {"n": 10001, "min": 1, "max": 6}, 202),
    ("generateIntegers", {"n": 0, "min": 1, "max": 6}, 202),
    ("generateIntegers", {"n": 1, "min": -10**9 - 1, "max": 6}, 202),
    ("generateIntegers", {"n": "5", "min": 1, "max": 6}, 200),
    ("generateIntegers", {"n": True, "min": 1, "max": 6}, 200),
    ("generateIntegers", {"n": 5, "min": 7, "max": 6}, 300),
    ("generateIntegers", {"n": 7, "min": 1, "max": 6, "replacement": False}, 301),
    ("generateIntegers", {"n": 1, "min": 1, "max": 6, "base": 3}, 202),
    ("generateIntegers", {"n": 1, "min": 1, "max": 6, "pregeneratedRandomization": {"id": "x"}}, 201),
    ("generateIntegerSequences", {"n": 2, "length": [1], "min": 1, "max": 6}, 203),
    ("generateIntegerSequences", {"n": 2, "length": 5001, "min": 1, "max": 6}, 202),
    ("generateDecimalFractions", {"n": 1, "decimalPlaces": 15}, 202),
    ("generateGaussians", {"n": 1, "mean": 0, "standardDeviation": 1, "significantDigits": 1}, 202),
    ("generateGaussians", {"n": 1, "mean": 2e6, "standardDeviation": 1, "significantDigits": 5}, 202),
    ("generateStrings", {"n": 1, "length": 33, "characters": "ab"}, 202),
    ("generateStrings", {"n": 1, "length": 3, "characters": ""}, 202),
    ("generateStrings", {"n": 5, "length": 1, "characters": "abcd", "replacement": False}, 301),
    ("generateUUIDs", {"n": 1001}, 202),
    ("generateBlobs", {"n": 1, "size": 12}, 204),
    ("generateBlobs", {"n": 2, "size": 1048576}, 202),
    ("generateBlobs", {"n": 1, "size": 8, "format": "binary"}, 202),
    ("generateSignedIntegers", {"n": 1, "min": 1, "max": 6, "userData": "x" * 1000}, 202),
])
def test_randomorg_error_codes(method: str, params: dict[str, Any], code: int) -> None:
    web, stub = web_and_stub()
    doc = error(stub, rpc(method, 7, **params))
    assert doc["id"] == 7 and doc["error"]["code"] == code and doc["error"]["message"]
    assert "randomorg" not in web.pool.status().served


@pytest.mark.parametrize("params", [
    {"n": 1, "min": 1},  # max missing
    {"n": 1, "min": 1, "max": 6, "chars": "x"},  # unknown member
])
def test_invalid_params(params: dict[str, Any]) -> None:
    _, stub = web_and_stub()
    doc = error(stub, rpc("generateIntegers", **params))
    assert doc["error"]["code"] == -32602 and doc["id"] == 1
    body = {"jsonrpc": "2.0", "method": "generateUUIDs", "params": {"n": 1}, "id": 2}
    assert error(stub, body)["error"]["code"] == -32602  # apiKey is required, as RANDOM.ORG's


def test_method_not_found() -> None:
    _, stub = web_and_stub()
    doc = error(stub, rpc("fooBar", 18197))
    assert doc == {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found",
                                               "data": None}, "id": 18197}


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2", b'{"a": NaN}', b"\xff\xfe"])
def test_parse_error_is_400(raw: bytes) -> None:
    _, stub = web_and_stub()
    resp, doc = post(stub, None, raw)
    assert resp.code == 400 and doc["error"]["code"] == -32700 and doc["id"] is None


@pytest.mark.parametrize("body", [
    {"method": "generateUUIDs", "params": {"apiKey": "k", "n": 1}, "id": 3},  # no jsonrpc
    {"jsonrpc": "1.0", "method": "generateUUIDs", "id": 3},
    {"jsonrpc": "2.0", "method": 5, "id": 3},
    {"jsonrpc": "2.0", "method": "generateUUIDs", "params": "n=1", "id": 3},
    {"jsonrpc": "2.0", "method": "generateUUIDs", "params": {"apiKey": "k", "n": 1}},  # no id
    {"jsonrpc": "2.0", "method": "generateUUIDs", "id": {"a": 1}},
    "generateUUIDs", 42, [],
])
def test_invalid_request_is_400(body: Any) -> None:
    _, stub = web_and_stub()
    resp, doc = post(stub, body)
    assert resp.code == 400 and doc["error"]["code"] == -32600


def test_batch() -> None:
    _, stub = web_and_stub()
    batch = [rpc("generateUUIDs", "a", n=2), rpc("fooBar", "b"), {"jsonrpc": "2.0"},
             rpc("generateIntegers", "c", n=1, min=5, max=5)]
    resp, doc = post(stub, batch)
    assert resp.code == 200 and isinstance(doc, list) and len(doc) == 4
    assert len(doc[0]["result"]["random"]["data"]) == 2 and doc[0]["id"] == "a"
    assert doc[1]["error"]["code"] == -32601 and doc[1]["id"] == "b"
    assert doc[2]["error"]["code"] == -32600 and doc[2]["id"] is None
    assert doc[3]["result"]["random"]["data"] == [5] and doc[3]["id"] == "c"
    resp, doc = post(stub, [rpc("generateUUIDs", i, n=1) for i in range(MAX_BATCH + 2)])
    assert resp.code == 200 and [d["id"] for d in doc] == list(range(MAX_BATCH + 2))
    assert all("result" in d for d in doc[:MAX_BATCH])
    assert [d["error"]["code"] for d in doc[MAX_BATCH:]] == [-32003, -32003]


def test_keys_are_checked_when_given() -> None:
    _, stub = web_and_stub(compat=CompatConfig(keys=ApiKeys(frozenset({"key"}))))
    assert result(stub, "generateUUIDs", n=1)
    body = rpc("generateUUIDs", n=1)
    body["params"]["apiKey"] = "other"
    doc = error(stub, body)
    assert doc["error"]["code"] == 400 and "does not exist" in doc["error"]["message"]


def test_wrong_http_method_is_405() -> None:
    _, stub = web_and_stub()
    resp, _ = call(stub, "GET", INVOKE)
    assert resp.code == 405 and header(resp, "Allow") == "POST"


# -- signatures ---------------------------------------------------------------------------


def test_signed_answers_verify_here_and_with_the_public_key() -> None:
    _, stub = web_and_stub()
    res = result(stub, "generateSignedIntegers", n=5, min=1, max=100, userData={"draw": 7})
    random = res["random"]
    assert random["method"] == "generateSignedIntegers" and random["n"] == 5
    assert random["min"] == 1 and random["max"] == 100 and random["userData"] == {"draw": 7}
    assert random["hashedApiKey"] == base64.b64encode(
        __import__("hashlib").sha512(b"key").digest()).decode()
    assert isinstance(random["serialNumber"], int)
    # A third party checks it with the published key, as RANDOM.ORG's are checked.
    resp, pem = call(stub, "GET", "http://a/json-rpc/4/public-key.pem")
    assert resp.code == 200 and pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    public = serialization.load_pem_public_key(pem)
    public.verify(base64.b64decode(res["signature"]), canonical(random),  # type: ignore[union-attr]
                  padding.PKCS1v15(), hashes.SHA512())  # type: ignore[call-arg]
    # verifySignature, with the random object in another key order.
    shuffled = dict(reversed(list(random.items())))
    verdict = result(stub, "verifySignature", random=shuffled, signature=res["signature"])
    assert verdict == {"authenticity": True}
    forged = {**random, "data": [1, 1, 1, 1, 1]}
    assert result(stub, "verifySignature", random=forged, signature=res["signature"]) == {
        "authenticity": False}
    assert result(stub, "verifySignature", random=random, signature="not base64!") == {
        "authenticity": False}


@pytest.mark.parametrize("method,params", [
    ("generateSignedIntegerSequences", {"n": 2, "length": 3, "min": 1, "max": 6}),
    ("generateSignedDecimalFractions", {"n": 3, "decimalPlaces": 4}),
    ("generateSignedGaussians", {"n": 3, "mean": 0, "standardDeviation": 1.5, "significantDigits": 6}),
    ("generateSignedStrings", {"n": 3, "length": 4, "characters": "xyz"}),
    ("generateSignedUUIDs", {"n": 3}),
    ("generateSignedBlobs", {"n": 3, "size": 64, "format": "hex"}),
])
def test_every_signed_method_verifies(method: str, params: dict[str, Any]) -> None:
    _, stub = web_and_stub()
    res = result(stub, method, **params)
    assert res["random"]["method"] == method and len(res["random"]["data"]) == params["n"]
    # As a client sends it back: parsed, then serialised again.
    random = json.loads(json.dumps(res["random"]))
    assert result(stub, "verifySignature", random=random, signature=res["signature"]) == {
        "authenticity": True}


def test_another_key_does_not_verify() -> None:
    _, stub = web_and_stub()
    res = result(stub, "generateSignedUUIDs", n=1)
    _, other = make_web(signing=SigningKey.generate(2048))
    assert result(other, "verifySignature", random=res["random"], signature=res["signature"]) == {
        "authenticity": False}


# -- failing closed, starving, budgets ------------------------------------------------------


def test_failed_pool_is_503_with_a_jsonrpc_error() -> None:
    _, stub = web_and_stub(pool=failed_pool())
    resp, doc = post(stub, rpc("generateIntegers", 9, n=1, min=1, max=6))
    assert resp.code == 503 and header(resp, "Retry-After")
    assert doc["error"]["code"] == -32001 and "EIO" in doc["error"]["message"] and doc["id"] == 9
    resp, doc = post(stub, [rpc("generateUUIDs", 1, n=1), rpc("generateUUIDs", 2, n=1)])
    assert resp.code == 503 and doc["error"]["code"] == -32001
    # What draws no random byte still answers.
    assert post(stub, rpc("getUsage"))[0].code == 200


def test_starved_request_waits_then_is_answered() -> None:
    _, stub, held, clock = starved_web(seed_wait=5.0)
    body = json.dumps(rpc("generateIntegers", n=3, min=1, max=6)).encode()
    results = start(stub, INVOKE, method="POST", data=body)
    clock.advance(2.0)
    stub.flush()
    assert results == []
    held.deliver()
    stub.flush()
    [(resp, out)] = results
    assert resp.code == 200 and len(json.loads(out)["result"]["random"]["data"]) == 3


def test_budgets_and_advisory_delay_follow_the_peer_limits() -> None:
    clock = Clock()
    limiter = PeerRateLimiter(2.0, clock)  # bursts of 4
    bandwidth = PeerBandwidth(1000, clock)
    web, _ = make_web(seeded_pool(clock), clock=clock, signing=KEY,
                      budget=PeerBudget(limiter, bandwidth))
    stub = StubTreq(RateLimitedResource(web.resource(), InFlight(), limiter, web.observe,
                                        web.too_many))
    seen = []
    for _ in range(4):
        res = result(stub, "generateIntegers", n=1, min=1, max=6)
        seen.append((res["requestsLeft"], res["advisoryDelay"]))
        assert res["bitsLeft"] == 8000
    # The last request of the burst is told to wait for the next token: half a second.
    assert seen == [(3, 0), (2, 0), (1, 0), (0, 500)]
    resp, doc = post(stub, rpc("generateIntegers", n=1, min=1, max=6))
    assert resp.code == 429 and header(resp, "Retry-After") == "1"
    assert doc["error"]["code"] == -32002 and doc["id"] is None
    # The appliance's own routes keep their problem+json.
    resp, _ = call(stub, "GET", "http://a/v1/uuid")
    assert resp.code == 429 and header(resp, "Content-Type") == "application/problem+json"
    clock.advance(0.5)
    assert result(stub, "getUsage")["requestsLeft"] == 0
    clock.advance(1.0)
    bandwidth.spend("127.0.0.1", 400)
    assert result(stub, "getUsage")["bitsLeft"] == 8 * 600
