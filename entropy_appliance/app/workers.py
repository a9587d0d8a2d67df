"""
Serving with several processes that share every listening socket.

The parent (the ``twistd`` process) is the only reader of the entropy
source: a hardware device may admit one reader only.  It listens on every
endpoint but never accepts, and spawns N worker processes that inherit the
listening sockets; the kernel spreads connections among them.  Each worker
is a fresh process (``spawnProcess``, not a bare fork), so no DRBG state is
ever shared; each gets its own stream of health-tested seed material from
the parent over its stdin pipe, runs the health tests again on it, and
instantiates its own CTR_DRBG from it.  A pipe is never given bytes that
another worker got.

The pipe holds one page, so a failure mark the parent writes after the seed
already in it is read within a few of the worker's health probes.

A worker that dies is restarted with exponential backoff; the parent's stop
(SIGTERM) stops every worker, and a worker whose parent vanishes stops.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IPullProducer,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from entropy_appliance.app.lifecycle import cannot_listen
from entropy_appliance.core.backoff import Backoff
from entropy_appliance.core.pool import PoolShort

__all__ = [
    "InheritedPort", "encode_worker_fds", "parse_worker_fds", "HeldPort", "AdoptedPort",
    "WorkerSupervisor", "ParentWatch", "TWISTD_MAIN",
]

#: How a worker is started: twistd's own entry point, in the foreground.
TWISTD_MAIN = "from twisted.scripts.twistd import run; run()"

#: Seed bytes written to a worker per pull; the pipe buffer bounds the rest.
SEED_CHUNK = 4096

#: Seconds a worker must have run for its next restart to wait the shortest time again.
HEALTHY_UPTIME = 60.0

#: The worker's own timestamp: ours already says when.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} ")

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


@dataclass(frozen=True)
class InheritedPort:
    """A listening socket handed to a worker: what it serves and its fd."""

    kind: str
    fd: int
    family: str

    def encode(self) -> str:
        """``kind:fd:family``, as passed on the worker's command line."""
        return f"{self.kind}:{self.fd}:{self.family}"


def encode_worker_fds(ports: Sequence[InheritedPort]) -> str:
    """The ``--worker-fds`` value for ``ports``."""
    return ",".join(p.encode() for p in ports)


def parse_worker_fds(text: str) -> list[InheritedPort]:
    """Parse a ``--worker-fds`` value (``kind:fd:family,...``); raises ValueError."""
    out = []
    for item in filter(None, text.split(",")):
        try:
            kind, fd, family = item.split(":")
            port = InheritedPort(kind, int(fd), family)
        except ValueError:
            raise ValueError(f"{item!r} is not kind:fd:family") from None
        if family not in _FAMILIES or port.fd < 3:
            raise ValueError(f"{item!r}: bad family or fd")
        out.append(port)
    return out


class _NeverServed(Factory):
    """The parent's placeholder factory: its ports never accept."""

    noisy = False

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return None


def _family_of(fd: int) -> str:
    family = socket.socket(fileno=os.dup(fd))
    try:
        for name, value in _FAMILIES.items():
            if family.family == value:
                return name
    finally:
        family.close()
    raise ValueError(f"fd {fd} is not an INET, INET6 or UNIX socket")


class _PortService(Service):
    """A service owning one listening port, closed when the service stops."""

    port: IListeningPort | None = None

    def stopService(self) -> Deferred[None] | None:
        """Close the listening socket."""
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return cast(Deferred[None], port.stopListening())
        return None


