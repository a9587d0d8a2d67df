"""
Routes for pictures, sound, live status events and the dashboard's assets.

:func:`install` adds to a Klein app (``EntropyWeb.app``):

- ``GET /v1/image/random``: a PNG of DRBG bytes;
- ``GET /v1/image/heatmap``: a PNG heatmap of *raw source samples*, drawn
  from the seed pool only when it can spare them (else 503);
- ``GET /v1/sound/noise``: a WAV of white, pink or brown noise;
- ``GET /v1/events``: Server-Sent Events, one ``/v1/status`` document a
  second, until the client leaves;
- ``GET /static/dashboard.js`` and ``/static/dashboard.css``, which the
  dashboard at ``GET /`` (``static/index.html``) loads.

Each route method's ``self`` is the :class:`EntropyWeb` instance.  Random
bytes are drawn in the reactor thread (the pool is not thread-safe); the
image and sound encoding, which takes up to seconds for the largest sizes,
runs in the reactor's thread pool when ``EntropyWeb.clock`` is a reactor
with threads, and inline otherwise (a ``task.Clock`` in tests).  The limits
come from :mod:`entropy_appliance.web.rendering`; a size beyond them is 413, any
other bad value 400.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Request

from entropy_appliance.core.pool import PoolShort
from entropy_appliance.web import openapi, rendering
from entropy_appliance.web.problems import BadRequest, PayloadTooLarge, ServiceUnavailable

if TYPE_CHECKING:
    from entropy_appliance.web.app import EntropyWeb

__all__ = ["EVENT_INTERVAL", "EventStream", "install", "parse_seconds"]

EVENT_INTERVAL = 1.0
"""Seconds between two status events."""

# Any decimal literal, of any precision: a client that prints a float with
# all its 17 significant digits (or in exponent form) asks for a valid length.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

_ASSETS = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}

T = TypeVar("T")


def _arg(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    if not values or values[0] == b"":
        return None
    return values[0].decode("utf-8", "replace")


def _problem(e: rendering.MediaParamError) -> BadRequest | PayloadTooLarge:
    if e.too_large:
        return PayloadTooLarge(e.message)
    return BadRequest(e.message)


def _parse_size(request: Request, name: str) -> int:
    from entropy_appliance.web.app import parse_int

    value = parse_int(request, name, 1, None, default=rendering.DEFAULT_SIZE)
    if value > rendering.MAX_SIZE:
        raise PayloadTooLarge(f"{name}={value} is above the limit of {rendering.MAX_SIZE} pixels")
    return value


def parse_seconds(request: Request) -> float:
    """The ``seconds`` parameter: a decimal number, 0 < S <= 60 (above is 413)."""
    text = _arg(request, "seconds")
    if text is None:
        return rendering.DEFAULT_SECONDS
    if not _NUMBER.fullmatch(text.strip()):
        raise BadRequest(f"seconds={text[:64]!r} is not a number")
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"seconds={text[:64]} is out of range: it must be above 0")
    if value > rendering.MAX_SECONDS:
        raise PayloadTooLarge(
            f"seconds={value:g} is above the limit of {rendering.MAX_SECONDS:g}; ask for less")
    return value


def _offload(web: EntropyWeb, fn: Callable[..., T], *args: Any) -> Deferred[T]:
    """Run ``fn`` in the reactor's thread pool, or inline when there is none."""
    clock: Any = web.clock
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


_installed: set[int] = set()


