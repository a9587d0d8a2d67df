"""
The pollen protocol, as Ubuntu's ``pollinate`` client expects it.

The client POSTs ``challenge=<hex>`` (form encoded) to the server URL, or
GETs ``/?challenge=<hex>``.  The reply is ``200 text/plain; charset=utf-8``
with exactly two lines: the hex SHA-512 of the challenge, then the hex
SHA-512 of the challenge followed by 64 random bytes.  The challenge is also
mixed into the DRBG as additional input, as pollen mixes it into its device.

:func:`render_pollen` works on any ``twisted.web`` request, so the lean
``POST /`` path in :mod:`entropy_appliance.web.app` can call it without Klein.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from twisted.web.server import Request

from entropy_appliance.core.pool import FailClosed, SeedPool
from entropy_appliance.web.problems import ServiceUnavailable, write_problem

__all__ = ["POLLEN_BYTES", "NO_CHALLENGE", "challenge_of", "pollen_reply", "render_pollen"]

#: Random bytes hashed into each reply, as pollen's default.
POLLEN_BYTES = 64

#: Longest challenge accepted, in characters; pollinate sends 128 hex characters.
MAX_CHALLENGE = 4096

NO_CHALLENGE = (
    b"Please use the pollinate client to seed from this server: "
    b"'apt install pollinate', then 'pollinate -s <this URL>'. "
    b"It POSTs challenge=<hex> to this URL.\n"
)

TEXT_PLAIN = b"text/plain; charset=utf-8"


def challenge_of(request: Request) -> bytes | None:
    """The first non-empty ``challenge`` argument of ``request`` (query or form), or None."""
    args = request.args or {}
    for value in args.get(b"challenge", ()):
        if value:
            return value
    return None


def pollen_reply(pool: SeedPool, challenge: bytes) -> bytes:
    """The two-line reply body for ``challenge``; raises FailClosed."""
    random = pool.random_bytes(POLLEN_BYTES, additional_input=challenge, surface="pollen")
    first = hashlib.sha512(challenge).hexdigest().encode()
    second = hashlib.sha512(challenge + random).hexdigest().encode()
    return first + b"\n" + second + b"\n"


def render_pollen(request: Request, pool: SeedPool,
                  set_rng_headers: Callable[[Request], None]) -> bytes:
    """Answer one pollen request on ``request``: the reply, a 400 or a 503."""
    challenge = challenge_of(request)
    # The limit is in characters, as the OpenAPI document states it.
    if challenge is None or len(challenge.decode("utf-8", "replace")) > MAX_CHALLENGE:
        request.setResponseCode(400)
        request.setHeader(b"Content-Type", TEXT_PLAIN)
        if challenge is not None:
            return b"The challenge is too long; pollinate sends 128 hex characters.\n"
        return NO_CHALLENGE
    try:
        body = pollen_reply(pool, challenge)
    except FailClosed as e:
        return write_problem(request, ServiceUnavailable(e.reason, e.retry_after))
    request.setHeader(b"Content-Type", TEXT_PLAIN)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    set_rng_headers(request)
    return body
