"""
The Tor onion service: the site and the raw stream at a persistent .onion.

:class:`OnionService` listens on ephemeral loopback ports for its targets
(the web site, the raw stream), then, in the background, reaches a tor
(a running one through its control port, :class:`SharedTor`, or one it
launches itself, :class:`LaunchedTor`) and asks it for an ephemeral v3
onion service with ``ADD_ONION``, using a key kept in a file so that the
address never changes.

Startup never waits for tor.  txtorcon's high-level onion calls wait for a
descriptor upload, which can take minutes or never happen; here the address
is reported as soon as tor accepts ``ADD_ONION``, and publication is learnt
from ``HS_DESC UPLOADED`` events.  If tor goes away the state says so, the
other listeners keep serving, and the service reconnects (or relaunches tor)
with exponential backoff on the injected clock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "ControlProtocol",
    "LaunchedTor",
    "OnionKey",
    "OnionKeyError",
    "OnionPort",
    "OnionService",
    "SharedTor",
    "TorConnector",
    "TARGETS",
    "load_client_auth",
    "load_key",
    "load_or_create_key",
    "parse_ports",
]

#: The names a virtual port can forward to.
TARGETS = ("http", "stream")

# --- the key ----------------------------------------------------------------

#: The header of tor's own ``hs_ed25519_secret_key`` file (32 bytes).  Using
#: tor's format lets an operator move a key between a tor ``HiddenServiceDir``
#: and the appliance in either direction.
_TOR_KEY_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
_BLOB_PREFIX = "ED25519-V3:"

# Ed25519 curve constants (RFC 8032, section 5.1).
_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


class OnionKeyError(Exception):
    """The onion key file is missing, unreadable or not an ED25519-V3 key."""


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_Point = tuple[int, int, int, int]
_BASE: _Point = (_BX, _BY, 1, _BX * _BY % _P)


def _add(a: _Point, b: _Point) -> _Point:
    # Unified addition in extended coordinates (Hisil, Wong, Carter, Dawson
    # 2008, a = -1); it also doubles.
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * _D * t1 * t2 % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _public_key(scalar: int) -> bytes:
    """``scalar * B``, encoded as an Ed25519 public key."""
    # Tor keeps only the expanded secret key (scalar || prefix), and the
    # ``cryptography`` package builds Ed25519 keys only from seeds, so the one
    # scalar multiplication needed to name a stored key is done here.  It is
    # not secret-timing sensitive in any way that matters: it runs once at
    # startup on a key that never leaves this process.
    q: _Point = (0, 1, 1, 0)
    p = _BASE
    while scalar:
        if scalar & 1:
            q = _add(q, p)
        p = _add(p, p)
        scalar >>= 1
    x, y, z, _ = q
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def onion_address(public_key: bytes) -> str:
    """The 56-character v3 onion address (without ``.onion``) of a key."""
    version = b"\x03"
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + version).digest()[:2]
    return base64.b32encode(public_key + checksum + version).decode("ascii").lower()


@dataclass(frozen=True)
class OnionKey:
    """An ED25519-V3 onion service key in tor's expanded form (64 bytes)."""

    expanded: bytes

    def __post_init__(self) -> None:
        e = self.expanded
        if len(e) != 64:
            raise OnionKeyError(f"an expanded ED25519 key has 64 bytes, not {len(e)}")
        # Tor's expanded keys are clamped (RFC 8032, 5.1.5); anything else is
        # a damaged file, not a key.
        if e[0] & 7 or e[31] & 0x80 or not e[31] & 0x40:
            raise OnionKeyError("the key bytes are not a clamped ED25519 scalar")
        scalar = int.from_bytes(e[:32], "little")
        if scalar % _L == 0:
            raise OnionKeyError("the key scalar is degenerate")

    @classmethod
    def generate(cls) -> OnionKey:
        """A fresh key from the operating system's CSPRNG."""
        seed = os.urandom(32)
        h = bytearray(hashlib.sha512(seed).digest())
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        return cls(bytes(h))

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return _public_key(int.from_bytes(self.expanded[:32], "little"))

    @property
    def service_id(self) -> str:
        """The address without ``.onion``, as tor's ``ServiceID``."""
        return onion_address(self.public_key)

    @property
    def address(self) -> str:
        """The full ``<56 chars>.onion`` address."""
        return self.service_id + ".onion"

    def control_blob(self) -> str:
        """The key as ``ADD_ONION`` takes it: ``ED25519-V3:<base64>``."""
        return _BLOB_PREFIX + base64.b64encode(self.expanded).decode("ascii")

    def file_bytes(self) -> bytes:
        """The key in tor's ``hs_ed25519_secret_key`` file format."""
        return _TOR_KEY_HEADER + self.expanded

    def __repr__(self) -> str:
        # The secret never goes to a log or a traceback.
        return f"OnionKey(<secret for {self.service_id}.onion>)"


