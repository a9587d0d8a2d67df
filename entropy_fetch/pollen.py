"""
The pollinate challenge/response, as Ubuntu's ``pollinate`` speaks it, so
that ``--pollen`` works against the appliance or any pollen server.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import secrets
from collections.abc import Iterator

from entropy_fetch.connect import Connector, HttpConnection
from entropy_fetch.errors import FetchError, ShortRead, VerificationError, reason
from entropy_fetch.fetch import http_error
from entropy_fetch.target import Target
from entropy_fetch.version import USER_AGENT

__all__ = ["POLLEN_REPLY_MAX", "POLLEN_SEED", "fetch_pollen"]

#: A pollen reply is two 128-hex-digit lines; anything much longer is not one.
POLLEN_REPLY_MAX = 4096
#: Bytes of seed per pollen exchange (one SHA-512).
POLLEN_SEED = 64


def fetch_pollen(connector: Connector, n: int, target: Target, timeout: float) -> Iterator[bytes]:
    """
    Run the pollinate challenge/response until ``n`` bytes of seed arrive.

    Each exchange POSTs ``challenge=<128 hex digits>``; the reply's first
    line must be the hex SHA-512 of the challenge text, and its second line
    (64 bytes, in hex) is the seed.
    """
    conn = HttpConnection(target, connector, timeout)
    where = f"{target.scheme}://{target.authority}{target.path}"
    done = 0
    try:
        while done < n:
            challenge = secrets.token_hex(64)
            expected = hashlib.sha512(challenge.encode("ascii")).hexdigest()
            try:
                conn.request("POST", target.path, body=f"challenge={challenge}", headers={
                    "User-Agent": USER_AGENT,
                    "Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                if resp.status != 200:
                    raise http_error(resp, where)
                # Fewer than max+1 bytes means the body is over; more is no pollen reply.
                body = resp.read(POLLEN_REPLY_MAX + 1)
            except FetchError:
                raise
            except (OSError, http.client.HTTPException) as e:
                raise FetchError(f"{where}: pollen exchange failed: {reason(e)}") from None
            if len(body) > POLLEN_REPLY_MAX:
                raise VerificationError(f"{where}: the pollen reply is too long to be one")
            lines = body.decode("ascii", "replace").splitlines()
            if not lines or not hmac.compare_digest(lines[0].strip(), expected):
                raise VerificationError(
                    f"{where} failed the pollen challenge: line 1 is not the SHA-512 of our challenge")
            try:
                seed = bytes.fromhex(lines[1].strip()) if len(lines) > 1 else b""
            except ValueError:
                seed = b""
            if len(seed) != POLLEN_SEED:
                raise ShortRead(f"{where}: the pollen reply has no 64-byte seed on line 2")
            piece = seed[: n - done]
            done += len(piece)
            yield piece
    finally:
        conn.close()