def install(app: Klein) -> None:
    """Add the media, events and dashboard-asset routes to ``app`` (once)."""
    if id(app) in _installed:
        return
    _installed.add(id(app))

    @app.route("/v1/image/random", methods=["GET"])
    def image_random(self: EntropyWeb, request: Request) -> bytes | Deferred[bytes]:
        """A PNG of random bytes."""
        from entropy_appliance.web.app import parse_choice

        width = _parse_size(request, "width")
        height = _parse_size(request, "height")
        mode = parse_choice(request, "mode", rendering.MODES, "rgb")
        if request.method == b"HEAD":
            self._require_healthy()
            self.rng_headers(request)
            request.setHeader(b"Content-Type", b"image/png")
            return b""
        raw = self.random(rendering.image_bytes_needed(width, height, mode), surface="image")
        self.rng_headers(request)
        d = _offload(self, rendering.random_png, _drawn(raw), width, height, mode)
        return d.addCallback(_send, request, b"image/png")

    @app.route("/v1/image/heatmap", methods=["GET"])
    def image_heatmap(self: EntropyWeb, request: Request) -> bytes | Deferred[bytes]:
        """A PNG heatmap of the bit counts of raw source samples (not DRBG output)."""
        width = _parse_size(request, "width")
        height = _parse_size(request, "height")
        cols, rows = rendering.heatmap_grid(width, height)
        request.setHeader(b"X-RNG-Source", self.pool.source_name.encode())
        request.setHeader(b"X-RNG-Source-Kind", self.pool.source_kind.encode())
        request.setHeader(b"X-Raw-Samples", b"%d" % (cols * rows))
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b"image/png")
            request.setHeader(b"Cache-Control", b"no-store")
            return b""
        try:
            raw = self.pool.take_raw(cols * rows)
        except PoolShort as e:
            raise ServiceUnavailable(f"{e}; try again in a moment", 1.0) from None
        d = _offload(self, rendering.heatmap_png, raw, width, height)
        return d.addCallback(_send, request, b"image/png")

    @app.route("/v1/sound/noise", methods=["GET"])
    def sound_noise(self: EntropyWeb, request: Request) -> bytes | Deferred[bytes]:
        """A 16-bit mono WAV of noise shaped from random bytes."""
        from entropy_appliance.web.app import parse_choice, parse_int

        seconds = parse_seconds(request)
        rate = parse_int(request, "rate", 1, None, default=rendering.DEFAULT_RATE)
        color = parse_choice(request, "color", rendering.COLORS, "white")
        try:
            need = rendering.noise_bytes_needed(seconds, rate, color)
        except rendering.MediaParamError as e:
            raise _problem(e) from None
        if request.method == b"HEAD":
            self._require_healthy()
            self.rng_headers(request)
            request.setHeader(b"Content-Type", b"audio/wav")
            return b""
        raw = self.random(need, surface="sound")
        self.rng_headers(request)
        d = _offload(self, rendering.noise_wav, _drawn(raw), seconds, rate, color)
        return d.addCallback(_send, request, b"audio/wav")

    @app.route("/v1/events", methods=["GET"])
    def events(self: EntropyWeb, request: Request) -> bytes | Deferred[bytes]:
        """Server-Sent Events: the status document every second."""
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            return b""
        clock: Any = self.clock
        if not IReactorTime.providedBy(clock):
            raise TypeError("the event stream needs a clock with callLater")
        # A client that leaves makes Klein cancel this Deferred, which stops the events.
        return EventStream(request, self.status, clock).start()

    @app.route("/static/<string:name>", methods=["GET"])
    def static_asset(self: EntropyWeb, request: Request, name: str) -> bytes:
        """The dashboard's script and style sheet."""
        from entropy_appliance.web.problems import NotFound

        if name not in _ASSETS:
            raise NotFound(f"no static file {name!r}")
        body = resources.files("entropy_appliance.web").joinpath("static", name).read_bytes()
        request.setHeader(b"Content-Type", _ASSETS[name])
        # Small, and replaced on upgrade; revalidating each load keeps them current.
        request.setHeader(b"Cache-Control", b"no-cache")
        return body


def _size_param(name: str) -> dict[str, Any]:
    return openapi.int_param(
        name, f"Image {name} in pixels (1 to {rendering.MAX_SIZE}; above the limit is 413).",
        1, rendering.MAX_SIZE, default=rendering.DEFAULT_SIZE)


def _errors(bad: str, too_large: str, unavailable: str) -> dict[str, Any]:
    out = openapi.problem_responses(400, 413, 503)
    out["400"]["description"] = bad
    out["413"]["description"] = too_large
    out["503"]["description"] = unavailable
    return out


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


