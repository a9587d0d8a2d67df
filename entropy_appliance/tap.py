"""
``twistd entropy``: the options and the service tree.

This is the only module that reads configuration.  :class:`Options`
validates every value in ``postOptions`` and raises ``UsageError`` with a
sentence a person can act on; :func:`makeService` then builds the services
from explicit keyword arguments.  The service tree is ordered so that a stop
closes the listeners first and the entropy pipeline last.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from entropy_appliance.app.environment import EnvironmentOptions
from entropy_appliance.core.pool import MIN_RESEED_BYTES, ReseedPolicy
from entropy_appliance.core.units import parse_size
from entropy_appliance.source.sources import (
    DEFAULT_MIN_ENTROPY,
    SourceSpec,
    detect,
    open_source,
    parse_source,
)

if TYPE_CHECKING:
    from entropy_appliance.onion import OnionService

__all__ = ["Options", "makeService"]

#: listen(kind, endpoint, factory, tls_creator): serve ``factory`` on ``endpoint``.
Listen = Callable[[str, Any, Any, Any], None]



def _check_endpoint(option: str, description: str) -> None:
    """Parse a server endpoint string now, so a typo fails at startup."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)
    except Exception as e:  # the parsers raise a variety of types
        raise usage.UsageError(
            f"--{option} {description!r} is not a valid server endpoint ({e}); "
            "use e.g. tcp:9000, tcp:9000:interface=127.0.0.1, unix:/run/entropy.sock, "
            "systemd:domain=INET:index=0, or none"
        ) from None