class HeldPort(_PortService):
    """
    The parent's side of a shared listener: listen on ``endpoint`` (any
    endpoint: tcp, ssl's tcp socket, systemd), never accept, and expose the
    listening socket for the workers.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, kind: str, description: str = "") -> None:
        self._endpoint = endpoint
        self.kind = kind
        self.description = description
        self.port: IListeningPort | None = None
        self.inherited: InheritedPort | None = None
        self._listening_started = False

    def privilegedStartService(self) -> None:
        """Listen (possibly on a privileged port) before dropping privileges."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """Listen now if the runner had no privileged start (``twist``)."""
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening_started:
            return
        self._listening_started = True
        failed: list[Failure] = []
        self._endpoint.listen(_NeverServed()).addCallbacks(self._listening, failed.append)
        if failed:
            # Every endpoint here listens at once: a failure stops the start.
            raise cannot_listen(self.kind, self.description, failed[0].value or Exception("unknown"))

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        # The parent only holds the socket; the workers accept on it.
        cast(Any, port).stopReading()
        fd = cast(Any, port).fileno()
        self.inherited = InheritedPort(self.kind, fd, _family_of(fd))


class AdoptedPort(_PortService):
    """A worker's side of a shared listener: accept on an inherited socket."""

    def __init__(self, reactor: IReactorSocket, inherited: InheritedPort,
                 factory: IProtocolFactory) -> None:
        self._reactor = reactor
        self.inherited = inherited
        self._factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        """Start accepting on the inherited socket."""
        super().startService()
        family = _FAMILIES[self.inherited.family]
        self.port = self._reactor.adoptStreamPort(self.inherited.fd, family, cast(Any, self._factory))
        # The reactor works on its own duplicate of the socket.
        os.close(self.inherited.fd)



#: The worker's stdin pipe holds one page: the relayed seed that waits in
#: it, ahead of a failure mark written after it, is what a worker's health
#: probe must read through before it fails closed.
RELAY_PIPE_SIZE = 4096


def _shrink_pipe(transport: Any) -> None:
    """Make the pipe to the worker's stdin hold one page, where Linux allows."""
    writer = getattr(transport, "pipes", {}).get(0)
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if writer is None or setter is None:
        return
    try:
        fcntl.fcntl(writer.fileno(), setter, RELAY_PIPE_SIZE)
    except OSError:
        pass


