"""
The composition root: :func:`makeService` builds the service tree of one
process from a :class:`~entropy_appliance.app.options.Config`.

There is one function per role:

- :func:`build_single`: one process reads the sources and serves.
- :func:`build_parent` (``--workers N``, N > 1): reads the sources, holds
  every listening socket without accepting, and relays health-tested seed to
  N worker processes (:mod:`~entropy_appliance.app.workers`).
- :func:`build_worker`: reads seed from its stdin, serves on the sockets it
  inherited.

Every service joins the tree in a named phase of
:mod:`~entropy_appliance.app.lifecycle`, which fixes the stop order.  The
side effects that options must not have happen here: ``--source auto`` is
resolved to every device found and the kernel (and logged when the
pipeline starts), the self-signed TLS pair and
the onion key are created if missing.  Listeners are endpoint strings, and
ONE Site serves every HTTP, HTTPS and onion endpoint.  Every listener, in
every role, is made from :func:`listeners`: a plain socket endpoint, and a
factory with TLS (https) and, for a ``haproxy:`` description, the PROXY
header reader outermost (:meth:`Serving.factory`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from entropy_appliance.app.lifecycle import Lifecycle, cannot_listen
from entropy_appliance.app.options import Config, tls_pairs
from entropy_appliance.app.pipeline import CoreService, build_core
from entropy_appliance.app.signals import GracefulStop, ReloadService
from entropy_appliance.app.workers import AdoptedPort, InheritedPort
from entropy_appliance.net import tls
from entropy_appliance.net.egd import EgdFactory
from entropy_appliance.net.limits import GuardedEndpoint, PeerGuard, guard_accepts, with_backlog
from entropy_appliance.net.memory import HeapTrim
from entropy_appliance.net.proxy import PROXY_OUTCOMES, ProxyHeaderFactory, TrustedProxies, split_proxy
from entropy_appliance.net.stream import StreamFactory
from entropy_appliance.source.detection import detect_all
from entropy_appliance.source.sources import DeviceSource, SourceSpec, open_source

if TYPE_CHECKING:
    from entropy_appliance.onion import OnionService

__all__ = ["makeService", "build_single", "build_parent", "build_worker", "Serving", "ListenerSpec",
           "listeners"]

_log = Logger()


def makeService(config: Config, reactor: Any = None) -> Lifecycle:
    """The service tree for ``config``'s role; ``reactor`` defaults to the global one."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    role: Callable[[Config, Any], Lifecycle] = {
        "single": build_single, "parent": build_parent, "worker": build_worker,
    }[config.role]
    return role(config, reactor)


# -- the roles -------------------------------------------------------------------


def build_single(config: Config, reactor: Any) -> Lifecycle:
    """One process: read the source and serve every endpoint."""
    tree = Lifecycle()
    sources, detected = _resolve_sources(config)
    core = build_core(reactor, [(open_source(spec), h) for spec, h in sources], policy=config.policy,
                      alpha=config.alpha, detected=detected, min_sources=config.min_sources)
    tree.add("pipeline", core, "pipeline")
    serving = _serve(config, reactor, tree, core, publish_onion=True)
    for listener, endpoint in _listening_endpoints(config, reactor):
        tree.add("listeners", _Listener(GuardedEndpoint(endpoint, reactor), serving.factory(listener),
                                        listener.kind, listener.description))
    _notify(tree, core, reactor)
    return tree


def build_parent(config: Config, reactor: Any) -> Lifecycle:
    """
    The parent of ``config.workers`` workers: the only reader of the source.
    It listens on every endpoint but never accepts; the workers inherit the
    sockets, and the command line with ``--source`` resolved.
    """
    from entropy_appliance.app.workers import HeldPort, WorkerSupervisor
    from entropy_appliance.core.health import failing_run

    tree = Lifecycle()
    sources, detected = _resolve_sources(config)
    core = build_core(reactor, [(open_source(spec), h) for spec, h in sources], policy=config.policy,
                      alpha=config.alpha, detected=detected, serving=False,
                      min_sources=config.min_sources)
    tree.add("pipeline", core, "pipeline")
    contexts = _tls_contexts(config)
    held = [HeldPort(endpoint, listener.kind, listener.description)
            for listener, endpoint in _listening_endpoints(config, reactor)]
    for port in held:
        tree.add("listeners", port)
    # Each worker names the same sources, each with its resolved claim, and
    # credits the relayed seed at the lowest of them (as the parent relays it).
    argv = _without_option(list(config.argv), "source")
    for spec, h in sources:
        argv += ["--source", SourceSpec(spec.kind, spec.path, h).text()]
    pool = core.pool
    supervisor = WorkerSupervisor(reactor, config.workers, argv, held, pool.take_seed,
                                  failure_mark=bytes(failing_run(pool.relay_min_entropy, config.alpha)))
    pool.on_failure(lambda _: supervisor.source_failed())
    tree.add("workers", supervisor, "workers")
    tree.add("signals", ReloadService(reactor, _unique(c for _, c in contexts),
                                      forward=lambda: supervisor.signal_all("HUP")), "reload")
    _notify(tree, core, reactor)
    return tree


