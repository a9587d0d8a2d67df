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
their headers and the fail-closed answers are the main app's.  The
parameters and their limits are :mod:`entropy_appliance.web.params`.

Costly routes
-------------
A picture or a sound is made whole, in memory: the largest (a 4096x4096 RGB
image) needs about 113 MiB at its peak and a second or two of CPU.  So every
GET of the three file routes passes, in order:

1. the peer's budget (:class:`~entropy_appliance.core.costs.PeerCosts`):
   each file costs the memory it needs at its peak
   (:func:`~entropy_appliance.web.rendering.image_cost` and friends), taken
   from a token bucket of ``peer_rate`` bytes a second that holds two of the
   largest files; and a peer has at most ``peer_in_flight`` files in flight,
   until its last byte has left the process.  Past either: 429 with
   ``Retry-After``.
2. the process's gate (:class:`~entropy_appliance.core.costs.JobGate`): at
   most ``jobs`` files are made at once.  The next ones wait their turn, at
   most ``queue`` of them and each at most ``queue_wait`` seconds, since a
   place frees up within seconds; past either: 503 with ``Retry-After``
   (the appliance is busy, which is no fault of this client).
3. the work, off the reactor thread: the reactor thread only draws a small
   seed from the pool (which is not thread-safe) and returns at once; a
   worker thread of the reactor's pool instantiates a fresh child CTR_DRBG
   from that seed (:class:`ChildDrbg`), draws every random byte of the file
   from it, and encodes the file.  ``/health`` and every other request are
   answered meanwhile.
4. the body: written by a :class:`~entropy_appliance.net.body.BodyWriter`
   as the client takes it, each piece of the file let go once written; a
   source failure cuts it, as it cuts any random body.

Memory, then: the largest file times ``jobs`` for the work under way, plus
the unread bodies of each peer's at most ``peer_in_flight`` files.  With the
defaults, 10 parallel requests for the largest image keep the process under
300 MB of RSS (measured: peaks of 223 to 238 MB, from 61 MB idle, and 62 MB
two seconds after; ``tests/test_e2e_hostile_costly.py``), where drawing and
encoding them all at once took 1.56 GB.  One job at a time is the default
because memory is what a hostile client goes for, and it leaves the reactor
a core: on two idle cores, two jobs (``--media-jobs 2``) served 8 of those
10 images in 5.5 s against 5 for one, for peaks of 341 to 387 MB.

Why a child DRBG keeps the security strength: the child is an SP 800-90A
CTR_DRBG (AES-256, with the derivation function) instantiated from 256 bits
of entropy input and a 128-bit nonce, all of it output of the pool's DRBG,
whose security strength is 256 bits too.  This is an RBG chain as SP 800-90C
allows it (a DRBG seeded by an approved DRBG of at least its own strength),
and the construction of Linux's per-CPU CRNGs, each keyed from its base
CRNG.  Telling the child's output from random would mean telling those 48
bytes of the parent's output from random, or breaking AES-256 in the child.
No more comes of one seed than of the pool's own DRBG: the child is
reseeded with a further seed from the parent after every ``--reseed-bytes``
of output; it serves one file, is used by one thread, and is never copied
(:class:`~entropy_appliance.core.drbg.CtrDrbg` refuses to be).  The pool's
``served`` figures count the seeds that it gave each surface.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, TypeVar

from klein import Klein
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.server import Request

from entropy_appliance.core.costs import JobGate, PeerCosts
from entropy_appliance.core.drbg import SECURITY_STRENGTH, CtrDrbg
from entropy_appliance.core.peers import peer_key
from entropy_appliance.core.pool import FailClosed, PoolShort, SeedPool
from entropy_appliance.net.body import BodyWriter
from entropy_appliance.net.memory import TRIM_THRESHOLD, HeapTrim
from entropy_appliance.web import openapi, params, problems, rendering
from entropy_appliance.web.problems import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
)
from entropy_appliance.web.streaming import abort_request

__all__ = ["CHILD_SEED", "EVENT_INTERVAL", "ChildDrbg", "EventStream", "MediaHost", "MediaLimits",
           "MediaWeb"]

