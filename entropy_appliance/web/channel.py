"""
The Site's HTTP/1.1 channel, which answers the hottest requests itself.

pollinate calls ``POST /`` at every boot of every client, and scripts read
small amounts of ``/v1/random`` in loops.  Through ``twisted.web``'s request
handling each pays for a ``Request``, header objects, form parsing and Klein
routing: several times the work of the answer itself (bench/bench_http.py
measures it).  So, at a request boundary with nothing queued,
:class:`FastHTTPChannel` parses what it received with the pure
:class:`~entropy_appliance.web.h1.Parser`; a match is answered with the
response that :mod:`entropy_appliance.web.responses` builds for the Klein
routes too: inline, or streamed by a pull
:class:`~entropy_appliance.net.body.BodyWriter` that takes the channel's
place on the transport.  Anything else goes to ``HTTPChannel`` unchanged,
from that request on, so the two never disagree about where a request
begins.  HTTP/2 never comes here: after ALPN the Site's protocol switches
to an :class:`~entropy_appliance.web.h2.H2Channel`.

This is the one module that reaches into ``HTTPChannel``'s private state
(``_buffer``, ``_busyReceiving``, ``_dataBuffer``, ``_waitingForTransport``,
``_receivedHeaderSize``, ``_receivedHeaderCount``, ``_HTTPChannel__first_line``,
``_networkProducer``, ``_handlingRequest``, ``_savedTimeOut``) and overrides
``_respondToBadRequestAndDisconnect``, so that Twisted's parser errors are
problems (431 for a head too large, else 400); ``setup.py`` pins Twisted to
the releases it is tested with.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from entropy_appliance.net.body import BodyWriter
from entropy_appliance.web.h1 import Match
from entropy_appliance.web.h2 import ALPNSwitch
from entropy_appliance.web.limits import LimitedHTTPChannel
from entropy_appliance.web.problems import BadRequest, HeaderFieldsTooLarge, Problem, URITooLong
from entropy_appliance.web.responses import HotRoutes, Streamed

__all__ = ["FastHTTPChannel", "fast_channel_protocol"]

#: A ``Host`` header line; a request with none, or more than one, takes the full path (400).
_HOST = re.compile(rb"\r\nhost:", re.IGNORECASE)


class FastHTTPChannel(LimitedHTTPChannel):
    """
    ``HTTPChannel`` (with the request-head limits of
    :class:`~entropy_appliance.web.limits.LimitedHTTPChannel`) that answers
    complete, plain hot requests itself and hands everything else to its
    parent class at a request boundary.

    Its Site provides ``fast`` (:class:`HotRoutes`, or None: off),
    ``admit_fast(channel)`` (per-request policy, such as the rate limit) and
    ``fast_inflight()`` (the in-flight count a streamed body joins).
    """

    _body: BodyWriter | None = None
    _serving = False

    def dataReceived(self, data: bytes) -> None:
        """Answer what the hot routes can, then let ``HTTPChannel`` parse the rest."""
        routes: HotRoutes | None = getattr(getattr(self, "site", None), "fast", None)
        if routes is not None and data and self._at_boundary():
            self.resetTimeout()
            data = self._serve(routes, data)
            if not data:
                return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """End a streamed body still running (counted, no longer in flight)."""
        body, self._body = self._body, None
        if body is not None:
            body.stopProducing()
        super().connectionLost(reason)

    def _at_boundary(self) -> bool:
        # Only between requests, with nothing buffered, queued or half-parsed,
        # and while the transport takes our writes.
        return bool(
            self._body is None
            and not self.requests
            and self.line_mode
            and not self._buffer
            and not self._busyReceiving
            and not self.paused
            and self.persistent
            and not self._dataBuffer
            and not self._waitingForTransport
            and self._receivedHeaderSize == 0
            and self.transport is not None
            and getattr(self, "_HTTPChannel__first_line", 1) == 1
        )

    def _serve(self, routes: HotRoutes, data: bytes) -> bytes:
        """Answer the hot requests at the front of ``data``; return what is left."""
        pos = 0
        out: list[bytes] = []
        end = len(data)
        self._serving = True
        try:
            while pos < end:
                reply, used = self._one(routes, data, pos)
                if reply is None:
                    break
                pos = used
                if isinstance(reply, bytes):
                    out.append(reply)
                    continue
                if out:
                    # What is answered before the body goes out before it.
                    self.transport.writeSequence(out)  # type: ignore[union-attr]
                    out = []
                # The rest waits behind the body, as HTTPChannel makes it wait.
                if pos < end:
                    self._dataBuffer.append(data[pos:])
                self._start_body(reply)
                if self._body is not None:
                    return b""
                # The body completed at once (the transport took every chunk
                # as it was registered): read on here, not by recursion.
                data = b"".join(self._dataBuffer)
                self._dataBuffer = []
                pos, end = 0, len(data)
                self.setLineMode()
                if not self._at_boundary():
                    break
        finally:
            self._serving = False
            if out and self.transport is not None:
                self.transport.writeSequence(out)
        return data[pos:] if pos else data

    def _one(self, routes: HotRoutes, data: bytes, pos: int) -> tuple[bytes | BodyWriter | None, int]:
        """Answer one request at ``pos``: (response, end of request), or (None, pos)."""
        match = routes.parser.parse(data, pos)
        if match is None or not routes.accepts(match) or len(_HOST.findall(data, pos, match.end)) != 1:
            return None, pos
        streams = routes.streams(match)
        if streams and not self._can_stream():
            return None, pos
        admit = getattr(getattr(self, "site", None), "admit_fast", None)
        if admit is not None and not admit(self):
            return None, pos
        response = routes.answer(match)
        if response is None:
            return None, pos
        head = routes.head(response)
        if response.stream is None:
            routes.count(match)
            return head + response.body, match.end
        return self._writer(routes, match, head, response.stream), match.end

    def line_too_long(self) -> Problem:
        """A line over ``MAX_LENGTH``: 414 for the request line, 431 for a header line."""
        if getattr(self, "_HTTPChannel__first_line", 1):
            return URITooLong(f"the request line is over {self.MAX_LENGTH} bytes")
        return HeaderFieldsTooLarge(f"a header line is over {self.MAX_LENGTH} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 - HTTPChannel's name
        """Twisted's parser refused the request: answer it with a problem, not a bare status line."""
        problem: Problem
        if self._receivedHeaderSize > self.totalHeadersSize:
            problem = HeaderFieldsTooLarge(f"the request head is over {self.totalHeadersSize} bytes")
        elif self._receivedHeaderCount > self.maxHeaders:
            problem = HeaderFieldsTooLarge(f"the request has more than {self.maxHeaders} header lines")
        else:
            problem = BadRequest("the request is malformed (RFC 9112): its request line, a header "
                                 "line, or the framing or form encoding of its body")
        self.refuse(problem)

    def _can_stream(self) -> bool:
        # The body's producer takes the channel's place on the transport, so
        # the transport must be the one the channel is registered on.
        transport = self.transport
        return IConsumer.providedBy(transport) and getattr(self, "_networkProducer", None) is transport

    def _writer(self, routes: HotRoutes, match: Match, head: bytes, stream: Streamed) -> BodyWriter:
        """The writer of a streamed response; it joins the site's in-flight count."""
        transport: Any = self.transport
        inflight = getattr(getattr(self, "site", None), "fast_inflight", lambda: None)()

        def complete() -> None:
            self._body_done(writer)

        writer = BodyWriter(routes.pool, transport, length=stream.length, streaming=False,
                            encoding=stream.encoding, first=stream.first, head=head,
                            chunk_size=routes.chunk_size, inflight=inflight,
                            cut=transport.abortConnection, complete=complete,
                            ended=lambda: routes.count(match))
        return writer

    def _start_body(self, body: BodyWriter) -> None:
        """Register ``body`` on the transport in the channel's place, and start it."""
        self._body = body
        # As HTTPChannel does while it answers a request: no idle timeout
        # (the transport's own idle limit still sees every write), and what
        # arrives meanwhile is buffered in raw mode, reading paused past a
        # small amount.
        if self.timeOut:
            self._savedTimeOut = self.setTimeout(None)
        self._handlingRequest = True
        self.setRawMode()
        network: Any = self._networkProducer
        network.unregisterProducer()
        body.start()

    def _body_done(self, body: BodyWriter) -> None:
        """``body`` is complete: the channel takes the transport back and reads on."""
        if self._body is not body:
            return
        self._body = None
        network: Any = self._networkProducer
        network.registerProducer(self, True)
        self._handlingRequest = False
        if not self._waitingForTransport:
            network.resumeProducing()
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
        if not self._serving:
            # Parse what arrived during the body (``_serve`` does it itself).
            data = b"".join(self._dataBuffer)
            self._dataBuffer = []
            self.setLineMode(data)


def fast_channel_protocol(factory: Any) -> Any:
    """
    The ``protocol`` of the Site: the ALPN-switching wrapper (HTTP/1.1, or
    HTTP/2 on :class:`~entropy_appliance.web.h2.H2Channel`) around a
    :class:`FastHTTPChannel`, as ``twisted.web.http`` builds Twisted's own
    around a plain ``HTTPChannel``.
    """
    return ALPNSwitch(FastHTTPChannel())