def build_worker(config: Config, reactor: Any) -> Lifecycle:
    """
    A worker: health-test the seed its parent writes to stdin, and serve on
    the listening sockets it inherited.  Worker 0 publishes the onion
    service, if any.
    """
    from entropy_appliance.app.workers import ParentWatch

    assert config.worker is not None
    tree = Lifecycle()
    sources, _ = _resolve_sources(config)
    source = DeviceSource("/proc/self/fd/0", ", ".join(spec.kind for spec, _ in sources))
    source.name = f"{', '.join(spec.name for spec, _ in sources)} (via parent)"
    relay = min(h for _, h in sources)
    core = build_core(reactor, [(source, relay)], policy=config.policy, alpha=config.alpha)
    tree.add("pipeline", core, "pipeline")
    index, pid = config.worker.index, os.getpid()
    worker_status = {"worker": lambda: {"index": index, "pid": pid, "of": config.workers}}
    serving = _serve(config, reactor, tree, core, publish_onion=index == 0, extras=worker_status)
    inherited = list(config.worker.ports)
    for listener in listeners(config):
        mine = next((p for p in inherited if p.kind == listener.kind), None)
        if mine is None:
            raise ValueError(f"the parent handed this worker no {listener.kind} socket")
        inherited.remove(mine)
        # The parent's sockets are plain sockets to us: TLS and PROXY are in the factory.
        tree.add("listeners", _GuardedAdoptedPort(reactor, mine, serving.factory(listener)))
    tree.add("signals", ParentWatch(reactor, reactor.stop), "parent-watch")
    return tree


# -- what a serving process serves ---------------------------------------------


@dataclass(frozen=True)
class ListenerSpec:
    """
    One listener as configured: its ``kind`` (the surface), its
    ``description`` as given, the ``socket`` description it listens on
    (without ``haproxy:``, with the default backlog), whether it expects a
    PROXY header first (``proxied``), and, for ``https``, its ``index``
    among the TLS context factories.
    """

    kind: str
    description: str
    socket: str
    proxied: bool
    index: int


def listeners(config: Config) -> list[ListenerSpec]:
    """
    Every listener of ``config``, in the order the parent and its workers
    both use.  Every surface is listed here, and every listener is made from
    this list (:func:`_listening_endpoints`, :meth:`Serving.factory`), so a
    surface added here gets the ``haproxy:`` prefix and the PROXY layer too.
    """
    out: list[ListenerSpec] = []
    for kind, descriptions in (("stream", config.stream), ("http", config.http),
                               ("https", config.https), ("egd", config.egd)):
        for index, description in enumerate(descriptions):
            socket, proxied = split_proxy(description)
            out.append(ListenerSpec(kind, description, with_backlog(socket), proxied, index))
    return out


@dataclass
class Serving:
    """The factories a serving process listens with, and the TLS endpoints."""

    stream: Any
    http: Any
    tls: list[tuple[tls.SSLEndpointSpec, tls.ReloadableContextFactory]]
    #: Built by :func:`_serve` when some listener is ``haproxy:``: wraps a factory in the PROXY layer.
    proxy: Callable[[Any], Any] | None = None
    egd: Any = None

    def factory(self, listener: ListenerSpec) -> Any:
        """
        The protocol factory of ``listener``: the raw stream, EGD, or the one
        Site (for http and https); TLS around it for https; and the PROXY header
        reader outermost for a ``haproxy:`` listener, since the header comes
        before anything else on the connection, a TLS ClientHello included.
        """
        factory = {"stream": self.stream, "egd": self.egd}.get(listener.kind, self.http)
        if listener.kind == "https":
            factory = tls.TLSServerFactory(self.tls[listener.index][1], False, factory)
        if listener.proxied:
            assert self.proxy is not None
            factory = self.proxy(factory)
        return factory