EVENT_INTERVAL = 1.0
"""Seconds between two status events."""

CHILD_SEED = SECURITY_STRENGTH + SECURITY_STRENGTH // 2
"""Bytes of one child DRBG seed: 256 bits of entropy input and a 128-bit nonce."""

_ASSETS = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}

T = TypeVar("T")


@dataclass(frozen=True)
class MediaLimits:
    """
    The budgets of the image and sound routes (see "Costly routes" above).
    ``peer_rate`` is in bytes of peak memory a second (0: no cost limit),
    and a peer's bucket holds ``peer_burst``: two of the largest files.
    """

    jobs: int = 1
    peer_rate: int = 16 * 1024 * 1024
    peer_burst: int = 2 * rendering.MAX_COST
    peer_in_flight: int = 4
    queue: int = 16
    queue_wait: float = 5.0


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
    """Run ``fn`` in the reactor's thread pool, or inline when there is none (tests)."""
    if IReactorThreads.providedBy(clock):
        return deferToThreadPool(clock, clock.getThreadPool(), fn, *args)
    return maybeDeferred(fn, *args)


def child_seeds(n: int, reseed_bytes: int) -> int:
    """How many seeds a :class:`ChildDrbg` needs to make ``n`` bytes."""
    return max(1, -(-n // reseed_bytes))


class ChildDrbg:
    """
    The data source of one file: a CTR_DRBG of its own, instantiated (on
    the first call, so in the thread that uses it) from the first
    :data:`CHILD_SEED` bytes of ``seeds`` and reseeded from the next after
    every ``reseed_bytes`` of output; see the module docstring for why it
    keeps the pool's security strength.  It makes at most what its seeds
    cover (:func:`child_seeds`), and refuses more.
    """

    def __init__(self, seeds: bytes, reseed_bytes: int, personalization: bytes) -> None:
        if not seeds or len(seeds) % CHILD_SEED:
            raise ValueError(f"seeds must be a whole number of {CHILD_SEED}-byte seeds")
        if reseed_bytes < 1:
            raise ValueError("reseed_bytes must be >= 1")
        self._seeds = seeds
        self._used = 0
        self._reseed_bytes = reseed_bytes
        self._personalization = personalization
        self._drbg: CtrDrbg | None = None
        self._room = 0

    def _seed(self) -> bytes:
        if self._used >= len(self._seeds):
            raise ValueError("this child DRBG has made all that its seeds cover")
        seed = self._seeds[self._used:self._used + CHILD_SEED]
        self._used += CHILD_SEED
        return seed

    def __call__(self, n: int) -> bytes:
        """``n`` bytes of the child's output."""
        out: list[bytes] = []
        while n > 0:
            if self._drbg is None:
                seed = self._seed()
                self._drbg = CtrDrbg(seed[:SECURITY_STRENGTH], nonce=seed[SECURITY_STRENGTH:],
                                     personalization=self._personalization)
                self._room = self._reseed_bytes
            elif not self._room:
                self._drbg.reseed(self._seed())
                self._room = self._reseed_bytes
            k = min(n, self._room)
            out.append(self._drbg.generate(k))
            self._room -= k
            n -= k
        return out[0] if len(out) == 1 else b"".join(out)


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


class _Costly:
    """
    One GET of a file route, from the peer's admission to its last byte:
    a place at the gate (waiting for it at most ``queue_wait`` seconds),
    ``draw()`` on the reactor thread once it holds one (it takes from the
    pool, sets headers, may raise a problem, and returns the work), the work
    in a worker thread, the place back, and the body.  The client leaving
    withdraws it from the queue or stops its body; work under way keeps its
    place until its thread is done, so that the gate bounds memory.
    """

    def __init__(self, media: MediaWeb, request: Request, peer: str, cost: int,
                 content_type: bytes, draw: Callable[[], Callable[[], list[bytes]]]) -> None:
        self._media = media
        self._request = request
        self._peer = peer
        self._cost = cost
        self._content_type = content_type
        self._draw = draw
        self._done: Deferred[bytes] = Deferred(self._cancel)
        self._withdraw: Callable[[], None] | None = None
        self._timer: IDelayedCall | None = None
        self._holding = False
        self._placed_once = False
        self._gone = False
        self._failures: list[FailClosed] = []
        self._unwatch: Callable[[], None] | None = None
        self._writer: BodyWriter | None = None
        self._size = 0
        request.notifyFinish().addBoth(self._finished)

    def start(self) -> Deferred[bytes]:
        """Queue for a place; the Deferred fires with ``b""`` once the body is written."""
        media = self._media
        limits = media.limits
        withdraw = media.gate.acquire(self._placed)
        if withdraw is None:
            self._done.errback(ServiceUnavailable(
                f"the appliance is making as many images and sounds as it can ({limits.jobs} at "
                f"once, {limits.queue} more waiting); retry after the number of seconds in "
                "Retry-After", limits.queue_wait))
        elif not self._placed_once:
            self._withdraw = withdraw
            self._timer = media.host.clock.callLater(limits.queue_wait, self._timed_out)
        return self._done

    def _timed_out(self) -> None:
        self._timer = None
        withdraw, self._withdraw = self._withdraw, None
        if withdraw is not None:
            withdraw()
        limits = self._media.limits
        self._done.errback(ServiceUnavailable(
            f"waited {limits.queue_wait:g} s for one of the {limits.jobs} places where images and "
            "sounds are made; retry after the number of seconds in Retry-After",
            limits.queue_wait))

    def _placed(self) -> None:
        self._placed_once = self._holding = True
        self._withdraw = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        media = self._media
        self._unwatch = media.host.pool.on_failure(self._failures.append)
        try:
            work = self._draw()
        except Exception:
            self._release()
            self._done.errback()
            return
        media.offload(media.trimming(work, self._cost)).addBoth(self._made)

    def _made(self, result: list[bytes] | Failure) -> None:
        self._release()
        if self._gone:
            return
        if isinstance(result, Failure):
            self._done.errback(result)
            return
        if self._failures:
            failure = self._failures[0]
            self._done.errback(ServiceUnavailable(failure.reason, failure.retry_after))
            return
        request = self._request
        self._size = size = sum(map(len, result))
        request.setHeader(b"Content-Type", self._content_type)
        request.setHeader(b"Content-Length", b"%d" % size)
        request.setHeader(b"Cache-Control", b"no-store")
        done = self._done
        self._writer = BodyWriter(self._media.host.pool, request, length=size, streaming=True,
                                  parts=result, surface="media",
                                  complete=lambda: done.callback(b""),
                                  cut=lambda: abort_request(request))
        self._writer.start()

    def _release(self) -> None:
        """Give the place back, once: the work is done, or never began."""
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()
        if self._holding:
            self._holding = False
            self._media.gate.release()
            if self._cost < TRIM_THRESHOLD:
                self._media.released(self._cost)

    def _cancel(self, _: Deferred[bytes]) -> None:
        # The client went away: Klein cancels the Deferred it was given.
        self._gone = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        withdraw, self._withdraw = self._withdraw, None
        if withdraw is not None:
            withdraw()
        writer = self._writer
        if writer is not None and not writer.ended:
            writer.stopProducing()
            try:
                self._request.unregisterProducer()
            except Exception:
                # The channel may already be gone; there is nothing to undo.
                pass

    def _finished(self, _: object) -> None:
        """The response has ended, however: the peer's file is no longer in flight."""
        self._media.costs.done(self._peer)
        self._media.released(self._size)


_PNG = {"image/png": {"type": "string", "contentMediaType": "image/png"}}
_TOO_BIG = f"width or height above {rendering.MAX_SIZE} pixels."
_FAILS_CLOSED = "The entropy core fails closed (health failure or no seed); retry later."
_TOO_MANY = ("This client (an IPv4 address, or an IPv6 /64) is past --peer-rate requests per "
             "second, or past its budget of image and sound work (--peer-media-rate; or "
             f"already has {MediaLimits.peer_in_flight} of them in flight); retry after "
             "Retry-After seconds.")
_BUSY = ("The appliance fails closed (health failure or no seed), or it is making as many "
         "images and sounds as it can (--media-jobs at once) and this request waited its "
         f"turn for {MediaLimits.queue_wait:g} s; retry after Retry-After seconds.")

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

    def __init__(self, host: MediaHost, limits: MediaLimits | None = None,
                 trim: HeapTrim | None = None,
                 offload: Callable[[Callable[[], list[bytes]]], Deferred[list[bytes]]] | None = None,
                 ) -> None:
        self.host = host
        if trim is None and IReactorTime.providedBy(host.clock):
            trim = HeapTrim(host.clock)
        self._trim = trim
        #: Runs a file's work off the reactor thread: in the reactor's thread
        #: pool, or inline when the clock has none (tests).
        self.offload = offload or (lambda work: _offload(host.clock, work))
        self.limit(limits or MediaLimits())

    def limit(self, limits: MediaLimits) -> None:
        """Apply ``limits`` (the options'; before serving, since it starts the budgets afresh)."""
        self.limits = limits
        #: Each peer's budget of image and sound work.
        self.costs = PeerCosts(limits.peer_rate, limits.peer_burst, limits.peer_in_flight,
                               self.host.clock)
        #: The process's places for making images and sounds.
        self.gate = JobGate(limits.jobs, limits.queue)

    def released(self, n: int) -> None:
        """``n`` bytes of a file's work or body were let go (the heap is trimmed after enough)."""
        if self._trim is not None and n:
            self._trim.released(n)

    def trimming(self, work: Callable[[], list[bytes]], cost: int) -> Callable[[], list[bytes]]:
        """
        ``work``, which trims the heap as it ends if it is large: in its
        worker thread, whose arena holds what it let go, and before the next
        job, which may run in another thread, starts.  Small work is left to
        :meth:`released`.  (Measured, 10 parallel largest images: a peak RSS
        of 223 to 238 MB with this, 238 to 271 MB without.)
        """
        trim = self._trim
        if trim is None or cost < TRIM_THRESHOLD:
            return work

        def work_then_trim() -> list[bytes]:
            try:
                return work()
            finally:
                trim.now()

        return work_then_trim

    def _costly(self, request: Request, cost: int, content_type: bytes,
                draw: Callable[[], Callable[[], list[bytes]]]) -> Deferred[bytes]:
        """A file of ``cost`` within the budgets; see "Costly routes" above and :class:`_Costly`."""
        peer = peer_key(request.getClientAddress())
        wait = self.costs.admit(peer, cost)
        if wait:
            if self.costs.open(peer) >= self.limits.peer_in_flight:
                detail = (f"this client already has {self.limits.peer_in_flight} images or sounds "
                          "in flight; retry once one of them is read")
            else:
                detail = ("this client has asked for more image and sound work than its share "
                          "(--peer-media-rate); retry after the number of seconds in Retry-After")
            raise TooManyRequests(detail, wait)
        return _Costly(self, request, peer, cost, content_type, draw).start()

    def _random_file(self, request: Request, need: int, cost: int, surface: str,
                     content_type: bytes, encode: Callable[..., list[bytes]],
                     *args: Any) -> bytes | Deferred[bytes]:
        """
        A file that ``encode(data_source, *args)`` makes of ``need`` random
        bytes, from a child DRBG seeded here, off the reactor thread; for
        HEAD, its headers only (or the 503 of a pool that does not serve).
        """
        host = self.host
        if request.method == b"HEAD":
            host.require_healthy()
            host.rng_headers(request)
            request.setHeader(b"Content-Type", content_type)
            return b""
        reseed_bytes = host.pool.policy.max_bytes
        personalization = b"entropy-appliance media " + surface.encode()

        def draw() -> Callable[[], list[bytes]]:
            seeds = host.random(CHILD_SEED * child_seeds(need, reseed_bytes), surface=surface)
            host.rng_headers(request)
            return lambda: encode(ChildDrbg(seeds, reseed_bytes, personalization), *args)

        return self._costly(request, cost, content_type, draw)

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
                  413: _TOO_BIG, 429: _TOO_MANY, 503: _BUSY})
    def image_random(self, request: Request) -> bytes | Deferred[bytes]:
        """A PNG of random bytes."""
        width = params.WIDTH.parse(request)
        height = params.HEIGHT.parse(request)
        mode = params.MODE.parse(request)
        return self._random_file(request, rendering.image_bytes_needed(width, height, mode),
                                 rendering.image_cost(width, height, mode), "image", b"image/png",
                                 rendering.random_png, width, height, mode)

    @app.route("/v1/image/heatmap", methods=["GET"])
    @openapi.operation(
        "getRawHeatmap", "RAW SOURCE DATA: a heatmap of the entropy source's raw samples.",
        description=(
            "Diagnostic only, not random output: raw samples of one entropy source (source=NAME; "
            "default the first), taken "
            "BEFORE the CTR_DRBG (and never used as seed afterwards), drawn as a grid of "
            f"at most {rendering.HEATMAP_MAX_SAMPLES} cells, each coloured by the bit "
            "population count (0..8) of one sample: dark for 0, orange for 4 (a fair "
            "source's average), white for 8. A healthy source looks like even confetti, a "
            "stuck one is a single colour, a biased one leans dark or bright. While the "
            "source fails its health tests the samples come from the quarantine of "
            "rejected ones. Samples are only taken when the seed pool holds more than the "
            "next reseed needs; otherwise the answer is 503 at once."),
        parameters=[params.WIDTH, params.HEIGHT, params.SOURCE],
        ok=openapi.ok("The heatmap PNG of raw source samples.", _PNG, {
            **openapi.NO_STORE,
            "X-RNG-Source": openapi.RNG_HEADERS["X-RNG-Source"],
            "X-RNG-Source-Kind": openapi.RNG_HEADERS["X-RNG-Source-Kind"],
            "X-Raw-Samples": {"description": "How many raw samples are drawn.",
                              "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        }),
        problems={400: "width or height not an integer or below 1.", 404: "No source of that name.",
                  413: _TOO_BIG, 429: _TOO_MANY,
                  503: "The seed pool cannot spare raw samples now without starving a "
                       "reseed, or the appliance is making as many images and sounds as it "
                       "can; retry after Retry-After seconds."})
    def image_heatmap(self, request: Request) -> bytes | Deferred[bytes]:
        """A PNG heatmap of the bit counts of raw source samples (not DRBG output)."""
        pool = self.host.pool
        width = params.WIDTH.parse(request)
        height = params.HEIGHT.parse(request)
        name = params.SOURCE.parse(request)
        feed = pool.feeds[0] if name is None else pool.feed(name)
        if feed is None:
            known = ", ".join(f.name for f in pool.feeds)
            raise NotFound(f"no source {str(name)[:200]!r}; the sources are: {known}")
        cols, rows = rendering.heatmap_grid(width, height)
        request.setHeader(b"X-RNG-Source", feed.name.encode())
        request.setHeader(b"X-RNG-Source-Kind", feed.kind.encode())
        request.setHeader(b"X-Raw-Samples", b"%d" % (cols * rows))
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b"image/png")
            request.setHeader(b"Cache-Control", b"no-store")
            return b""

        def draw() -> Callable[[], list[bytes]]:
            try:
                raw = pool.take_raw(cols * rows, feed.name)
            except PoolShort as e:
                raise ServiceUnavailable(f"{e}; try again in a moment", 1.0) from None
            return lambda: rendering.heatmap_png(raw, width, height)

        return self._costly(request, rendering.heatmap_cost(width, height), b"image/png", draw)

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
                  413: f"seconds above {rendering.MAX_SECONDS:g}.", 429: _TOO_MANY, 503: _BUSY})
    def sound_noise(self, request: Request) -> bytes | Deferred[bytes]:
        """A 16-bit mono WAV of noise shaped from random bytes."""
        seconds = params.SECONDS.parse(request)
        rate = params.RATE.parse(request)
        color = params.COLOR.parse(request)
        try:
            need = rendering.noise_bytes_needed(seconds, rate, color)
        except rendering.MediaParamError as e:
            raise _problem(e) from None
        return self._random_file(request, need, rendering.sound_cost(seconds, rate, color), "sound",
                                 b"audio/wav", rendering.noise_wav, seconds, rate, color)

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
