"""The pollen protocol in memory: POST and GET, 400 without a challenge, 503 when closed."""

from __future__ import annotations

import hashlib
import os

from tests.web_helpers import call, failed_pool, header, make_web

FORM = {b"Content-Type": [b"application/x-www-form-urlencoded"]}


def challenge() -> str:
    return hashlib.sha512(os.urandom(64)).hexdigest()


def check_reply(body: bytes, chal: str) -> str:
    lines = body.decode().split("\n")
    assert len(lines) == 3 and lines[2] == ""
    assert lines[0] == hashlib.sha512(chal.encode()).hexdigest()
    assert len(lines[1]) == 128 and int(lines[1], 16) >= 0
    return lines[1]


def test_post_like_pollinate_over_http_and_https() -> None:
    _, stub = make_web()
    for scheme in ("http", "https"):
        chal = challenge()
        resp, body = call(stub, "POST", f"{scheme}://a/", data=f"challenge={chal}".encode(),
                          headers=FORM)
        assert resp.code == 200
        assert header(resp, "Content-Type") == "text/plain; charset=utf-8"
        assert header(resp, "Cache-Control") == "no-store"
        assert header(resp, "X-RNG-Source")
        check_reply(body, chal)


def test_get_with_challenge_and_fresh_randomness_each_time() -> None:
    web, stub = make_web()
    chal = challenge()
    seconds = {check_reply(call(stub, "GET", f"http://a/?challenge={chal}")[1], chal) for _ in range(3)}
    assert len(seconds) == 3
    assert web.pool.status().served["pollen"] == 3 * 64


def test_missing_or_empty_challenge_says_use_pollinate() -> None:
    _, stub = make_web()
    for data in (b"", b"challenge=", b"other=1"):
        resp, body = call(stub, "POST", "http://a/", data=data, headers=FORM)
        assert resp.code == 400
        assert b"pollinate" in body
    resp, _ = call(stub, "GET", "http://a/?challenge=" + "a" * 5000)
    assert resp.code == 400


def test_fail_closed() -> None:
    _, stub = make_web(failed_pool())
    resp, _ = call(stub, "POST", "http://a/", data=b"challenge=ab", headers=FORM)
    assert resp.code == 503 and header(resp, "Retry-After")


def test_klein_route_alone_also_speaks_pollen() -> None:
    from treq.testing import StubTreq

    web, _ = make_web()
    stub = StubTreq(web.app.resource())
    chal = challenge()
    resp, body = call(stub, "POST", "http://a/", data=f"challenge={chal}".encode(), headers=FORM)
    assert resp.code == 200
    check_reply(body, chal)
