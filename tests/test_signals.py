"""
Signals, in memory: the graceful stop (drain in-flight HTTP, close raw
streams, deadline), the SIGHUP reload of TLS certificates (by fingerprint)
and of log files, and the handler that only schedules work on the reactor.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface.verify import verifyObject

from entropy_appliance.app.lifecycle import STOP_PHASES, Lifecycle
from entropy_appliance.app.signals import GracefulStop, ReloadService, reload_tls, reopen_logs
from entropy_appliance.core.peers import PeerPolicy
from entropy_appliance.net import tls
from entropy_appliance.net.limits import InFlight, PeerGuard
from entropy_appliance.net.stream import StreamFactory
from entropy_appliance.web import EntropyWeb
from entropy_appliance.web.limits import limit_site
from tests.web_helpers import seeded_pool

# -- graceful stop ---------------------------------------------------------------


class FakeRequest:
    def __init__(self) -> None:
        self.finished: Deferred[None] = Deferred()

    def notifyFinish(self) -> Deferred[None]:
        return self.finished


def test_stop_with_nothing_in_flight_is_immediate() -> None:
    closed: list[int] = []
    stop = GracefulStop(InFlight(), Clock(), 10, close_streams=lambda: closed.append(1) or 3)
    assert verifyObject(IService, stop)
    stop.startService()
    assert stop.stopService() is None
    assert closed == [1]


def test_stop_waits_for_requests_in_flight() -> None:
    inflight, clock = InFlight(), Clock()
    a, b = FakeRequest(), FakeRequest()
    inflight.begin(a)  # type: ignore[arg-type]
    inflight.begin(b)  # type: ignore[arg-type]
    stop = GracefulStop(inflight, clock, 10)
    stop.startService()
    d = stop.stopService()
    assert isinstance(d, Deferred) and not d.called
    a.finished.callback(None)
    clock.advance(5)
    assert not d.called
    b.finished.errback(ConnectionError("client went away"))  # also counts as done
    assert d.called
    clock.advance(100)  # the deadline timer is gone


def test_stop_gives_up_at_the_deadline() -> None:
    inflight, clock = InFlight(), Clock()
    inflight.begin(FakeRequest())  # type: ignore[arg-type]
    stop = GracefulStop(inflight, clock, 10)
    stop.startService()
    d = stop.stopService()
    assert isinstance(d, Deferred)
    clock.advance(9.9)
    assert not d.called
    clock.advance(0.1)
    assert d.called


class SlowClientTransport(StringTransport):
    """A transport whose buffer fills: it pauses its push producer past 64 KiB unread."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.received = b""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > 64 * 1024:
            self.producer.pauseProducing()

    def read_all(self) -> None:
        """The client empties the buffer; the transport asks for more."""
        self.received += self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()


