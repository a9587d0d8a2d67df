"""
The pollen protocol, as Ubuntu's ``pollinate`` client expects it.

The client POSTs ``challenge=<hex>`` (form encoded) to the server URL, or
GETs ``/?challenge=<hex>``.  The reply is ``200 text/plain; charset=utf-8``
with exactly two lines: the hex SHA-512 of the challenge, then the hex
SHA-512 of the challenge followed by 64 random bytes.  The 64 bytes are a
slice of the pool's block of DRBG output, never handed out elsewhere, so the
challenge reaches the reply through the hash alone.  It also reaches the
DRBG, as pollen writes it to its device: :meth:`SeedPool.mix` folds it in at
the next reseed, as additional input, just as a write to ``/dev/urandom``
reaches the kernel's generator at its next reseed.  A ``generate`` of its
own per challenge would cost three AES key setups per request (README,
"Performance").

This module is the protocol alone; the response around a reply is built,
for every channel, in :mod:`entropy_appliance.web.responses`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from entropy_appliance.core.pool import SeedPool

__all__ = ["POLLEN_BYTES", "MAX_CHALLENGE", "NO_CHALLENGE", "TEXT_PLAIN", "challenge_of",
           "challenge_refusal", "pollen_reply"]

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


def challenge_of(request: Any) -> bytes | None:
    """The first non-empty ``challenge`` argument of a request (query or form), or None."""
    args = request.args or {}
    for value in args.get(b"challenge", ()):
        if value:
            return value
    return None


def challenge_refusal(challenge: bytes | None) -> bytes | None:
    """The text of the 400 for ``challenge`` (missing or too long), or None if it is good."""
    if challenge is None:
        return NO_CHALLENGE
    # The limit is in characters, as the OpenAPI document states it.
    if len(challenge.decode("utf-8", "replace")) > MAX_CHALLENGE:
        return b"The challenge is too long; pollinate sends 128 hex characters.\n"
    return None


def pollen_reply(pool: SeedPool, challenge: bytes) -> bytes:
    """The two-line reply body for ``challenge``; raises FailClosed."""
    random = pool.random_bytes(POLLEN_BYTES, surface="pollen")
    pool.mix(challenge)
    first = hashlib.sha512(challenge).hexdigest().encode()
    second = hashlib.sha512(challenge + random).hexdigest().encode()
    return first + b"\n" + second + b"\n"