def _paths(ctx: openapi.OpenAPIContext) -> dict[str, Any]:
    png = {"image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}}
    too_big = f"width or height above {rendering.MAX_SIZE} pixels."
    no_store = {"Cache-Control": openapi.RNG_HEADERS["Cache-Control"]}
    return {
        "/v1/image/random": {"get": {
            "summary": "A PNG image of random bytes from the CTR_DRBG.",
            "description": (
                f"width x height pixels (1 to {rendering.MAX_SIZE} each, default "
                f"{rendering.DEFAULT_SIZE}). Modes: rgb (24-bit colour), gray (8-bit grey), "
                "bits (each random bit a black or white pixel)."),
            "operationId": "getRandomImage",
            "parameters": [
                _size_param("width"), _size_param("height"),
                {"name": "mode", "in": "query", "required": False,
                 "description": "rgb (default), gray or bits.",
                 "schema": {"type": "string", "enum": list(rendering.MODES), "default": "rgb"}},
            ],
            "responses": {
                "200": {"description": "The PNG image.", "headers": openapi.RNG_HEADERS,
                        "content": png},
                **_errors("width or height not an integer or below 1, or an unknown mode.",
                          too_big,
                          "The entropy core fails closed (health failure or no seed); retry later."),
            },
        }},
        "/v1/image/heatmap": {"get": {
            "summary": "RAW SOURCE DATA: a heatmap of the entropy source's raw samples.",
            "description": (
                "Diagnostic only, not random output: raw samples of the entropy source, taken "
                "BEFORE the CTR_DRBG (and never used as seed afterwards), drawn as a grid of "
                f"at most {rendering.HEATMAP_MAX_SAMPLES} cells, each coloured by the bit "
                "population count (0..8) of one sample: dark for 0, orange for 4 (a fair "
                "source's average), white for 8. A healthy source looks like even confetti, a "
                "stuck one is a single colour, a biased one leans dark or bright. While the "
                "source fails its health tests the samples come from the quarantine of "
                "rejected ones. Samples are only taken when the seed pool holds more than the "
                "next reseed needs; otherwise the answer is 503 at once."),
            "operationId": "getRawHeatmap",
            "parameters": [_size_param("width"), _size_param("height")],
            "responses": {
                "200": {"description": "The heatmap PNG of raw source samples.",
                        "headers": {
                            **no_store,
                            "X-RNG-Source": openapi.RNG_HEADERS["X-RNG-Source"],
                            "X-RNG-Source-Kind": openapi.RNG_HEADERS["X-RNG-Source-Kind"],
                            "X-Raw-Samples": {"description": "How many raw samples are drawn.",
                                              "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                        },
                        "content": png},
                **_errors("width or height not an integer or below 1.", too_big,
                          "The seed pool cannot spare raw samples now without starving a "
                          "reseed; retry after Retry-After seconds."),
            },
        }},
        "/v1/sound/noise": {"get": {
            "summary": "A 16-bit mono WAV of noise shaped from CTR_DRBG output.",
            "description": (
                f"seconds (0 < S <= {rendering.MAX_SECONDS:g}, default {rendering.DEFAULT_SECONDS:g}) "
                f"of noise at rate Hz ({', '.join(map(str, rendering.RATES))}; default "
                f"{rendering.DEFAULT_RATE}). Colours: white (flat), pink (-3 dB/octave), brown "
                "(-6 dB/octave); each normalised to a -1 dBFS peak without clipping."),
            "operationId": "getNoise",
            "parameters": [
                {"name": "seconds", "in": "query", "required": False,
                 "description": f"Length in seconds, 0 < S <= {rendering.MAX_SECONDS:g} "
                                "(above the limit is 413).",
                 "schema": {"type": "number", "exclusiveMinimum": 0,
                            "maximum": rendering.MAX_SECONDS, "default": rendering.DEFAULT_SECONDS}},
                {"name": "rate", "in": "query", "required": False,
                 "description": "Sample rate in Hz.",
                 "schema": {"type": "integer", "enum": list(rendering.RATES),
                            "default": rendering.DEFAULT_RATE}},
                {"name": "color", "in": "query", "required": False,
                 "description": "white (default), pink or brown.",
                 "schema": {"type": "string", "enum": list(rendering.COLORS), "default": "white"}},
            ],
            "responses": {
                "200": {"description": "The WAV file.", "headers": openapi.RNG_HEADERS,
                        "content": {"audio/wav": {"schema": {
                            "type": "string", "contentMediaType": "audio/wav"}}}},
                **_errors("seconds not a number or not above 0, an unsupported rate, or an "
                          "unknown color.",
                          f"seconds above {rendering.MAX_SECONDS:g}.",
                          "The entropy core fails closed (health failure or no seed); retry later."),
            },
        }},
        "/v1/events": {"get": {
            "summary": "Server-Sent Events: the /v1/status document every second.",
            "description": (
                "text/event-stream that never ends on its own: it lasts until the client "
                "closes it. The stream opens with a `retry:` field (the reconnection delay "
                f"in ms), then sends one event at once and one every {EVENT_INTERVAL:g} s. "
                "Each event has an `id` (1, 2, 3, ...) and one `data` line holding one "
                "JSON status document (the Status schema, as /v1/status). As OpenAPI 3.2 "
                "reads text/event-stream, the schema below describes ONE event, not the "
                "body; a client reads as many events as it wants and then disconnects."),
            "operationId": "getEvents",
            "responses": {"200": {
                "description": "An endless event stream, one event per second.",
                "headers": no_store,
                "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}}}},
        }},
        "/static/{name}": {"get": {
            "summary": "The dashboard's script and style sheet.",
            "operationId": "getStatic",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": sorted(_ASSETS)}}],
            "responses": {
                "200": {"description": "The file.", "content": {
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}}}},
                **openapi.problem_responses(404),
            },
        }},
    }


openapi.register_paths(_paths)
