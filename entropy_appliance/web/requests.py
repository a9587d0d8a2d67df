"""
The Site's request class: request bodies bounded before they are read and
kept in memory, and requests that no route could read refused before routing.

Twisted's ``Request`` writes a body of 100 kB or more to an unlinked
temporary file (``http._getContentFile``): one client that posts without end
fills the disk, or the unit's ``PrivateTmp``, and holds two file descriptors
a request.  :class:`BoundedRequest` is the Site's ``requestFactory``, so
every channel makes it: HTTP/1.1, and each HTTP/2 stream, whose ``DATA``
frames arrive through the same ``handleContentChunk``.

- The body is held in memory, never in a file, and never past the Site's
  ``max_body`` (``--max-body``) bytes.  A ``Content-Length`` over it is
  refused before a byte of the body is read; a chunked body, or HTTP/2
  ``DATA``, at the first byte past it.  The refusal is a 413 problem, and
  what follows of the body is discarded.
- A request that Klein could not read is refused with a 400 problem before
  routing: an HTTP/1.1 request without ``Host`` (RFC 9112, section 3.2), an
  HTTP/1.x request with more than one, a ``Host`` that is not a host, and a
  path whose percent-decoding is not UTF-8; and with a 405 problem, a method
  other than ``OPTIONS`` on ``*``.

A channel that can answer before it has read a request provides
``refuse(problem)``: the HTTP/1.1 channel of :mod:`entropy_appliance.web.limits`
sends the answer at once and closes the connection.  On any other channel (an
HTTP/2 stream of Twisted's) the 413 is this request's own response once the
client has ended the stream, and a body that goes on for
:data:`DISCARD_BYTES` past the limit is cut off by resetting the stream:
Twisted's HTTP/2 connection fails on ``DATA`` for a stream it has answered
in full, so it is never answered early.
"""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web import server
from twisted.web.http import datetimeToString

from entropy_appliance.web.problems import (
    BadRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    Problem,
    write_problem,
)

__all__ = ["BoundedRequest", "DEFAULT_MAX_BODY", "max_body_of"]

#: The largest request body read, by default.  The largest request the
#: OpenAPI document admits is pollen's form ``challenge=`` with 4096
#: characters, each a 4-byte UTF-8 character percent-encoded: 49,162 bytes.
#: The same challenge may come in the query of a 64 KiB request line.
DEFAULT_MAX_BODY = 64 * 1024

#: How much of a refused body a channel that cannot answer before the body
#: ends (an HTTP/2 stream) discards before it cuts the body off.
DISCARD_BYTES = 1024 * 1024

#: A ``Host`` value: a bracketed IP literal or a registered name (RFC 3986
#: ``reg-name``, IPv4 included), then an optional port.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")


def max_body_of(site: Any) -> int:
    """The body limit of ``site`` (its ``max_body``), or :data:`DEFAULT_MAX_BODY`."""
    value = getattr(site, "max_body", None)
    return DEFAULT_MAX_BODY if value is None else int(value)


class BoundedRequest(server.Request):
    """A ``twisted.web`` request whose body is bounded and in memory; see the module docstring."""

    _limit = DEFAULT_MAX_BODY
    _received = 0
    _refusal: Problem | None = None
    _answered = False
    _discarded = 0

    # -- the body ---------------------------------------------------------------

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - twisted.web's name
        """Keep the body in memory; refuse a declared length over the limit."""
        self.content = BytesIO()
        self._limit = max_body_of(getattr(self.channel, "site", None))
        if length is not None and length > self._limit:
            self._refuse(f"the request body of {length} bytes is over this server's limit of "
                         f"{self._limit} bytes")

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - twisted.web's name
        """Keep ``data`` unless the body is now over the limit; discard it once refused."""
        if self._refusal is not None:
            self._discard(len(data))
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse(f"the request body is over this server's limit of {self._limit} bytes")
            return
        content: Any = self.content
        content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        """The whole request is in: answer a refusal, or go on as Twisted does."""
        if self._refusal is not None:
            self._answer_refusal()
            return
        super().requestReceived(command, path, version)

    def _refuse(self, detail: str) -> None:
        """Refuse the body with a 413, through the channel if it can answer now."""
        self._refusal = PayloadTooLarge(f"{detail}; send a smaller body")
        self.content = BytesIO()
        refuse = getattr(self.channel, "refuse", None)
        if refuse is not None:
            self._answered = True
            refuse(self._refusal)

    def _discard(self, n: int) -> None:
        """
        Discard ``n`` bytes of a refused body.  On a channel that cannot
        answer before the body ends (an HTTP/2 stream), a body that goes on
        for :data:`DISCARD_BYTES` past the refusal is cut: the stream is reset.
        """
        self._discarded += n
        if not self._answered and self._discarded > DISCARD_BYTES:
            self._answered = True
            channel: Any = self.channel
            channel.abortConnection()

    def _answer_refusal(self) -> None:
        """Write the 413 as this request's response, its body received (on a channel without ``refuse``)."""
        if self._answered or self._refusal is None:
            return
        self._answered = True
        channel = self.channel
        self.method = getattr(channel, "command", None) or b"POST"
        self.uri = self.path = getattr(channel, "path", None) or b"/"
        self.clientproto = b"HTTP/2"
        self.args = {}
        self.write(write_problem(self, self._refusal))
        self.finish()

    # -- before routing ---------------------------------------------------------

    def process(self) -> None:
        """Refuse a request no route could read with a 400 problem; route the rest."""
        problem = self.unreadable()
        if problem is None:
            super().process()
            return
        channel: Any = self.channel
        self.site = channel.site
        self.setHeader(b"Date", datetimeToString())
        self.write(write_problem(self, problem))
        self.finish()

    def unreadable(self) -> Problem | None:
        """Why this request cannot be routed (its ``Host`` or its path), or None."""
        if self.path == b"*" and self.method != b"OPTIONS":
            # Twisted answers this itself, with an empty 405.
            return MethodNotAllowed(f"{self.method.decode('latin-1')} * is not allowed; use OPTIONS *",
                                    ["OPTIONS"])
        hosts = self.requestHeaders.getRawHeaders(b"Host") or []
        if self.clientproto.startswith(b"HTTP/1."):
            if len(hosts) > 1:
                return BadRequest("the request has more than one Host header")
            if not hosts and self.clientproto == b"HTTP/1.1":
                return BadRequest("an HTTP/1.1 request must have a Host header (RFC 9112, section 3.2)")
        if any(_HOST.fullmatch(host) is None for host in hosts):
            return BadRequest("the Host header is not a host name or address with an optional port")
        try:
            unquote_to_bytes(self.path).decode("utf-8")
        except UnicodeDecodeError:
            return BadRequest("the request path is not UTF-8 once percent-decoded")
        return None