class Options(EnvironmentOptions):
    """
    Command-line options for ``twistd entropy``; each can also be given as
    an ``ENTROPY_<OPTION>`` environment variable (see ``config.py``).
    """

    synopsis = "[options]"
    longdesc = (
        "Serve health-tested CTR_DRBG randomness over a raw TCP stream, HTTP(S) "
        "and, optionally, a Tor onion service."
    )

    optParameters: list[list[Any]] = [
        ["source", None, "auto",
         "Entropy source: auto (probe /dev/qrandom*, /dev/hwrng, /dev/chaoskey*, "
         "else the kernel), kernel, or device:PATH."],
        ["reseed-interval", None, "1.0", "Reseed the DRBG at least every SECONDS."],
        ["reseed-bytes", None, "64M", "Reseed the DRBG after this many output bytes (K/M/G suffixes)."],
        ["reseed-bits", None, "384", "Bits of entropy input per reseed (at least 256)."],
        ["seed-wait", None, "5",
         "While the seed pool is starved (healthy source, reseed due, seed short), HTTP requests "
         "wait up to SECONDS for it, then get 503; /health turns 503 after starving this long. "
         "0: no wait."],
        ["min-entropy", None, None,
         "Claimed min-entropy per 8-bit sample, 0 < H <= 8 (default by source kind: "
         "kernel 8, quantis 7, hwrng/chaoskey/device 1)."],
        ["health-alpha", None, "2**-30",
         "False-positive rate of each health test, as a number or 2**-N."],
        ["tls-key", None, "certs/server.key",
         "TLS private key (PEM) for ssl: endpoints that name none; the default pair is "
         "generated (self-signed) on first run."],
        ["tls-cert", None, "certs/server.pem", "TLS certificate chain (PEM) to go with --tls-key."],
        ["max-bytes", None, "1G", "Largest /v1/random?bytes=N answered (K/M/G suffixes)."],
        ["onion-ports", None, "80:http,9000:stream",
         "With --onion: VIRTUAL:TARGET pairs, comma-separated; targets are http and stream."],
        ["tor-control", None, None,
         "With --onion: use the running tor at this control endpoint (unix:/run/tor/control, "
         "tcp:127.0.0.1:9051) instead of launching one."],
        ["tor-password-file", None, None,
         "With --tor-control: file holding the control port password (when cookie auth is off)."],
        ["onion-key", None, "certs/onion_ed25519.key",
         "With --onion: the service's ED25519-V3 key (tor's format; created mode 0600 if missing). "
         "It IS the address: back it up."],
        ["onion-client-auth", None, None,
         "With --onion: directory of v3 client-authorization *.auth public keys; only those "
         "clients can reach the service."],
        ["tor-binary", None, None,
         "With --onion and no --tor-control: the tor to launch (default: tor on PATH)."],
        ["tor-data-dir", None, None,
         "With a launched tor: its data directory (default: a temporary one, removed on exit)."],
        ["tor-config", None, None,
         "With a launched tor: a torrc file included after our own lines (bridges, proxies, ...)."],
        ["shutdown-timeout", None, "10",
         "On SIGTERM/SIGINT, seconds that HTTP responses in flight get to finish."],
        ["peer-streams", None, "64",
         "Most concurrent raw-stream connections from one client IP (IPv6: one /64); "
         "0: no limit."],
        ["peer-rate", None, "200",
         "HTTP requests per second per client IP, bursts of twice as many; past it, 429. "
         "0: no limit."],
        ["peer-bandwidth", None, "0",
         "Bytes per second per client IP over all surfaces (K/M/G suffixes); 0: no limit."],
        ["idle-timeout", None, "120",
         "Close a connection after this many seconds with nothing read or written "
         "(a raw-stream client that stops reading); 0: never."],
        ["header-timeout", None, "15",
         "Close an HTTP connection whose request head takes longer than this many seconds "
         "(slowloris); 0: never."],
    ]

    optParameters += [
        ["workers", None, "1",
         "Serving processes sharing every listener: N (1-64) or auto (one per core). With N > 1 "
         "this process reads the source and relays health-tested seed material to each worker."],
        ["worker-fds", None, None, "(internal) listening sockets inherited from the parent."],
        ["worker-index", None, None, "(internal) this worker's number."],
    ]

    optFlags: list[list[Any]] = [
        ["no-h2", None, "Offer only http/1.1 by ALPN on the HTTPS endpoints (no HTTP/2)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["stream"] = []
        self["http"] = []
        self["https"] = []

    def parseOptions(self, options: Any = None) -> None:
        """Parse, remembering the command line for worker processes."""
        self.argv = list(options) if options is not None else []
        super().parseOptions(options)

    def opt_onion(self) -> None:
        """Publish the site and the raw stream as a Tor v3 onion service."""
        self["onion"] = True

    def opt_stream(self, endpoint: str) -> None:
        """Raw TCP byte stream endpoint (repeatable; default tcp:9000; 'none' disables)."""
        self["stream"].append(endpoint)

    def opt_http(self, endpoint: str) -> None:
        """Plain HTTP endpoint (repeatable; default tcp:8080; 'none' disables)."""
        self["http"].append(endpoint)

    def opt_https(self, endpoint: str) -> None:
        """HTTPS endpoint ssl:PORT[:interface=..] (repeatable; default ssl:8443; 'none' disables)."""
        self["https"].append(endpoint)

    def postOptions(self) -> None:
        """Validate every option; resolve the source."""
        self["stream"] = self._endpoints("stream", self["stream"], ["tcp:9000"])
        self._source()
        self._reseed()
        self._web()
        self._onion()
        self._limits()
        self._workers()

    def _workers(self) -> None:
        from entropy_appliance.app.workers import parse_worker_fds

        text = str(self["workers"]).strip().lower()
        if text == "auto":
            # The cores this process may run on (taskset, a cgroup cpuset), at most 64.
            usable = getattr(os, "sched_getaffinity", None)
            count = min(64, len(usable(0)) if usable is not None else (os.cpu_count() or 1))
        else:
            try:
                count = int(text)
            except ValueError:
                count = 0
        if not 1 <= count <= 64:
            raise usage.UsageError(
                f"--workers {self['workers']!r}: must be a number of processes, 1 <= N <= 64, or auto")
        self["workers"] = count
        if self["worker-fds"] is not None:
            try:
                self["worker_ports"] = parse_worker_fds(self["worker-fds"])
                self["worker-index"] = int(self["worker-index"] or 0)
            except ValueError as e:
                raise usage.UsageError(f"--worker-fds: {e} (an internal option)") from None
        else:
            self["worker_ports"] = None

    def _endpoints(self, name: str, given: list[str], default: list[str]) -> list[str]:
        values = given or default
        if "none" in values:
            if len(values) > 1:
                raise usage.UsageError(f"--{name} none cannot be combined with other endpoints")
            return []
        for v in values:
            _check_endpoint(name, v)
        return values

    def _source(self) -> None:
        try:
            spec = parse_source(self["source"])
        except ValueError as e:
            raise usage.UsageError(f"--source: {e}") from None
        self["source_detected"] = spec.kind == "auto"
        if spec.kind == "auto":
            spec = detect()
        self["source_spec"] = spec
        h = self["min-entropy"]
        if h is None:
            self["min-entropy"] = DEFAULT_MIN_ENTROPY[spec.kind]
        else:
            try:
                value = float(h)
            except ValueError:
                value = math.nan
            if not 0 < value <= 8:
                raise usage.UsageError(f"--min-entropy {h!r}: must be a number with 0 < H <= 8")
            self["min-entropy"] = value

    def _reseed(self) -> None:
        try:
            interval = float(self["reseed-interval"])
        except ValueError:
            interval = math.nan
        if not (0 < interval <= 86400):
            raise usage.UsageError(
                f"--reseed-interval {self['reseed-interval']!r}: must be seconds, 0 < S <= 86400")
        try:
            max_bytes = parse_size(self["reseed-bytes"])
        except ValueError as e:
            raise usage.UsageError(f"--reseed-bytes: {e}") from None
        if not MIN_RESEED_BYTES <= max_bytes <= 2 ** 40:
            raise usage.UsageError(
                f"--reseed-bytes {self['reseed-bytes']!r}: must be between 4K ({MIN_RESEED_BYTES}) and 1T")
        try:
            seed_wait = float(self["seed-wait"])
        except ValueError:
            seed_wait = math.nan
        if not 0 <= seed_wait <= 300:
            raise usage.UsageError(
                f"--seed-wait {self['seed-wait']!r}: must be seconds, 0 <= S <= 300")
        self["seed_wait"] = seed_wait
        try:
            bits = int(self["reseed-bits"])
        except ValueError:
            bits = -1
        if not 256 <= bits <= 65536:
            raise usage.UsageError(
                f"--reseed-bits {self['reseed-bits']!r}: must be an integer, 256 <= N <= 65536")
        alpha_text = str(self["health-alpha"]).replace(" ", "")
        try:
            if alpha_text.startswith("2**"):
                alpha = 2.0 ** float(alpha_text[3:])
            else:
                alpha = float(alpha_text)
        except ValueError:
            alpha = math.nan
        if not (2.0 ** -64 <= alpha <= 2.0 ** -10):
            raise usage.UsageError(
                f"--health-alpha {self['health-alpha']!r}: must be between 2**-64 and 2**-10")
        self["policy"] = ReseedPolicy(interval=interval, max_bytes=max_bytes, bits=bits)
        self["alpha"] = alpha

    def _web(self) -> None:
        """Validate the web endpoints and --max-bytes; load (or generate) the TLS material."""
        from entropy_appliance.net import tls

        self["http"] = self._endpoints("http", self["http"], ["tcp:8080"])
        https = self["https"] or ["ssl:8443"]
        if "none" in https and len(https) > 1:
            raise usage.UsageError("--https none cannot be combined with other endpoints")
        specs = []
        for description in [] if https == ["none"] else https:
            try:
                spec = tls.parse_https_endpoint(description)
            except ValueError as e:
                raise usage.UsageError(
                    f"--https {description!r}: {e}; use e.g. ssl:8443, "
                    "ssl:8443:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem, "
                    "systemd:domain=INET:name=https (TLS with --tls-key/--tls-cert), or none"
                ) from None
            if spec.wrapped is not None:
                _check_endpoint("https", spec.wrapped)
            specs.append(spec)
        self["https"] = https if specs else []
        try:
            self["https_listen"] = tls.resolve_https(specs, self["tls-key"], self["tls-cert"])
        except tls.TLSConfigError as e:
            raise usage.UsageError(f"HTTPS: {e}") from None
        try:
            self["max-bytes"] = parse_size(str(self["max-bytes"]))
        except ValueError as e:
            raise usage.UsageError(f"--max-bytes: {e}") from None
        if not 1 <= self["max-bytes"] <= 2 ** 40:
            raise usage.UsageError("--max-bytes: must be between 1 and 1T")

    def _seconds(self, name: str, upper: float) -> float:
        try:
            value = float(self[name])
        except (TypeError, ValueError):
            value = math.nan
        if not 0 <= value <= upper:
            raise usage.UsageError(f"--{name} {self[name]!r}: must be seconds, 0 <= S <= {upper:g}")
        return value

    def _limits(self) -> None:
        """Validate the shutdown deadline and the per-peer limits into ``peer_policy``."""
        from entropy_appliance.net.limits import PeerPolicy

        self["shutdown-timeout"] = self._seconds("shutdown-timeout", 3600)
        try:
            streams = int(self["peer-streams"])
        except ValueError:
            streams = -1
        if not 0 <= streams <= 1_000_000:
            raise usage.UsageError(
                f"--peer-streams {self['peer-streams']!r}: must be an integer, 0 (no limit) or more")
        try:
            rate = float(self["peer-rate"])
        except ValueError:
            rate = math.nan
        if not 0 <= rate <= 1e9:
            raise usage.UsageError(
                f"--peer-rate {self['peer-rate']!r}: must be requests per second, 0 (no limit) or more")
        try:
            bandwidth = parse_size(str(self["peer-bandwidth"]))
        except ValueError as e:
            raise usage.UsageError(f"--peer-bandwidth: {e}") from None
        self["peer_policy"] = PeerPolicy(
            streams=streams, rate=rate, bandwidth=bandwidth,
            idle_timeout=self._seconds("idle-timeout", 86400),
            header_timeout=self._seconds("header-timeout", 3600))

    def _onion(self) -> None:
        """Validate the onion options; the key is read (not yet created) here."""
        import shutil

        from entropy_appliance.onion import OnionKeyError, load_client_auth, load_key, parse_ports

        self.setdefault("onion", False)
        if not self["onion"]:
            return
        try:
            self["onion-ports"] = parse_ports(self["onion-ports"])
        except ValueError as e:
            raise usage.UsageError(f"--onion-ports: {e}") from None
        key = self["onion-key"]
        if os.path.lexists(key):
            try:
                load_key(key)
            except OnionKeyError as e:
                raise usage.UsageError(f"--onion-key: {e}") from None
        self["onion-client-auth"] = (
            [] if self["onion-client-auth"] is None else self._client_auth(load_client_auth))
        if self["tor-control"] is not None:
            from twisted.internet import reactor
            from twisted.internet.endpoints import clientFromString

            try:
                clientFromString(reactor, self["tor-control"])
            except Exception as e:  # the parsers raise a variety of types
                raise usage.UsageError(
                    f"--tor-control {self['tor-control']!r} is not a client endpoint ({e}); "
                    "use e.g. unix:/run/tor/control or tcp:127.0.0.1:9051") from None
            if self["tor-password-file"] is not None:
                try:
                    with open(self["tor-password-file"], encoding="utf-8") as f:
                        self["tor-password"] = f.readline().strip()
                except OSError as e:
                    raise usage.UsageError(f"--tor-password-file: {e}") from None
            return
        binary = self["tor-binary"] or shutil.which("tor")
        if binary is None or not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise usage.UsageError(
                f"--onion needs tor: {self['tor-binary'] or 'no tor on PATH'} is not an executable. "
                "Install it (apt install tor), pass --tor-binary PATH, or use a running tor "
                "with --tor-control unix:/run/tor/control")
        self["tor-binary"] = binary
        for name in ("tor-data-dir", "tor-config"):
            value = self[name]
            if value is not None and any(c.isspace() for c in value):
                raise usage.UsageError(f"--{name} {value!r}: tor cannot take a path with spaces here")
        if self["tor-config"] is not None and not os.path.isfile(self["tor-config"]):
            raise usage.UsageError(f"--tor-config {self['tor-config']!r} is not a file")

    def _client_auth(self, load: Any) -> list[str]:
        try:
            return list(load(self["onion-client-auth"]))
        except ValueError as e:
            raise usage.UsageError(f"--onion-client-auth: {e}") from None


def _onion_service(options: Options, reactor: Any, targets: dict[str, Any]) -> OnionService:
    """The onion service from validated options (creating the key on first run)."""
    from twisted.internet.endpoints import clientFromString

    from entropy_appliance.onion import LaunchedTor, OnionService, SharedTor, TorConnector, load_or_create_key

    key, created = load_or_create_key(options["onion-key"])
    if created:
        from twisted.logger import Logger

        Logger().warn("created a new onion key {path} for {address}; back it up: it is the address",
                      path=options["onion-key"], address=key.address)
    connector: TorConnector
    if options["tor-control"] is not None:
        password = options.get("tor-password")
        connector = SharedTor(clientFromString(reactor, options["tor-control"]), options["tor-control"],
                              password=(lambda: password) if password else None)
    else:
        connector = LaunchedTor(reactor, options["tor-binary"], data_dir=options["tor-data-dir"],
                                extra_config=options["tor-config"])
    return OnionService(reactor, connector, key, options["onion-ports"], targets,
                        client_auth=options["onion-client-auth"])


def _web_service(options: Options, reactor: Any, pool: Any, listen: Listen, guard: Any,
                 status_extras: dict[str, Any] | None = None) -> tuple[Any, Any, list[Any]]:
    """
    Serve ONE Site on every --http and --https endpoint, behind the per-peer
    limits; return (web app, site, the reloadable TLS context factories).
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import Logger

    from entropy_appliance.net import tls
    from entropy_appliance.web import EntropyWeb

    log = Logger()
    web = EntropyWeb(pool, reactor, listeners=options["http"] + options["https"],
                     max_bytes=options["max-bytes"], status_extras=status_extras,
                     seed_wait=options["seed_wait"])
    policy = options["peer_policy"]
    site = web.site(h2=not options["no-h2"], timeout=policy.idle_timeout or None)
    site.resource = guard.wrap_resource(site.resource, observe=web.observe)
    limited = guard.wrap_http(site)
    for endpoint in options["http"]:
        listen("http", serverFromString(reactor, endpoint), limited, None)
    contexts: dict[tuple[str, str], tls.ReloadableContextFactory] = {}
    for spec, material, generated in options["https_listen"]:
        if generated:
            log.warn("generated a self-signed TLS certificate {cert} (key {key}, mode 0600)",
                     cert=material.cert_path, key=material.key_path)
        log.info("HTTPS on {where}: certificate {cert} SHA-256 fingerprint {fp}",
                 where=spec.describe(), cert=material.cert_path, fp=tls.fingerprint(material.certificate))
        # One reloadable factory per key/certificate pair: SIGHUP reloads it.
        factory = contexts.get((material.key_path, material.cert_path))
        if factory is None:
            factory = tls.ReloadableContextFactory(material, h2=not options["no-h2"])
            contexts[(material.key_path, material.cert_path)] = factory
        listen("https", tls.ssl_endpoint(reactor, spec, factory), limited, factory)
    return web, site, list(contexts.values())


def _listener(mode: str, reactor: Any, top: MultiService, inherited: list[Any] | None,
              held: list[Any]) -> Listen:
    """
    How this process serves a factory on an endpoint: listen itself
    (``single``), hold the socket for the workers (``parent``), or accept on
    the socket inherited from the parent (``worker``).
    """
    from twisted.application.internet import StreamServerEndpointService
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from entropy_appliance.app.workers import AdoptedPort, HeldPort

    def listen(kind: str, endpoint: Any, factory: Any, tls_creator: Any) -> None:
        if mode == "single":
            StreamServerEndpointService(endpoint, factory).setServiceParent(top)
        elif mode == "parent":
            port = HeldPort(endpoint, kind)
            port.setServiceParent(top)
            held.append(port)
        else:
            assert inherited is not None
            mine = next((p for p in inherited if p.kind == kind), None)
            if mine is None:
                raise usage.UsageError(f"the parent handed this worker no {kind} socket")
            inherited.remove(mine)
            if tls_creator is not None:
                # The parent's ssl: port is a plain TCP socket to us.
                factory = TLSMemoryBIOFactory(tls_creator, False, factory)
            AdoptedPort(reactor, mine, factory).setServiceParent(top)

    return listen


def makeService(options: Options) -> IService:
    """
    Build the service tree from validated options.

    With ``--workers N`` (N > 1) this process becomes the parent: it reads
    the source, holds every listening socket, and spawns N workers (see
    ``workers.py``); each worker runs this same function with
    ``--worker-fds``.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from entropy_appliance.app.pipeline import OrderedService, build_core
    from entropy_appliance.net.stream import StreamFactory
    from entropy_appliance.source.sources import DeviceSource

    inherited = options["worker_ports"]
    mode = "worker" if inherited is not None else "parent" if options["workers"] > 1 else "single"
    spec: SourceSpec = options["source_spec"]
    source: Any = open_source(spec)
    if mode == "worker":
        # The parent reads the device and relays health-tested samples on stdin.
        source = DeviceSource("/proc/self/fd/0", spec.kind)
        source.name = f"{spec.name} (via parent)"
    top = OrderedService()
    core = build_core(
        reactor,
        source,
        min_entropy=options["min-entropy"],
        policy=options["policy"],
        alpha=options["alpha"],
        detected=options["source_detected"],
        serving=mode != "parent",
    )
    core.setServiceParent(top)
    pool = core.pool
    held: list[Any] = []
    listen = _listener(mode, reactor, top, list(inherited or []), held)

    from entropy_appliance.app.signals import GracefulStop, ReloadService
    from entropy_appliance.net.limits import PeerGuard

    guard = PeerGuard(options["peer_policy"], reactor)
    # Right after the pipeline, so it stops after every listener and before
    # the pipeline: it closes the raw streams and lets HTTP responses finish.
    graceful = GracefulStop(guard.inflight, reactor, options["shutdown-timeout"],
                            close_http=guard.close_http)
    graceful.setServiceParent(top)

    stream_factory = StreamFactory(pool)
    graceful.close_streams = stream_factory.close_all
    for endpoint in options["stream"]:
        listen("stream", serverFromString(reactor, endpoint), guard.wrap_stream(stream_factory), None)

    # The onion service is built before the web app (whose /v1/status shows
    # it) and is given the Site afterwards; it reads its targets on start.
    # With workers, the first worker alone publishes it.
    extras: dict[str, Any] = {}
    onion = None
    if options["onion"] and (mode == "single" or (mode == "worker" and options["worker-index"] == 0)):
        onion_targets: dict[str, Any] = {"stream": stream_factory}
        onion = _onion_service(options, reactor, onion_targets)
        extras["onion"] = onion.status
    if mode == "worker":
        from entropy_appliance.app.workers import ParentWatch

        index, pid = options["worker-index"], os.getpid()
        extras["worker"] = lambda: {"index": index, "pid": pid, "of": options["workers"]}
        ParentWatch(reactor, reactor.stop).setServiceParent(top)
    web, site, tls_contexts = _web_service(options, reactor, pool, listen, guard,
                                           status_extras=extras or None)
    if onion is not None:
        onion_targets["http"] = site
        # Added last, so stopped first: DEL_ONION while the listeners still serve.
        onion.setServiceParent(top)

    supervisor = None
    if mode == "parent":
        from entropy_appliance.app.workers import WorkerSupervisor
        from entropy_appliance.core.health import failing_run

        mark = bytes(failing_run(options["min-entropy"], options["alpha"]))
        supervisor = WorkerSupervisor(reactor, options["workers"], options.argv, held, pool.take_seed,
                                      failure_mark=mark)
        pool.on_failure(lambda _: supervisor.source_failed())
        supervisor.setServiceParent(top)

    ReloadService(reactor, tls_contexts,
                  forward=(lambda: supervisor.signal_all("HUP")) if supervisor else None
                  ).setServiceParent(top)
    if mode != "worker":
        # Keep this the last child: it starts after every listener listens
        # (READY=1) and stops first (STOPPING=1).  Without $NOTIFY_SOCKET it is silent.
        from entropy_appliance.app.systemd import NotifyService
        from entropy_appliance.net.waiting import when_ready

        NotifyService(pool.status, reactor, ready=lambda: when_ready(pool)).setServiceParent(top)

    return top
