"""The lean channel's parser, on bytes: what it matches, where a request ends, and what it leaves alone."""

from __future__ import annotations

import pytest

from entropy_appliance.web.h1 import Parser, Pollen, Random

CHALLENGE = b"0123456789abcdef" * 8
FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"
parser = Parser(max_challenge=4096)


def post(body: bytes = b"challenge=" + CHALLENGE, extra: bytes = b"", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (b"POST / HTTP/1.1\r\nHost: a\r\n" + FORM + b"Content-Length: %d\r\n" % n
            + extra + b"\r\n" + body)


def get(n: bytes = b"64", extra: bytes = b"") -> bytes:
    return b"GET /v1/random?bytes=" + n + b" HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n"


def test_pollinate_post_matches_and_ends_after_its_body() -> None:
    data = post()
    assert parser.parse(data) == Pollen(CHALLENGE, len(data))
    curl = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\n"
            b"Content-Length: 138\r\ncontent-type: Application/X-WWW-Form-Urlencoded\r\n\r\n"
            b"challenge=" + CHALLENGE)
    assert parser.parse(curl) == Pollen(CHALLENGE, len(curl))


def test_random_get_matches_with_its_size() -> None:
    data = get(b"1048576", b"Connection: keep-alive\r\n")
    assert parser.parse(data) == Random(1048576, len(data))
    assert parser.parse(get(b"0")) == Random(0, len(get(b"0")))  # range is the caller's
    assert parser.parse(get(b"64", b"Content-Length: 0\r\n")) is not None


def test_pipelined_requests_parse_one_at_a_time_from_an_offset() -> None:
    data = get() + post() + get(b"7") + b"GET /health HTTP/1.1\r\n\r\n"
    first = parser.parse(data)
    assert isinstance(first, Random)
    second = parser.parse(data, first.end)
    assert isinstance(second, Pollen)
    third = parser.parse(data, second.end)
    assert third == Random(7, second.end + len(get(b"7")))
    assert parser.parse(data, third.end) is None


@pytest.mark.parametrize("data", [
    get()[:-2],                                    # head not complete
    post()[:-1],                                   # body not complete
    b"HEAD /v1/random?bytes=64 HTTP/1.1\r\n\r\n",
    b"GET /v1/random?bytes=64 HTTP/1.0\r\n\r\n",
    b"GET /v1/random?bytes=64&format=hex HTTP/1.1\r\n\r\n",
    b"GET /v1/random?bytes=-1 HTTP/1.1\r\n\r\n",
    b"GET /v1/random?bytes=1234567890123 HTTP/1.1\r\n\r\n",
    b"GET /v1/random HTTP/1.1\r\n\r\n",
    b"GET /health HTTP/1.1\r\n\r\n",
    b"POST /v1/random HTTP/1.1\r\n\r\n",
    get(extra=b"Content-Length: 3\r\n") + b"abc",    # a GET with a body
    get(extra=b"Connection: close\r\n"),
    get(extra=b"Connection: upgrade\r\nUpgrade: h2c\r\n"),
    get(extra=b"Expect: 100-continue\r\n"),
    get(extra=b"Transfer-Encoding: chunked\r\n"),
    get(extra=b"Bad Name: x\r\n"),
    get(extra=b"Name : x\r\n"),
    get(extra=b"X: a\rb\r\n"),
    get(extra=b"X: a\nb\r\n"),
    get(extra=b"X: a\x00\r\n"),
    get(extra=b"NoColon\r\n"),
    post(extra=b"Content-Length: 138\r\n"),         # two lengths
    post(length=-1).replace(b"-1", b"x1"),          # not a number
    post(body=b"challenge=ab%20cd"),                 # needs unquoting
    post(body=b"challenge="),
    post(body=b"challenge=ab&x=1"),
    post(body=b"other=1"),
    post(body=b"challenge=" + b"a" * 4097),
    post().replace(FORM, b""),                      # no form type
    post().replace(FORM, b"Content-Type: text/plain\r\n"),
    post().replace(FORM, FORM + FORM),
    post(extra=b"Transfer-Encoding: chunked\r\n"),
])
def test_anything_else_is_left_to_the_full_parser(data: bytes) -> None:
    assert parser.parse(data) is None


def test_limits_on_the_head_and_the_challenge() -> None:
    small = Parser(max_challenge=8, max_head=200, max_headers=3)
    assert small.parse(post(body=b"challenge=abcdefgh")) is not None
    assert small.parse(post(body=b"challenge=abcdefghi")) is None
    assert small.parse(get(extra=b"A: 1\r\nB: 2\r\n")) is not None
    assert small.parse(get(extra=b"A: 1\r\nB: 2\r\nC: 3\r\n")) is None
    assert small.parse(get(extra=b"A: " + b"x" * 200 + b"\r\n")) is None


def test_the_longest_challenge_fits() -> None:
    data = post(body=b"challenge=" + b"a" * 4096)
    assert parser.parse(data) == Pollen(b"a" * 4096, len(data))
