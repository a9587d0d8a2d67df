"""
systemd readiness and status: ``READY=1``, ``STOPPING=1`` and ``STATUS=``.

The notification protocol is one datagram on the unix socket named by
``$NOTIFY_SOCKET``: a path, or an abstract name written with a leading
``@``.  We write it here because it is a few lines.  The alternatives are
``python-systemd``, a C binding that needs libsystemd headers to build, and
small pure-Python packages that do exactly this.  Neither is worth a new
dependency.  Without ``$NOTIFY_SOCKET`` (not under systemd) every call does
nothing.

:class:`NotifyService` must be the *last* child of the top-level
``MultiService``.  Children start in order, and ``strports`` services on
``tcp:``/``ssl:``/``systemd:`` endpoints listen synchronously in
``startService``, so READY=1 goes out only once every listener is
listening.  Children stop in reverse order, so STOPPING=1 goes out first,
before the listeners close.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from entropy_appliance.core.states import PoolState
from entropy_appliance.core.status import PoolStatus

__all__ = ["NotifyService", "sd_notify", "status_line", "STATUS_INTERVAL"]

#: Seconds between STATUS= updates.
STATUS_INTERVAL = 10.0

_log = Logger()


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send ``message`` (newline-separated ``KEY=VALUE`` lines) to systemd.

    Returns True if it was sent, False when there is no ``$NOTIFY_SOCKET``
    or the socket cannot be reached.  It never raises, because a lost
    status line must not take the appliance down.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        _log.warn("NOTIFY_SOCKET {address!r} is not a unix socket; not notifying", address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as e:
        _log.warn("cannot notify systemd at {address!r}: {error}",
                  address=env.get("NOTIFY_SOCKET"), error=e)
        return False
    return True


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def status_line(status: PoolStatus) -> str:
    """
    One line for ``systemctl status``, built from :meth:`SeedPool.status`:
    whether bytes are served, the source (or each source) and its health
    state, and the reseed figures.
    """
    source, starved, drbg = status.source, status.starved, status.drbg
    if status.state is PoolState.OK:
        head = "serving"
    elif status.state is PoolState.STARVED:
        head = (f"STARVED for {starved.seconds:.1f} s, waiting for seed "
                f"({_one_line(status.reason or 'seed pool refilling')})")
    else:
        head = f"FAILING CLOSED ({_one_line(status.reason or 'unknown reason')})"
    if len(status.sources) > 1:
        # Each source's state; the counts below are of all of them together.
        parts = [head, "sources " + ", ".join(f"{one.name} ({one.kind}) {one.state}"
                                               for one in status.sources)]
    else:
        parts = [head, f"source {source.name} ({source.kind}) {source.state}"]
    failures = {test: n for test, n in source.health_failures.items() if n}
    if failures:
        parts.append("health failures " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    if source.error:
        parts.append(f"error: {_one_line(source.error)}")
    age = drbg.reseed_age_seconds
    last = "never" if age is None else f"{age:.1f} s ago"
    parts.append(f"reseeds {drbg.reseeds}, last {last}")
    parts.append(f"seed pool {status.buffer.fill_percent:.0f}%")
    if starved.waits:
        parts.append(f"starved {starved.total_seconds:.1f} s in all, {starved.waits} waits")
    return "; ".join(parts)


class NotifyService(TimerService):
    """
    Tells systemd READY=1 once the appliance can serve, STATUS= at the start
    and every ``interval`` seconds, and STOPPING=1 when stopped.

    ``pool_status`` returns a :class:`PoolStatus`; ``ready`` returns a
    Deferred that fires once random bytes can be served (the first seed is
    in), and fails if the source fails first (then it is asked again a
    second later); ``clock`` schedules the updates; ``notify`` sends one
    message (default :func:`sd_notify`).
    """

    def __init__(self, pool_status: Callable[[], PoolStatus], clock: IReactorTime,
                 notify: Callable[[str], object] = sd_notify,
                 interval: float = STATUS_INTERVAL,
                 ready: Callable[[], Deferred[None]] = lambda: succeed(None)) -> None:
        super().__init__(interval, self.update)
        self.clock = self._clock = clock
        self._pool_status = pool_status
        self._notify = notify
        self._ready = ready
        self._waiting: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self.announced = False

    def _status(self) -> str:
        try:
            return status_line(self._pool_status())
        except Exception as e:  # a broken status must not stop the updates
            return f"status unavailable: {_one_line(e)}"

    def startService(self) -> None:
        """
        Every earlier sibling is listening: start the STATUS= updates (so
        that ``systemctl status`` tells what a slow start waits for), and
        report READY=1 as soon as the pool is seeded.
        """
        super().startService()
        self._await_ready()

    def _await_ready(self) -> None:
        self._retry = None
        waiting = self._waiting = self._ready()
        waiting.addCallbacks(self._announce, self._not_yet)

    def _announce(self, _: object) -> None:
        self._waiting = None
        if self.running and not self.announced:
            self.announced = True
            self._notify(f"READY=1\nSTATUS={self._status()}")

    def _not_yet(self, failure: Failure) -> None:
        # The source failed before the first seed: wait for its recovery.
        self._waiting = None
        if self.running:
            self._retry = self._clock.callLater(1.0, self._await_ready)

    def update(self) -> None:
        """Send the current STATUS= line."""
        self._notify(f"STATUS={self._status()}")

    def stopService(self) -> Deferred[None]:
        """Report STOPPING=1 at once, before the listeners close."""
        stopped: Deferred[None] = super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.addErrback(lambda _: None)
            waiting.cancel()
        self._notify("STOPPING=1\nSTATUS=stopping")
        return stopped