_UNKNOWN_FORMAT = "neither tor's hs_ed25519_secret_key format nor ED25519-V3:<base64> text"


def parse_key(data: bytes) -> OnionKey:
    """
    Parse a key file: tor's ``hs_ed25519_secret_key`` format, or the
    ``ED25519-V3:<base64>`` text that ``ADD_ONION`` returns.
    """
    if data.startswith(_TOR_KEY_HEADER):
        body = data[len(_TOR_KEY_HEADER):]
        if len(body) != 64:
            raise OnionKeyError(f"tor key file body has {len(body)} bytes, not 64")
        return OnionKey(body)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise OnionKeyError(_UNKNOWN_FORMAT) from None
    if text.startswith("PrivateKey="):
        text = text[len("PrivateKey="):]
    if not text.startswith(_BLOB_PREFIX):
        raise OnionKeyError(_UNKNOWN_FORMAT)
    try:
        raw = base64.b64decode(text[len(_BLOB_PREFIX):], validate=True)
    except ValueError:
        raise OnionKeyError("the ED25519-V3 key is not valid base64") from None
    return OnionKey(raw)


def load_key(path: str) -> OnionKey:
    """Read and check the key at ``path``; :class:`OnionKeyError` if unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as e:
        raise OnionKeyError(f"cannot read onion key {path}: {e.strerror}") from None
    try:
        return parse_key(data)
    except OnionKeyError as e:
        raise OnionKeyError(
            f"onion key {path} is corrupt ({e}); restore it from a backup, or move it "
            "away to get a new key and a NEW address") from None


def load_or_create_key(path: str) -> tuple[OnionKey, bool]:
    """
    The key at ``path``, created (mode 0600) if the file does not exist.

    Returns ``(key, created)``.  An existing file is never replaced, even a
    corrupt one: losing it would lose the address.
    """
    if os.path.lexists(path):
        return load_key(path), False
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as e:
        raise OnionKeyError(f"cannot create directory {parent} for the onion key: {e.strerror}") from None
    key = OnionKey.generate()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.file_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if the name exists, so a concurrent first run cannot
        # overwrite a key that another process has just written.
        os.link(tmp, path)
    except FileExistsError:
        return load_key(path), False
    except OSError as e:
        raise OnionKeyError(f"cannot write onion key {path}: {e.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return key, True


# --- ports and client authorization --------------------------------------------


@dataclass(frozen=True)
class OnionPort:
    """One virtual port of the onion service and the target it forwards to."""

    virtual: int
    target: str


def parse_ports(text: str) -> list[OnionPort]:
    """Parse ``80:http,9000:stream``; ``ValueError`` with a readable message."""
    ports: list[OnionPort] = []
    seen: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        number, sep, target = item.partition(":")
        if not sep or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise ValueError(f"{item!r} is not PORT:TARGET with 1 <= PORT <= 65535")
        if target not in TARGETS:
            raise ValueError(f"{item!r}: target must be one of {', '.join(TARGETS)}")
        if int(number) in seen:
            raise ValueError(f"virtual port {number} is mapped twice")
        seen.add(int(number))
        ports.append(OnionPort(int(number), target))
    if not ports:
        raise ValueError("no ports given (e.g. 80:http,9000:stream)")
    return ports


def load_client_auth(directory: str) -> list[str]:
    """
    The base32 x25519 public keys of every ``*.auth`` file in ``directory``.

    The files are tor's ``authorized_clients`` format, one line
    ``descriptor:x25519:<base32 public key>``.  An empty directory is an
    error: publishing without authorization by accident is the one mistake
    this option exists to prevent.
    """
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".auth"))
    except OSError as e:
        raise ValueError(f"cannot list {directory}: {e.strerror}") from None
    if not names:
        raise ValueError(f"{directory} has no .auth files; refusing to publish without client authorization")
    keys: list[str] = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="ascii") as f:
                line = f.read(1024).strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        parts = line.split(":")
        if len(parts) != 3 or parts[0] != "descriptor" or parts[1] != "x25519":
            raise ValueError(f"{path}: expected one line descriptor:x25519:<base32 public key>")
        b32 = parts[2].upper()
        try:
            raw = base64.b32decode(b32 + "=" * (-len(b32) % 8))
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"{path}: the x25519 public key must be 32 bytes in base32")
        keys.append(base64.b32encode(raw).decode("ascii").rstrip("="))
    return keys


# --- reaching tor ---------------------------------------------------------------


class ControlProtocol(TypingProtocol):
    """What :class:`OnionService` needs of txtorcon's ``TorControlProtocol``."""

    transport: ITransport | None

    def queue_command(self, cmd: str | bytes, arg: Any = None) -> Deferred[str]: ...

    def add_event_listener(self, evt: str, callback: Callable[[str], None]) -> Deferred[Any]: ...

    def when_disconnected(self) -> Deferred[Any]: ...


