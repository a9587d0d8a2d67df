"""
Speaking to tor, in memory: the ``ADD_ONION``/``DEL_ONION`` commands and
``HS_DESC`` events, and the life of a tor we launch (its torrc, its death
reported with its own words, its relaunch, its stop), with a fake process
reactor.  A real tor is in ``test_e2e_onion.py``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from txtorcon import TorProtocolError
from zope.interface import implementer

from entropy_appliance.onion.key import OnionKey
from entropy_appliance.onion.tor import (
    DescriptorEvent,
    LaunchedTor,
    OnionCollision,
    SharedTor,
    add_onion,
    add_onion_command,
    del_onion,
    parse_hs_desc,
    subscribe_descriptors,
)


def _result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


# --- commands and events ------------------------------------------------------------


class Control:
    """Records commands; answers each with ``reply`` (or fails with it)."""

    transport = None

    def __init__(self, reply: str | Exception = "") -> None:
        self.reply = reply
        self.commands: list[str] = []
        self.listeners: dict[str, Callable[[str], None]] = {}

    def queue_command(self, cmd: str | bytes, arg: Any = None) -> Deferred[str]:
        self.commands.append(cmd if isinstance(cmd, str) else cmd.decode())
        return fail(self.reply) if isinstance(self.reply, Exception) else succeed(self.reply)

    def add_event_listener(self, evt: str, callback: Callable[[str], None]) -> Deferred[Any]:
        self.listeners[evt] = callback
        return succeed(None)

    def when_disconnected(self) -> Deferred[Any]:
        return Deferred()


def test_hs_desc_events() -> None:
    sid = OnionKey.generate().service_id
    assert parse_hs_desc(f"UPLOADED {sid} UNKNOWN $AA~relay ID") == DescriptorEvent("UPLOADED", sid)
    assert parse_hs_desc(f"FAILED {sid} UNKNOWN $AA~relay ID REASON=UPLOAD_REJECTED") == DescriptorEvent(
        "FAILED", sid, "UPLOAD_REJECTED")
    assert parse_hs_desc("UPLOADED") is None

    control, events = Control(), []
    _result(subscribe_descriptors(control, events.append))
    control.listeners["HS_DESC"]("")
    control.listeners["HS_DESC"](f"UPLOAD {sid} UNKNOWN $AA~relay ID")
    assert events == [DescriptorEvent("UPLOAD", sid)]


def test_add_onion_is_detached_on_loopback_and_returns_the_service_id() -> None:
    key = OnionKey.generate()
    control = Control(f"ServiceID={key.service_id}")
    assert _result(add_onion(control, key, [(80, 41000), (9000, 41001)])) == key.service_id
    assert control.commands == [
        f"ADD_ONION {key.control_blob()} Flags=Detach Port=80,127.0.0.1:41000 Port=9000,127.0.0.1:41001"]
    assert add_onion_command(key, [(80, 41000)], ["AAAA", "BBBB"]).split()[2:] == [
        "Flags=Detach,V3Auth", "Port=80,127.0.0.1:41000", "ClientAuthV3=AAAA", "ClientAuthV3=BBBB"]
    assert _result(add_onion(Control("OK"), key, [(80, 1)])) is None


def test_add_onion_tells_a_collision_from_other_refusals() -> None:
    key = OnionKey.generate()
    with pytest.raises(OnionCollision, match="collision"):
        _result(add_onion(Control(TorProtocolError(550, "Onion address collision")), key, [(80, 1)]))
    with pytest.raises(TorProtocolError, match="Bad arguments"):
        _result(add_onion(Control(TorProtocolError(512, "Bad arguments to ADD_ONION")), key, [(80, 1)]))
    control = Control()
    _result(del_onion(control, key.service_id))
    assert control.commands == [f"DEL_ONION {key.service_id}"]


def test_shared_tor_is_not_ours_to_stop() -> None:
    tor = SharedTor(object(), "unix:/run/tor/control")  # type: ignore[arg-type]
    assert tor.kind == "shared"
    assert tor.describe() == "tor at unix:/run/tor/control"
    assert _result(tor.stop()) is None


# --- a tor we launch ----------------------------------------------------------------


class FakeProcess:
    """The transport of a spawned process: records signals."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[Any] = []
        self.stdin_closed = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, sig: Any) -> None:
        self.signals.append(sig)


