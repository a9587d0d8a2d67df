"""
Signals: a graceful stop on SIGTERM/SIGINT, a TLS and log reload on SIGHUP.

SIGTERM and SIGINT are twistd's: the reactor stops the service tree and,
after a clean stop, twistd re-raises the signal (so an exit status of 143
is as clean as 0).  The tree stops in the named phases of
:mod:`~entropy_appliance.app.lifecycle`.  :class:`GracefulStop` is the
``drain`` phase: it runs once every listener has stopped accepting and
before the pipeline stops (responses finishing during the drain still have
seed material).  It closes the raw streams (they never end by themselves)
and holds the stop until the HTTP requests in flight have finished, or
until the deadline (``--shutdown-timeout``).  What is still open at the
deadline is cut when the reactor disconnects everything.

SIGHUP (:class:`ReloadService`, the ``signals`` phase, which stops after
the drain): the TLS key and certificate are read again from their files and
served from the next handshake on; established connections keep theirs.  A
pair that does not load is logged and the old one kept.  Then the log files
are reopened, for external log rotation.  The handler only schedules the
work on the reactor thread.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, globalLogPublisher
from twisted.python.logfile import BaseLogFile

from entropy_appliance.net import tls
from entropy_appliance.net.limits import InFlight

__all__ = [
    "GracefulStop",
    "ReloadService",
    "reload_tls",
    "reopen_logs",
    "DEFAULT_SHUTDOWN_TIMEOUT",
]

#: Seconds in-flight HTTP responses get to finish after SIGTERM/SIGINT.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0

_log = Logger()


class GracefulStop(Service):
    """
    On stop: close the raw streams (``close_streams`` returns how many),
    wait for the HTTP requests in flight, then close the HTTP connections
    once their output is sent (``close_http``); all within ``timeout``
    seconds.  ``close_streams`` may be set after construction.
    """

    def __init__(self, inflight: InFlight, clock: IReactorTime, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                 close_streams: Callable[[], int] | None = None,
                 close_http: Callable[[], Deferred[None]] | None = None) -> None:
        self._inflight = inflight
        self._clock = clock
        self.timeout = timeout
        self.close_streams = close_streams
        self._close_http = close_http

    def stopService(self) -> Deferred[None] | None:
        """Close streams; return a Deferred that fires when HTTP has drained or time is up."""
        super().stopService()
        if self.close_streams is not None:
            closed = self.close_streams()
            if closed:
                _log.info("stopping: closed {n} raw stream connection(s)", n=closed)
        pending = self._inflight.count
        if pending == 0 and self._close_http is None:
            return None
        if pending:
            _log.info("stopping: waiting up to {t} s for {n} HTTP response(s) in flight",
                      t=self.timeout, n=pending)
        done: Deferred[None] = Deferred()

        def finished(_: object) -> None:
            if not done.called:
                timer.cancel()
                done.callback(None)

        def drained() -> None:
            if done.called:
                return
            if pending:
                _log.info("stopping: every HTTP response in flight has finished")
            if self._close_http is None:
                finished(None)
            else:
                self._close_http().addCallback(finished)

        def deadline() -> None:
            if not done.called:
                _log.warn("stopping: after {t} s, {n} HTTP response(s) still in flight and any "
                          "unsent output are cut short", n=self._inflight.count, t=self.timeout)
                done.callback(None)

        timer = self._clock.callLater(self.timeout, deadline)
        self._inflight.when_idle(drained)
        return done


def reload_tls(factories: Iterable[tls.ReloadableContextFactory]) -> tuple[int, int]:
    """
    Reload each factory's key and certificate; log each outcome.  Returns
    (reloaded, failed).  A failure keeps that factory's current pair.
    """
    ok = failed = 0
    for factory in factories:
        try:
            material = factory.reload()
        except tls.TLSConfigError as e:
            failed += 1
            _log.error("SIGHUP: keeping the current TLS certificate {cert}: {error}",
                       cert=factory.material.cert_path, error=str(e))
            continue
        ok += 1
        _log.info("SIGHUP: TLS certificate {cert} reloaded, SHA-256 fingerprint {fp}",
                  cert=material.cert_path, fp=tls.fingerprint(material.certificate))
    return ok, failed


def _log_files(observer: Any, depth: int = 0) -> Iterable[Any]:
    """The files behind ``observer`` and the observers it wraps."""
    if depth > 8:
        return
    # twisted.logger keeps these as private attributes (FileLogObserver's
    # file, FilteringLogObserver's and LogPublisher's observers); there is no
    # public way to reach the file that twistd opened for --logfile.
    out = getattr(observer, "_outFile", None)
    if out is not None:
        yield out
    inner = getattr(observer, "_observer", None)
    if inner is not None:
        yield from _log_files(inner, depth + 1)
    for o in getattr(observer, "_observers", None) or ():
        yield from _log_files(o, depth + 1)


def reopen_logs(publisher: Any = None) -> int:
    """
    Reopen every log file that the log observers write to, so that a file
    moved away by logrotate is replaced by a new one; standard streams are
    left alone.  Returns how many were reopened.
    """
    n = 0
    for f in _log_files(globalLogPublisher if publisher is None else publisher):
        if isinstance(f, BaseLogFile):
            f.reopen()  # twistd --logfile
            n += 1
            continue
        name = getattr(f, "name", None)
        if f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) or not isinstance(name, str):
            continue
        if name.startswith("<") or f.isatty():
            continue  # "<stdout>" and the like, or a terminal: nothing to reopen
        try:
            f.flush()
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                # The observer keeps its file object; only what it points to changes.
                os.dup2(fd, f.fileno())
            finally:
                os.close(fd)
        except (OSError, ValueError) as e:
            _log.warn("SIGHUP: cannot reopen the log file {name}: {error}", name=name, error=e)
            continue
        n += 1
    return n


class ReloadService(Service):
    """
    Handles SIGHUP while running: reload the TLS factories, reopen the logs.

    ``reactor`` provides ``callFromThread``; ``install`` is ``signal.signal``
    (replaceable in tests).
    """

    def __init__(self, reactor: Any, factories: Iterable[tls.ReloadableContextFactory],
                 install: Callable[..., Any] = signal.signal,
                 reopen: Callable[[], int] = reopen_logs,
                 forward: Callable[[], object] | None = None) -> None:
        self._reactor = reactor
        #: Passes the SIGHUP on (to worker processes), if set.
        self._forward = forward
        self.factories = list(factories)
        self._install = install
        self._reopen = reopen
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        """Install the SIGHUP handler."""
        super().startService()
        try:
            self._previous = self._install(signal.SIGHUP, self._on_signal)
            self._installed = True
        except ValueError as e:  # not the main thread: no signals for us
            _log.warn("SIGHUP reload is off: {error}", error=e)

    def stopService(self) -> None:
        """Put the previous SIGHUP handler back."""
        super().stopService()
        if self._installed:
            self._install(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Signal context: only hand the work to the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Reload the TLS key and certificate; reopen the log files."""
        _log.info("SIGHUP: reloading TLS certificates and reopening logs")
        reload_tls(self.factories)
        try:
            self._reopen()
        except Exception as e:  # a log problem must not stop the reload
            _log.warn("SIGHUP: reopening the logs failed: {error}", error=e)
        if self._forward is not None:
            self._forward()
