"""
The stop order as named phases.

:class:`Lifecycle` is the root of the service tree.  Every service joins it
in a phase, by name; stopping runs the phases in :data:`STOP_PHASES` order,
each only once every service of the one before has finished stopping (the
services of one phase stop together).  Starting runs the phases the other
way round, so that what stops last starts first.

The phases, as the README's "Signals" section tells them:

``notify``
    systemd hears ``STOPPING=1``.  (Started last: ``READY=1`` waits for
    everything below.)
``onion``
    The onion service is withdrawn while the listeners still serve.
``workers``
    With ``--workers``, every worker is told to stop and runs these same
    phases itself; the parent waits for them (it still relays seed to their
    draining responses).
``listeners``
    No new connection is accepted.
``drain``
    Raw streams close; HTTP responses in flight finish, within
    ``--shutdown-timeout``.
``signals``
    SIGHUP goes back to its previous handler, and a worker stops watching
    its parent.  Late, so that a reload during the drain is still a reload.
``pipeline``
    The entropy source and the reseed schedule stop last: responses that
    finish during the drain still have seed.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["STOP_PHASES", "Lifecycle", "cannot_listen"]

#: The phases in the order a stop runs them.
STOP_PHASES: tuple[str, ...] = (
    "notify", "onion", "workers", "listeners", "drain", "signals", "pipeline",
)


class Lifecycle(MultiService):
    """
    A service tree whose children belong to named phases: they start phase
    by phase from the last phase to the first, and stop phase by phase from
    the first to the last, each phase waiting for the one before.
    """

    log = Logger()

    def __init__(self, phases: Sequence[str] = STOP_PHASES) -> None:
        super().__init__()
        if len(set(phases)) != len(phases):
            raise ValueError(f"phase names repeat: {list(phases)}")
        self.phases: tuple[str, ...] = tuple(phases)
        self._phase_of: dict[IService, str] = {}
        self._joining: str | None = None

    def add(self, phase: str, service: IService, name: str | None = None) -> IService:
        """Add ``service`` (named ``name``, if given) to ``phase``; return it."""
        if phase not in self.phases:
            raise ValueError(f"unknown phase {phase!r}; the phases are {', '.join(self.phases)}")
        if name is not None:
            service.setName(name)
        self._joining = phase
        try:
            service.setServiceParent(self)
        finally:
            self._joining = None
        return service

    def addService(self, service: IService) -> None:
        """Insert ``service`` at its phase's place in the start order."""
        phase = self._joining
        if phase is None:
            raise ValueError("join a Lifecycle with add(phase, service), not setServiceParent")
        # Start order: the last stop phase first; within a phase, as added.
        rank = self._start_rank(phase)
        at = len(self.services)
        for i, other in enumerate(self.services):
            if self._start_rank(self._phase_of[other]) > rank:
                at = i
                break
        self._phase_of[service] = phase
        super().addService(service)
        # MultiService appended it (and started it, if running); move it into place.
        self.services.remove(service)
        self.services.insert(at, service)

    def removeService(self, service: IService) -> Deferred[None] | None:
        """Remove ``service`` from its phase."""
        result: Deferred[None] | None = super().removeService(service)
        self._phase_of.pop(service, None)
        return result

    def _start_rank(self, phase: str) -> int:
        return len(self.phases) - 1 - self.phases.index(phase)

    def phase(self, name: str) -> tuple[IService, ...]:
        """The services of phase ``name``, in the order they were added."""
        if name not in self.phases:
            raise ValueError(f"unknown phase {name!r}")
        return tuple(s for s in self.services if self._phase_of[s] == name)

    def phase_of(self, service: IService) -> str:
        """The phase ``service`` belongs to."""
        return self._phase_of[service]

    def stopService(self) -> Deferred[None]:
        """Stop phase by phase, in :attr:`phases` order; a failure is logged, not fatal."""
        Service.stopService(self)
        d: Deferred[None] = succeed(None)
        for name in self.phases:
            if self.phase(name):
                d.addCallback(self._stop_phase, name)
        return d

    def _stop_phase(self, _: object, name: str) -> Deferred[None]:
        self.log.debug("stopping: {phase}", phase=name)

        def failed(f: Failure, service: IService) -> None:
            self.log.failure("error stopping {service} ({phase})", f, service=service, phase=name)

        stopping = [maybeDeferred(s.stopService).addErrback(failed, s)
                    for s in reversed(self.phase(name))]
        return gatherResults(stopping).addCallback(lambda _: None)


def cannot_listen(kind: str, description: str, error: BaseException) -> SystemExit:
    """
    The startup error of a listener that cannot listen (a port in use, no
    permission): which option, which endpoint, why, and what to do.  It
    stops the start, rather than leaving a process that serves some
    surfaces and not others.
    """
    reason = getattr(getattr(error, "socketError", None), "strerror", None) or str(error)
    return SystemExit(f"--{kind} {description}: cannot listen ({reason}); stop what holds it, or give "
                      f"--{kind} (ENTROPY_{kind.upper()}) another endpoint")
