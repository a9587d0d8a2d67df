"""
HTTP/2 that holds no more than HTTP/1.1: Twisted's h2 connection with
bounded buffers, an idle timeout that counts progress only, one GOAWAY on
an error, and no traceback for a stream the client has reset.

Twisted 26.10's ``twisted.web._http2`` falls short of that in ways no
setting reaches, so :class:`H2Channel` and its streams subclass
``H2Connection`` and ``H2Stream``, and :class:`ALPNSwitch` (the Site's
protocol, built in :mod:`entropy_appliance.web.channel`) switches to an
:class:`H2Channel` where Twisted's wrapper would build its own:

- Backpressure.  A stream paused its producer only when the client's
  flow-control window ran out, and queued whatever it was given; a client
  that advertises a 2**31 window and stops reading had a whole 300 MB body
  generated and held.  Here the connection has one budget,
  :data:`CONNECTION_BUFFER` bytes queued on all its streams and not yet
  handed to the transport (which pauses the connection when its own buffer
  is full): producers run only while the queue is under it, and a request
  that ends while it is full waits to be handled.  Streams get the room
  that frees up in turn, a chunk each.  So a connection holds about one
  body chunk beyond the budget, as an HTTP/1.1 connection does, however
  many streams it has and whatever windows its client advertises; and it
  is freed when the stream or the connection ends.  (Without the shared
  budget, 32 stalled streams of hex held 17 MB on one connection.)
- Streams per connection.  :data:`MAX_STREAMS` is advertised in SETTINGS
  (h2 enforces the acknowledged value as a connection error); a stream
  past it before the client has acknowledged is refused (REFUSED_STREAM,
  safe to retry).
- The idle timeout (the Site's, ``--idle-timeout``) restarts only on
  progress: a request received, request body bytes, response bytes handed
  to the transport.  PING, SETTINGS, WINDOW_UPDATE, PRIORITY and
  CONTINUATION frames do not count, nor does a stream stalled at window 0.
  (The per-peer wrapper's idle timer, which counts every byte, has the same
  timeout, so it never fires first.)
- Closing.  After a connection error, an idle timeout, or a client's
  GOAWAY, the connection reads nothing more, sends one GOAWAY (h2's own, or
  ours), lets TLS close (Twisted's connection stayed registered as the
  transport's producer, which holds a TLS close back indefinitely) and is
  aborted :data:`CLOSE_DEADLINE` seconds later if the client has not gone.
- Reset streams.  h2 forgets a stream the client reset while the events of
  the same read are still being handled, so writing its response raised
  (``StreamIDTooLowError``, ``StreamClosedError``) and every event for a
  stream Twisted had already cleaned up raised ``KeyError``.  Writes to a
  stream that is gone are dropped; events for it are ignored (a reset still
  spends a token of Twisted's Rapid Reset bucket).
- Priority.  PRIORITY frames are ignored (RFC 9113 deprecates them): in
  Twisted, each one for an unknown stream added a node to the priority tree
  for the life of the connection, and past 1,000 the tree raised
  ``TooManyStreamsError`` out of ``dataReceived``.
- A graceful stop: a stream counts in the Site's in-flight count
  (``fast_inflight()``) while its request waits its turn, and once the
  request has finished until its last frame is handed to the transport
  (Twisted's request finished while most of a body could still be queued),
  or it is reset, or the connection ends.

Upstream, the adapter would go if ``H2Connection`` paused its streams'
producers on the amount it has queued as well as on their windows (and
held back requests while that is full), woke its send loop and blocked a
stream on every window change (SETTINGS included), unregistered itself
from the transport and stopped reading in ``_terminate`` (and on a client's
GOAWAY), reset its timeout only on progress, caught
``h2.exceptions.ProtocolError`` (not just ``StreamClosedError``) and
unknown stream ids in its event handlers, ignored PRIORITY for streams it
does not know, counted a stream as a request until its last frame, and let
the ALPN wrapper be given the class to build; sending more than one frame
a turn is a matter of speed only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import priority  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection, H2Stream

from entropy_appliance.net.body import InFlightCount

__all__ = ["ALPNSwitch", "H2Channel", "MAX_STREAMS", "CONNECTION_BUFFER", "SEND_PER_TURN", "CLOSE_DEADLINE"]

#: Concurrent streams per connection: each holds a request (its head up to
#: h2's 64 KiB header list).  Browsers need a few for the dashboard; scripts
#: need one.
MAX_STREAMS = 32

#: Producers are paused, and requests wait, once this many response bytes
#: are queued on a connection and not yet handed to the transport.  A body
#: writer writes a whole chunk at a time, so a connection holds at most this
#: plus about one chunk.
CONNECTION_BUFFER = 64 * 1024

#: Bytes the send loop hands the transport per turn of the reactor, unless
#: the transport pauses it first.  Twisted's loop sends one frame (16 KiB by
#: default) a turn.  One 100 MB download by curl over TLS on loopback, best
#: of five, two runs each: one frame a turn 162-180 MB/s, 256 KiB a turn
#: 270-299 MB/s (HTTP/1.1: 381 MB/s).
SEND_PER_TURN = 256 * 1024

#: Seconds a closing connection gets to send its GOAWAY before it is cut.
CLOSE_DEADLINE = 2.0

#: The h2 stack's own ceiling, in force until the client acknowledges our
#: SETTINGS; a client past it breaks the protocol (a connection error).
_H2_CEILING = 100


class _Stream(H2Stream):
    """
    One stream: Twisted's, with its producer run only while its connection
    has room, and its request handled only once there was room for it.
    """

    _conn: H2Channel
    #: The request has ended and waits its turn to be handled.
    waiting_to_start = False

    def write(self, data: bytes) -> None:
        """Queue ``data`` (dropped if the stream is gone); pause the producer if full."""
        self._conn.writeDataToStream(self.streamID, data)
        self.update_producer()

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        """Register ``producer``, paused at once if the stream has no room."""
        super().registerProducer(producer, streaming)
        self.update_producer()

    def windowUpdated(self) -> None:  # noqa: N802 - Twisted's name
        """The client opened the window (Twisted would resume the producer here): re-check the room."""
        self.update_producer()

    def flowControlBlocked(self) -> None:  # noqa: N802 - Twisted's name
        """The window is exhausted (Twisted would pause the producer here): re-check the room."""
        self.update_producer()

    def update_producer(self) -> None:
        """Pause or resume the producer as the connection's room says; a paused one waits its turn."""
        producer = self.producer
        if producer is None:
            return
        if self._conn.room(self.streamID) > 0:
            if not self._producerProducing:
                # Set first: the producer writes (and may be paused) inside resume.
                self._producerProducing = True
                producer.resumeProducing()
            return
        if self._producerProducing:
            self._producerProducing = False
            producer.pauseProducing()
        self._conn.wait_for_room(self.streamID)


