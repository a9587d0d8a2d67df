"""
Pictures, sound, live status events and the dashboard's assets: a Klein app
of its own, :class:`MediaWeb`, which :class:`~entropy_appliance.web.app.EntropyWeb`
mounts under its own routes.

- ``GET /v1/image/random``: a PNG of DRBG bytes;
- ``GET /v1/image/heatmap``: a PNG heatmap of *raw source samples*, drawn
  from the seed pool only when it can spare them (else 503);
- ``GET /v1/sound/noise``: a WAV of white, pink or brown noise;
- ``GET /v1/events``: Server-Sent Events, one ``/v1/status`` document a
  second, until the client leaves;
- ``GET /static/dashboard.js`` and ``/static/dashboard.css``, which the
  dashboard at ``GET /`` (``static/index.html``) loads.

It draws through a :class:`MediaHost` (the main app), so that random bytes,
their headers and the fail-closed answers are the main app's.  Random bytes
are drawn in the reactor thread (the pool is not thread-safe); the image and
sound encoding, which takes up to seconds for the largest sizes, runs in the
reactor's thread pool when the host's clock is a reactor with threads, and
inline otherwise (a ``task.Clock`` in tests).  The parameters and their
limits are :mod:`entropy_appliance.web.params`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol, TypeVar

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Request

from entropy_appliance.core.pool import PoolShort, SeedPool
from entropy_appliance.web import openapi, params, problems, rendering
from entropy_appliance.web.problems import BadRequest, NotFound, PayloadTooLarge, ServiceUnavailable

__all__ = ["EVENT_INTERVAL", "EventStream", "MediaHost", "MediaWeb"]

EVENT_INTERVAL = 1.0
"""Seconds between two status events."""

_ASSETS = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}

T = TypeVar("T")


class MediaHost(Protocol):
    """What the media routes draw on: the main app's pool, clock and answers."""

    pool: SeedPool
    clock: Any

    def random(self, n: int, surface: str = "http") -> bytes:
        """``n`` bytes from the pool, or a 503 problem."""

    def rng_headers(self, request: Request) -> None:
        """Set the headers every random response carries."""

    def require_healthy(self) -> None:
        """Raise the 503 problem unless the pool serves."""

    def status(self) -> Any:
        """The /v1/status document."""


def _problem(e: rendering.MediaParamError) -> BadRequest | PayloadTooLarge:
    if e.too_large:
        return PayloadTooLarge(e.message)
    return BadRequest(e.message)


def _offload(clock: Any, fn: Callable[..., T], *args: Any) -> Deferred[T]:
    """Run ``fn`` in the reactor's thread pool, or inline when there is none."""
    if IReactorThreads.providedBy(clock):
        return deferToThreadPool(clock, clock.getThreadPool(), fn, *args)
    return succeed(fn(*args))


def _drawn(data: bytes) -> Callable[[int], bytes]:
    """A data source handing over bytes already drawn in the reactor thread."""
    def source(n: int) -> bytes:
        if n != len(data):
            raise ValueError(f"{n} bytes asked for, {len(data)} drawn")
        return data
    return source


def _send(body: bytes, request: Request, content_type: bytes) -> bytes:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


class EventStream:
    """
    A Server-Sent Events response: one JSON status document at once and
    then every ``interval`` seconds of ``clock``, until the client leaves
    (or the request is cancelled), when the timer stops and nothing more is
    written.
    """

    def __init__(self, request: Request, status: Callable[[], Any], clock: IReactorTime,
                 interval: float = EVENT_INTERVAL) -> None:
        self._request = request
        self._status = status
        self._loop = LoopingCall(self._send)
        self._loop.clock = clock
        self._interval = interval
        self._done: Deferred[bytes] = Deferred(lambda d: self.stop())
        self.events = 0

    def start(self) -> Deferred[bytes]:
        """Write the headers and the first event; the Deferred fires only to end the stream."""
        request = self._request
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        # Proxies that buffer would hold the events back.
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.notifyFinish().addBoth(lambda _: self.stop())
        # Tells EventSource how long to wait before reconnecting.
        request.write(b"retry: %d\n\n" % round(1000 * self._interval * 2))
        self._loop.start(self._interval, now=True)
        return self._done

    @property
    def running(self) -> bool:
        """True while events are still being written."""
        return self._loop.running

    def stop(self) -> None:
        """Stop writing events; idempotent."""
        if self._loop.running:
            self._loop.stop()

    def _send(self) -> None:
        body = json.dumps(self._status(), separators=(",", ":")).encode()
        self.events += 1
        self._request.write(b"id: %d\ndata: %s\n\n" % (self.events, body))