@implementer(IReactorProcess)
class ProcessReactor(MemoryReactorClock):
    """A memory reactor that records spawned processes instead of running them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[ProcessProtocol, list[str], dict[str, str], FakeProcess]] = []

    def spawnProcess(self, processProtocol: Any, executable: Any, args: Any = (), env: Any = None,
                     path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = False,
                     childFDs: Any = None) -> Any:
        transport = FakeProcess(4000 + len(self.spawned))
        processProtocol.makeConnection(transport)
        self.spawned.append((processProtocol, list(args), dict(env or {}), transport))
        return transport


def test_launched_tor_torrc(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    extra = tmp_path / "extra-torrc"
    extra.write_text("DisableNetwork 1\n")
    data = tmp_path / "data"
    tor = LaunchedTor(reactor, "/usr/bin/tor", data_dir=str(data), extra_config=str(extra))
    tor.connect()
    [(_, args, env, transport)] = reactor.spawned
    assert args[:3] == ["/usr/bin/tor", "-f", str(data / "torrc")]
    assert env["HOME"] == str(data)
    assert transport.stdin_closed
    assert data.stat().st_mode & 0o777 == 0o700  # tor refuses a data directory others can read
    torrc = (data / "torrc").read_text().splitlines()
    assert f"ControlPort unix:{data / 'control.sock'}" in torrc
    assert "CookieAuthentication 1" in torrc
    assert "SocksPort 0" in torrc  # an onion host, not a client
    assert f"__OwningControllerProcess {os.getpid()}" in torrc  # it dies with us
    assert torrc[-1] == f"%include {extra}"
    assert tor.kind == "launched"
    assert str(data) in tor.describe()


def test_dead_tor_is_reported_in_its_own_words_and_relaunched(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    tor = LaunchedTor(reactor, "/usr/bin/tor", data_dir=str(tmp_path / "d"))
    d = tor.connect()
    process = reactor.spawned[0][0]
    process.outReceived(b"[warn] Failed to parse/validate config: Unknown option 'Bogus'\n[err] Reading co")
    process.errReceived(b"nfig failed\n")
    process.processEnded(Failure(ProcessTerminated(exitCode=1)))
    reactor.advance(0.1)
    with pytest.raises(RuntimeError) as e:
        _result(d)
    assert "exit code 1" in str(e.value)
    assert "Unknown option 'Bogus' / [err] Reading config failed" in str(e.value)

    tor.connect()  # the next attempt launches tor again
    assert len(reactor.spawned) == 2


def test_a_tor_that_never_opens_its_control_socket_times_out(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    tor = LaunchedTor(reactor, "/usr/bin/tor", data_dir=str(tmp_path / "d"), ready_timeout=5)
    d = tor.connect()
    reactor.pump([0.1] * 49)
    assert not d.called
    reactor.pump([0.1] * 2)
    with pytest.raises(RuntimeError, match="did not open its control socket within 5 s"):
        _result(d)
    tor.connect()
    assert len(reactor.spawned) == 1  # still running: no second tor


def test_stop_terminates_then_kills_and_removes_a_temporary_directory() -> None:
    reactor = ProcessReactor()
    tor = LaunchedTor(reactor, "/usr/bin/tor", stop_timeout=10)
    connecting = tor.connect()
    data_dir = tor.data_dir
    assert data_dir is not None and os.path.isdir(data_dir)
    process, _, _, transport = reactor.spawned[0]
    stopped = tor.stop()
    assert transport.signals == ["TERM"]
    reactor.advance(9.9)
    assert transport.signals == ["TERM"]
    reactor.advance(0.1)
    assert transport.signals == ["TERM", signal.SIGKILL]
    assert not stopped.called
    process.processEnded(Failure(ProcessDone(0)))
    assert _result(stopped) is None
    assert not os.path.exists(data_dir)
    reactor.advance(0.1)
    with pytest.raises(RuntimeError, match="exited with status 0"):
        _result(connecting)
