"""
The onion service's lifecycle as an I/O-free state machine.

Inputs are method calls (tor connected, tor accepted the service, the
connection was lost, a timer fired ...), each given the clock time where it
matters; outputs are the actions each call returns, for
:class:`~entropy_appliance.onion.service.OnionService` to carry out, in
order.  Nothing here touches a socket, a process or a reactor, so every
transition is tested with plain calls and made-up times.

::

    idle -start-> connecting -connected-> adding -added-> added -uploaded-> published
                    ^     |                 |                |                  |
              timer |     | failed,         | failed,        | lost             | lost
                    |     | timeout         | timeout, lost  |                  |
                    |     v                 v                v                  v
                    +-- backoff <-----------+----------------+------------------+

    any -stop-> stopping -stopped-> stopped -start-> connecting

A collision (tor already has the key) while adding replaces tor's service
once; a second one is a failure.  ``uploaded`` while adding is remembered,
and ``added`` then goes straight to published.

Each connection attempt has a number; an input about an older attempt (a
late reply, the drop of a connection already given up) changes nothing.
Whether a new attempt reconnects to a running tor or launches a new one is
the connector's business: the machine only asks to :class:`Connect`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

from entropy_appliance.core.backoff import Backoff

__all__ = [
    "Action",
    "AddOnion",
    "CancelTimer",
    "Connect",
    "Disconnect",
    "MachineStatus",
    "OnionMachine",
    "OnionState",
    "Phase",
    "SetTimer",
    "Withdraw",
]


class Phase(Enum):
    """Where the machine is in the lifecycle."""

    IDLE = "idle"
    CONNECTING = "connecting"
    ADDING = "adding"
    ADDED = "added"
    PUBLISHED = "published"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"


class OnionState(StrEnum):
    """The state users see in ``/v1/status`` and ``/metrics``."""

    STARTING = "starting"
    PUBLISHED = "published"
    FAILED = "failed"


_PUBLIC = {
    Phase.IDLE: OnionState.STARTING,
    Phase.CONNECTING: OnionState.STARTING,
    Phase.ADDING: OnionState.STARTING,
    Phase.ADDED: OnionState.STARTING,
    Phase.PUBLISHED: OnionState.PUBLISHED,
    Phase.BACKOFF: OnionState.FAILED,
}

#: Phases in which an attempt is under way and may fail or time out.
_TRYING = (Phase.CONNECTING, Phase.ADDING)
#: Phases that hold a control connection whose loss matters.
_CONNECTED = (Phase.ADDING, Phase.ADDED, Phase.PUBLISHED)


# --- actions -------------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Get an authenticated control connection to tor for ``attempt``."""

    attempt: int


@dataclass(frozen=True)
class AddOnion:
    """
    On ``attempt``'s connection, add the service (``ADD_ONION``).  The first
    time, subscribe to ``HS_DESC`` events before; with ``replace``, remove
    tor's existing service of the same key first (``DEL_ONION``).
    """

    attempt: int
    replace: bool = False


@dataclass(frozen=True)
class Disconnect:
    """Give ``attempt`` up: cancel its connecting, close its connection."""

    attempt: int


@dataclass(frozen=True)
class SetTimer:
    """Call :meth:`OnionMachine.timer_fired` in ``delay`` seconds, replacing any timer."""

    delay: float


@dataclass(frozen=True)
class CancelTimer:
    """Forget the timer, if any."""


@dataclass(frozen=True)
class Withdraw:
    """
    Shut down: remove the service from tor if ``remove`` (``DEL_ONION`` on
    ``attempt``'s connection), close that connection, release tor, close the
    loopback listeners; then call :meth:`OnionMachine.stopped`.
    """

    attempt: int
    remove: bool


Action = Connect | AddOnion | Disconnect | SetTimer | CancelTimer | Withdraw


@dataclass(frozen=True)
class MachineStatus:
    """What the machine knows that users see."""

    state: OnionState
    detail: str
    address: str | None
    descriptor_uploads: int
    #: Seconds until the next attempt, while waiting to retry.
    retry_in: float | None


# --- the machine ---------------------------------------------------------------


