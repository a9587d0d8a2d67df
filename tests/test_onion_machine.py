"""
The onion service's lifecycle machine, with plain calls and made-up times:
no reactor, no tor.  Each test drives one path through the machine and
checks both the actions it asks for and the state users would see.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from entropy_appliance.core.backoff import Backoff
from entropy_appliance.onion.machine import (
    AddOnion,
    CancelTimer,
    Connect,
    Disconnect,
    OnionMachine,
    OnionState,
    Phase,
    SetTimer,
    Withdraw,
)

SID = "a" * 55 + "d"
OTHER = "b" * 55 + "d"
TOR = "tor at unix:/run/tor/control"
TIMEOUT = 30.0


def machine() -> OnionMachine:
    return OnionMachine(SID, lambda: TOR, backoff=Backoff(initial=1, maximum=8), attempt_timeout=TIMEOUT)


def adding(now: float = 0.0) -> OnionMachine:
    """A machine connected to tor and waiting for ADD_ONION's reply (attempt 1)."""
    m = machine()
    assert m.start(now) == [SetTimer(TIMEOUT), Connect(1)]
    assert m.connected(1) == [AddOnion(1)]
    return m


def added(now: float = 0.0) -> OnionMachine:
    m = adding(now)
    assert m.added(1, SID, now) == [CancelTimer()]
    return m


def test_not_started() -> None:
    s = machine().status(0)
    assert (s.state, s.detail, s.address, s.descriptor_uploads, s.retry_in) == (
        OnionState.STARTING, "not started", None, 0, None)


def test_start_connects_within_a_timeout() -> None:
    m = machine()
    assert m.start(5.0) == [SetTimer(TIMEOUT), Connect(1)]
    assert m.phase is Phase.CONNECTING
    s = m.status(5.0)
    assert s.state is OnionState.STARTING
    assert s.detail == f"connecting to {TOR}"
    with pytest.raises(RuntimeError):
        m.start(6.0)


def test_connected_adds_the_service() -> None:
    m = adding()
    assert m.phase is Phase.ADDING
    assert m.status(1).detail == f"connected to {TOR}; adding the onion service"
    assert m.status(1).state is OnionState.STARTING


def test_accepted_names_the_address_then_an_upload_publishes() -> None:
    m = added()
    s = m.status(1)
    assert m.phase is Phase.ADDED
    assert s.state is OnionState.STARTING  # accepted is not yet reachable
    assert s.address == SID + ".onion"
    assert "waiting for the descriptor upload" in s.detail
    assert m.uploaded(1, OTHER) == []  # another service's descriptor
    assert m.status(1).state is OnionState.STARTING
    m.uploaded(1, SID)
    s = m.status(2)
    assert (s.state, s.detail, s.descriptor_uploads) == (OnionState.PUBLISHED, "descriptor uploaded", 1)
    m.uploaded(1, SID)  # tor re-uploads the descriptor now and then
    assert m.phase is Phase.PUBLISHED
    assert m.status(3).descriptor_uploads == 2


def test_upload_before_the_reply_publishes_on_the_reply() -> None:
    m = adding()
    m.uploaded(1, SID)
    assert m.status(1).state is OnionState.STARTING
    assert m.added(1, SID, 1) == [CancelTimer()]
    assert m.phase is Phase.PUBLISHED


def test_failed_uploads_are_reported_until_one_succeeds() -> None:
    m = added()
    m.upload_failed(1, OTHER, "UPLOAD_REJECTED")
    assert "failed" not in m.status(1).detail
    m.upload_failed(1, SID, "UPLOAD_REJECTED")
    s = m.status(1)
    assert s.state is OnionState.STARTING  # tor retries on its own
    assert s.detail == "a descriptor upload failed (UPLOAD_REJECTED); tor keeps trying"
    m.uploaded(1, SID)
    m.upload_failed(1, SID, None)
    assert m.status(2).detail == "descriptor uploaded"


def test_wrong_service_id_fails_without_an_address() -> None:
    m = adding()
    assert m.added(1, OTHER, 2.0) == [Disconnect(1), SetTimer(1)]
    s = m.status(2.0)
    assert s.state is OnionState.FAILED
    assert s.address is None
    assert f"tor named the service {OTHER!r}, expected {SID!r}" in s.detail
    assert m.added(1, None, 2.0) == []  # the attempt is over


def test_collision_replaces_once_then_fails() -> None:
    m = adding()
    assert m.collided(1, "550 Onion address collision", 1) == [AddOnion(1, replace=True)]
    assert m.phase is Phase.ADDING
    assert "replacing it" in m.status(1).detail
    assert m.collided(1, "550 Onion address collision", 2) == [Disconnect(1), SetTimer(1)]
    assert m.status(2).detail == f"{TOR}: 550 Onion address collision; retrying in 1 s"
    # a later attempt may replace again
    m.timer_fired(3)
    m.connected(2)
    assert m.collided(2, "550 Onion address collision", 4) == [AddOnion(2, replace=True)]