def test_an_in_flight_streamed_response_completes_and_streams_are_closed() -> None:
    """The real site: a 1 MiB response to a slow reader is in flight when the stop begins."""
    clock = Clock()
    pool = seeded_pool(clock)
    web = EntropyWeb(pool, clock)
    guard = PeerGuard(PeerPolicy(idle_timeout=0), clock)
    site = web.site(timeout=None, reactor=clock)
    http = limit_site(site, guard, observe=web.observe)
    streams = StreamFactory(pool, chunk_size=4096)
    stop = GracefulStop(guard.inflight, clock, 10, close_streams=streams.close_all)

    addr = IPv4Address("TCP", "192.0.2.1", 1)
    proto = http.buildProtocol(addr)
    t = SlowClientTransport(peerAddress=addr)
    proto.makeConnection(t)
    stream = guard.wrap_stream(streams).buildProtocol(addr)
    st = StringTransport(peerAddress=addr)
    stream.makeConnection(st)

    proto.dataReceived(b"GET /v1/random?bytes=1048576 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert guard.inflight.count == 1  # the response waits for the client to read
    stop.startService()
    d = stop.stopService()
    assert isinstance(d, Deferred) and not d.called
    assert st.disconnecting  # the raw stream is closed at once
    for _ in range(100):
        if d.called:
            break
        t.read_all()  # the client keeps reading
    assert d.called
    head, _, body = (t.received + t.value()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 1048576


# -- SIGHUP: TLS -----------------------------------------------------------------


class FakeTLSProtocol:
    """What serverConnectionForTLS reads from a TLSMemoryBIOProtocol: its factory."""

    class factory:  # noqa: N801
        wrappedFactory = None


def served_fingerprint(factory: tls.ReloadableContextFactory) -> str:
    connection = factory.serverConnectionForTLS(FakeTLSProtocol())
    cert = connection.get_certificate()
    assert cert is not None
    return tls.fingerprint(cert.to_cryptography())


def test_reload_serves_the_new_certificate_to_new_handshakes(tmp_path: Path) -> None:
    key, cert = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    old = tls.generate_self_signed(key, cert, "old.example")
    factory = tls.ReloadableContextFactory(tls.load_material(key, cert))
    assert served_fingerprint(factory) == tls.fingerprint(old.certificate)
    established = factory.serverConnectionForTLS(FakeTLSProtocol())
    new = tls.generate_self_signed(key, cert, "new.example")
    assert reload_tls([factory]) == (1, 0)
    assert served_fingerprint(factory) == tls.fingerprint(new.certificate)
    # A connection made before the reload keeps what it had.
    kept = established.get_certificate()
    assert kept is not None and tls.fingerprint(kept.to_cryptography()) == tls.fingerprint(old.certificate)


def test_a_bad_new_certificate_is_logged_and_the_old_one_kept(tmp_path: Path) -> None:
    key, cert = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    good = tls.generate_self_signed(key, cert)
    factory = tls.ReloadableContextFactory(tls.load_material(key, cert))
    Path(cert).write_text("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    events: list[dict[str, Any]] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(events.append)
    try:
        assert reload_tls([factory]) == (0, 1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert served_fingerprint(factory) == tls.fingerprint(good.certificate)
    errors = [e for e in events if e.get("log_level") == LogLevel.error]
    assert errors and "is not a PEM certificate" in errors[0]["error"]
    # A key that does not match the certificate is refused too.
    tls.generate_self_signed(str(tmp_path / "other.key"), cert)
    assert reload_tls([factory]) == (0, 1)
    assert served_fingerprint(factory) == tls.fingerprint(good.certificate)


# -- SIGHUP: the handler and logs --------------------------------------------------


class FakeReactor:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.append((f, args))


def test_the_signal_handler_only_schedules_the_reload() -> None:
    installed: dict[int, Any] = {}

    def install(signum: int, handler: Any) -> Any:
        previous = installed.get(signum, signal.SIG_DFL)
        installed[signum] = handler
        return previous

    reopened: list[int] = []
    reactor = FakeReactor()
    svc = ReloadService(reactor, [], install=install, reopen=lambda: reopened.append(1) or 1)
    svc.startService()
    handler = installed[signal.SIGHUP]
    handler(signal.SIGHUP, None)
    assert reopened == [] and len(reactor.calls) == 1
    f, args = reactor.calls[0]
    f(*args)
    assert reopened == [1]
    svc.stopService()
    assert installed[signal.SIGHUP] == signal.SIG_DFL


def test_reopen_logs_after_rotation(tmp_path: Path) -> None:
    # twistd --logfile: a LogFile; twist --log-file: a plain file.
    logfile = LogFile.fromFullPath(str(tmp_path / "twistd.log"))
    plain = open(tmp_path / "twist.log", "a")  # noqa: SIM115
    publisher = LogPublisher(
        FilteringLogObserver(textFileLogObserver(logfile), [LogLevelFilterPredicate()]),
        textFileLogObserver(plain),
    )
    log = Logger(observer=publisher)
    log.info("before")
    os.rename(tmp_path / "twistd.log", tmp_path / "twistd.log.1")
    os.rename(tmp_path / "twist.log", tmp_path / "twist.log.1")
    assert reopen_logs(publisher) == 2
    log.info("after")
    plain.flush()
    assert "before" in (tmp_path / "twistd.log.1").read_text()
    assert "after" in (tmp_path / "twistd.log").read_text()
    assert "before" in (tmp_path / "twist.log.1").read_text()
    assert "after" in (tmp_path / "twist.log").read_text()
    assert "after" not in (tmp_path / "twist.log.1").read_text()
    plain.close()
    logfile.close()


# -- the stop phases ---------------------------------------------------------------


class Recorder(Service):
    """A service that notes its start and stop; its stop can be held open."""

    def __init__(self, label: str, log: list[str], hold: bool = False, fail: bool = False) -> None:
        self.label = label
        self.log = log
        self.hold = hold
        self.fail = fail
        self.stopping: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.label}")

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.log.append(f"stop {self.label}")
        if self.fail:
            raise RuntimeError("broken on purpose")
        if self.hold:
            self.stopping = Deferred()
            return self.stopping
        return None


def fired(d: Deferred[None]) -> list[None]:
    """A list that gets one item when ``d`` (and every Deferred it waits on) has fired."""
    results: list[None] = []
    d.addCallback(results.append)
    return results


def test_phases_start_last_first_and_stop_in_order_each_waiting() -> None:
    log: list[str] = []
    tree = Lifecycle()
    assert tree.phases == STOP_PHASES
    # Added in an order unlike either: the phases decide.
    core = tree.add("pipeline", Recorder("pipeline", log), "pipeline")
    tree.add("listeners", Recorder("http", log, hold=True))
    tree.add("notify", Recorder("notify", log))
    drain = tree.add("drain", Recorder("drain", log, hold=True), "drain")
    tree.add("listeners", Recorder("stream", log))
    assert tree.getServiceNamed("pipeline") is core
    tree.privilegedStartService()
    tree.startService()
    assert log == ["start pipeline", "start drain", "start http", "start stream", "start notify"]
    assert [tree.phase_of(s) for s in tree] == ["pipeline", "drain", "listeners", "listeners", "notify"]

    log.clear()
    done = fired(tree.stopService())
    # Both listeners stop together; the drain waits for the one still closing.
    assert log == ["stop notify", "stop stream", "stop http"]
    http = tree.phase("listeners")[0]
    assert isinstance(http, Recorder) and http.stopping is not None
    http.stopping.callback(None)
    assert log[-1] == "stop drain" and not done
    assert core.running  # the pipeline outlives the drain
    assert isinstance(drain, Recorder) and drain.stopping is not None
    drain.stopping.callback(None)
    assert log[-1] == "stop pipeline" and done and not core.running


def test_a_failing_stop_is_logged_and_the_next_phase_still_stops() -> None:
    log: list[str] = []
    tree = Lifecycle()
    tree.add("listeners", Recorder("bad", log, fail=True))
    tree.add("pipeline", Recorder("pipeline", log))
    tree.startService()
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        done = fired(tree.stopService())
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert done and log[-2:] == ["stop bad", "stop pipeline"]
    assert any(e.get("phase") == "listeners" and "log_failure" in e for e in seen)


def test_phases_are_joined_by_name_only() -> None:
    tree = Lifecycle()
    with pytest.raises(ValueError, match="unknown phase 'listners'"):
        tree.add("listners", Service())
    with pytest.raises(ValueError, match="add\\(phase, service\\)"):
        Service().setServiceParent(tree)
    with pytest.raises(ValueError, match="repeat"):
        Lifecycle(["drain", "drain"])


def test_the_drain_holds_the_pipeline_until_the_deadline() -> None:
    """On a MemoryReactorClock: a response in flight keeps seed flowing until --shutdown-timeout."""
    reactor = MemoryReactorClock()
    log: list[str] = []
    inflight = InFlight()
    inflight.begin(FakeRequest())  # type: ignore[arg-type]
    tree = Lifecycle()
    pipeline = tree.add("pipeline", Recorder("pipeline", log), "pipeline")
    tree.add("drain", GracefulStop(inflight, reactor, 10), "drain")
    tree.add("listeners", Recorder("http", log))
    tree.startService()
    done = fired(tree.stopService())
    assert log[-1] == "stop http" and pipeline.running
    reactor.advance(9.9)
    assert not done and pipeline.running
    reactor.advance(0.1)
    assert done and log[-1] == "stop pipeline"