class TorConnector(TypingProtocol):
    """A way to get an authenticated control connection to a tor."""

    #: "shared" for a tor someone else runs, "launched" for our own.
    kind: str

    def describe(self) -> str:
        """A few words for logs and status: which tor."""
        ...

    def connect(self) -> Deferred[ControlProtocol]:
        """An authenticated, bootstrapped control connection."""
        ...

    def stop(self) -> Deferred[None]:
        """Release the tor (stop it, if it is ours)."""
        ...


def _control_connect(endpoint: IStreamClientEndpoint,
                     password: Callable[[], str | None] | None) -> Deferred[ControlProtocol]:
    """Connect and authenticate (cookie, safecookie or password) through txtorcon."""
    from txtorcon import TorProtocolFactory

    async def run() -> ControlProtocol:
        proto: Any = await endpoint.connect(TorProtocolFactory(password_function=password or (lambda: None)))
        try:
            # post_bootstrap fires after authentication and a few GETINFOs.
            await proto.post_bootstrap
        except BaseException:
            if proto.transport is not None:
                proto.transport.loseConnection()
            raise
        return cast(ControlProtocol, proto)

    return Deferred.fromCoroutine(run())


class SharedTor:
    """A tor that is already running, reached at a control endpoint."""

    kind = "shared"

    def __init__(self, endpoint: IStreamClientEndpoint, description: str,
                 password: Callable[[], str | None] | None = None) -> None:
        self._endpoint = endpoint
        self._description = description
        self._password = password

    def describe(self) -> str:
        """The control endpoint string."""
        return f"tor at {self._description}"

    def connect(self) -> Deferred[ControlProtocol]:
        """Connect and authenticate."""
        return _control_connect(self._endpoint, self._password)

    def stop(self) -> Deferred[None]:
        """Nothing to do: the tor is not ours."""
        return succeed(None)


