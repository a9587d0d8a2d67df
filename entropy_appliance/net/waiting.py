"""
Waiting for seed, as a Deferred: the Twisted face of :meth:`SeedPool.wait`.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred

from entropy_appliance.core.pool import FailClosed, SeedPool

__all__ = ["when_ready"]


def when_ready(pool: SeedPool, n: int = 0) -> Deferred[None]:
    """
    A Deferred that fires once ``pool.random_bytes(n)`` can be served, at
    once if it can now; it fails with :class:`FailClosed` if the source
    fails first.  Cancelling it withdraws the wait.
    """
    withdraw: Callable[[], None] | None = None

    def cancel(_: Deferred[None]) -> None:
        if withdraw is not None:
            withdraw()

    d: Deferred[None] = Deferred(cancel)

    def failed(e: FailClosed) -> None:
        d.errback(e)

    withdraw = pool.wait(n, lambda: d.callback(None), failed)
    return d