class H2Channel(H2Connection):
    """
    Twisted's ``H2Connection`` with the bounds of the module docstring.
    ``max_streams``, ``buffer`` and ``close_deadline`` default to
    :data:`MAX_STREAMS`, :data:`CONNECTION_BUFFER` and :data:`CLOSE_DEADLINE`.
    """

    _log = Logger()
    #: Set by the Site's protocol wrapper, as on Twisted's connection.
    requestFactory: Any

    def __init__(self, reactor: Any = None, *, max_streams: int = MAX_STREAMS,
                 buffer: int = CONNECTION_BUFFER, close_deadline: float = CLOSE_DEADLINE) -> None:
        super().__init__(reactor)
        self.max_streams = max_streams
        self.buffer = buffer
        self.close_deadline = close_deadline
        #: Bytes queued per stream, and on all of them, not yet handed to the transport.
        self._queued: dict[int, int] = {}
        self._total = 0
        #: Streams waiting for room (to produce, or to have their request
        #: handled), in turn; and the same as a set.
        self._waiting: deque[int] = deque()
        self._waiting_ids: set[int] = set()
        self._granting = False
        #: How many times each stream is counted in flight (see :meth:`_hold`).
        self._holds: dict[int, int] = {}
        self._inflight: Any = None
        #: Per stream whose request body is still arriving: its deadline.
        self._body_deadlines: dict[int, IDelayedCall] = {}
        self._closing = False
        self._close_call: IDelayedCall | None = None
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max(max_streams, _H2_CEILING),
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.conn.DEFAULT_MAX_HEADER_LIST_SIZE,
        })

    # -- what the rest of the appliance reads ---------------------------------

    def buffered(self) -> int:
        """Response bytes queued on every stream and not yet handed to the transport."""
        return self._total

    def room(self, stream_id: int) -> int:
        """
        How many more bytes the stream may queue now (0 or less: none): the
        connection's, while the stream lasts.  Windows play no part: they
        hold back sending, and what waits for them counts like what waits
        for the transport.
        """
        if stream_id not in self._queued or self._closing or not self._stillProducing:
            return 0
        return self.buffer - self._total

    def _hold(self, stream_id: int) -> None:
        """
        Count the stream in the Site's in-flight count, for a graceful stop:
        while its request waits its turn, and from the request's end until
        its last frame is sent.  In between, the Site counts the request.
        """
        inflight: InFlightCount | None = getattr(self.site, "fast_inflight", lambda: None)()
        if inflight is not None:
            inflight.enter()
            self._holds[stream_id] = self._holds.get(stream_id, 0) + 1
            self._inflight = inflight

    def _unhold(self, stream_id: int, n: int = 1) -> None:
        held = self._holds.get(stream_id, 0)
        n = min(n, held)
        if held - n:
            self._holds[stream_id] = held - n
        else:
            self._holds.pop(stream_id, None)
        for _ in range(n):
            self._inflight.leave()

    def wait_for_room(self, stream_id: int) -> None:
        """Give the stream a turn once the connection has room again."""
        if stream_id not in self._waiting_ids:
            self._waiting_ids.add(stream_id)
            self._waiting.append(stream_id)

    def _grant(self) -> None:
        """
        Room has freed up: streams waiting for it, in turn, resume their
        producers or have their requests handled, until it is taken again.
        """
        if self._granting:
            return  # the outer call goes on
        self._granting = True
        try:
            while self._waiting and self._total < self.buffer and self._stillProducing:
                stream_id = self._waiting.popleft()
                self._waiting_ids.discard(stream_id)
                stream = self.streams.get(stream_id)
                if not isinstance(stream, _Stream):
                    continue
                if stream.waiting_to_start:
                    stream.waiting_to_start = False
                    stream.requestComplete()
                    # The request is in the Site's hands now (counted there).
                    self._unhold(stream_id)
                else:
                    stream.update_producer()
        finally:
            self._granting = False

    # -- the connection's life ----------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        """Send our SETTINGS, with the stream limit."""
        super().connectionMade()
        if self.max_streams < _H2_CEILING:
            self.conn.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
            self._tryToWriteControlData()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Handle the client's frames; after a close, ignore them."""
        if self._closing:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 has queued its GOAWAY.
            self._close(Failure(), None)
            return
        for event in events:
            if self._closing:
                return
            if isinstance(event, h2.events.RequestReceived):
                self.resetTimeout()
                self._requestReceived(event)
            elif isinstance(event, h2.events.DataReceived):
                self.resetTimeout()
                self._requestDataReceived(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._requestEnded(event)
            elif isinstance(event, h2.events.StreamReset):
                self._requestAborted(event)
            elif isinstance(event, h2.events.WindowUpdated):
                self._handleWindowUpdate(event)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    # Every stream's window moved (Twisted ignored this).
                    self._windows_changed(list(self.streams))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close(Failure(ConnectionLost("Remote peer sent GOAWAY")), None)
        self._tryToWriteControlData()

    def timeoutConnection(self) -> None:  # noqa: N802
        """No progress for the idle timeout: close with a GOAWAY."""
        transport: Any = self.transport
        self._log.info("closing an HTTP/2 connection from {peer}: no progress for {t} s",
                       peer=transport.getPeer(), t=self.timeOut)
        busy = self.conn.open_outbound_streams > 0 or self.conn.open_inbound_streams > 0
        code = h2.errors.ErrorCodes.PROTOCOL_ERROR if busy else h2.errors.ErrorCodes.NO_ERROR
        self._close(Failure(ConnectionLost("idle timeout")), code)

    def _terminate(self, reason: Failure) -> None:
        """Twisted's way out after a Rapid Reset flood (its GOAWAY is queued): ours."""
        self._close(reason, None)

    def _close(self, reason: Failure, error_code: h2.errors.ErrorCodes | None) -> None:
        """
        Send one GOAWAY (``error_code``'s, or the one h2 queued), end every
        stream, read nothing more, and cut the connection if it has not
        closed within :attr:`close_deadline` seconds.
        """
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        if error_code is not None:
            try:
                self.conn.close_connection(error_code=error_code)
            except h2.exceptions.ProtocolError:
                pass  # h2 has closed the connection already (and sent its GOAWAY)
        goaway = self.conn.data_to_send()
        # Control frames held back while the client was not reading go unsent.
        self._bufferedControlFrames.clear()
        self._bufferedControlFrameBytes = 0
        transport: Any = self.transport
        if goaway:
            transport.write(goaway)
        self._close_call = self._reactor.callLater(self.close_deadline, self._cut)
        super().connectionLost(reason, _cancelTimeouts=False)
        # Read nothing more (a transport is the producer of what it reads).
        pause = getattr(transport, "pauseProducing", None)
        if pause is not None:
            pause()
        # A TLS transport closes only once its producer is gone.
        transport.unregisterProducer()
        transport.loseConnection()

    def _cut(self) -> None:
        self._close_call = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone, _cancelTimeouts: bool = True) -> None:  # noqa: N802,N803
        """The transport is gone: end every stream, stop every timer."""
        if _cancelTimeouts:
            call, self._close_call = self._close_call, None
            if call is not None and call.active():
                call.cancel()
        for stream_id in list(self._body_deadlines):
            self._end_body_deadline(stream_id)
        super().connectionLost(reason, _cancelTimeouts)

    # -- streams ----------------------------------------------------------------

    def _requestReceived(self, event: h2.events.RequestReceived) -> None:  # noqa: N802
        """A new stream, of our class; refused past :attr:`max_streams`."""
        stream_id = event.stream_id
        if len(self.streams) >= self.max_streams:
            self._refuse(stream_id)
            return
        stream = _Stream(stream_id, self, event.headers, self.requestFactory, self.site, self.factory)
        self.streams[stream_id] = stream
        self._queued[stream_id] = 0
        self._streamCleanupCallbacks[stream_id] = Deferred()
        self._outboundStreamQueues[stream_id] = deque()
        self.priority.insert_stream(stream_id)
        self.priority.block(stream_id)
        timeout = float(getattr(self.site, "body_timeout", 0.0) or 0.0)
        if timeout and event.stream_ended is None:
            # As on HTTP/1.1 (--body-timeout): a body must arrive whole in
            # time; trickling DATA is progress for the idle timer, not this.
            self._body_deadlines[stream_id] = self._reactor.callLater(
                timeout, self._body_late, stream_id, timeout)

    def _body_late(self, stream_id: int, timeout: float) -> None:
        self._body_deadlines.pop(stream_id, None)
        self._log.info("resetting an HTTP/2 stream whose request body took over {t:g} s", t=timeout)
        self.abortRequest(stream_id)

    def _end_body_deadline(self, stream_id: int) -> None:
        call = self._body_deadlines.pop(stream_id, None)
        if call is not None and call.active():
            call.cancel()

    def _refuse(self, stream_id: int) -> None:
        try:
            self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
        except h2.exceptions.ProtocolError:
            pass  # the client has reset it itself

    def _requestDataReceived(self, event: h2.events.DataReceived) -> None:  # noqa: N802
        """Body bytes for a stream; for one that is gone, only give the window back."""
        stream = self.streams.get(event.stream_id)
        if stream is None:
            try:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            except h2.exceptions.ProtocolError:
                pass
            return
        stream.receiveDataChunk(event.data, event.flow_controlled_length)

    def _requestEnded(self, event: h2.events.StreamEnded) -> None:  # noqa: N802
        """
        The request is complete: it is handled in its turn, at once if the
        connection has room and no other stream waits for it.  Ignored for a
        stream that is gone.
        """
        self._end_body_deadline(event.stream_id)
        stream = self.streams.get(event.stream_id)
        if not isinstance(stream, _Stream):
            return
        stream.waiting_to_start = True
        self._hold(event.stream_id)
        self.wait_for_room(event.stream_id)
        self._grant()

    def _requestAborted(self, event: h2.events.StreamReset) -> None:  # noqa: N802
        """The client reset a stream: end it.  Every reset spends a Rapid Reset token."""
        if event.stream_id in self.streams:
            super()._requestAborted(event)
            return
        # Twisted's bucket, for a stream that is gone already.
        now = self._reactor.seconds()
        elapsed = max(0.0, now - self._resetTokenTimestamp)
        self._resetTokens = min(self._resetTokenBurst, self._resetTokens + elapsed * self._resetTokenRate)
        self._resetTokenTimestamp = now
        if self._resetTokens < 1:
            self._close(Failure(ConnectionLost("Too many stream resets")),
                        h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        else:
            self._resetTokens -= 1

    def _requestDone(self, streamID: int) -> None:  # noqa: N802,N803
        """A stream has ended: free what it held and leave the in-flight count."""
        self._end_body_deadline(streamID)
        if streamID not in self.streams:
            return
        self._total -= self._queued.pop(streamID, 0)
        super()._requestDone(streamID)
        self._unhold(streamID, self._holds.get(streamID, 0))
        self._grant()

    # -- writing ----------------------------------------------------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any,  # noqa: N802
                     streamID: int) -> None:  # noqa: N803
        """Send a response head, unless the stream is gone."""
        if self._closing or streamID not in self.streams:
            return
        headers.insert(0, (b":status", code))
        try:
            self.conn.send_headers(streamID, headers)
        except h2.exceptions.ProtocolError:
            # Reset by the client, maybe in the same read as its request; the
            # reset's own event ends the stream.
            return
        self.resetTimeout()
        self._tryToWriteControlData()

    def writeDataToStream(self, streamID: int, data: bytes) -> None:  # noqa: N802,N803
        """Queue ``data`` for the stream (dropped if it is gone) and wake the sender."""
        queue = self._outboundStreamQueues.get(streamID)
        if queue is None or self._closing or not data:
            return
        queue.append(memoryview(data))
        self._queued[streamID] += len(data)
        self._total += len(data)
        if self._window(streamID) > 0:
            self._wake(streamID)

    def endRequest(self, streamID: int) -> None:  # noqa: N802,N803
        """The response is complete: queue its end, unless the stream is gone."""
        queue = self._outboundStreamQueues.get(streamID)
        if queue is None or self._closing:
            return
        queue.append(_END_STREAM_SENTINEL)
        # The request has finished (and left the Site's count); what it
        # wrote is still to be sent.
        self._hold(streamID)
        self._wake(streamID)

    def abortRequest(self, streamID: int) -> None:  # noqa: N802,N803
        """Reset the stream (the body was cut short), unless it is gone."""
        if self._closing or streamID not in self.streams:
            return
        try:
            self.conn.reset_stream(streamID)
        except h2.exceptions.ProtocolError:
            pass  # reset by the client already
        if self._tryToWriteControlData():
            stream = self.streams.get(streamID)
            if stream is not None:
                stream.connectionLost(Failure(ConnectionLost("Stream reset")))
            self._requestDone(streamID)

    def _send100Continue(self, streamID: int) -> None:  # noqa: N802,N803
        if self._closing:
            return
        try:
            self.conn.send_headers(headers=[(b":status", b"100")], stream_id=streamID)
        except h2.exceptions.ProtocolError:
            return
        self._tryToWriteControlData()

    def _respondToBadRequestAndDisconnect(self, streamID: int) -> None:  # noqa: N802,N803
        if self._closing or streamID not in self.streams:
            return
        try:
            self.conn.send_headers(headers=[(b":status", b"400")], stream_id=streamID, end_stream=True)
        except h2.exceptions.ProtocolError:
            pass
        if self._tryToWriteControlData():
            stream = self.streams.get(streamID)
            if stream is not None:
                stream.connectionLost(Failure(ConnectionLost("Invalid request")))
            self._requestDone(streamID)

    def openStreamWindow(self, streamID: int, increment: int) -> None:  # noqa: N802,N803
        """Give the client back ``increment`` bytes of window (nothing after a close)."""
        if self._closing:
            return
        try:
            self.conn.acknowledge_received_data(increment, streamID)
        except h2.exceptions.ProtocolError:
            return
        self._tryToWriteControlData()

    def _tryToWriteControlData(self) -> bool:  # noqa: N802
        if self._closing:
            return False
        return bool(super()._tryToWriteControlData())

    def remainingOutboundWindow(self, streamID: int) -> int:  # noqa: N802,N803
        """The window left once the queued bytes are sent (0 for a stream that is gone)."""
        return self._window(streamID) - self._queued.get(streamID, 0)

    def _window(self, stream_id: int) -> int:
        try:
            return int(self.conn.local_flow_control_window(stream_id))
        except h2.exceptions.ProtocolError:
            return 0  # the client reset it; its event will end it

    def _wake(self, stream_id: int) -> None:
        self.priority.unblock(stream_id)
        if self._sendingDeferred is not None:
            d, self._sendingDeferred = self._sendingDeferred, None
            d.callback(stream_id)

    def _handleWindowUpdate(self, event: h2.events.WindowUpdated) -> None:  # noqa: N802
        """The client opened a window: unblock what can be sent; let producers run."""
        self._windows_changed([event.stream_id] if event.stream_id else list(self.streams))

    def _windows_changed(self, ids: list[int]) -> None:
        for stream_id in ids:
            stream = self.streams.get(stream_id)
            if stream is None:
                continue  # a late update for a stream that has ended
            if self._outboundStreamQueues.get(stream_id) and self._window(stream_id) > 0:
                self._wake(stream_id)
            stream.windowUpdated()

    def _sendPrioritisedData(self, *args: object) -> None:  # noqa: N802
        """
        Send frames of the streams whose turn it is, as Twisted's loop does,
        except that a stream whose window is closed is blocked until the
        client opens it (Twisted's loop spun on it, sending nothing), a frame
        sent is progress for the idle timeout, and a turn of the reactor
        sends up to :data:`SEND_PER_TURN` bytes rather than one frame.
        """
        if not self._stillProducing or self._closing:
            return
        sent = 0
        while sent < SEND_PER_TURN:
            try:
                stream_id = next(self.priority)
            except priority.DeadlockError:
                # Nothing to send: wait for a write, an end or a window.
                self._sendingDeferred = Deferred()
                self._sendingDeferred.addCallback(self._sendPrioritisedData)
                return
            if self._consumerBlocked is not None:
                # Wait behind the transport.
                self._consumerBlocked.addCallback(self._sendPrioritisedData)
                return
            sent += self._send_frame(stream_id)
            if self._closing or not self._stillProducing:
                return
        self._reactor.callLater(0, self._sendPrioritisedData)

    def _send_frame(self, stream_id: int) -> int:
        """
        Send one frame of ``stream_id``: return its size (1 for the end of
        the stream), or 0 if none could go (the stream is blocked then).
        """
        queue = self._outboundStreamQueues[stream_id]
        transport: Any = self.transport
        if not queue:
            self.priority.block(stream_id)
            return 0
        if queue[0] is _END_STREAM_SENTINEL:
            queue.popleft()
            try:
                self.conn.end_stream(stream_id)
            except h2.exceptions.ProtocolError:
                pass  # reset by the client; nothing more to send on it
            transport.write(self.conn.data_to_send())
            self._requestDone(stream_id)
            return 1
        size = min(self._window(stream_id), self.conn.max_outbound_frame_size)
        if size <= 0:
            # Blocked until a WINDOW_UPDATE unblocks it.
            self.priority.block(stream_id)
            return 0
        data = queue.popleft()
        if len(data) > size:
            queue.appendleft(data[size:])
            data = data[:size]
        try:
            self.conn.send_data(stream_id, data)
        except h2.exceptions.ProtocolError:
            # Reset by the client; its event ends the stream.
            queue.clear()
            self._total -= self._queued[stream_id]
            self._queued[stream_id] = 0
            self.priority.block(stream_id)
            self._grant()
            return 0
        transport.write(self.conn.data_to_send())
        self._queued[stream_id] -= len(data)
        self._total -= len(data)
        self.resetTimeout()
        if not queue:
            self.priority.block(stream_id)
        self._grant()
        return len(data)