def _serve(config: Config, reactor: Any, tree: Lifecycle, core: CoreService, publish_onion: bool,
           extras: dict[str, Callable[[], Any]] | None = None) -> Serving:
    """
    Build what a serving process serves, behind the per-peer limits: the raw
    stream, ONE Site, the drain on stop, the SIGHUP reload and (if
    ``publish_onion``) the onion service.
    """
    from entropy_appliance.web import EntropyWeb
    from entropy_appliance.web.limits import limit_site

    pool = core.pool
    guard = PeerGuard(config.peers, reactor)
    stream_factory = StreamFactory(pool, trim=HeapTrim(reactor))
    egd_factory = EgdFactory(pool)
    tree.add("drain", GracefulStop(guard.inflight, reactor, config.shutdown_timeout,
                                   close_streams=lambda: stream_factory.close_all() + egd_factory.close_all(),
                                   close_http=guard.close_http), "drain")
    status_extras = dict(extras or {})
    onion_targets: dict[str, Any] = {"stream": stream_factory}
    onion = _onion_service(config, reactor, onion_targets) if publish_onion else None
    if onion is not None:
        # /v1/status shows the onion service; it is given the Site below.
        status_extras["onion"] = onion.status
    proxy = _proxy_layer(config, reactor, status_extras)
    listening = [f"{spec.kind} {spec.description}" for spec in listeners(config)]
    web = EntropyWeb(pool, reactor, listeners=listening,
                     max_bytes=config.max_bytes, status_extras=status_extras or None,
                     seed_wait=config.seed_wait, compat=config.compat,
                     signing=_signing_key(config), budget=_peer_budget(guard))
    web.media.limit(config.media)
    site = web.site(h2=config.tls.h2, prefer_h2=config.tls.prefer_h2,
                    timeout=config.peers.idle_timeout or None)
    http = limit_site(site, guard, observe=web.observe, limits=config.http_limits,
                      refuse=web.too_many)
    if onion is not None:
        onion_targets["http"] = site
        tree.add("onion", onion, "onion")
    contexts = _tls_contexts(config)
    tree.add("signals", ReloadService(reactor, _unique(c for _, c in contexts)), "reload")
    return Serving(stream=guard.wrap_stream(stream_factory), http=http, tls=contexts, proxy=proxy,
                   egd=guard.wrap_stream(egd_factory))


def _proxy_layer(config: Config, reactor: Any,
                 status_extras: dict[str, Callable[[], Any]]) -> Callable[[Any], Any] | None:
    """
    What wraps the factory of a ``haproxy:`` listener in the PROXY layer,
    shared by all of them (one trust list, one count of outcomes, shown as
    ``proxy`` in ``/v1/status``); None when no listener is ``haproxy:``.
    """
    if not any(listener.proxied for listener in listeners(config)):
        if config.trusted_proxies:
            _log.warn("--trusted-proxy is set but no listener is haproxy:...; no PROXY header is read")
        return None
    trusted = TrustedProxies(config.trusted_proxies)
    counts = dict.fromkeys(PROXY_OUTCOMES, 0)
    status_extras["proxy"] = lambda: {"trusted": [str(n) for n in trusted.networks],
                                      "connections": dict(counts)}

    def proxy(factory: Any) -> ProxyHeaderFactory:
        return ProxyHeaderFactory(factory, trusted, reactor, config.peers.header_timeout, counts)

    return proxy


def _signing_key(config: Config) -> Any:
    """The key of RANDOM.ORG's signed methods, created on first run; None when that API is off."""
    if "randomorg" not in config.compat.apis:
        return None
    from entropy_appliance.web.compat import load_or_create_signing_key

    path = config.compat.signing_key
    key, created = load_or_create_signing_key(path)
    if created:
        _log.warn("created a new signing key {path} (RSA, mode 0600); back it up: signed answers "
                  "verify only with it", path=path)
    return key


def _peer_budget(guard: PeerGuard) -> Any:
    """The per-peer budgets RANDOM.ORG's API reports: --peer-rate and --peer-bandwidth."""
    from entropy_appliance.web.compat import PeerBudget

    return PeerBudget(guard.rate, guard.throttle.bandwidth if guard.throttle is not None else None)


def _onion_service(config: Config, reactor: Any, targets: dict[str, Any]) -> OnionService | None:
    """The onion service, its key created on first run; None without ``--onion``."""
    onion = config.onion
    if onion is None:
        return None
    from entropy_appliance.onion import LaunchedTor, OnionService, SharedTor, TorConnector, load_or_create_key

    key, created = load_or_create_key(onion.key)
    if created:
        _log.warn("created a new onion key {path} for {address}; back it up: it is the address",
                  path=onion.key, address=key.address)
    connector: TorConnector
    if onion.tor_control is not None:
        password = onion.tor_password
        connector = SharedTor(clientFromString(reactor, onion.tor_control), onion.tor_control,
                              password=(lambda: password) if password else None)
    else:
        assert onion.tor_binary is not None
        connector = LaunchedTor(reactor, onion.tor_binary, data_dir=onion.tor_data_dir,
                                extra_config=onion.tor_config)
    return OnionService(reactor, connector, key, onion.ports, targets, client_auth=onion.client_auth)