class OnionMachine:
    """
    The lifecycle of one onion service, named by ``service_id``, published
    through the tor that ``describe_tor()`` names in a few words (asked each
    time, since a launched tor's data directory is known only once it runs).

    An attempt (connecting, then adding) that has not succeeded within
    ``attempt_timeout`` seconds fails.  After a failure or a lost connection
    the next attempt waits ``backoff.next()`` seconds; a service that tor
    accepts resets the backoff.
    """

    def __init__(self, service_id: str, describe_tor: Callable[[], str],
                 backoff: Backoff | None = None, attempt_timeout: float = 90.0) -> None:
        self._service_id = service_id
        self._describe_tor = describe_tor
        self._backoff = backoff if backoff is not None else Backoff(initial=1.0, maximum=60.0)
        self._attempt_timeout = attempt_timeout
        self._phase = Phase.IDLE
        self._detail = "not started"
        self._attempt = 0
        self._replaced = False
        self._uploaded = False
        self._uploads = 0
        self._address: str | None = None
        self._retry_at: float | None = None
        self._state_at_stop = OnionState.STARTING

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self._phase

    @property
    def attempt(self) -> int:
        """The number of the current (or last) connection attempt."""
        return self._attempt

    def status(self, now: float) -> MachineStatus:
        """The user-visible state at time ``now``."""
        state = _PUBLIC.get(self._phase, self._state_at_stop)
        retry_in = None
        if self._phase is Phase.BACKOFF and self._retry_at is not None:
            retry_in = round(max(0.0, self._retry_at - now), 1)
        return MachineStatus(state, self._detail, self._address, self._uploads, retry_in)

    # -- inputs --

    def start(self, now: float) -> list[Action]:
        """The service starts: connect to tor."""
        if self._phase not in (Phase.IDLE, Phase.STOPPED):
            raise RuntimeError(f"the onion service cannot start while {self._phase.value}")
        return self._connect(now)

    def connected(self, attempt: int) -> list[Action]:
        """``attempt``'s control connection is up."""
        if not self._current(attempt, Phase.CONNECTING):
            # Too late: this attempt was given up, so its connection goes.
            return [Disconnect(attempt)]
        self._phase = Phase.ADDING
        self._detail = f"connected to {self._describe_tor()}; adding the onion service"
        return [AddOnion(attempt)]

    def added(self, attempt: int, service_id: str | None, now: float) -> list[Action]:
        """tor accepted ``ADD_ONION`` and named the service ``service_id``."""
        if not self._current(attempt, Phase.ADDING):
            return []
        if service_id != self._service_id:
            return self._fail(f"{self._describe_tor()}: tor named the service {service_id!r}, "
                              f"expected {self._service_id!r}", now)
        self._backoff.reset()
        self._address = self._service_id + ".onion"
        if self._uploaded:
            # tor uploaded the descriptor before its reply reached us.
            self._published()
        else:
            self._phase = Phase.ADDED
            self._detail = "tor accepted the service; waiting for the descriptor upload"
        return [CancelTimer()]

    def collided(self, attempt: int, reason: str, now: float) -> list[Action]:
        """tor already has a service with our key, so ``ADD_ONION`` was refused."""
        if not self._current(attempt, Phase.ADDING):
            return []
        if self._replaced:
            return self._fail(f"{self._describe_tor()}: {reason}", now)
        # A detached service left by an earlier run that did not stop
        # cleanly (or ours, if only the control connection dropped).  It
        # forwards to ports this process may not have: replace it.
        self._replaced = True
        self._detail = f"tor already has {self._service_id}.onion; replacing it"
        return [AddOnion(attempt, replace=True)]

    def failed(self, attempt: int, reason: str, now: float) -> list[Action]:
        """``attempt`` failed: tor unreachable, a command refused, a dead tor."""
        if not self._current(attempt, *_TRYING):
            return []
        return self._fail(f"{self._describe_tor()}: {reason}", now)

    def lost(self, attempt: int, now: float) -> list[Action]:
        """``attempt``'s control connection closed."""
        if not self._current(attempt, *_CONNECTED):
            return []
        return self._fail(f"lost the control connection to {self._describe_tor()}", now)

    def uploaded(self, attempt: int, service_id: str) -> list[Action]:
        """tor reports (on ``attempt``'s connection) a descriptor upload for ``service_id``."""
        if not self._current(attempt, *_CONNECTED) or service_id != self._service_id:
            return []
        self._uploads += 1
        self._uploaded = True
        if self._phase is Phase.ADDED:
            self._published()
        return []

    def upload_failed(self, attempt: int, service_id: str, reason: str | None) -> list[Action]:
        """tor reports a failed descriptor upload; it retries on its own."""
        if not self._current(attempt, *_CONNECTED) or service_id != self._service_id:
            return []
        if not self._uploaded:
            self._detail = f"a descriptor upload failed ({reason or 'unknown'}); tor keeps trying"
        return []

    def timer_fired(self, now: float) -> list[Action]:
        """The timer of the last :class:`SetTimer` fired."""
        if self._phase in _TRYING:
            return self._fail(f"{self._describe_tor()}: no answer within {self._attempt_timeout:g} s", now)
        if self._phase is Phase.BACKOFF:
            return self._connect(now)
        return []

    def stop(self) -> list[Action]:
        """The service stops: withdraw it from tor (if tor has it) and release tor."""
        if self._phase in (Phase.STOPPING, Phase.STOPPED):
            return []
        remove = self._phase in (Phase.ADDED, Phase.PUBLISHED)
        self._state_at_stop = _PUBLIC[self._phase]
        self._phase = Phase.STOPPING
        self._detail = "stopping"
        self._retry_at = None
        return [CancelTimer(), Withdraw(self._attempt, remove)]

    def stopped(self) -> list[Action]:
        """The :class:`Withdraw` is done."""
        if self._phase is Phase.STOPPING:
            self._phase = Phase.STOPPED
            self._detail = "stopped"
        return []

    # -- transitions --

    def _current(self, attempt: int, *phases: Phase) -> bool:
        return attempt == self._attempt and self._phase in phases

    def _connect(self, now: float) -> list[Action]:
        self._attempt += 1
        self._phase = Phase.CONNECTING
        self._detail = f"connecting to {self._describe_tor()}"
        self._replaced = False
        self._uploaded = False
        self._retry_at = None
        return [SetTimer(self._attempt_timeout), Connect(self._attempt)]

    def _published(self) -> None:
        self._phase = Phase.PUBLISHED
        self._detail = "descriptor uploaded"

    def _fail(self, reason: str, now: float) -> list[Action]:
        delay = self._backoff.next()
        self._phase = Phase.BACKOFF
        self._detail = f"{reason}; retrying in {delay:g} s"
        self._retry_at = now + delay
        return [Disconnect(self._attempt), SetTimer(delay)]