def test_backoff_grows_to_its_cap_and_resets_on_success() -> None:
    m = machine()
    now = 0.0
    actions = m.start(now)
    delays = []
    for attempt in range(1, 7):
        assert actions == [SetTimer(TIMEOUT), Connect(attempt)]
        actions = m.failed(attempt, "Connection was refused by other side", now)
        delay = actions[-1].delay if isinstance(actions[-1], SetTimer) else -1
        assert actions == [Disconnect(attempt), SetTimer(delay)]
        s = m.status(now)
        assert s.state is OnionState.FAILED
        assert s.retry_in == delay
        assert m.status(now + delay / 2).retry_in == delay / 2
        assert s.detail == f"{TOR}: Connection was refused by other side; retrying in {delay:g} s"
        delays.append(delay)
        now += delay
        actions = m.timer_fired(now)
    assert delays == [1, 2, 4, 8, 8, 8]
    assert m.status(now).retry_in is None  # connecting again

    assert m.connected(7) == [AddOnion(7)]
    m.added(7, SID, now)
    assert m.lost(7, now) == [Disconnect(7), SetTimer(1)]


def test_silence_times_out_while_connecting_and_while_adding() -> None:
    m = machine()
    m.start(0)
    assert m.timer_fired(TIMEOUT) == [Disconnect(1), SetTimer(1)]
    assert m.status(TIMEOUT).detail == f"{TOR}: no answer within 30 s; retrying in 1 s"
    assert m.timer_fired(TIMEOUT + 1) == [SetTimer(TIMEOUT), Connect(2)]
    m.connected(2)
    assert m.timer_fired(2 * TIMEOUT + 1) == [Disconnect(2), SetTimer(2)]
    assert m.status(2 * TIMEOUT + 1).state is OnionState.FAILED


def test_loss_while_adding_backs_off_and_ignores_the_late_reply() -> None:
    m = adding()
    assert m.lost(1, 3.0) == [Disconnect(1), SetTimer(1)]
    s = m.status(3.0)
    assert s.state is OnionState.FAILED
    assert s.detail == f"lost the control connection to {TOR}; retrying in 1 s"
    # what the dead connection still reports changes nothing
    assert m.added(1, SID, 3.5) == []
    assert m.failed(1, "connection lost", 3.5) == []
    assert m.lost(1, 3.5) == []
    assert m.uploaded(1, SID) == []
    assert m.status(3.5).address is None
    assert m.status(3.5).retry_in == 0.5
    assert m.timer_fired(4.0) == [SetTimer(TIMEOUT), Connect(2)]


def test_loss_after_publishing_keeps_the_address() -> None:
    m = added()
    m.uploaded(1, SID)
    assert m.lost(1, 10.0) == [Disconnect(1), SetTimer(1)]
    s = m.status(10.0)
    assert s.state is OnionState.FAILED
    assert s.address == SID + ".onion"  # the key still names the service
    assert m.timer_fired(11.0) == [SetTimer(TIMEOUT), Connect(2)]
    m.connected(2)
    m.added(2, SID, 12.0)
    assert m.status(12.0).state is OnionState.STARTING  # published again only after an upload
    m.uploaded(2, SID)
    assert m.status(13.0).state is OnionState.PUBLISHED
    assert m.status(13.0).descriptor_uploads == 2


def test_a_connection_made_too_late_is_closed() -> None:
    m = machine()
    m.start(0)
    m.timer_fired(TIMEOUT)
    assert m.connected(1) == [Disconnect(1)]
    assert m.phase is Phase.BACKOFF
    m.timer_fired(TIMEOUT + 1)
    assert m.connected(1) == [Disconnect(1)]  # still the old attempt's connection
    assert m.connected(2) == [AddOnion(2)]


def test_stop_during_backoff_cancels_the_retry() -> None:
    m = adding()
    m.failed(1, "512 Bad arguments to ADD_ONION", 1.0)
    assert m.stop() == [CancelTimer(), Withdraw(1, remove=False)]
    s = m.status(1.5)
    assert s.detail == "stopping"
    assert s.retry_in is None
    assert m.timer_fired(2.0) == []  # a timer that fires anyway does nothing
    assert m.stopped() == []
    assert m.phase is Phase.STOPPED
    assert m.status(3.0).detail == "stopped"
    assert m.stop() == []


def test_stop_removes_the_service_only_once_tor_has_it() -> None:
    connecting = machine()
    connecting.start(0)
    assert connecting.stop() == [CancelTimer(), Withdraw(1, remove=False)]
    assert connecting.connected(1) == [Disconnect(1)]
    assert adding().stop() == [CancelTimer(), Withdraw(1, remove=False)]
    assert added().stop() == [CancelTimer(), Withdraw(1, remove=True)]
    published = added()
    published.uploaded(1, SID)
    assert published.stop() == [CancelTimer(), Withdraw(1, remove=True)]
    # what users see while stopping is the state it stopped in
    assert published.status(1).state is OnionState.PUBLISHED
    assert published.lost(1, 1) == []  # closing the connection on the way out


def test_restart_after_stop_connects_again() -> None:
    m = added()
    m.stop()
    m.stopped()
    assert m.start(50.0) == [SetTimer(TIMEOUT), Connect(2)]
    assert m.status(50.0).address == SID + ".onion"


def test_the_tor_is_described_afresh() -> None:
    names = iter(["launched tor (data directory temporary)", "launched tor (data directory /tmp/t1)"])
    m = OnionMachine(SID, lambda: next(names))
    m.start(0)
    m.connected(1)
    assert m.status(0).detail == (
        "connected to launched tor (data directory /tmp/t1); adding the onion service")


def test_the_machine_imports_nothing_of_twisted() -> None:
    path = Path(__file__).resolve().parents[1] / "entropy_appliance" / "onion" / "machine.py"
    # Loaded on its own, without the package (whose service does use Twisted).
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('onion_machine', {str(path)!r})\n"
        "module = sys.modules['onion_machine'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'txtorcon')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