class _TorProcess(ProcessProtocol):
    """Watches a launched tor: its output lines and its end."""

    log = Logger(namespace="entropy_appliance.onion.tor")

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.running = True
        self.status: str = ""
        self.tail: deque[str] = deque(maxlen=8)
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        """Pass tor's log lines (warnings and worse, see the torrc) on."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.tail.append(line)
                self.log.warn("tor: {line}", line=line)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        """Record how tor ended and tell whoever waits."""
        self.running = False
        if reason.check(ProcessDone):
            self.status = "exited with status 0"
        else:
            self.status = str(reason.value)
        self.ended.callback(None)


class LaunchedTor:
    """
    A tor process of our own, in a private data directory.

    The torrc we write keeps it to what an onion host needs: no SOCKS port,
    a unix control socket with cookie authentication inside the data
    directory, and ``__OwningControllerProcess`` so that it exits if this
    process dies.  ``extra_config`` (a torrc file) is ``%include``-d last,
    for bridges, a proxy, or a private test network.
    """

    # txtorcon.launch() exposes only a few options and reports a dead tor only
    # as a lost connection; spawning the process here gives the full torrc and
    # the exit status, and txtorcon still does the control protocol.

    kind = "launched"
    log = Logger()

    def __init__(self, reactor: Any, binary: str, data_dir: str | None = None,
                 extra_config: str | None = None, ready_timeout: float = 60.0,
                 stop_timeout: float = 10.0) -> None:
        self._reactor = reactor
        self._binary = binary
        self._data_dir = data_dir
        self._temporary = data_dir is None
        self._extra_config = extra_config
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._process: _TorProcess | None = None
        self._transport: Any = None

    def describe(self) -> str:
        """Which binary, which directory."""
        return f"launched {self._binary} (data directory {self._data_dir or 'temporary'})"

    @property
    def data_dir(self) -> str | None:
        """The data directory in use (created on first launch if temporary)."""
        return self._data_dir

    def _write_torrc(self, data_dir: str) -> str:
        lines = [
            f"DataDirectory {data_dir}",
            f"ControlPort unix:{os.path.join(data_dir, 'control.sock')}",
            "CookieAuthentication 1",
            "SocksPort 0",
            f"__OwningControllerProcess {os.getpid()}",
            f"Log notice file {os.path.join(data_dir, 'notices.log')}",
            "Log warn stdout",
        ]
        if self._extra_config:
            lines.append(f"%include {os.path.abspath(self._extra_config)}")
        path = os.path.join(data_dir, "torrc")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        defaults = os.path.join(data_dir, "torrc-defaults")
        open(defaults, "w").close()
        return path

    def _spawn(self) -> _TorProcess:
        if self._data_dir is None:
            self._data_dir = tempfile.mkdtemp(prefix="entropy-tor-")
        os.makedirs(self._data_dir, mode=0o700, exist_ok=True)
        # tor refuses a data directory (and a control socket in it) that
        # others can read.
        os.chmod(self._data_dir, 0o700)
        sock = os.path.join(self._data_dir, "control.sock")
        if os.path.lexists(sock):
            os.unlink(sock)
        torrc = self._write_torrc(self._data_dir)
        process = _TorProcess()
        assert IReactorProcess.providedBy(self._reactor)
        self._transport = self._reactor.spawnProcess(
            process, self._binary,
            [self._binary, "-f", torrc, "--defaults-torrc", os.path.join(self._data_dir, "torrc-defaults")],
            env={"HOME": self._data_dir, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            path=self._data_dir,
        )
        self._transport.closeStdin()
        self._process = process
        self.log.info("launched tor (pid {pid}) in {dir}", pid=self._transport.pid, dir=self._data_dir)
        return process

    def connect(self) -> Deferred[ControlProtocol]:
        """Launch tor if it is not running, then connect to its control socket."""

        async def run() -> ControlProtocol:
            process = self._process
            if process is None or not process.running:
                process = self._spawn()
            assert self._data_dir is not None
            sock = os.path.join(self._data_dir, "control.sock")
            endpoint = UNIXClientEndpoint(self._reactor, sock)
            deadline = self._reactor.seconds() + self._ready_timeout
            # The control socket appears once tor has parsed its torrc and
            # opened its listeners; poll for it, but stop at once if tor
            # exits (a bad torrc, a busy data directory).
            while True:
                if not process.running:
                    raise RuntimeError(f"tor {process.status}: {' / '.join(process.tail) or 'no output'}")
                if os.path.exists(sock):
                    try:
                        return await _control_connect(endpoint, None)
                    except Exception:
                        if self._reactor.seconds() >= deadline:
                            raise
                if self._reactor.seconds() >= deadline:
                    raise RuntimeError(
                        f"tor did not open its control socket within {self._ready_timeout:g} s")
                await _sleep(self._reactor, 0.1)

        return Deferred.fromCoroutine(run())

    def stop(self) -> Deferred[None]:
        """Terminate tor (SIGTERM, then SIGKILL) and remove a temporary data directory."""
        process, transport = self._process, self._transport

        async def run() -> None:
            if process is not None and process.running:
                transport.signalProcess("TERM")
                timer = self._reactor.callLater(self._stop_timeout, _kill, transport)
                await process.ended
                if timer.active():
                    timer.cancel()
            if self._temporary and self._data_dir is not None:
                shutil.rmtree(self._data_dir, ignore_errors=True)
                self._data_dir = None

        return Deferred.fromCoroutine(run())


def _kill(transport: Any) -> None:
    try:
        transport.signalProcess(signal.SIGKILL)
    except Exception:  # already gone
        pass


def _sleep(clock: IReactorTime, seconds: float) -> Deferred[None]:
    call: IDelayedCall | None = None
    d: Deferred[None] = Deferred(lambda _: call.cancel() if call is not None and call.active() else None)
    call = clock.callLater(seconds, d.callback, None)
    return d


# --- the service ----------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Reconnection delays: ``initial * 2**n`` seconds, at most ``maximum``."""

    initial: float = 1.0
    maximum: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures (counting from 1)."""
        return min(self.maximum, self.initial * 2 ** max(0, min(failures - 1, 30)))


class OnionService(Service):
    """
    Publishes ``targets`` at the v3 onion address of ``key``.

    ``targets`` maps target names (see :data:`TARGETS`) to factories; it is
    read when the service starts.  ``status()`` is what ``/v1/status`` shows under ``"onion"``::

        {"address": "<56 chars>.onion" | None,
         "state": "starting" | "published" | "failed",
         "ports": {"80": "http", "9000": "stream"},
         "tor": "shared" | "launched", "detail": "...", ...}

    ``address`` is set once tor has accepted the service and is kept while
    tor is away (the key, and so the address, does not change).  ``state``
    becomes ``published`` when tor reports a descriptor upload, and goes back
    to ``starting``/``failed`` when the connection to tor is lost.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        connector: TorConnector,
        key: OnionKey,
        ports: Sequence[OnionPort],
        targets: Mapping[str, Any],
        client_auth: Sequence[str] = (),
        attempt_timeout: float = 90.0,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._connector = connector
        self._key = key
        self._ports = list(ports)
        # Kept by reference and read at start: the web Site may be built after
        # this service, because the web's status needs this service's status().
        self._targets = targets
        self._client_auth = list(client_auth)
        self._attempt_timeout = attempt_timeout
        self._backoff = backoff

        self._state = "starting"
        self._detail = "not started"
        self._address: str | None = None
        self._published = False
        self._uploads = 0
        self._failures = 0
        self._session = 0
        self._proto: ControlProtocol | None = None
        self._added = False
        self._pending: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._listeners: dict[str, IListeningPort] = {}

    # -- status --

    def status(self) -> dict[str, Any]:
        """The onion state, for ``/v1/status`` and ``/metrics``."""
        out: dict[str, Any] = {
            "address": self._address,
            "state": self._state,
            "ports": {str(p.virtual): p.target for p in self._ports},
            "tor": self._connector.kind,
            "detail": self._detail,
            "descriptor_uploads": self._uploads,
            "client_auth": len(self._client_auth),
        }
        if self._retry is not None and self._retry.active():
            out["retry_in"] = round(max(0.0, self._retry.getTime() - self._clock.seconds()), 1)
        return out

    def local_port(self, target: str) -> int:
        """The loopback port that tor forwards ``target`` to (once started)."""
        host: Any = self._listeners[target].getHost()
        return int(host.port)

    def _set(self, state: str, detail: str) -> None:
        if (state, detail) != (self._state, self._detail):
            self.log.info("onion service {state}: {detail}", state=state, detail=detail)
        self._state, self._detail = state, detail

    # -- lifecycle --

    def startService(self) -> None:
        """Listen on loopback at once, then reach tor in the background."""
        missing = {p.target for p in self._ports} - set(self._targets)
        if missing:
            raise ValueError(f"no factory for onion target(s) {', '.join(sorted(missing))}")
        super().startService()
        assert IReactorTCP.providedBy(self._reactor)
        for target in sorted({p.target for p in self._ports}):
            # An internal ephemeral port, not a user-facing listener, so it is
            # opened directly rather than from an endpoint string.
            self._listeners[target] = self._reactor.listenTCP(0, self._targets[target], interface="127.0.0.1")
        self._attempt()

    def stopService(self) -> Deferred[None]:
        """Remove the service from tor, release tor, close the loopback ports."""
        super().stopService()
        self._session += 1  # every callback still in flight is now stale
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        proto, added = self._proto, self._added
        self._proto, self._added = None, False
        self._detail = "stopping"

        async def run() -> None:
            if proto is not None:
                if added:
                    try:
                        d = proto.queue_command(f"DEL_ONION {self._key.service_id}")
                        d.addTimeout(5, self._clock)
                        await d
                    except Exception as e:
                        self.log.warn("DEL_ONION failed: {e}", e=e)
                if proto.transport is not None:
                    proto.transport.loseConnection()
            try:
                await self._connector.stop()
            except Exception as e:
                self.log.warn("stopping tor failed: {e}", e=e)
            for port in self._listeners.values():
                await maybeDeferred(port.stopListening)
            self._listeners.clear()
            self._detail = "stopped"
            self.log.info("onion service stopped")

        return Deferred.fromCoroutine(run())

    # -- the connection state machine --

    def _attempt(self) -> None:
        self._retry = None
        self._session += 1
        session = self._session
        self._added = False
        self._published = False
        self._set("starting", f"connecting to {self._connector.describe()}")
        d = Deferred.fromCoroutine(self._run(session))
        d.addTimeout(self._attempt_timeout, self._clock)
        d.addErrback(self._attempt_failed, session)
        if not d.called:
            self._pending = d

    async def _run(self, session: int) -> None:
        proto = await self._connector.connect()
        if session != self._session:
            if proto.transport is not None:
                proto.transport.loseConnection()
            return
        self._proto = proto
        proto.when_disconnected().addBoth(self._lost, session)
        self._set("starting", f"connected to {self._connector.describe()}; adding the onion service")
        await proto.add_event_listener("HS_DESC", lambda text: self._hs_desc(session, text))
        try:
            reply = await proto.queue_command(self._add_onion_command())
        except Exception as e:
            if "collision" not in str(e).lower():
                raise
            # Our key is already in this tor: a detached service left by an
            # earlier run that did not stop cleanly (or our own, if only the
            # control connection dropped).  Replace it, so that it forwards to
            # this process's loopback ports.
            self.log.warn("tor already has {addr}; replacing it", addr=self._key.address)
            await proto.queue_command(f"DEL_ONION {self._key.service_id}")
            reply = await proto.queue_command(self._add_onion_command())
        if session != self._session:
            return
        service_id = _reply_value(reply, "ServiceID")
        if service_id != self._key.service_id:
            raise RuntimeError(f"tor named the service {service_id!r}, expected {self._key.service_id!r}")
        self._pending = None
        self._added = True
        self._failures = 0
        self._address = self._key.address
        if self._published:
            self._set("published", "descriptor uploaded")
        else:
            self._set("starting", "tor accepted the service; waiting for the descriptor upload")

    def _add_onion_command(self) -> str:
        flags = ["Detach"]
        if self._client_auth:
            flags.append("V3Auth")
        args = [f"ADD_ONION {self._key.control_blob()}", f"Flags={','.join(flags)}"]
        for p in self._ports:
            args.append(f"Port={p.virtual},127.0.0.1:{self.local_port(p.target)}")
        args.extend(f"ClientAuthV3={k}" for k in self._client_auth)
        return " ".join(args)

    def _hs_desc(self, session: int, text: str) -> None:
        parts = text.split()
        if session != self._session or len(parts) < 2 or parts[1] != self._key.service_id:
            return
        action = parts[0]
        if action == "UPLOADED":
            self._uploads += 1
            self._published = True
            if self._added:
                self._set("published", "descriptor uploaded")
        elif action == "FAILED":
            if not self._published:
                reason = next((p[7:] for p in parts if p.startswith("REASON=")), "unknown")
                self._detail = f"a descriptor upload failed ({reason}); tor keeps trying"

    def _attempt_failed(self, failure: Failure, session: int) -> None:
        if session != self._session or not self.running:
            return None
        self._pending = None
        self._session += 1  # the dropped connection below must not count twice
        proto, self._proto, self._added = self._proto, None, False
        if proto is not None and proto.transport is not None:
            proto.transport.loseConnection()
        reason = failure.getErrorMessage() or repr(failure.value)
        self._fail(f"{self._connector.describe()}: {reason}")
        return None

    def _lost(self, result: object, session: int) -> None:
        if session != self._session or not self.running:
            return None
        self._pending = None
        self._session += 1
        self._proto, self._added = None, False
        self._fail(f"lost the control connection to {self._connector.describe()}")
        return None

    def _fail(self, detail: str) -> None:
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        self._set("failed", f"{detail}; retrying in {delay:g} s")
        self.log.warn("onion service failed: {detail}; retrying in {delay} s", detail=detail, delay=delay)
        if self._retry is None or not self._retry.active():
            self._retry = self._clock.callLater(delay, self._attempt)


def _reply_value(reply: str, name: str) -> str | None:
    for line in reply.splitlines():
        k, sep, v = line.strip().partition("=")
        if sep and k == name:
            return v
    return None