def _notify(tree: Lifecycle, core: CoreService, reactor: Any) -> None:
    """READY=1 once listening and seeded, STATUS= while running, STOPPING=1 first on stop."""
    from entropy_appliance.app.systemd import NotifyService
    from entropy_appliance.net.waiting import when_ready

    pool = core.pool
    tree.add("notify", NotifyService(pool.status, reactor, ready=lambda: when_ready(pool)), "notify")


# -- sources, endpoints, TLS -------------------------------------------------------


def _resolve_sources(config: Config) -> tuple[list[tuple[SourceSpec, float]], bool]:
    """
    The sources to read, each with its claimed min-entropy (``auto``
    probed now: every device found, and the kernel), and whether they were
    probed.
    """
    specs = list(config.sources)
    detected = specs[0].kind == "auto"
    if detected:
        specs = detect_all()
        if config.min_sources > len(specs):
            found = ", ".join(s.name for s in specs)
            raise usage.UsageError(f"--min-sources {config.min_sources}: --source auto found only "
                                   f"{len(specs)} source{'s' if len(specs) > 1 else ''} ({found})")
    return [(spec, spec.claim(config.min_entropy)) for spec in specs], detected


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without any ``--name VALUE`` or ``--name=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == f"--{name}":
            skip = True
        elif not arg.startswith(f"--{name}="):
            out.append(arg)
    return out


def _listening_endpoints(config: Config, reactor: Any) -> list[tuple[ListenerSpec, IStreamServerEndpoint]]:
    """
    Every listener of :func:`listeners` with the endpoint of its socket:
    plain, since TLS and the PROXY layer are in the listener's factory
    (:meth:`Serving.factory`); an endpoint that names no listen backlog gets
    a larger one than Twisted's (:func:`~entropy_appliance.net.limits.with_backlog`).
    """
    out: list[tuple[ListenerSpec, IStreamServerEndpoint]] = []
    for listener in listeners(config):
        if listener.kind == "https":
            endpoint = tls.socket_endpoint(reactor, tls.parse_https_endpoint(listener.socket))
        else:
            endpoint = serverFromString(reactor, listener.socket)
        out.append((listener, endpoint))
    return out


def _tls_contexts(config: Config) -> list[tuple[tls.SSLEndpointSpec, tls.ReloadableContextFactory]]:
    """
    One TLS context factory per key/certificate pair (SIGHUP reloads it),
    paired with each HTTPS endpoint; the self-signed pair is created first
    if the configuration asks for it and it does not exist yet.
    """
    pairs = tls_pairs(config.tls, config.https)
    if None in pairs:
        tls.generate_self_signed(config.tls.key, config.tls.cert)
        _log.warn("generated a self-signed TLS certificate {cert} (key {key}, mode 0600)",
                  cert=config.tls.cert, key=config.tls.key)
        pairs = tls_pairs(config.tls, config.https)
    factories: dict[tuple[str, str], tls.ReloadableContextFactory] = {}
    out = []
    for description, pair in zip(config.https, pairs, strict=True):
        assert pair is not None
        spec = tls.parse_https_endpoint(split_proxy(description)[0])
        factory = factories.get(pair)
        if factory is None:
            factory = factories[pair] = tls.ReloadableContextFactory(tls.load_material(*pair),
                                                                     h2=config.tls.h2)
        material = factory.material
        _log.info("HTTPS on {where}: certificate {cert} SHA-256 fingerprint {fp}",
                  where=spec.describe(), cert=material.cert_path, fp=tls.fingerprint(material.certificate))
        out.append((spec, factory))
    return out


def _unique(factories: Any) -> list[tls.ReloadableContextFactory]:
    """Each factory once, in order."""
    out: list[tls.ReloadableContextFactory] = []
    for f in factories:
        if f not in out:
            out.append(f)
    return out


class _Listener(StreamServerEndpointService):
    """Listens on one endpoint; knows its kind and the description it came from."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, kind: str, description: str) -> None:
        super().__init__(endpoint, factory)
        self.kind = kind
        self.description = description
        # A port that cannot be listened on (in use, no permission) stops the
        # start with its reason, rather than leaving a process that serves
        # some surfaces and not others.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:  # noqa: N802 - Service's name
        """Listen; a port that cannot be listened on stops the start with a message."""
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise cannot_listen(self.kind, self.description, e) from None


class _GuardedAdoptedPort(AdoptedPort):
    """A worker's listener: accepts on an inherited socket, its accept loop guarded."""

    def __init__(self, reactor: Any, inherited: InheritedPort, factory: Any) -> None:
        super().__init__(reactor, inherited, factory)
        self._clock = reactor

    def startService(self) -> None:  # noqa: N802 - Service's name
        """Adopt the socket, and guard its accept loop (see ``guard_accepts``)."""
        super().startService()
        guard_accepts(self.port, self._clock)
