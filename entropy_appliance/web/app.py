"""
The Klein web app: random bytes, integers, UUIDs, pollen, status, health,
metrics and OpenAPI, all drawing from the one :class:`SeedPool`; the
pictures, sound, events and dashboard assets of
:class:`~entropy_appliance.web.media.MediaWeb` are mounted under it, and so
are the drop-in ANU and RANDOM.ORG APIs of :mod:`entropy_appliance.web.compat`,
each under its prefix (``--compat``).

:class:`EntropyWeb` keeps ``app = Klein()`` as a class attribute, so routes
are methods over instance state.  ``EntropyWeb(...).site()`` is the ONE
``Site`` that ``app/build.py`` serves on every HTTP, HTTPS and onion endpoint.

Hooks for other modules:

- ``status_extras={"onion": callable}``: each callable's value is merged into
  ``/v1/status`` under its key; a mapping with a string ``"state"`` is also
  exported to ``/metrics`` as ``entropy_<key>_state{state="..."} 1``.
- ``listeners``: what listens, as ``SURFACE ENDPOINT`` (``stream tcp:9000``), reported by ``/v1/status``.
- New routes: a method with ``@app.route(...)`` here (or in a mounted app
  such as :class:`~entropy_appliance.web.media.MediaWeb`), described beside
  it with :func:`entropy_appliance.web.openapi.operation`.  Raise
  :mod:`entropy_appliance.web.problems` problems (``BadRequest`` and
  friends) and parse parameters with :mod:`entropy_appliance.web.params`
  so errors stay RFC 9457.  Call :meth:`EntropyWeb.rng_headers` on every
  response that carries random data.
- The landing page is ``web/static/index.html``.

No route reads ``os.urandom``: every random byte comes from
``pool.random_bytes``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import NotFound as RoutingNotFound

from entropy_appliance import __version__
from entropy_appliance.core.pool import FailClosed, PoolState, SeedPool
from entropy_appliance.net.waiting import when_ready
from entropy_appliance.web import openapi, params, problems
from entropy_appliance.web.channel import fast_channel_protocol
from entropy_appliance.web.compat import (
    AnuWeb,
    CompatConfig,
    PeerBudget,
    RandomOrgWeb,
    SigningKey,
    randomorg,
)
from entropy_appliance.web.formats import DEFAULT_FORMAT, FORMATS, Format, uniform_integers
from entropy_appliance.web.media import MediaWeb
from entropy_appliance.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from entropy_appliance.web.metrics import WebMetrics
from entropy_appliance.web.params import parse_choice, parse_int
from entropy_appliance.web.pollen import MAX_CHALLENGE
from entropy_appliance.web.problems import BadRequest, PayloadTooLarge, ServiceUnavailable
from entropy_appliance.web.requests import BoundedRequest
from entropy_appliance.web.responses import (
    HotRoutes,
    apply,
    random_headers,
    random_response,
    render_pollen,
    rng_headers,
)
from entropy_appliance.web.streaming import stream_body

__all__ = [
    "EntropyWeb",
    "EntropySite",
    "FrontResource",
    "uniform_integers",
    "DEFAULT_MAX_BYTES",
]

DEFAULT_MAX_BYTES = 1024 * 1024 * 1024

#: Seconds a request waits for seed while the pool is starved, by default.
DEFAULT_SEED_WAIT = 5.0

#: The paths whose answers draw random bytes (``/`` only for pollen, see
#: :func:`draws_random`): while the pool is starved they wait for seed.
RANDOM_PATHS = frozenset({
    b"/v1/random", b"/v1/integers", b"/v1/uuid", b"/v1/image/random", b"/v1/sound/noise",
})


#: The paths of the compatible APIs whose answers draw random bytes.
COMPAT_RANDOM_PATHS = {
    "anu": frozenset({b"/API/jsonI.php", b"/anu", b"/anu/"}),
    "randomorg": frozenset({b"/json-rpc/4/invoke"}),
}

#: The path prefixes of each compatible API, which its own app answers.
COMPAT_PREFIXES = {"anu": (b"/API/", b"/anu"), "randomorg": (b"/json-rpc/",)}


def draws_random(request: Request, paths: frozenset[bytes] = RANDOM_PATHS) -> bool:
    """Whether answering ``request`` takes DRBG output (``paths``: those that always do)."""
    path = request.path
    if path == b"/":
        return request.method == b"POST" or b"challenge" in (request.args or {})
    return path in paths

JSON = b"application/json"


class EntropySite(Site):
    """
    The one Site of the process.  It writes no access-log line per request
    (costly at tens of thousands of requests a second, and a record of who
    fetched randomness); requests are counted in the metrics instead.

    Its HTTP/1.1 channels answer plain ``POST /`` and binary
    ``GET /v1/random`` requests without a ``Request`` object, through
    :attr:`fast` (see :mod:`entropy_appliance.web.channel`), with the same
    responses as the routes; None turns that off, and every request takes
    the resource path.

    Its requests are :class:`~entropy_appliance.web.requests.BoundedRequest`:
    bodies bounded by :attr:`max_body` and kept in memory, on every channel.
    """

    displayTracebacks = False
    protocol = fast_channel_protocol
    requestFactory = BoundedRequest
    #: The largest request body read (``--max-body``; see :func:`~entropy_appliance.web.limits.limit_site`).
    max_body: int | None = None

    def __init__(self, resource: Any, h2: bool = True, fast: HotRoutes | None = None,
                 prefer_h2: bool = False, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self._h2 = h2
        self._prefer_h2 = prefer_h2
        self.fast = fast

    def acceptableProtocols(self) -> list[bytes]:
        """
        ALPN protocols, in the server's order of preference: Twisted puts
        the factory's list ahead of the TLS context's, so the choice is made
        here.  http/1.1 comes first unless ``prefer_h2``: a client that
        offers both (curl, and so pollinate) is answered far faster over it
        (see README, Performance); a client that offers only h2 gets h2.
        """
        if not self._h2:
            return [b"http/1.1"]
        return [b"h2", b"http/1.1"] if self._prefer_h2 else [b"http/1.1", b"h2"]

    def log(self, request: Any) -> None:
        """No access log; see the class docstring."""

    def admit_fast(self, channel: Any) -> bool:
        """
        Whether the fast path may answer a request on ``channel`` itself.

        Per-request policy lives on the root resource.  Our own
        :class:`FrontResource` has none.  A resource put in front of it (the
        per-peer rate limit) takes part through ``admit(peer_address)``,
        which counts the request when it returns True; on False the request
        takes the normal path, where that resource answers it in full (429).
        A front resource without ``admit`` turns the fast path off.
        """
        resource = self.resource
        if isinstance(resource, FrontResource):
            return True
        admit = getattr(resource, "admit", None)
        return admit is not None and bool(admit(channel.transport.getPeer()))

    def fast_inflight(self) -> Any:
        """
        The in-flight count (``enter()``/``leave()``) of the resource in
        front, which a body streamed by the fast path joins so that a
        graceful stop waits for it; None if that resource keeps none.
        """
        return getattr(self.resource, "inflight", None)


class FrontResource(Resource):
    """
    A thin leaf in front of Klein that counts every request it hands on in
    the metrics.  It is where a request that draws random bytes waits, while
    the pool is starved, up to ``seed_wait`` seconds; then it is answered,
    with the bytes or (still starved) a 503.  Status, health and metrics
    never wait.
    """

    isLeaf = True

    def __init__(self, rest: Any, observe: Callable[[Request], None],
                 pool: SeedPool | None = None, clock: IReactorTime | None = None,
                 seed_wait: float = 0.0, random_paths: frozenset[bytes] = RANDOM_PATHS) -> None:
        super().__init__()
        self._random_paths = random_paths
        self._rest = rest
        self._observe = observe
        self._pool = pool
        self._clock = clock
        self._seed_wait = seed_wait

    def render(self, request: Request) -> Any:
        """Answer now, or once seeded if the pool is starved and the answer is random."""
        pool = self._pool
        if (pool is not None and self._clock is not None and self._seed_wait > 0
                and draws_random(request, self._random_paths) and not pool.ready()
                and pool.state is PoolState.STARVED):
            return self._render_when_seeded(request, pool, self._clock)
        return self._render_now(request)

    def _render_when_seeded(self, request: Request, pool: SeedPool, clock: IReactorTime) -> Any:
        waiting = when_ready(pool)
        waiting.addTimeout(self._seed_wait, clock)
        gone: list[bool] = []

        def client_left(_: Failure) -> None:
            gone.append(True)
            waiting.cancel()

        request.notifyFinish().addErrback(client_left)

        def answer(_: object) -> None:
            # Seeded, timed out, or failed: the routes write the bytes or the 503.
            if gone:
                return
            body = self._render_now(request)
            if body is NOT_DONE_YET:
                return
            if request.method == b"HEAD":
                request.write(b"")
            else:
                request.setHeader(b"Content-Length", b"%d" % len(body))
                request.write(body)
            request.finish()

        waiting.addBoth(answer)
        return NOT_DONE_YET

    def _render_now(self, request: Request) -> Any:
        """Hand the request to Klein; count it once it is finished."""
        observe = self._observe
        request.notifyFinish().addBoth(lambda _: observe(request))
        return self._rest.render(request)  # a KleinResource


class EntropyWeb:
    """The web surface of one appliance, over one seed pool."""

    app = Klein()

    # Registered before the problem handlers, so that it is the one that runs.
    @app.handle_errors(RoutingNotFound)
    def _mounted(self, request: IRequest, failure: Failure) -> IResource:
        """
        A path no route here knows is a compatible API's, under its prefix,
        or else the media app's (which answers 404 if it has none).
        """
        path = request.path
        for name, prefixes in COMPAT_PREFIXES.items():
            mounted = self.compat_apps.get(name)
            if mounted is not None and path.startswith(prefixes):
                return mounted.app.resource()
        return self.media.app.resource()

    problems.install(app)

    def __init__(
        self,
        pool: SeedPool,
        clock: IReactorTime,
        *,
        version: str = __version__,
        listeners: Iterable[str] = (),
        status_extras: Mapping[str, Callable[[], Any]] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        seed_wait: float = DEFAULT_SEED_WAIT,
        compat: CompatConfig | None = None,
        signing: SigningKey | None = None,
        budget: PeerBudget | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if seed_wait < 0:
            raise ValueError("seed_wait must be >= 0")
        self.seed_wait = seed_wait
        self.pool = pool
        self.clock = clock
        self.version = version
        self.listeners = list(listeners)
        self.status_extras: dict[str, Callable[[], Any]] = dict(status_extras or {})
        self.max_bytes = max_bytes
        self.metrics = WebMetrics(pool, self.status_extras)
        self._started = clock.seconds()
        self._landing = resources.files("entropy_appliance.web").joinpath(
            "static/index.html").read_bytes()
        self._routes: frozenset[str] | None = None
        self.media = MediaWeb(self)
        self.compat = compat = compat or CompatConfig()
        #: The compatible APIs that are on, by name (see ``--compat``).
        self.compat_apps: dict[str, AnuWeb | RandomOrgWeb] = {}
        if "anu" in compat.apis:
            self.compat_apps["anu"] = AnuWeb(self, compat.keys)
        if "randomorg" in compat.apis:
            self.compat_apps["randomorg"] = RandomOrgWeb(self, compat.keys, signing, budget)
        self._random_paths = RANDOM_PATHS.union(*(COMPAT_RANDOM_PATHS[n] for n in self.compat_apps))

    def klein_apps(self) -> list[Klein]:
        """The Klein apps of every route served: this one, the media app, the compatible APIs."""
        return [self.app, self.media.app, *(a.app for a in self.compat_apps.values())]

    # -- wiring ---------------------------------------------------------------

    def resource(self) -> Any:
        """The root resource: the seed wait and the metrics in front of Klein."""
        return FrontResource(self.app.resource(), self.observe, self.pool, self.clock,
                             self.seed_wait, self._random_paths)

    def site(self, h2: bool = True, prefer_h2: bool = False, **kwargs: Any) -> Site:
        """
        The one Site to serve on every web endpoint (``h2=False``: no HTTP/2
        by ALPN; ``prefer_h2``: h2 before http/1.1).
        """
        return EntropySite(self.resource(), h2=h2, prefer_h2=prefer_h2, fast=self.fast_routes(),
                           **kwargs)

    def fast_routes(self) -> HotRoutes:
        """What the Site's HTTP/1.1 channel answers itself, over this app's state."""
        return HotRoutes(self.pool, self.clock, self.metrics.observe, self.max_bytes)

    def too_many(self, request: Request, wait: float) -> bytes | None:
        """
        The 429 of a request past ``--peer-rate`` in the error shape of the
        compatible API it is for, or None (problem+json) for any other.
        """
        path = request.path
        for name, prefixes in COMPAT_PREFIXES.items():
            mounted = self.compat_apps.get(name)
            if mounted is not None and path.startswith(prefixes):
                return mounted.too_many(request, wait)
        return None

    def observe(self, request: Any) -> None:
        """Count one finished request by route (known paths only), method and status."""
        if self._routes is None:
            self._routes = frozenset(r.rule for app in self.klein_apps()
                                     for r in app.url_map.iter_rules())
        path = request.path.decode("utf-8", "replace")
        if path not in self._routes and path + "/" in self._routes:
            path += "/"  # a rule without strict slashes, such as /anu/
        route = path if path in self._routes else "other"
        method = request.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD", "POST"):
            method = "other"
        self.metrics.observe(route, method, int(request.code))

    # -- shared helpers -------------------------------------------------------

    def rng_headers(self, request: Request) -> None:
        """Set the headers every random response carries."""
        apply(request, rng_headers(self.pool))

    def random(self, n: int, surface: str = "http") -> bytes:
        """``n`` bytes from the pool, or :class:`problems.ServiceUnavailable`."""
        try:
            return self.pool.random_bytes(n, surface=surface)
        except FailClosed as e:
            raise ServiceUnavailable(e.reason, e.retry_after) from None

    def require_healthy(self) -> None:
        """Raise :class:`problems.ServiceUnavailable` unless the pool serves."""
        if not self.pool.healthy:
            reason = self.pool.closed_reason or "not yet seeded"
            raise ServiceUnavailable(reason, self.pool.retry_after())

    @staticmethod
    def _json(request: Request, value: Any, code: int = 200) -> bytes:
        body = json.dumps(value).encode()
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", JSON)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    # -- routes ---------------------------------------------------------------

    @app.route("/", methods=["GET", "POST"])
    @openapi.operation(
        "getRoot", "Landing page; with ?challenge= the pollen protocol.",
        parameters=[{"name": "challenge", "in": "query", "required": False,
                     "description": "A pollinate challenge (hex).",
                     "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CHALLENGE}}],
        ok=openapi.ok("The landing page, or the two-line pollen reply.",
                      {"text/html": {"type": "string"}, "text/plain": {"type": "string"}}),
        problems=[503],
        responses={"400": {"description": "Empty or too long challenge.",
                           "content": {"text/plain": {"schema": {"type": "string"}}}}})
    @openapi.operation(
        "postPollen", "The pollen protocol, as pollinate speaks it.", method="post",
        request_body={"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["challenge"],
                "properties": {"challenge": {"type": "string", "minLength": 1,
                                             "maxLength": MAX_CHALLENGE}}}}}},
        ok=openapi.ok(
            "Two lines: hex SHA-512 of the challenge; hex SHA-512 of the challenge followed "
            "by 64 random bytes.",
            {"text/plain": {"type": "string", "pattern": "^[0-9a-f]{128}\\n[0-9a-f]{128}\\n$"}},
            openapi.RNG_HEADERS),
        problems={413: "A request body over this server's --max-body (64 KiB by default), "
                       "answered before the body is read.", 503: None},
        responses={"400": {"description": "Missing or empty challenge: use the pollinate client.",
                           "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def root(self, request: Request) -> bytes:
        """Landing page, or the pollen protocol when a challenge is given."""
        if request.method == b"POST" or (request.args or {}).get(b"challenge"):
            return render_pollen(request, self.pool)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._landing

    @app.route("/v1/random", methods=["GET"])
    @openapi.operation(
        "getRandom", "Random bytes from the CTR_DRBG.",
        description=(
            "N random bytes. Bodies above 64 KiB are streamed; if the core fails "
            "closed mid-stream the connection is cut, so the body falls short of "
            "Content-Length."),
        parameters=[lambda ctx: params.BYTES.spec(maximum=ctx.max_bytes), params.FORMAT],
        ok=openapi.ok("The random bytes in the asked format.", {
            "application/octet-stream": {"type": "string",
                                         "contentMediaType": "application/octet-stream"},
            "text/plain": {"type": "string", "pattern": "^[0-9a-fA-F+/=]*$"},
            "application/json": {"$ref": "#/components/schemas/RandomJson"},
        }, openapi.RNG_HEADERS),
        problems={400: None, 413: "More bytes asked for than this server's --max-bytes.",
                  503: None})
    def random_route(self, request: Request) -> bytes | Deferred[bytes]:
        """``bytes`` random bytes in ``format``; streamed above 64 KiB."""
        n = parse_int(request, "bytes", 1, None)
        if n > self.max_bytes:
            raise PayloadTooLarge(
                f"bytes={n} is above this server's limit of {self.max_bytes}; ask for less, "
                "or make several requests")
        fmt: Format = FORMATS[parse_choice(request, "format", FORMATS, DEFAULT_FORMAT)]
        if request.method == b"HEAD":
            self.require_healthy()
            apply(request, random_headers(self.pool, n, fmt))
            return b""
        try:
            response = random_response(self.pool, n, fmt)
        except FailClosed as e:
            raise ServiceUnavailable(e.reason, e.retry_after) from None
        apply(request, response.headers)
        stream = response.stream
        if stream is None:
            return response.body
        return stream_body(request, self.pool, stream.length, stream.encoding, stream.first)

    @app.route("/v1/integers", methods=["GET"])
    @openapi.operation(
        "getIntegers", "Uniform random integers in [min, max], without modulo bias.",
        parameters=[params.INTEGER_COUNT, params.INTEGER_MIN, params.INTEGER_MAX],
        ok=openapi.ok("A JSON list of integers.", {"application/json": {
            "type": "array", "minItems": 1, "maxItems": params.MAX_INTEGERS,
            "items": {"type": "integer", "minimum": -params.INTEGER_BOUND,
                      "maximum": params.INTEGER_BOUND}}}, openapi.RNG_HEADERS),
        problems={400: "count, min or max missing (min and max are required), not an integer or "
                       "out of range, or min greater than max (a constraint between two "
                       "parameters, which the parameter schemas cannot state).",
                  503: None})
    def integers(self, request: Request) -> bytes:
        """``count`` uniform integers in [min, max]."""
        count = params.INTEGER_COUNT.parse(request)
        lo = params.INTEGER_MIN.parse(request)
        hi = params.INTEGER_MAX.parse(request)
        if lo > hi:
            raise BadRequest(f"min={lo} is greater than max={hi}")
        values = uniform_integers(self.random, count, lo, hi)
        self.rng_headers(request)
        return self._json(request, values)

    @app.route("/v1/uuid", methods=["GET"])
    @openapi.operation(
        "getUuids", "Version 4 UUIDs (RFC 9562).",
        parameters=[params.UUID_COUNT],
        ok=openapi.ok("A JSON list of UUID strings.", {"application/json": {
            "type": "array", "minItems": 1, "maxItems": params.MAX_UUIDS,
            "items": {"type": "string", "format": "uuid", "pattern":
                      "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"}}},
            openapi.RNG_HEADERS),
        problems=[400, 503])
    def uuids(self, request: Request) -> bytes:
        """``count`` version-4 UUIDs."""
        count = params.UUID_COUNT.parse(request)
        raw = self.random(16 * count)
        values = [str(uuid.UUID(bytes=raw[i:i + 16], version=4)) for i in range(0, 16 * count, 16)]
        self.rng_headers(request)
        return self._json(request, values)

    def status(self) -> dict[str, Any]:
        """The /v1/status document: the pool snapshot plus version, uptime, listeners, extras."""
        doc = self.pool.status().as_dict()
        doc["version"] = self.version
        doc["uptime_seconds"] = max(0.0, self.clock.seconds() - self._started)
        doc["listeners"] = list(self.listeners)
        for key, hook in self.status_extras.items():
            try:
                doc[key] = hook()
            except Exception as e:
                # One broken extra must not hide the rest of the status.
                doc[key] = {"error": f"{type(e).__name__}: {e}"}
        return doc

    @app.route("/v1/status", methods=["GET"])
    @openapi.operation(
        "getStatus", "A snapshot of the source, health tests, pool and DRBG.",
        ok=openapi.ok("Status snapshot.", {"application/json": {"$ref": "#/components/schemas/Status"}}))
    def status_route(self, request: Request) -> bytes:
        """JSON status snapshot."""
        request.setHeader(b"Cache-Control", b"no-store")
        return self._json(request, self.status())

    @app.route("/health", methods=["GET"])
    @openapi.operation(
        "getHealth", "For load balancers and monitors: 200 while random bytes are served, or "
                     "while starved for no longer than --seed-wait; 503 when failed or starved "
                     "longer.",
        description=(
            "The body carries drand's health members as well: current, the DRBG reseeds done, "
            "and expected, the reseeds that should be done by now (current + 1 while a due "
            "reseed cannot be done). A monitor written for drand reads current < expected as "
            "unhealthy; the status code says the same."),
        ok=openapi.ok("Serving (ok), or briefly starved.",
                      {"application/json": {"$ref": "#/components/schemas/Health"}}),
        responses={"503": {"description": "Failed, or starved for longer than --seed-wait.",
                           "headers": openapi.RETRY_AFTER, "content": {
                               "application/problem+json": {"schema": {"allOf": [
                                   {"$ref": "#/components/schemas/Problem"},
                                   {"$ref": "#/components/schemas/HealthState"}]}}}}})
    def health(self, request: Request) -> bytes:
        """
        200 while random bytes are served, and while starved for no longer
        than a request would wait; 503 (problem+json) when the source has
        failed or the pool has been starved for longer than that, so that a
        load balancer moves clients elsewhere.  Both bodies carry drand's
        ``current`` and ``expected`` (reseeds done, and due).
        """
        request.setHeader(b"Cache-Control", b"no-store")
        pool = self.pool
        state = pool.state
        starved_for = pool.starved_for()
        reseeds = pool.status().drbg.reseeds
        serving = state is PoolState.OK
        doc = {"state": state.value, "source": pool.source_name,
               "reseed_age_seconds": pool.reseed_age(), "starved_seconds": starved_for,
               "current": reseeds, "expected": reseeds if serving else reseeds + 1}
        if serving or (state is PoolState.STARVED and starved_for <= self.seed_wait):
            return self._json(request, {"status": state.value, **doc})
        reason = pool.closed_reason or state.value
        if state is PoolState.STARVED:
            reason = f"starved for {starved_for:.1f} s (longer than the {self.seed_wait:g} s wait): {reason}"
        raise ServiceUnavailable(reason, pool.retry_after(), {"reason": pool.closed_reason, **doc})

    @app.route("/metrics", methods=["GET"])
    @openapi.operation("getMetrics", "Prometheus metrics.",
                       ok=openapi.ok("Prometheus text exposition.", {"text/plain": {"type": "string"}}))
    def metrics_route(self, request: Request) -> bytes:
        """Prometheus exposition."""
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return self.metrics.render()

    @app.route("/openapi.json", methods=["GET"])
    @openapi.operation("getOpenAPI", "This document.",
                       ok=openapi.ok("OpenAPI 3.1 document.", {"application/json": {"type": "object"}}))
    def openapi_route(self, request: Request) -> bytes:
        """The OpenAPI 3.1 document of this instance, from the routes' own descriptions."""
        schemas = randomorg.SCHEMAS if "randomorg" in self.compat_apps else {}
        doc = openapi.build_document(self.klein_apps(),
                                     openapi.OpenAPIContext(self.version, self.max_bytes), schemas)
        return self._json(request, doc)
