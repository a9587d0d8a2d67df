"""
The budgets of costly requests (images and sounds), as plain accounting.

A picture or a sound is rendered whole, in memory, in a thread: the largest
holds about a hundred megabytes for a second or two.  Two budgets bound that
work, each over an injected clock, with no Twisted import:

- :class:`PeerCosts`, per peer: a token bucket of *cost* (a render's cost is
  the memory it needs at its peak, in bytes, which also tracks its CPU time),
  and a cap on the renders a peer has in flight, from admission until its
  body has left the process.  A peer past either is told how long to wait
  (HTTP answers 429 with ``Retry-After``).  The cap bounds what bodies that a
  client does not read can hold.
- :class:`JobGate`, for the whole process: at most ``limit`` renders at
  once; the next ones wait in a first-come queue of bounded length (HTTP
  bounds the wait in time, then answers 503).  The gate bounds the memory of
  renders under way, whatever the number of peers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from entropy_appliance.core.peers import Clock, TokenBucket

__all__ = ["JobGate", "PeerCosts"]

#: Seconds between sweeps that forget peers with a full bucket and nothing in flight.
_SWEEP_INTERVAL = 60.0


def _nothing() -> None:
    """Withdraw a wait that is already over."""


class PeerCosts:
    """
    Per-peer budgets of costly requests: ``rate`` cost per second, in
    bursts of ``burst`` (0: no cost limit), and at most ``in_flight``
    requests at once.

    :meth:`admit` takes a request's cost and counts it in flight, or tells
    how long to wait; :meth:`done` ends what :meth:`admit` counted.
    """

    def __init__(self, rate: float, burst: float, in_flight: int, clock: Clock) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        if rate and burst <= 0:
            raise ValueError("burst must be positive")
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        self.rate = rate
        self.burst = burst
        self.in_flight = in_flight
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._open: dict[str, int] = {}
        self._swept = clock.seconds()

    def admit(self, peer: str, cost: float) -> float:
        """
        0 when ``peer`` may start a request of ``cost`` now (its cost is
        taken and it counts in flight until :meth:`done`); otherwise the
        seconds to wait, with nothing taken.  A cost above the burst is
        charged as the burst, so that every request can be served.
        """
        now = self._clock.seconds()
        self._sweep(now)
        if self._open.get(peer, 0) >= self.in_flight:
            return 1.0
        if self.rate:
            bucket = self._buckets.get(peer)
            if bucket is None:
                bucket = self._buckets[peer] = TokenBucket(self.rate, self.burst, now)
            wait = bucket.take(now, min(cost, self.burst))
            if wait:
                return wait
        self._open[peer] = self._open.get(peer, 0) + 1
        return 0.0

    def done(self, peer: str) -> None:
        """A request that :meth:`admit` let in has ended."""
        n = self._open.get(peer, 0) - 1
        if n > 0:
            self._open[peer] = n
        else:
            self._open.pop(peer, None)

    def open(self, peer: str) -> int:
        """Requests of ``peer`` in flight."""
        return self._open.get(peer, 0)

    def tracked(self) -> int:
        """Peers remembered (a bucket not yet full, or requests in flight)."""
        return len(self._buckets.keys() | self._open.keys())

    def _sweep(self, now: float) -> None:
        # A full bucket is the same as none: forgetting it bounds memory by
        # the peers active in the last minute.
        if now - self._swept >= _SWEEP_INTERVAL:
            self._swept = now
            self._buckets = {p: b for p, b in self._buckets.items() if not b.full(now)}


class JobGate:
    """
    At most ``limit`` jobs at once; up to ``queue`` more wait their turn,
    first come first served.
    """

    def __init__(self, limit: int, queue: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if queue < 0:
            raise ValueError("queue must be >= 0")
        self.limit = limit
        self.queue = queue
        #: Jobs holding a place now.
        self.running = 0
        self._waiting: deque[Callable[[], object]] = deque()

    @property
    def waiting(self) -> int:
        """Jobs waiting for a place."""
        return len(self._waiting)

    def acquire(self, ready: Callable[[], object]) -> Callable[[], None] | None:
        """
        Call ``ready()`` once the job holds a place: now if one is free, else
        when a job ahead of it calls :meth:`release`.  Returns the function
        that withdraws the wait, or None (and ``ready`` is never called) when
        the queue is full.  A job that got its place calls :meth:`release`
        exactly once.
        """
        if self.running < self.limit:
            self.running += 1
            ready()
            return _nothing
        if len(self._waiting) >= self.queue:
            return None
        self._waiting.append(ready)

        def withdraw() -> None:
            try:
                self._waiting.remove(ready)
            except ValueError:
                pass

        return withdraw

    def release(self) -> None:
        """A job is done: its place goes to the first waiting job, if any."""
        if self._waiting:
            self._waiting.popleft()()
        else:
            self.running = max(0, self.running - 1)
