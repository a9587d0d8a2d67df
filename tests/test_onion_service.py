"""
The onion service in memory: listening on loopback, connecting to tor,
adding the service, losing tor and coming back, stopping.

Tor is played by a fake control protocol; time by ``MemoryReactorClock``.
The decisions themselves are tested in ``test_onion_machine.py``; these
tests check that the service carries them out against tor.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from txtorcon import TorProtocolError
from zope.interface.verify import verifyObject

from entropy_appliance.core.backoff import Backoff
from entropy_appliance.onion import OnionKey, OnionPort, OnionService

PORTS = [OnionPort(80, "http"), OnionPort(9000, "stream")]


def _x25519_b32() -> str:
    pub = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b32encode(pub).decode().rstrip("=")



class FakeTransport:
    """Closing it drops the fake control connection, as a socket would."""

    def __init__(self, control: FakeControl) -> None:
        self._control = control

    def loseConnection(self) -> None:
        self._control.drop()


class FakeControl:
    """Plays tor's side of the control protocol, one command at a time."""

    def __init__(self) -> None:
        self.transport: Any = FakeTransport(self)
        self.commands: list[tuple[str, Deferred[str]]] = []
        self.listeners: dict[str, list[Callable[[str], None]]] = {}
        self._watchers: list[Deferred[Any]] = []
        self.connected = True

    def queue_command(self, cmd: str | bytes, arg: Any = None) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.commands.append((cmd if isinstance(cmd, str) else cmd.decode(), d))
        return d

    def add_event_listener(self, evt: str, callback: Callable[[str], None]) -> Deferred[Any]:
        self.listeners.setdefault(evt, []).append(callback)
        return succeed(None)

    def when_disconnected(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._watchers.append(d)
        return d

    def drop(self) -> None:
        if not self.connected:
            return
        self.connected = False
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            d.errback(Failure(ConnectionLost()))

    def event(self, name: str, text: str) -> None:
        for cb in self.listeners.get(name, []):
            cb(text)

    def answer(self, reply: str = "") -> str:
        """Answer the oldest unanswered command with success; return it."""
        for cmd, d in self.commands:
            if not d.called:
                d.callback(reply)
                return cmd
        raise AssertionError("no command pending")

    def fail(self, code: int, text: str) -> str:
        for cmd, d in self.commands:
            if not d.called:
                d.errback(TorProtocolError(code, text))
                return cmd
        raise AssertionError("no command pending")

    def pending(self) -> list[str]:
        return [cmd for cmd, d in self.commands if not d.called]


class FakeConnector:
    """Hands out control connections when the test says so."""

    kind = "shared"

    def __init__(self) -> None:
        self.attempts: list[Deferred[Any]] = []
        self.stopped = 0

    def describe(self) -> str:
        return "tor at unix:/fake/control"

    def connect(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append(d)
        return d

    def stop(self) -> Deferred[None]:
        self.stopped += 1
        return succeed(None)

    def accept(self) -> FakeControl:
        control = FakeControl()
        self.attempts[-1].callback(control)
        return control


class Reactor(MemoryReactorClock):
    """A memory reactor whose loopback listeners get distinct port numbers."""

    def __init__(self) -> None:
        super().__init__()
        self._next_port = 41000
        self.stopped_ports: list[int] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self.tcpServers.append((port, factory, backlog, interface))
        number = self._next_port
        self._next_port += 1
        reactor = self

        class Port:
            def getHost(self) -> IPv4Address:
                return IPv4Address("TCP", interface, number)

            def stopListening(self) -> None:
                reactor.stopped_ports.append(number)

        return Port()


Setup = tuple[Reactor, FakeConnector, OnionService, OnionKey]


@pytest.fixture
def setup() -> Setup:
    reactor = Reactor()
    connector = FakeConnector()
    key = OnionKey.generate()
    http, stream = Factory(), Factory()
    service = OnionService(reactor, connector, key, PORTS, {"http": http, "stream": stream},
                           attempt_timeout=30, backoff=Backoff(initial=1, maximum=8))
    return reactor, connector, service, key


def _add_onion(control: FakeControl, key: OnionKey) -> str:
    """Let the service subscribe and ADD_ONION; tor accepts. Returns the command."""
    assert "HS_DESC" in control.listeners
    cmd = control.answer(f"ServiceID={key.service_id}")
    assert cmd.startswith("ADD_ONION ")
    return cmd


def _hs_desc(control: FakeControl, action: str, service_id: str, *extra: str) -> None:
    """tor reports an ``HS_DESC`` event about ``service_id``."""
    control.event("HS_DESC", " ".join([action, service_id, "UNKNOWN", "$AA~relay", "ID", *extra]))


def _added(setup: Setup) -> FakeControl:
    """Start the service and let tor accept it; the control connection."""
    _, connector, service, key = setup
    service.startService()
    control = connector.accept()
    _add_onion(control, key)
    return control


def test_provides_iservice(setup: Setup) -> None:
    assert verifyObject(IService, setup[2])


def test_startup_listens_on_loopback_and_does_not_wait_for_tor(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    # both targets listen at once, on loopback, on ephemeral ports
    assert sorted((port, iface) for port, _, _, iface in reactor.tcpServers) == [
        (0, "127.0.0.1"), (0, "127.0.0.1")]
    assert len(connector.attempts) == 1
    status = service.status()
    assert status["state"] == "starting"
    assert status["address"] is None
    assert status["ports"] == {"80": "http", "9000": "stream"}
    assert status["tor"] == "shared"


def test_address_known_when_tor_accepts_published_on_upload(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    control = connector.accept()
    cmd = _add_onion(control, key)
    blob, flags, p80, p9000 = cmd.split()[1:]
    assert blob == key.control_blob()
    assert flags == "Flags=Detach"
    http_port, stream_port = service.local_port("http"), service.local_port("stream")
    assert http_port != stream_port
    assert p80 == f"Port=80,127.0.0.1:{http_port}"
    assert p9000 == f"Port=9000,127.0.0.1:{stream_port}"
    status = service.status()
    assert status["address"] == key.address and len(status["address"]) == 62
    assert status["state"] == "starting"

    # another service's upload, and a failed upload, change nothing
    _hs_desc(control, "UPLOADED", OnionKey.generate().service_id)
    _hs_desc(control, "FAILED", key.service_id, "REASON=UPLOAD_REJECTED")
    assert service.status()["state"] == "starting"
    assert "UPLOAD_REJECTED" in service.status()["detail"]

    _hs_desc(control, "UPLOAD", key.service_id)
    _hs_desc(control, "UPLOADED", key.service_id)
    assert service.status()["state"] == "published"
    assert service.status()["descriptor_uploads"] == 1


def test_lost_tor_reconnects_with_backoff_and_republishes(setup: Setup) -> None:
    reactor, connector, service, key = setup
    control = _added(setup)
    _hs_desc(control, "UPLOADED", key.service_id)

    control.drop()
    status = service.status()
    assert status["state"] == "failed"
    assert "lost the control connection" in status["detail"]
    assert status["address"] == key.address  # the key still names the service
    assert status["retry_in"] == 1
    assert reactor.stopped_ports == []  # the loopback listeners keep serving

    # tor is down for a while: each refused attempt waits twice as long, up to the cap
    delays = []
    for _ in range(5):
        before = len(connector.attempts)
        delay = service.status()["retry_in"]
        delays.append(delay)
        reactor.advance(delay - 0.01)
        assert len(connector.attempts) == before
        reactor.advance(0.01)
        assert len(connector.attempts) == before + 1
        assert service.status()["state"] == "starting"
        connector.attempts[-1].errback(Failure(ConnectionRefusedError()))
        assert service.status()["state"] == "failed"
    assert delays == [1, 2, 4, 8, 8]

    reactor.advance(8)
    control = connector.accept()
    _add_onion(control, key)
    assert service.status()["state"] == "starting"
    _hs_desc(control, "UPLOADED", key.service_id)
    assert service.status()["state"] == "published"

    # success resets the backoff
    control.drop()
    assert service.status()["retry_in"] == 1


def test_stale_connection_events_are_ignored(setup: Setup) -> None:
    reactor, connector, service, key = setup
    old = _added(setup)
    old.drop()
    reactor.advance(1)
    new = connector.accept()
    _add_onion(new, key)
    _hs_desc(old, "UPLOADED", key.service_id)
    assert service.status()["state"] == "starting"


def test_collision_replaces_a_leftover_service(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    control = connector.accept()
    assert control.fail(550, "Onion address collision").startswith("ADD_ONION")
    assert control.answer() == f"DEL_ONION {key.service_id}"
    _add_onion(control, key)
    assert service.status()["address"] == key.address


def test_rejected_add_onion_fails_closes_and_retries(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    control = connector.accept()
    control.fail(512, "Bad arguments to ADD_ONION")
    status = service.status()
    assert status["state"] == "failed"
    assert "Bad arguments" in status["detail"]
    assert not control.connected  # we hung up; the retry gets a fresh connection
    reactor.advance(1)
    assert len(connector.attempts) == 2
    _add_onion(connector.accept(), key)
    assert service.status()["address"] == key.address


def test_wrong_service_id_is_a_failure(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    control = connector.accept()
    control.answer(f"ServiceID={OnionKey.generate().service_id}")
    assert service.status()["state"] == "failed"
    assert service.status()["address"] is None


def test_silent_tor_times_out(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    reactor.advance(29)
    assert service.status()["state"] == "starting"
    reactor.advance(1)
    assert service.status()["state"] == "failed"
    reactor.advance(1)
    assert len(connector.attempts) == 2


def test_stop_removes_service_and_releases_tor(setup: Setup) -> None:
    reactor, connector, service, key = setup
    control = _added(setup)
    done = service.stopService()
    assert control.pending() == [f"DEL_ONION {key.service_id}"]
    assert not done.called
    control.answer()
    assert done.called
    assert not control.connected
    assert connector.stopped == 1
    assert sorted(reactor.stopped_ports) == [41000, 41001]
    reactor.advance(100)
    assert len(connector.attempts) == 1  # no reconnection after stop


def test_stop_does_not_hang_on_a_silent_tor(setup: Setup) -> None:
    reactor, connector, service, key = setup
    _added(setup)
    done = service.stopService()
    reactor.advance(5)
    assert done.called
    assert connector.stopped == 1


def test_stop_while_waiting_to_retry_or_connecting(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    connector.attempts[-1].errback(Failure(ConnectionRefusedError()))
    done = service.stopService()
    assert done.called
    reactor.advance(100)
    assert len(connector.attempts) == 1

    service.startService()
    assert len(connector.attempts) == 2
    done = service.stopService()  # the attempt in flight is cancelled
    assert done.called
    assert connector.attempts[-1].called
    reactor.advance(100)
    assert len(connector.attempts) == 2


def test_client_auth_in_add_onion() -> None:
    reactor = Reactor()
    connector = FakeConnector()
    key = OnionKey.generate()
    a, b = _x25519_b32(), _x25519_b32()
    service = OnionService(reactor, connector, key, [OnionPort(80, "http")], {"http": Factory()},
                           client_auth=[a, b])
    service.startService()
    assert len(reactor.tcpServers) == 1
    cmd = _add_onion(connector.accept(), key)
    assert "Flags=Detach,V3Auth" in cmd.split()
    assert cmd.split()[-2:] == [f"ClientAuthV3={a}", f"ClientAuthV3={b}"]
    assert service.status()["client_auth"] == 2


def test_missing_target_factory_is_refused() -> None:
    service = OnionService(Reactor(), FakeConnector(), OnionKey.generate(), PORTS, {"http": Factory()})
    with pytest.raises(ValueError, match="stream"):
        service.startService()



def test_lost_while_adding_retries_and_ignores_the_late_reply(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    control = connector.accept()
    assert control.pending()[0].startswith("ADD_ONION ")
    control.drop()
    assert service.status()["state"] == "failed"
    assert "lost the control connection" in service.status()["detail"]
    # tor's answer to the old connection's ADD_ONION arrives after all
    control.answer(f"ServiceID={key.service_id}")
    assert service.status()["state"] == "failed"
    assert service.status()["address"] is None
    reactor.advance(1)
    _add_onion(connector.accept(), key)
    assert service.status()["address"] == key.address


class AnsweringControl(FakeControl):
    """A tor whose every reply is already there when the command is sent."""

    def __init__(self, service_id: str) -> None:
        super().__init__()
        self.service_id = service_id

    def queue_command(self, cmd: str | bytes, arg: Any = None) -> Deferred[str]:
        d = super().queue_command(cmd, arg)
        self.answer(f"ServiceID={self.service_id}")
        return d


class ImmediateConnector(FakeConnector):
    """Refuses at once the first time, then connects at once."""

    def __init__(self, service_id: str) -> None:
        super().__init__()
        self.service_id = service_id

    def connect(self) -> Deferred[Any]:
        self.attempts.append(Deferred())
        if len(self.attempts) == 1:
            return fail(ConnectionRefusedError())
        return succeed(AnsweringControl(self.service_id))


def test_answers_that_come_at_once_are_taken_in_order() -> None:
    reactor = Reactor()
    key = OnionKey.generate()
    connector = ImmediateConnector(key.service_id)
    service = OnionService(reactor, connector, key, PORTS, {"http": Factory(), "stream": Factory()},
                           attempt_timeout=30, backoff=Backoff(initial=1, maximum=8))
    service.startService()
    # The refusal wins over the attempt's own timeout: retry in 1 s, not 30.
    assert service.status()["state"] == "failed"
    assert service.status()["retry_in"] == 1
    reactor.advance(1)
    assert len(connector.attempts) == 2
    assert service.status()["address"] == key.address
    assert "accepted" in service.status()["detail"]
    reactor.advance(100)  # the cancelled timeout does not fire
    assert service.status()["state"] == "starting"
    assert len(connector.attempts) == 2