@implementer(IPullProducer)
class _Worker(ProcessProtocol):
    """One worker process: feeds it seed material, relays its log, reports its end."""

    log = Logger()

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self._supervisor = supervisor
        self.index = index
        self._buffer = b""
        self._retry: IDelayedCall | None = None
        self._closed = False
        self.started = supervisor.clock.seconds()
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """Shrink the worker's stdin pipe; register as the pull producer on it."""
        _shrink_pipe(self.transport)
        cast(IConsumer, self.transport).registerProducer(self, False)

    def resumeProducing(self) -> None:
        """Write one chunk of seed material, or retry shortly if none is spare."""
        if self._closed or self._retry is not None:
            return
        try:
            data = self._supervisor.seed(SEED_CHUNK)
        except PoolShort:
            self._retry = self._supervisor.clock.callLater(0.25, self._again)
            return
        assert self.transport is not None
        self.transport.write(data)

    def _again(self) -> None:
        self._retry = None
        self.resumeProducing()

    def stopProducing(self) -> None:
        """The pipe closed."""
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def outReceived(self, data: bytes) -> None:
        """Relay the worker's log lines into ours."""
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > 65536:
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            text = _TIMESTAMP.sub("", line.decode("utf-8", "replace").rstrip())
            if text:
                self.log.info("worker {index}: {line}", index=self.index, line=text)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        """Tell the supervisor; it decides whether to restart."""
        self.stopProducing()
        self._supervisor.ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    Spawns ``count`` workers with the listening sockets of ``held`` and
    restarts any that dies, with backoff (1 s doubling to 30 s; reset after a
    minute of good health).  Stopping sends SIGTERM to every worker and waits
    up to ``stop_timeout`` seconds before SIGKILL.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Sequence[str],
        held: Sequence[HeldPort],
        seed: Callable[[int], bytes],
        env: Mapping[str, str] | None = None,
        failure_mark: bytes = b"",
        executable: str = sys.executable,
        stop_timeout: float = 15.0,
    ) -> None:
        self._reactor = reactor
        self.clock: IReactorTime = reactor
        self.count = count
        self._argv = list(argv)
        self._held = list(held)
        self.seed = seed
        self._failure_mark = failure_mark
        self._env = dict(os.environ if env is None else env)
        self._executable = executable
        self._stop_timeout = stop_timeout
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        self._backoff: dict[int, Backoff] = {}
        self._pending: dict[int, IDelayedCall] = {}
        self.restarts = 0
        self._stopping = False

    def source_failed(self) -> None:
        """
        The parent's source failed: make every worker fail closed too.

        The relay is a plain byte pipe, and a worker re-tests what it reads,
        so the parent marks the failure in-band with ``failure_mark``, a run
        of identical bytes longer than the workers' Repetition Count cutoff:
        each worker's own health tests reject it, drop their buffers and
        fail closed, and take fresh seed again only after a new startup test
        on what the parent relays once its source has recovered.  Without
        the mark a worker would merely starve, and keep its streams open.
        """
        if not self._failure_mark:
            return
        for worker, _ in self.workers.values():
            if not worker._closed and worker.transport is not None:
                worker.transport.write(self._failure_mark)

    def startService(self) -> None:
        """Spawn every worker."""
        super().startService()
        self._stopping = False
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        ports = [h.inherited for h in self._held if h.inherited is not None]
        args = [self._executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "--logfile=-",
                "entropy", *self._argv,
                "--worker-fds", encode_worker_fds(ports), "--worker-index", str(index)]
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for p in ports:
            child_fds[p.fd] = p.fd
        proto = _Worker(self, index)
        process = cast(IReactorProcess, self._reactor).spawnProcess(
            proto, self._executable, args, env=self._env, childFDs=child_fds)
        self.workers[index] = (proto, process)
        self.log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        """A worker ended: restart it with backoff unless we are stopping."""
        self.workers.pop(worker.index, None)
        if self._stopping:
            return
        uptime = self.clock.seconds() - worker.started
        backoff = self._backoff.setdefault(worker.index, Backoff(1.0, 30.0))
        if uptime > HEALTHY_UPTIME:
            backoff.reset()
        delay = backoff.next()
        self.restarts += 1
        self.log.error("worker {index} ended ({why}) after {uptime:.1f} s; restarting in {delay:.0f} s",
                       index=worker.index, why=reason.getErrorMessage(), uptime=uptime, delay=delay)
        self._pending[worker.index] = self.clock.callLater(delay, self._spawn, worker.index)

    def signal_all(self, name: str) -> None:
        """Send signal ``name`` (e.g. ``"HUP"``) to every live worker."""
        for _, process in list(self.workers.values()):
            try:
                process.signalProcess(name)
            except Exception:  # it ended meanwhile
                pass

    def status(self) -> dict[str, Any]:
        """Worker pids and restarts, for /v1/status."""
        return {"count": self.count, "restarts": self.restarts,
                "pids": sorted(p.pid for _, p in self.workers.values() if p.pid)}

    def stopService(self) -> Deferred[None]:
        """SIGTERM every worker; SIGKILL those still alive after the timeout."""
        super().stopService()
        self._stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        live = list(self.workers.values())
        if not live:
            return succeed(None)
        for _, process in live:
            try:
                process.signalProcess("TERM")
            except Exception:  # already gone
                pass
        kill = self.clock.callLater(self._stop_timeout, self._kill)
        done: Deferred[None] = Deferred()
        remaining = [len(live)]

        def one_ended(_: object) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                if kill.active():
                    kill.cancel()
                done.callback(None)

        for proto, _ in live:
            proto.ended.addCallback(one_ended)
        return done

    def _kill(self) -> None:
        for _, process in list(self.workers.values()):
            self.log.warn("worker pid {pid} ignored SIGTERM; killing it", pid=process.pid)
            try:
                process.signalProcess("KILL")
            except Exception:
                pass


class ParentWatch(TimerService):
    """A worker stops when its parent is gone (its ppid changes); checked once a second."""

    def __init__(self, clock: IReactorTime, stop: Callable[[], object],
                 getppid: Callable[[], int] = os.getppid) -> None:
        super().__init__(1.0, self._check)
        self.clock = clock
        self._stop = stop
        self._getppid = getppid
        self._parent = getppid()

    def _check(self) -> None:
        if self._getppid() != self._parent:
            Logger().warn("the parent process is gone; stopping")
            self._stop()
