"""
The onion service in memory: keys, options, and the state machine of
connecting to tor, adding the service, losing tor and coming back.

Tor is played by a fake control protocol; time by ``MemoryReactorClock``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.python.failure import Failure
from txtorcon import TorProtocolError
from zope.interface.verify import verifyObject

from entropy_appliance.onion import (
    Backoff,
    OnionKey,
    OnionKeyError,
    OnionPort,
    OnionService,
    load_client_auth,
    load_key,
    load_or_create_key,
    onion_address,
    parse_key,
    parse_ports,
)

# A key that tor 0.4.9 generated (ADD_ONION NEW:ED25519-V3) and the ServiceID
# it reported for it.
TOR_KEY = ("ED25519-V3:qHmghiJezPiCBdYiGQPkKOpR484FN1zsK006kq4vLW8yOu0+2fcODlSXGiD"
           "Tz3qM4SEjROPEz5LpROUXnUvw+A==")
TOR_SERVICE_ID = "gt7xxg5hh4rucst6nrecxjipwhmxkqydz54clsxoxlx3sfihl5pperad"

PORTS = [OnionPort(80, "http"), OnionPort(9000, "stream")]


# --- keys -------------------------------------------------------------------


def test_tor_generated_key_names_the_address_tor_reported() -> None:
    key = parse_key(TOR_KEY.encode())
    assert key.service_id == TOR_SERVICE_ID
    assert key.address == TOR_SERVICE_ID + ".onion"
    assert key.control_blob() == TOR_KEY
    assert TOR_KEY not in repr(key)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_public_key_matches_cryptography(seed: bytes) -> None:
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    expected = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert OnionKey(bytes(h)).public_key == expected


def test_address_format() -> None:
    address = onion_address(bytes(32))
    assert len(address) == 56 and address.endswith("d")  # version 3 in the last character
    assert OnionKey.generate().service_id != OnionKey.generate().service_id


def test_key_created_0600_then_reused(tmp_path: Any) -> None:
    path = str(tmp_path / "certs" / "onion_ed25519.key")
    key, created = load_or_create_key(path)
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as f:
        data = f.read()
    # tor's own hs_ed25519_secret_key format
    assert data.startswith(b"== ed25519v1-secret: type0 ==\0\0\0") and len(data) == 96
    again, created_again = load_or_create_key(path)
    assert not created_again
    assert again.address == key.address
    assert [n for n in os.listdir(tmp_path / "certs")] == ["onion_ed25519.key"]


def test_corrupt_key_is_an_error_and_is_kept(tmp_path: Any) -> None:
    path = tmp_path / "k"
    good = OnionKey.generate().file_bytes()
    for bad in (b"", b"garbage", good[:-1], good[:32] + b"\xff" * 64, b"ED25519-V3:!!!"):
        path.write_bytes(bad)
        with pytest.raises(OnionKeyError, match="corrupt"):
            load_or_create_key(str(path))
        assert path.read_bytes() == bad


def test_text_key_format_accepted(tmp_path: Any) -> None:
    path = tmp_path / "k"
    path.write_text("PrivateKey=" + TOR_KEY + "\n")
    assert load_key(str(path)).service_id == TOR_SERVICE_ID


# --- ports and client auth ----------------------------------------------------


def test_parse_ports() -> None:
    assert parse_ports("80:http,9000:stream") == PORTS
    assert parse_ports(" 443:http ") == [OnionPort(443, "http")]
    for bad in ("", "80", "80:ftp", "0:http", "70000:http", "80:http,80:stream", "x:http"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def _x25519_b32() -> str:
    pub = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b32encode(pub).decode().rstrip("=")


def test_client_auth_dir(tmp_path: Any) -> None:
    a, b = _x25519_b32(), _x25519_b32()
    (tmp_path / "alice.auth").write_text(f"descriptor:x25519:{a}\n")
    (tmp_path / "bob.auth").write_text(f"descriptor:x25519:{b.lower()}")
    (tmp_path / "README").write_text("not a key")
    assert load_client_auth(str(tmp_path)) == [a, b]
    (tmp_path / "carol.auth").write_text("descriptor:x25519:AAAA")
    with pytest.raises(ValueError, match="carol.auth"):
        load_client_auth(str(tmp_path))


def test_client_auth_empty_dir_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="no .auth files"):
        load_client_auth(str(tmp_path))


# --- the state machine ----------------------------------------------------------


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
    control.event("HS_DESC", f"UPLOADED {OnionKey.generate().service_id} UNKNOWN $AA~relay ID")
    control.event("HS_DESC", f"FAILED {key.service_id} UNKNOWN $AA~relay ID REASON=UPLOAD_REJECTED")
    assert service.status()["state"] == "starting"
    assert "UPLOAD_REJECTED" in service.status()["detail"]

    control.event("HS_DESC", f"UPLOAD {key.service_id} UNKNOWN $AA~relay ID")
    control.event("HS_DESC", f"UPLOADED {key.service_id} UNKNOWN $AA~relay ID")
    assert service.status()["state"] == "published"
    assert service.status()["descriptor_uploads"] == 1


def test_lost_tor_reconnects_with_backoff_and_republishes(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    control = connector.accept()
    _add_onion(control, key)
    control.event("HS_DESC", f"UPLOADED {key.service_id} UNKNOWN $AA~relay ID")

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
    control.event("HS_DESC", f"UPLOADED {key.service_id} UNKNOWN $AA~relay ID")
    assert service.status()["state"] == "published"

    # success resets the backoff
    control.drop()
    assert service.status()["retry_in"] == 1


def test_stale_connection_events_are_ignored(setup: Setup) -> None:
    reactor, connector, service, key = setup
    service.startService()
    old = connector.accept()
    _add_onion(old, key)
    old.drop()
    reactor.advance(1)
    new = connector.accept()
    _add_onion(new, key)
    old.event("HS_DESC", f"UPLOADED {key.service_id} UNKNOWN $AA~relay ID")
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
    service.startService()
    control = connector.accept()
    _add_onion(control, key)
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
    service.startService()
    control = connector.accept()
    _add_onion(control, key)
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


# --- options ------------------------------------------------------------------


def _options(args: list[str]) -> Any:
    from entropy_appliance.tap import Options

    o = Options()
    o.parseOptions(["--source", "kernel", *args])
    return o


def test_options_default_off() -> None:
    assert _options([])["onion"] is False


def test_options_missing_tor_binary_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(usage.UsageError, match="apt install tor"):
        _options(["--onion", "--tor-binary", str(tmp_path / "no-tor"),
                  "--onion-key", str(tmp_path / "k")])


def test_options_corrupt_key_is_a_clear_error(tmp_path: Any) -> None:
    (tmp_path / "k").write_bytes(b"not a key")
    with pytest.raises(usage.UsageError, match="corrupt"):
        _options(["--onion", "--tor-control", "unix:/run/tor/control", "--onion-key", str(tmp_path / "k")])
    assert (tmp_path / "k").read_bytes() == b"not a key"


def test_options_bad_values(tmp_path: Any) -> None:
    key = ["--onion-key", str(tmp_path / "k"), "--tor-control", "unix:/x"]
    with pytest.raises(usage.UsageError, match="--onion-ports"):
        _options(["--onion", "--onion-ports", "80:gopher", *key])
    with pytest.raises(usage.UsageError, match="--tor-control"):
        _options(["--onion", "--onion-key", str(tmp_path / "k"), "--tor-control", "carrier-pigeon:9"])
    with pytest.raises(usage.UsageError, match="--onion-client-auth"):
        _options(["--onion", "--onion-client-auth", str(tmp_path), *key])


def test_options_valid(tmp_path: Any) -> None:
    (tmp_path / "pw").write_text("secret\n")
    o = _options(["--onion", "--onion-ports", "80:http", "--tor-control", "tcp:127.0.0.1:9051",
                  "--tor-password-file", str(tmp_path / "pw"), "--onion-key", str(tmp_path / "k")])
    assert o["onion-ports"] == [OnionPort(80, "http")]
    assert o["tor-password"] == "secret"
    assert not (tmp_path / "k").exists()  # created by makeService, not by parsing
