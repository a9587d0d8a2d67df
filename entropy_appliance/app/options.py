"""
``twistd entropy`` options: parsed and validated into a frozen :class:`Config`.

:data:`SETTINGS` is the one table of options: name, default (as a person
types it) and help.  The option parser, ``--help``, the README's table of
``ENTROPY_*`` variables and the systemd unit all follow it (a test checks the
last two).  Where a library module owns a default (the reseed policy, the
per-peer limits, the TLS paths...), the table takes it from there.

:class:`Options` reads the command line and the environment
(:mod:`~entropy_appliance.app.environment`), then ``postOptions`` only
validates: every bad value is a ``UsageError`` with a sentence a person can
act on, and the result is :attr:`Options.config`.  Validation reads files
(a TLS pair, an onion key) but writes nothing, and it resolves no reactor:
``--source auto`` is resolved, and keys and certificates are created, by
:func:`entropy_appliance.app.build.makeService`.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from twisted.python import usage

from entropy_appliance.app.environment import EnvironmentOptions
from entropy_appliance.app.signals import DEFAULT_SHUTDOWN_TIMEOUT
from entropy_appliance.core.health import DEFAULT_ALPHA
from entropy_appliance.core.peers import PeerPolicy
from entropy_appliance.core.pool import MIN_RESEED_BYTES, ReseedPolicy
from entropy_appliance.core.units import parse_size
from entropy_appliance.net import tls
from entropy_appliance.net.proxy import TrustedProxies, split_proxy
from entropy_appliance.source.sources import DEFAULT_MIN_ENTROPY, SourceSpec, SourceUnavailable, parse_source
from entropy_appliance.web.app import DEFAULT_MAX_BYTES, DEFAULT_SEED_WAIT
from entropy_appliance.web.compat.keys import (
    APIS,
    ApiKeys,
    ApiKeysError,
    CompatConfig,
    load_api_keys,
    parse_apis,
)
from entropy_appliance.web.limits import HTTPLimits
from entropy_appliance.web.media import MediaLimits

if TYPE_CHECKING:
    from entropy_appliance.app.workers import InheritedPort
    from entropy_appliance.onion import OnionPort

__all__ = [
    "Setting", "SETTINGS", "DEFAULTS", "Role",
    "TLSConfig", "OnionConfig", "WorkerConfig", "Config", "Options", "parse_config",
]

Role = Literal["single", "parent", "worker"]

#: The most serving processes ``--workers`` accepts.
MAX_WORKERS = 64

#: The most images and sounds ``--media-jobs`` lets be made at once: the
#: reactor's thread pool holds 10 threads.
MAX_MEDIA_JOBS = 10


def _size_text(n: int) -> str:
    """``67108864`` -> ``64M``: the largest binary suffix that divides ``n``."""
    for suffix, unit in (("T", 1024 ** 4), ("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _alpha_text(alpha: float) -> str:
    """``2.0**-30`` -> ``2**-30``, as ``--health-alpha`` is usually written."""
    exponent = math.log2(alpha)
    return f"2**{exponent:.0f}" if exponent == round(exponent) else repr(alpha)


def _by_kind(defaults: Mapping[str, float]) -> str:
    """``kernel 8, quantis 7, hwrng/chaoskey/device 1``: kinds grouped by their value."""
    groups: dict[float, list[str]] = {}
    for kind, value in defaults.items():
        groups.setdefault(value, []).append(kind)
    return ", ".join(f"{'/'.join(kinds)} {value:g}" for value, kinds in groups.items())


@dataclass(frozen=True)
class Setting:
    """
    One option.  ``kind``: ``value`` takes an argument, ``list`` is a
    repeatable endpoint, ``flag`` takes none.  ``default`` is the text a
    person would type (None: no default, or one the help explains).
    """

    name: str
    default: str | None
    help: str
    kind: Literal["value", "list", "flag"] = "value"

    @property
    def internal(self) -> bool:
        """Passed by the parent process to its workers; not for people."""
        return self.help.startswith("(internal)")


_POLICY = ReseedPolicy()
_PEERS = PeerPolicy()
_HTTP = HTTPLimits()
_MEDIA = MediaLimits()
_COMPAT = CompatConfig()

#: Every option of the appliance, with its default: the one place a default is written.
SETTINGS: tuple[Setting, ...] = (
    Setting("source", "auto",
            "Entropy source: kernel, device:PATH, or auto (every /dev/qrandom*, /dev/hwrng and "
            "/dev/chaoskey* found, and the kernel). Give it once per source to combine several; "
            "a source may claim its own min-entropy: device:/dev/hwrng,min-entropy=0.5.", "list"),
    Setting("min-sources", "1",
            "Fail closed while fewer than N sources are healthy; every seed draws on at least N."),
    Setting("reseed-interval", str(_POLICY.interval), "Reseed the DRBG at least every SECONDS."),
    Setting("reseed-bytes", _size_text(_POLICY.max_bytes),
            "Reseed the DRBG after this many output bytes (K/M/G suffixes)."),
    Setting("reseed-bits", str(_POLICY.bits), "Bits of entropy input per reseed (at least 256)."),
    Setting("seed-wait", f"{DEFAULT_SEED_WAIT:g}",
            "While the seed pool is starved (healthy source, reseed due, seed short), HTTP requests "
            "wait up to SECONDS for it, then get 503; /health turns 503 after starving this long. "
            "0: no wait."),
    Setting("min-entropy", None,
            "Claimed min-entropy per 8-bit sample, 0 < H <= 8, of every source that claims none "
            f"of its own (default by source kind: {_by_kind(DEFAULT_MIN_ENTROPY)})."),
    Setting("health-alpha", _alpha_text(DEFAULT_ALPHA),
            "False-positive rate of each health test, as a number or 2**-N."),
    Setting("stream", "tcp:9000", "Raw TCP byte stream endpoint", "list"),
    Setting("http", "tcp:8080", "Plain HTTP endpoint", "list"),
    Setting("https", "ssl:8443", "HTTPS endpoint ssl:PORT[:interface=..]", "list"),
    Setting("trusted-proxy", "none",
            "IP network (CIDR) of the load balancers whose PROXY headers the haproxy:... listeners "
            "believe; a connection from any other address to such a listener is closed unread",
            "list"),
    Setting("egd", "none",
            "EGD (Entropy Gathering Daemon) endpoint for QEMU's rng-egd and egd-linux, e.g. "
            "unix:/run/entropy-appliance/egd.sock; it has no authentication, so listen only where "
            "every client is trusted", "list"),
    Setting("tls-key", tls.DEFAULT_KEY,
            "TLS private key (PEM) for ssl: endpoints that name none; the default pair is "
            "generated (self-signed) on first run."),
    Setting("tls-cert", tls.DEFAULT_CERT, "TLS certificate chain (PEM) to go with --tls-key."),
    Setting("no-h2", None, "Offer only http/1.1 by ALPN on the HTTPS endpoints (no HTTP/2).", "flag"),
    Setting("prefer-h2", None,
            "Choose h2 over http/1.1 by ALPN when a client offers both (curl, browsers). By "
            "default http/1.1 comes first: pollinate's one request per boot is answered several "
            "times faster over it; clients that offer only h2 get h2 either way.", "flag"),
    Setting("max-bytes", _size_text(DEFAULT_MAX_BYTES),
            "Largest /v1/random?bytes=N answered (K/M/G suffixes)."),
    Setting("max-body", _size_text(_HTTP.max_body),
            "Largest HTTP request body read, in bytes (K/M suffixes); a larger one gets 413 before it "
            "is read. Bodies are kept in memory, never on disk."),
    Setting("onion", None, "Publish the site and the raw stream as a Tor v3 onion service.", "flag"),
    Setting("onion-ports", "80:http,9000:stream",
            "With --onion: VIRTUAL:TARGET pairs, comma-separated; targets are http and stream."),
    Setting("tor-control", None,
            "With --onion: use the running tor at this control endpoint (unix:/run/tor/control, "
            "tcp:127.0.0.1:9051) instead of launching one."),
    Setting("tor-password-file", None,
            "With --tor-control: file holding the control port password (when cookie auth is off)."),
    Setting("onion-key", "certs/onion_ed25519.key",
            "With --onion: the service's ED25519-V3 key (tor's format; created mode 0600 if missing). "
            "It IS the address: back it up."),
    Setting("onion-client-auth", None,
            "With --onion: directory of v3 client-authorization *.auth public keys; only those "
            "clients can reach the service."),
    Setting("tor-binary", None,
            "With --onion and no --tor-control: the tor to launch (default: tor on PATH)."),
    Setting("tor-data-dir", None,
            "With a launched tor: its data directory (default: a temporary one, removed on exit)."),
    Setting("tor-config", None,
            "With a launched tor: a torrc file included after our own lines (bridges, proxies, ...)."),
    Setting("compat", ",".join(APIS),
            "Drop-in APIs of public randomness services to serve, comma-separated: anu (ANU QRNG, "
            "/API/jsonI.php and /anu/), randomorg (RANDOM.ORG JSON-RPC release 4, /json-rpc/4/), "
            "all, or none."),
    Setting("api-keys", None,
            "File of API keys, one per line (# comments): when given, the ANU x-api-key header and "
            "the RANDOM.ORG apiKey must be one of them. Without it any key is accepted."),
    Setting("signing-key", _COMPAT.signing_key,
            "RSA key that signs RANDOM.ORG's generateSigned* answers (PEM; created mode 0600 if "
            "missing, never replaced). Its public half is served at /json-rpc/4/public-key.pem."),
    Setting("shutdown-timeout", f"{DEFAULT_SHUTDOWN_TIMEOUT:g}",
            "On SIGTERM/SIGINT, seconds that HTTP responses in flight get to finish."),
    Setting("peer-streams", str(_PEERS.streams),
            "Most concurrent raw-stream connections from one client IP (IPv6: one /64); "
            "0: no limit."),
    Setting("peer-connections", str(_HTTP.connections),
            "Most concurrent HTTP(S) connections from one client IP (IPv6: one /64); 0: no limit."),
    Setting("peer-rate", f"{_PEERS.rate:g}",
            "HTTP requests per second per client IP, bursts of twice as many; past it, 429. "
            "0: no limit."),
    Setting("peer-media-rate", _size_text(_MEDIA.peer_rate),
            "Image and sound work per second per client IP, counted as the memory each file needs "
            "at its peak (a 4096x4096 RGB image: 113M; K/M/G suffixes), bursts of two such images; "
            f"past it, or with {_MEDIA.peer_in_flight} files in flight, 429. 0: no cost limit."),
    Setting("media-jobs", str(_MEDIA.jobs),
            f"Images and sounds made at once, each in a worker thread (1-{MAX_MEDIA_JOBS}); more "
            f"wait their turn up to {_MEDIA.queue_wait:g} s ({_MEDIA.queue} at most), then get 503. "
            "The default keeps 10 parallel requests for the largest image under 300 MB of RSS."),
    Setting("peer-bandwidth", _size_text(_PEERS.bandwidth),
            "Bytes per second per client IP over all surfaces (K/M/G suffixes); 0: no limit."),
    Setting("idle-timeout", f"{_PEERS.idle_timeout:g}",
            "Close a connection after this many seconds with nothing read or written "
            "(a raw-stream client that stops reading); 0: never."),
    Setting("header-timeout", f"{_PEERS.header_timeout:g}",
            "Close an HTTP connection whose request head takes longer than this many seconds "
            "(slowloris); 0: never."),
    Setting("body-timeout", f"{_HTTP.body_timeout:g}",
            "Close an HTTP connection whose request body takes longer than this many seconds after "
            "its head; 0: never."),
    Setting("workers", "1",
            f"Serving processes sharing every listener: N (1-{MAX_WORKERS}) or auto (one per core). "
            "With N > 1 this process reads the source and relays health-tested seed material to "
            "each worker."),
    Setting("worker-fds", None, "(internal) listening sockets inherited from the parent."),
    Setting("worker-index", None, "(internal) this worker's number."),
)

#: Option name -> default text, for every option in :data:`SETTINGS`.
DEFAULTS: Mapping[str, str | None] = MappingProxyType({s.name: s.default for s in SETTINGS})


@dataclass(frozen=True)
class TLSConfig:
    """
    The key and certificate of the HTTPS endpoints that name none.
    ``self_signed``: both paths are the defaults, so a self-signed pair is
    created there at startup when neither file exists yet.
    """

    key: str
    cert: str
    self_signed: bool
    h2: bool
    #: Whether h2 comes before http/1.1 in the server's ALPN choice.
    prefer_h2: bool = False


@dataclass(frozen=True)
class OnionConfig:
    """The onion service: its ports, key, clients, and which tor to use."""

    ports: tuple[OnionPort, ...]
    key: str
    client_auth: tuple[str, ...]
    tor_control: str | None
    tor_password: str | None = field(repr=False)
    tor_binary: str | None
    tor_data_dir: str | None
    tor_config: str | None


@dataclass(frozen=True)
class WorkerConfig:
    """Set in a worker process only: the listening sockets it inherits, and its number."""

    ports: tuple[InheritedPort, ...]
    index: int


@dataclass(frozen=True)
class Config:
    """
    The validated configuration of one process.  ``sources`` may still be
    ``auto`` alone, and ``min_entropy`` None (each source kind's default):
    both are resolved when the service is built.  ``argv`` is the command
    line, which a parent hands on to its workers.
    """

    sources: tuple[SourceSpec, ...]
    min_entropy: float | None
    alpha: float
    policy: ReseedPolicy
    seed_wait: float
    stream: tuple[str, ...]
    http: tuple[str, ...]
    https: tuple[str, ...]
    tls: TLSConfig
    max_bytes: int
    peers: PeerPolicy
    shutdown_timeout: float
    workers: int
    worker: WorkerConfig | None
    onion: OnionConfig | None
    argv: tuple[str, ...] = ()
    http_limits: HTTPLimits = HTTPLimits()
    egd: tuple[str, ...] = ()
    media: MediaLimits = MediaLimits()
    compat: CompatConfig = CompatConfig()
    #: ``--trusted-proxy``: the networks whose PROXY headers ``haproxy:`` listeners believe.
    trusted_proxies: tuple[str, ...] = ()
    min_sources: int = 1

    @property
    def source(self) -> SourceSpec:
        """The first source (the only one, or ``auto``, unless several are given)."""
        return self.sources[0]

    @property
    def role(self) -> Role:
        """``worker`` (started by a parent), ``parent`` (``--workers`` > 1) or ``single``."""
        if self.worker is not None:
            return "worker"
        return "parent" if self.workers > 1 else "single"


def _endpoint_option(setting: Setting) -> Callable[[Options, str], None]:
    """The ``opt_`` handler of a repeatable endpoint option; its docstring is its help."""

    def handler(self: Options, endpoint: str) -> None:
        self[setting.name].append(endpoint)

    handler.__doc__ = f"{setting.help} (repeatable; default {setting.default}; 'none' disables)."
    return handler


def _setting(name: str) -> Setting:
    return next(s for s in SETTINGS if s.name == name)


def _check_endpoint(option: str, description: str) -> None:
    """Parse a server endpoint string now, so a typo fails at startup."""
    from twisted.internet.endpoints import serverFromString

    try:
        # Only the parsing is wanted: no reactor is needed until it listens.
        serverFromString(None, description)
    except Exception as e:  # the parsers raise a variety of types
        raise usage.UsageError(
            f"--{option} {description!r} is not a valid server endpoint ({e}); "
            "use e.g. tcp:9000, tcp:9000:interface=127.0.0.1, unix:/run/entropy.sock, "
            "systemd:domain=INET:index=0, or none"
        ) from None


def _number(text: Any, convert: Callable[[str], float] = float) -> float:
    """``text`` as a number, or NaN (which fails every range check)."""
    try:
        return convert(str(text))
    except ValueError:
        return math.nan


class Options(EnvironmentOptions):
    """
    Command-line options for ``twistd entropy``; each can also be given as
    an ``ENTROPY_<OPTION>`` environment variable.  After parsing,
    :attr:`config` holds the validated :class:`Config`.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve health-tested CTR_DRBG randomness over a raw TCP stream, HTTP(S) "
        "and, optionally, a Tor onion service."
    )

    optParameters: list[list[Any]] = [
        [s.name, None, s.default, s.help] for s in SETTINGS if s.kind == "value"]
    optFlags: list[list[Any]] = [[s.name, None, s.help] for s in SETTINGS if s.kind == "flag"]

    def opt_source(self, value: str) -> None:
        self["source"].append(value)

    opt_source.__doc__ = f"{_setting('source').help} (repeatable; default auto)."
    opt_stream = _endpoint_option(_setting("stream"))
    opt_http = _endpoint_option(_setting("http"))
    opt_https = _endpoint_option(_setting("https"))
    opt_trusted_proxy = _endpoint_option(_setting("trusted-proxy"))
    opt_egd = _endpoint_option(_setting("egd"))

    config: Config

    def __init__(self) -> None:
        super().__init__()
        self.argv: list[str] = []
        for s in SETTINGS:
            if s.kind == "list":
                self[s.name] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, remembering the command line for worker processes."""
        self.argv = list(options) if options is not None else []
        super().parseOptions(options)

    def postOptions(self) -> None:
        """Validate every option into :attr:`config`."""
        worker = self._worker()
        # A worker adopts its parent's sockets; its endpoints were checked
        # there (and a systemd: socket can only be looked up in the parent).
        check = worker is None
        stream = self._endpoints("stream", check)
        sources, min_entropy, min_sources = self._sources(check)
        policy, seed_wait, alpha = self._reseed()
        http = self._endpoints("http", check)
        https = self._https(check)
        egd = self._endpoints("egd", check)
        trusted_proxies = self._trusted_proxies([*stream, *http, *https, *egd])
        tls_config = self._tls(https)
        max_bytes = self._max_bytes()
        onion = self._onion()
        shutdown_timeout, peers = self._limits()
        http_limits = self._http_limits()
        media = self._media()
        compat = self._compat()
        self.config = Config(
            sources=sources, min_entropy=min_entropy, min_sources=min_sources, alpha=alpha,
            policy=policy, seed_wait=seed_wait,
            stream=stream, http=http, https=https, tls=tls_config, max_bytes=max_bytes,
            peers=peers, shutdown_timeout=shutdown_timeout, workers=self._workers(),
            worker=worker, onion=onion, argv=tuple(self.argv), http_limits=http_limits,
            media=media, compat=compat, trusted_proxies=trusted_proxies, egd=egd,
        )

    # -- one check per concern -------------------------------------------------

    def _endpoints(self, name: str, check: bool = True) -> tuple[str, ...]:
        values = self[name] or [DEFAULTS[name]]
        if "none" in values:
            if len(values) > 1:
                raise usage.UsageError(f"--{name} none cannot be combined with other endpoints")
            return ()
        if check:
            for v in values:
                _check_endpoint(name, split_proxy(v)[0])
        return tuple(values)

    def _ranged(self, name: str, lo: float, hi: float, must: str, *, above: bool = False,
                convert: Callable[[str], float] = float, value: float | None = None) -> float:
        """
        The number ``--name`` gives (or ``value``, read from it), with
        ``lo <= value <= hi`` (``above``: ``lo < value``); otherwise a
        UsageError that quotes the option and ends with ``must``.
        """
        if value is None:
            value = _number(self[name], convert)
        if not ((lo < value) if above else (lo <= value)) or not value <= hi:
            raise usage.UsageError(f"--{name} {self[name]!r}: {must}")
        return value

    def _size(self, name: str) -> int:
        """A byte count with K/M/G suffixes."""
        try:
            return parse_size(str(self[name]))
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None

    def _sources(self, check: bool) -> tuple[tuple[SourceSpec, ...], float | None, int]:
        """
        Every ``--source``, ``--min-entropy`` and ``--min-sources``.  A
        device that cannot be opened now is kept (it is read, and retried,
        as a failed source) unless the others cannot meet ``--min-sources``.
        """
        texts = self["source"] or [DEFAULTS["source"]]
        specs: list[SourceSpec] = []
        missing: list[str] = []
        for text in texts:
            try:
                spec = parse_source(text, check=check)
            except SourceUnavailable as e:
                spec = e.spec
                missing.append(str(e))
            except ValueError as e:
                raise usage.UsageError(f"--source: {e}") from None
            specs.append(spec)
        if len(specs) > 1 and any(s.kind == "auto" for s in specs):
            raise usage.UsageError("--source auto stands alone: it already takes every device found "
                                   "and the kernel; to choose, list the sources instead")
        seen: dict[str, str] = {}
        for spec in specs:
            same = os.path.realpath(spec.path) if spec.path is not None else spec.kind
            if same in seen:
                raise usage.UsageError(f"--source {spec.name} is given twice (as {seen[same]!r}): "
                                       "each source may be read once")
            seen[same] = spec.text()
        count = self._ranged("min-sources", 1, 64, "must be an integer, 1 <= N <= 64", convert=int)
        if specs[0].kind != "auto" and count > len(specs):
            raise usage.UsageError(f"--min-sources {int(count)} is more than the {len(specs)} "
                                   f"source{'s' if len(specs) > 1 else ''} given: it could never be met")
        if missing and len(specs) == 1:
            raise usage.UsageError(f"--source: {missing[0]}")
        if missing and len(specs) - len(missing) < count:
            raise usage.UsageError(f"--source: {'; '.join(missing)}; the other sources cannot meet "
                                   f"--min-sources {int(count)} (a device that is missing at startup "
                                   "is retried only while the others can serve)")
        min_entropy = None
        if self["min-entropy"] is not None:
            min_entropy = self._ranged("min-entropy", 0, 8, "must be a number with 0 < H <= 8", above=True)
        return tuple(specs), min_entropy, int(count)

    def _reseed(self) -> tuple[ReseedPolicy, float, float]:
        interval = self._ranged("reseed-interval", 0, 86400, "must be seconds, 0 < S <= 86400", above=True)
        max_bytes = self._ranged("reseed-bytes", MIN_RESEED_BYTES, 2 ** 40,
                                 f"must be between 4K ({MIN_RESEED_BYTES}) and 1T",
                                 value=self._size("reseed-bytes"))
        seed_wait = self._ranged("seed-wait", 0, 300, "must be seconds, 0 <= S <= 300")
        bits = self._ranged("reseed-bits", 256, 65536, "must be an integer, 256 <= N <= 65536", convert=int)
        alpha_text = str(self["health-alpha"]).replace(" ", "")
        exponent = alpha_text.removeprefix("2**")
        alpha = 2.0 ** _number(exponent) if exponent != alpha_text else _number(alpha_text)
        alpha = self._ranged("health-alpha", 2.0 ** -64, 2.0 ** -10, "must be between 2**-64 and 2**-10",
                             value=alpha)
        policy = ReseedPolicy(interval=interval, max_bytes=int(max_bytes), bits=int(bits))
        return policy, seed_wait, alpha

    def _trusted_proxies(self, endpoints: list[str]) -> tuple[str, ...]:
        """The ``--trusted-proxy`` networks; at least one when a listener is ``haproxy:``."""
        values = self["trusted-proxy"] or [DEFAULTS["trusted-proxy"]]
        if "none" in values and len(values) > 1:
            raise usage.UsageError("--trusted-proxy none cannot be combined with networks")
        networks: list[str] = []
        for v in values if values != ["none"] else []:
            try:
                networks.append(TrustedProxies.parse(v))
            except ValueError as e:
                raise usage.UsageError(f"--trusted-proxy: {e}") from None
        proxied = [e for e in endpoints if split_proxy(e)[1]]
        if proxied and not networks:
            raise usage.UsageError(
                f"{proxied[0]!r} reads a PROXY header, which must be believed only from the load "
                "balancer: give its address with --trusted-proxy CIDR (e.g. --trusted-proxy "
                "10.0.0.5/32, or ENTROPY_TRUSTED_PROXY)")
        return tuple(networks)

    def _https(self, check: bool) -> tuple[str, ...]:
        https = self["https"] or [DEFAULTS["https"]]
        if "none" in https:
            if len(https) > 1:
                raise usage.UsageError("--https none cannot be combined with other endpoints")
            return ()
        for description in https:
            try:
                spec = tls.parse_https_endpoint(split_proxy(description)[0])
            except ValueError as e:
                raise usage.UsageError(
                    f"--https {description!r}: {e}; use e.g. ssl:8443, "
                    "ssl:8443:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem, "
                    "systemd:domain=INET:name=https (TLS with --tls-key/--tls-cert), or none"
                ) from None
            if spec.wrapped is not None and check:
                _check_endpoint("https", spec.wrapped)
        return tuple(https)

    def _tls(self, https: tuple[str, ...]) -> TLSConfig:
        """Check every key and certificate the HTTPS endpoints will use (reading, not writing)."""
        key, cert = self["tls-key"], self["tls-cert"]
        self_signed = key == DEFAULTS["tls-key"] and cert == DEFAULTS["tls-cert"]
        if self["no-h2"] and self["prefer-h2"]:
            raise usage.UsageError("--prefer-h2 and --no-h2 contradict each other: choose one")
        config = TLSConfig(key=key, cert=cert, self_signed=self_signed, h2=not self["no-h2"],
                           prefer_h2=bool(self["prefer-h2"]))
        try:
            for pair in tls_pairs(config, https):
                if pair is not None:
                    tls.load_material(*pair)
        except tls.TLSConfigError as e:
            raise usage.UsageError(f"HTTPS: {e}") from None
        return config

    def _max_bytes(self) -> int:
        value = self._size("max-bytes")
        if not 1 <= value <= 2 ** 40:
            raise usage.UsageError("--max-bytes: must be between 1 and 1T")
        return value

    def _seconds(self, name: str, upper: float) -> float:
        return self._ranged(name, 0, upper, f"must be seconds, 0 <= S <= {upper:g}")

    def _limits(self) -> tuple[float, PeerPolicy]:
        """The shutdown deadline and the per-peer limits."""
        shutdown_timeout = self._seconds("shutdown-timeout", 3600)
        streams = self._ranged("peer-streams", 0, 1_000_000, "must be an integer, 0 (no limit) or more",
                               convert=int)
        rate = self._ranged("peer-rate", 0, 1e9, "must be requests per second, 0 (no limit) or more")
        peers = PeerPolicy(
            streams=int(streams), rate=rate, bandwidth=self._size("peer-bandwidth"),
            idle_timeout=self._seconds("idle-timeout", 86400),
            header_timeout=self._seconds("header-timeout", 3600))
        return shutdown_timeout, peers

    def _http_limits(self) -> HTTPLimits:
        """``--max-body``, ``--body-timeout`` and ``--peer-connections``."""
        max_body = self._ranged("max-body", 1024, 16 * 1024 ** 2, "must be between 1K and 16M",
                                value=self._size("max-body"))
        connections = self._ranged("peer-connections", 0, 1_000_000,
                                   "must be an integer, 0 (no limit) or more", convert=int)
        return HTTPLimits(max_body=int(max_body), body_timeout=self._seconds("body-timeout", 3600),
                          connections=int(connections))

    def _media(self) -> MediaLimits:
        """``--media-jobs`` and ``--peer-media-rate``."""
        jobs = self._ranged("media-jobs", 1, MAX_MEDIA_JOBS,
                            f"must be an integer, 1 <= N <= {MAX_MEDIA_JOBS}", convert=int)
        rate = self._ranged("peer-media-rate", 0, 2 ** 40, "must be between 0 (no limit) and 1T",
                            value=self._size("peer-media-rate"))
        return MediaLimits(jobs=int(jobs), peer_rate=int(rate))

    def _compat(self) -> CompatConfig:
        """``--compat``, ``--api-keys`` and ``--signing-key`` (read if it exists, else made at startup)."""
        try:
            apis = parse_apis(str(self["compat"]))
        except ValueError as e:
            raise usage.UsageError(f"--compat: {e}") from None
        keys = ApiKeys()
        if self["api-keys"] is not None:
            try:
                keys = load_api_keys(self["api-keys"])
            except ApiKeysError as e:
                raise usage.UsageError(f"--api-keys: {e}") from None
        signing_key = self["signing-key"]
        if "randomorg" in apis and os.path.lexists(signing_key):
            from entropy_appliance.web.compat.signing import SigningKeyError, load_signing_key

            try:
                load_signing_key(signing_key)
            except SigningKeyError as e:
                raise usage.UsageError(f"--signing-key: {e}") from None
        return CompatConfig(apis=apis, keys=keys, signing_key=signing_key)

    def _workers(self) -> int:
        text = str(self["workers"]).strip().lower()
        count: float
        if text == "auto":
            # The cores this process may run on (taskset, a cgroup cpuset).
            usable = getattr(os, "sched_getaffinity", None)
            count = min(MAX_WORKERS, len(usable(0)) if usable is not None else (os.cpu_count() or 1))
        else:
            count = _number(text, int)
        return int(self._ranged("workers", 1, MAX_WORKERS,
                                f"must be a number of processes, 1 <= N <= {MAX_WORKERS}, or auto",
                                value=count))

    def _worker(self) -> WorkerConfig | None:
        if self["worker-fds"] is None:
            return None
        from entropy_appliance.app.workers import parse_worker_fds

        try:
            return WorkerConfig(tuple(parse_worker_fds(self["worker-fds"])), int(self["worker-index"] or 0))
        except ValueError as e:
            raise usage.UsageError(f"--worker-fds: {e} (an internal option)") from None

    def _onion(self) -> OnionConfig | None:
        """Check the onion options; the key is read here if it exists, created at startup if not."""
        if not self["onion"]:
            return None
        from entropy_appliance.onion import OnionKeyError, load_client_auth, load_key, parse_ports

        try:
            ports = tuple(parse_ports(self["onion-ports"]))
        except ValueError as e:
            raise usage.UsageError(f"--onion-ports: {e}") from None
        key = self["onion-key"]
        if os.path.lexists(key):
            try:
                load_key(key)
            except OnionKeyError as e:
                raise usage.UsageError(f"--onion-key: {e}") from None
        client_auth: tuple[str, ...] = ()
        if self["onion-client-auth"] is not None:
            try:
                client_auth = tuple(load_client_auth(self["onion-client-auth"]))
            except ValueError as e:
                raise usage.UsageError(f"--onion-client-auth: {e}") from None
        control, password, binary = self["tor-control"], None, None
        if control is not None:
            from twisted.internet.endpoints import clientFromString

            try:
                clientFromString(None, control)
            except Exception as e:  # the parsers raise a variety of types
                raise usage.UsageError(
                    f"--tor-control {control!r} is not a client endpoint ({e}); "
                    "use e.g. unix:/run/tor/control or tcp:127.0.0.1:9051") from None
            if self["tor-password-file"] is not None:
                try:
                    with open(self["tor-password-file"], encoding="utf-8") as f:
                        password = f.readline().strip()
                except OSError as e:
                    raise usage.UsageError(f"--tor-password-file: {e}") from None
        else:
            binary = self["tor-binary"] or shutil.which("tor")
            if binary is None or not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
                raise usage.UsageError(
                    f"--onion needs tor: {self['tor-binary'] or 'no tor on PATH'} is not an executable. "
                    "Install it (apt install tor), pass --tor-binary PATH, or use a running tor "
                    "with --tor-control unix:/run/tor/control")
            for name in ("tor-data-dir", "tor-config"):
                value = self[name]
                if value is not None and any(c.isspace() for c in value):
                    raise usage.UsageError(f"--{name} {value!r}: tor cannot take a path with spaces here")
            if self["tor-config"] is not None and not os.path.isfile(self["tor-config"]):
                raise usage.UsageError(f"--tor-config {self['tor-config']!r} is not a file")
        return OnionConfig(
            ports=ports, key=key, client_auth=client_auth, tor_control=control, tor_password=password,
            tor_binary=binary, tor_data_dir=self["tor-data-dir"], tor_config=self["tor-config"])


def tls_pairs(config: TLSConfig, https: Sequence[str]) -> list[tuple[str, str] | None]:
    """
    The (key, certificate) paths each HTTPS endpoint serves, in order; None
    for an endpoint sharing a default pair that does not exist yet (it is
    created at startup).
    """
    shared_missing = (config.self_signed and not os.path.exists(config.key)
                      and not os.path.exists(config.cert))
    pairs: list[tuple[str, str] | None] = []
    for description in https:
        spec = tls.parse_https_endpoint(split_proxy(description)[0])
        if spec.private_key is not None and spec.cert_key is not None:
            pairs.append((spec.private_key, spec.cert_key))
        else:
            pairs.append(None if shared_missing else (config.key, config.cert))
    return pairs


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse ``argv`` (and ``environ``, default none) into a :class:`Config`; raises UsageError."""
    options = Options()
    options.environ = {} if environ is None else environ
    options.parseOptions(list(argv))
    return options.config