class ALPNSwitch(http._GenericHTTPChannelProtocol):
    """
    Twisted's wrapper that picks the protocol by ALPN, around an HTTP/1.1
    channel; on ``h2`` it switches to an :class:`H2Channel`, in the steps
    Twisted takes to switch to its own ``H2Connection``.
    """

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """On the first bytes of an ``h2`` connection, switch; then pass the bytes on."""
        if self._negotiatedProtocol is None:
            transport = self._channel.transport
            if getattr(transport, "negotiatedProtocol", None) == b"h2":
                self._switch(transport)
        super().dataReceived(data)

    def _switch(self, transport: Any) -> None:
        old: Any = self._channel
        # The HTTP/1.1 channel leaves the transport's producer slot and its timer.
        network = old._networkProducer
        network.unregisterProducer()
        old.setTimeout(None)
        channel = H2Channel(getattr(self._factory, "reactor", None))
        channel.requestFactory = self._requestFactory
        channel.site = self._site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        if self._callLater is not None:
            channel.callLater = self._callLater  # type: ignore[method-assign]
        self._channel = channel
        self._negotiatedProtocol = b"h2"  # type: ignore[assignment]
        channel.makeConnection(transport)
        # The transport pauses the connection when its buffer is full.
        network.registerProducer(channel, True)