_PNG = {"image/png": {"type": "string", "contentMediaType": "image/png"}}
_TOO_BIG = f"width or height above {rendering.MAX_SIZE} pixels."
_FAILS_CLOSED = "The entropy core fails closed (health failure or no seed); retry later."

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One Server-Sent Event of the stream.",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "event": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/Status"}},
    },
}


class MediaWeb:
    """The media routes over a :class:`MediaHost`; ``app`` is their Klein app."""

    app = Klein()
    problems.install(app)

    def __init__(self, host: MediaHost) -> None:
        self.host = host

    def _random_file(self, request: Request, need: int, surface: str, content_type: bytes,
                     encode: Callable[..., bytes], *args: Any) -> bytes | Deferred[bytes]:
        """
        A file that ``encode(data_source, *args)`` makes of ``need`` random
        bytes, drawn here and encoded off the reactor thread; for HEAD, its
        headers only (or the 503 of a pool that does not serve).
        """
        host = self.host
        if request.method == b"HEAD":
            host.require_healthy()
            host.rng_headers(request)
            request.setHeader(b"Content-Type", content_type)
            return b""
        raw = host.random(need, surface=surface)
        host.rng_headers(request)
        d = _offload(host.clock, encode, _drawn(raw), *args)
        return d.addCallback(_send, request, content_type)

    @app.route("/v1/image/random", methods=["GET"])
    @openapi.operation(
        "getRandomImage", "A PNG image of random bytes from the CTR_DRBG.",
        description=(
            f"width x height pixels (1 to {rendering.MAX_SIZE} each, default "
            f"{rendering.DEFAULT_SIZE}). Modes: rgb (24-bit colour), gray (8-bit grey), "
            "bits (each random bit a black or white pixel)."),
        parameters=[params.WIDTH, params.HEIGHT, params.MODE],
        ok=openapi.ok("The PNG image.", _PNG, openapi.RNG_HEADERS),
        problems={400: "width or height not an integer or below 1, or an unknown mode.",
                  413: _TOO_BIG, 503: _FAILS_CLOSED})
    def image_random(self, request: Request) -> bytes | Deferred[bytes]:
        """A PNG of random bytes."""
        width = params.WIDTH.parse(request)
        height = params.HEIGHT.parse(request)
        mode = params.MODE.parse(request)
        return self._random_file(request, rendering.image_bytes_needed(width, height, mode),
                                 "image", b"image/png", rendering.random_png, width, height, mode)

    @app.route("/v1/image/heatmap", methods=["GET"])
    @openapi.operation(
        "getRawHeatmap", "RAW SOURCE DATA: a heatmap of the entropy source's raw samples.",
        description=(
            "Diagnostic only, not random output: raw samples of the entropy source, taken "
            "BEFORE the CTR_DRBG (and never used as seed afterwards), drawn as a grid of "
            f"at most {rendering.HEATMAP_MAX_SAMPLES} cells, each coloured by the bit "
            "population count (0..8) of one sample: dark for 0, orange for 4 (a fair "
            "source's average), white for 8. A healthy source looks like even confetti, a "
            "stuck one is a single colour, a biased one leans dark or bright. While the "
            "source fails its health tests the samples come from the quarantine of "
            "rejected ones. Samples are only taken when the seed pool holds more than the "
            "next reseed needs; otherwise the answer is 503 at once."),
        parameters=[params.WIDTH, params.HEIGHT],
        ok=openapi.ok("The heatmap PNG of raw source samples.", _PNG, {
            **openapi.NO_STORE,
            "X-RNG-Source": openapi.RNG_HEADERS["X-RNG-Source"],
            "X-RNG-Source-Kind": openapi.RNG_HEADERS["X-RNG-Source-Kind"],
            "X-Raw-Samples": {"description": "How many raw samples are drawn.",
                              "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        }),
        problems={400: "width or height not an integer or below 1.", 413: _TOO_BIG,
                  503: "The seed pool cannot spare raw samples now without starving a "
                       "reseed; retry after Retry-After seconds."})
    def image_heatmap(self, request: Request) -> bytes | Deferred[bytes]:
        """A PNG heatmap of the bit counts of raw source samples (not DRBG output)."""
        pool = self.host.pool
        width = params.WIDTH.parse(request)
        height = params.HEIGHT.parse(request)
        cols, rows = rendering.heatmap_grid(width, height)
        request.setHeader(b"X-RNG-Source", pool.source_name.encode())
        request.setHeader(b"X-RNG-Source-Kind", pool.source_kind.encode())
        request.setHeader(b"X-Raw-Samples", b"%d" % (cols * rows))
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b"image/png")
            request.setHeader(b"Cache-Control", b"no-store")
            return b""
        try:
            raw = pool.take_raw(cols * rows)
        except PoolShort as e:
            raise ServiceUnavailable(f"{e}; try again in a moment", 1.0) from None
        d = _offload(self.host.clock, rendering.heatmap_png, raw, width, height)
        return d.addCallback(_send, request, b"image/png")

    @app.route("/v1/sound/noise", methods=["GET"])
    @openapi.operation(
        "getNoise", "A 16-bit mono WAV of noise shaped from CTR_DRBG output.",
        description=(
            f"seconds (0 < S <= {rendering.MAX_SECONDS:g}, default {rendering.DEFAULT_SECONDS:g}) "
            f"of noise at rate Hz ({', '.join(map(str, rendering.RATES))}; default "
            f"{rendering.DEFAULT_RATE}). Colours: white (flat), pink (-3 dB/octave), brown "
            "(-6 dB/octave); each normalised to a -1 dBFS peak without clipping."),
        parameters=[params.SECONDS, params.RATE, params.COLOR],
        ok=openapi.ok("The WAV file.", {"audio/wav": {"type": "string",
                                                      "contentMediaType": "audio/wav"}},
                      openapi.RNG_HEADERS),
        problems={400: "seconds not a number or not above 0, an unsupported rate, or an "
                       "unknown color.",
                  413: f"seconds above {rendering.MAX_SECONDS:g}.", 503: _FAILS_CLOSED})
    def sound_noise(self, request: Request) -> bytes | Deferred[bytes]:
        """A 16-bit mono WAV of noise shaped from random bytes."""
        seconds = params.SECONDS.parse(request)
        rate = params.RATE.parse(request)
        color = params.COLOR.parse(request)
        try:
            need = rendering.noise_bytes_needed(seconds, rate, color)
        except rendering.MediaParamError as e:
            raise _problem(e) from None
        return self._random_file(request, need, "sound", b"audio/wav", rendering.noise_wav,
                                 seconds, rate, color)

    @app.route("/v1/events", methods=["GET"])
    @openapi.operation(
        "getEvents", "Server-Sent Events: the /v1/status document every second.",
        description=(
            "text/event-stream that never ends on its own: it lasts until the client "
            "closes it. The stream opens with a `retry:` field (the reconnection delay "
            f"in ms), then sends one event at once and one every {EVENT_INTERVAL:g} s. "
            "Each event has an `id` (1, 2, 3, ...) and one `data` line holding one "
            "JSON status document (the Status schema, as /v1/status). As OpenAPI 3.2 "
            "reads text/event-stream, the schema below describes ONE event, not the "
            "body; a client reads as many events as it wants and then disconnects."),
        ok=openapi.ok("An endless event stream, one event per second.",
                      {"text/event-stream": _EVENT_SCHEMA}, openapi.NO_STORE))
    def events(self, request: Request) -> bytes | Deferred[bytes]:
        """Server-Sent Events: the status document every second."""
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            return b""
        clock: Any = self.host.clock
        if not IReactorTime.providedBy(clock):
            raise TypeError("the event stream needs a clock with callLater")
        # A client that leaves makes Klein cancel this Deferred, which stops the events.
        return EventStream(request, self.host.status, clock).start()

    @app.route("/static/<string:name>", methods=["GET"])
    @openapi.operation(
        "getStatic", "The dashboard's script and style sheet.",
        parameters=[{"name": "name", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": sorted(_ASSETS)}}],
        ok=openapi.ok("The file.", {"text/javascript": {"type": "string"},
                                    "text/css": {"type": "string"}}),
        problems=[404])
    def static_asset(self, request: Request, name: str) -> bytes:
        """The dashboard's script and style sheet."""
        if name not in _ASSETS:
            raise NotFound(f"no static file {name!r}")
        body = resources.files("entropy_appliance.web").joinpath("static", name).read_bytes()
        request.setHeader(b"Content-Type", _ASSETS[name])
        # Small, and replaced on upgrade; revalidating each load keeps them current.
        request.setHeader(b"Cache-Control", b"no-cache")
        return body
