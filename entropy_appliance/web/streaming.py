"""
Streamed random bodies through a ``Request``: the Klein face of
:class:`~entropy_appliance.net.body.BodyWriter`.

The writer is registered on the request as a streaming (push) producer: a
pull producer on a request would be driven through the global cooperator,
which costs a reactor turn per chunk and does not run in memory-only tests.
It stops as soon as the transport says its buffer is full (``pauseProducing``
arrives from inside ``write``), so a slow client holds back generation.

:func:`stream_body` returns a Deferred for a Klein handler to return (never
``NOT_DONE_YET``).  It fires with ``b""`` once the last byte is written, so
Klein finishes the request; if the client goes away Klein cancels it, and the
canceller stops the writer.  If the source fails mid-stream, the connection
(or the HTTP/2 stream) is aborted: the client sees a short body against the
announced ``Content-Length``, never a complete-looking one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from entropy_appliance.core.pool import SeedPool
from entropy_appliance.net.body import CHUNK_SIZE, BodyWriter, Encoding

__all__ = ["stream_body", "abort_request"]


def abort_request(request: Request) -> None:
    """Cut a response short so that the client cannot take it as complete."""
    channel: Any = getattr(request, "channel", None)
    # An HTTP/2 stream resets only itself; HTTP/1.1 drops the connection.
    abort = getattr(channel, "abortConnection", None)
    if abort is None and channel is not None and channel.transport is not None:
        abort = getattr(channel.transport, "abortConnection", None)
    if abort is not None:
        abort()


def stream_body(request: Request, pool: SeedPool, n: int, encoding: Encoding, first: bytes,
                surface: str = "http", chunk_size: int = CHUNK_SIZE) -> Deferred[bytes]:
    """
    Stream ``n`` random bytes (``first`` already generated) as ``encoding``
    on ``request``; return the Deferred a Klein handler should return.
    """

    def cancel(_: Deferred[bytes]) -> None:
        # The client went away: nothing more is produced or unregistered twice.
        if not writer.ended:
            writer.stopProducing()
            try:
                request.unregisterProducer()
            except Exception:
                # The channel may already be gone; there is nothing to undo.
                pass

    done: Deferred[bytes] = Deferred(cancel)
    writer = BodyWriter(pool, request, length=n, streaming=True, encoding=encoding,
                        first=first, surface=surface, chunk_size=chunk_size,
                        complete=lambda: done.callback(b""),
                        cut=lambda: abort_request(request))
    writer.start()
    return done
