"""
The onion service as a Twisted service: the site and the raw stream at a
persistent .onion address.

:class:`OnionService` listens on ephemeral loopback ports for its targets
(the web site, the raw stream), then, in the background, reaches a tor and
adds an ephemeral v3 onion service with the key that names the address.
Startup never waits for tor: txtorcon's high-level onion calls wait for a
descriptor upload, which can take minutes or never happen, so here the
address is reported as soon as tor accepts the service, and publication is
learnt from ``HS_DESC`` events.

The decisions (when to connect, retry, give up, what the state is) are the
I/O-free :class:`~entropy_appliance.onion.machine.OnionMachine`'s; this
class only feeds it what tor and the clock say and carries out the actions
it returns, with :mod:`entropy_appliance.onion.tor`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from entropy_appliance.core.backoff import Backoff
from entropy_appliance.onion.config import OnionPort
from entropy_appliance.onion.key import OnionKey
from entropy_appliance.onion.machine import (
    Action,
    AddOnion,
    CancelTimer,
    Connect,
    Disconnect,
    OnionMachine,
    Phase,
    SetTimer,
    Withdraw,
)
from entropy_appliance.onion.tor import (
    ControlProtocol,
    DescriptorEvent,
    OnionCollision,
    TorConnector,
    add_onion,
    del_onion,
    subscribe_descriptors,
)

__all__ = ["OnionService"]

#: How long a clean stop waits for tor to confirm ``DEL_ONION``.
_REMOVE_TIMEOUT = 5.0


class OnionService(Service):
    """
    Publishes ``targets`` at the v3 onion address of ``key``.

    ``targets`` maps target names (see :data:`~entropy_appliance.onion.config.TARGETS`)
    to factories; it is read when the service starts.  ``status()`` is what
    ``/v1/status`` shows under ``"onion"``::

        {"address": "<56 chars>.onion" | None,
         "state": "starting" | "published" | "failed",
         "ports": {"80": "http", "9000": "stream"},
         "tor": "shared" | "launched", "detail": "...", ...}

    ``address`` is set once tor has accepted the service and is kept while
    tor is away (the key, and so the address, does not change).  ``state``
    becomes ``published`` when tor reports a descriptor upload, and goes to
    ``failed`` while tor is unreachable; ``retry_in`` then says when the next
    attempt begins.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        connector: TorConnector,
        key: OnionKey,
        ports: Sequence[OnionPort],
        targets: Mapping[str, Any],
        client_auth: Sequence[str] = (),
        attempt_timeout: float = 90.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._connector = connector
        self._key = key
        self._ports = list(ports)
        # Kept by reference and read at start: the web Site may be built after
        # this service, because the web's status needs this service's status().
        self._targets = targets
        self._client_auth = list(client_auth)
        self._machine = OnionMachine(key.service_id, connector.describe, backoff=backoff,
                                     attempt_timeout=attempt_timeout)
        self._listeners: dict[str, IListeningPort] = {}
        self._timer: IDelayedCall | None = None
        self._connecting: tuple[int, Deferred[ControlProtocol]] | None = None
        self._connections: dict[int, ControlProtocol] = {}
        self._actions: deque[Action] = deque()
        self._acting = False
        self._withdrawn: Deferred[None] | None = None
        self._reported = "not started"

    # -- status --

    def status(self) -> dict[str, Any]:
        """The onion state, for ``/v1/status`` and ``/metrics``."""
        s = self._machine.status(self._clock.seconds())
        out: dict[str, Any] = {
            "address": s.address,
            "state": s.state.value,
            "ports": {str(p.virtual): p.target for p in self._ports},
            "tor": self._connector.kind,
            "detail": s.detail,
            "descriptor_uploads": s.descriptor_uploads,
            "client_auth": len(self._client_auth),
        }
        if s.retry_in is not None:
            out["retry_in"] = s.retry_in
        return out

    def local_port(self, target: str) -> int:
        """The loopback port that tor forwards ``target`` to (once started)."""
        host: Any = self._listeners[target].getHost()
        return int(host.port)

    # -- lifecycle --

    def startService(self) -> None:
        """Listen on loopback at once, then reach tor in the background."""
        missing = {p.target for p in self._ports} - set(self._targets)
        if missing:
            raise ValueError(f"no factory for onion target(s) {', '.join(sorted(missing))}")
        super().startService()
        assert IReactorTCP.providedBy(self._reactor)
        for target in sorted({p.target for p in self._ports}):
            # An internal ephemeral port, not a user-facing listener, so it is
            # opened directly rather than from an endpoint string.
            self._listeners[target] = self._reactor.listenTCP(0, self._targets[target], interface="127.0.0.1")
        self._act(self._machine.start(self._clock.seconds()))

    def stopService(self) -> Deferred[None]:
        """Remove the service from tor, release tor, close the loopback ports."""
        super().stopService()
        self._act(self._machine.stop())
        withdrawn, self._withdrawn = self._withdrawn, None
        return withdrawn if withdrawn is not None else succeed(None)

    # -- carrying out the machine's actions --

    def _act(self, actions: list[Action]) -> None:
        """Log a change of state, then carry out ``actions`` in order."""
        detail = self._machine.status(self._clock.seconds()).detail
        if detail != self._reported:
            self._reported = detail
            if self._machine.phase is Phase.BACKOFF:
                self.log.warn("onion service failed: {detail}", detail=detail)
            else:
                self.log.info("onion service: {detail}", detail=detail)
        # An action can feed the machine at once (a Deferred that has already
        # fired); its actions wait for the ones decided before them.
        self._actions.extend(actions)
        if self._acting:
            return
        self._acting = True
        try:
            while self._actions:
                self._do(self._actions.popleft())
        finally:
            self._acting = False

    def _do(self, action: Action) -> None:
        if isinstance(action, SetTimer):
            self._cancel_timer()
            self._timer = self._clock.callLater(action.delay, self._timer_fired)
        elif isinstance(action, CancelTimer):
            self._cancel_timer()
        elif isinstance(action, Connect):
            self._connect(action.attempt)
        elif isinstance(action, AddOnion):
            self._add(action.attempt, action.replace)
        elif isinstance(action, Disconnect):
            self._disconnect(action.attempt)
        elif isinstance(action, Withdraw):
            self._withdrawn = Deferred.fromCoroutine(self._withdraw(action.attempt, action.remove))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        self._act(self._machine.timer_fired(self._clock.seconds()))

    def _connect(self, attempt: int) -> None:
        d = self._connector.connect()
        self._connecting = (attempt, d)
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(attempt,), errbackArgs=(attempt,))

    def _connected(self, proto: ControlProtocol, attempt: int) -> None:
        if self._connecting is not None and self._connecting[0] == attempt:
            self._connecting = None
        self._connections[attempt] = proto
        proto.when_disconnected().addBoth(self._lost, attempt)
        self._act(self._machine.connected(attempt))

    def _connect_failed(self, failure: Failure, attempt: int) -> None:
        if self._connecting is not None and self._connecting[0] == attempt:
            self._connecting = None
        self._act(self._machine.failed(attempt, _reason(failure), self._clock.seconds()))

    def _lost(self, result: object, attempt: int) -> None:
        self._act(self._machine.lost(attempt, self._clock.seconds()))

    def _add(self, attempt: int, replace: bool) -> None:
        proto = self._connections.get(attempt)
        if proto is None:  # given up before this action came up
            return
        key = self._key

        async def run() -> str | None:
            if replace:
                await del_onion(proto, key.service_id)
            else:
                await subscribe_descriptors(proto, lambda event: self._descriptor(attempt, event))
            ports = [(p.virtual, self.local_port(p.target)) for p in self._ports]
            return await add_onion(proto, key, ports, self._client_auth)

        def failed(failure: Failure) -> None:
            now = self._clock.seconds()
            if failure.check(OnionCollision):
                self._act(self._machine.collided(attempt, _reason(failure), now))
            else:
                self._act(self._machine.failed(attempt, _reason(failure), now))

        d = Deferred.fromCoroutine(run())
        d.addCallbacks(lambda service_id: self._act(self._machine.added(attempt, service_id,
                                                                        self._clock.seconds())),
                       failed)

    def _descriptor(self, attempt: int, event: DescriptorEvent) -> None:
        if event.action == "UPLOADED":
            self._act(self._machine.uploaded(attempt, event.service_id))
        elif event.action == "FAILED":
            self._act(self._machine.upload_failed(attempt, event.service_id, event.reason))

    def _disconnect(self, attempt: int) -> None:
        if self._connecting is not None and self._connecting[0] == attempt:
            _, d = self._connecting
            self._connecting = None
            d.cancel()
        proto = self._connections.pop(attempt, None)
        if proto is not None and proto.transport is not None:
            proto.transport.loseConnection()

    async def _withdraw(self, attempt: int, remove: bool) -> None:
        if self._connecting is not None:
            _, d = self._connecting
            self._connecting = None
            d.cancel()
        proto = self._connections.pop(attempt, None)
        if proto is not None and remove:
            try:
                removed = del_onion(proto, self._key.service_id)
                removed.addTimeout(_REMOVE_TIMEOUT, self._clock)
                await removed
            except Exception as e:
                self.log.warn("DEL_ONION failed: {e}", e=e)
        for each in [proto, *self._connections.values()]:
            if each is not None and each.transport is not None:
                each.transport.loseConnection()
        self._connections.clear()
        try:
            await self._connector.stop()
        except Exception as e:
            self.log.warn("stopping tor failed: {e}", e=e)
        for port in self._listeners.values():
            await maybeDeferred(port.stopListening)
        self._listeners.clear()
        self._act(self._machine.stopped())


def _reason(failure: Failure) -> str:
    return failure.getErrorMessage() or repr(failure.value)
