"""
Reaching tor and speaking to it: the control connection, tor's own process
when we launch it, and the three commands an onion host needs.

- :class:`SharedTor` reaches a tor that someone else runs, at a control
  endpoint; :class:`LaunchedTor` runs Debian's ``tor`` in a private data
  directory, and launches it again if it has died.  Both hand out an
  authenticated txtorcon control connection.
- :func:`add_onion` and :func:`del_onion` add and remove the detached v3
  service; :func:`subscribe_descriptors` reports ``HS_DESC`` events, which
  say when the descriptor is uploaded (the service is then published).

This module performs the I/O and decides nothing: when to connect, retry or
give up is :mod:`entropy_appliance.onion.machine`'s business.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorProcess,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from entropy_appliance.onion.key import OnionKey

__all__ = [
    "ControlProtocol",
    "DescriptorEvent",
    "LaunchedTor",
    "OnionCollision",
    "SharedTor",
    "TorConnector",
    "add_onion",
    "add_onion_command",
    "del_onion",
    "parse_hs_desc",
    "subscribe_descriptors",
]


class ControlProtocol(TypingProtocol):
    """What the onion service needs of txtorcon's ``TorControlProtocol``."""

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




# --- the onion service in tor ----------------------------------------------------


class OnionCollision(Exception):
    """tor already has a service with this key (left by an earlier run, or ours)."""


@dataclass(frozen=True)
class DescriptorEvent:
    """One ``HS_DESC`` event: ``action`` (``UPLOADED``, ``FAILED``, ...) for ``service_id``."""

    action: str
    service_id: str
    reason: str | None = None


def parse_hs_desc(text: str) -> DescriptorEvent | None:
    """Parse ``HS_DESC`` event text (``ACTION ADDRESS AUTH HSDIR ...``); None if malformed."""
    parts = text.split()
    if len(parts) < 2:
        return None
    reason = next((p[len("REASON="):] for p in parts if p.startswith("REASON=")), None)
    return DescriptorEvent(parts[0], parts[1], reason)


def subscribe_descriptors(proto: ControlProtocol,
                          callback: Callable[[DescriptorEvent], None]) -> Deferred[Any]:
    """Call ``callback`` with every well-formed ``HS_DESC`` event on ``proto``."""

    def received(text: str) -> None:
        event = parse_hs_desc(text)
        if event is not None:
            callback(event)

    return proto.add_event_listener("HS_DESC", received)


def add_onion_command(key: OnionKey, ports: Sequence[tuple[int, int]],
                      client_auth: Sequence[str] = ()) -> str:
    """
    ``ADD_ONION`` for a detached service of ``key``: each ``(virtual, local)``
    pair forwards to ``127.0.0.1:local``; with ``client_auth`` only those
    x25519 public keys may fetch the descriptor.
    """
    # Detach: the service outlives this control connection, so that a
    # dropped connection does not take the address off the network.
    flags = ["Detach"]
    if client_auth:
        flags.append("V3Auth")
    args = [f"ADD_ONION {key.control_blob()}", f"Flags={','.join(flags)}"]
    args.extend(f"Port={virtual},127.0.0.1:{local}" for virtual, local in ports)
    args.extend(f"ClientAuthV3={k}" for k in client_auth)
    return " ".join(args)


def add_onion(proto: ControlProtocol, key: OnionKey, ports: Sequence[tuple[int, int]],
              client_auth: Sequence[str] = ()) -> Deferred[str | None]:
    """
    Add the service; the ``ServiceID`` tor names it with (None if it names
    none).  Fails with :class:`OnionCollision` if tor already has this key.
    """

    async def run() -> str | None:
        try:
            reply = await proto.queue_command(add_onion_command(key, ports, client_auth))
        except Exception as e:
            if "collision" in str(e).lower():
                raise OnionCollision(str(e)) from None
            raise
        return _reply_value(reply, "ServiceID")

    return Deferred.fromCoroutine(run())


def del_onion(proto: ControlProtocol, service_id: str) -> Deferred[str]:
    """Remove the service ``service_id`` from tor."""
    return proto.queue_command(f"DEL_ONION {service_id}")


def _reply_value(reply: str, name: str) -> str | None:
    for line in reply.splitlines():
        k, sep, v = line.strip().partition("=")
        if sep and k == name:
            return v
    return None
