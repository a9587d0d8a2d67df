"""
Per-peer accounting: fairness between clients, and a floor against abuse.

A "peer" is a client IP address; IPv6 clients are grouped by their /64,
because one host usually holds a whole /64 and would otherwise evade every
limit by changing its address.  IPv4-mapped IPv6 addresses count as IPv4.

Plain synchronous code over an injected clock, with no Twisted import:

- :class:`PeerPolicy`, the limits as configured (``0`` turns one off);
- :class:`TokenBucket`, one rate and burst;
- :class:`PeerRateLimiter`: requests per second per peer (burst 2R);
- :class:`PeerConnections`: concurrent connections per peer;
- :class:`PeerBandwidth`: bytes per second per peer, summed over every
  connection and surface (burst: one second's worth).

The adapters that apply it live in :mod:`entropy_appliance.net.limits`
(connections, idle timeout, bandwidth) and :mod:`entropy_appliance.web.limits`
(requests per second, request-head deadline).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "PeerPolicy",
    "TokenBucket",
    "PeerRateLimiter",
    "PeerConnections",
    "PeerBandwidth",
    "peer_key",
    "DEFAULT_PEER_STREAMS",
    "DEFAULT_PEER_RATE",
    "DEFAULT_PEER_BANDWIDTH",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
]

#: Concurrent raw-stream connections per peer.
DEFAULT_PEER_STREAMS = 64
#: HTTP requests per second per peer (the bucket holds twice as many).
DEFAULT_PEER_RATE = 200.0
#: Bytes per second per peer; 0: no cap (the optional limit).
DEFAULT_PEER_BANDWIDTH = 0
#: Seconds a connection may stay with nothing read and nothing written.
DEFAULT_IDLE_TIMEOUT = 120.0
#: Seconds from the first byte of an HTTP request head to its end.
DEFAULT_HEADER_TIMEOUT = 15.0

#: Seconds between sweeps that forget peers whose buckets are full again.
_SWEEP_INTERVAL = 60.0


class Clock(Protocol):
    """The one thing the accounting needs of a clock."""

    def seconds(self) -> float: ...


@dataclass(frozen=True)
class PeerPolicy:
    """The limits, as the options validate them; 0 turns one off."""

    streams: int = DEFAULT_PEER_STREAMS
    rate: float = DEFAULT_PEER_RATE
    bandwidth: int = DEFAULT_PEER_BANDWIDTH
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT


def peer_key(address: object) -> str:
    """
    The peer that ``address`` (a Twisted ``IAddress``) counts against: the
    IPv4 address, the /64 of an IPv6 address, or the address type for
    anything without a host (unix sockets: the local machine is one peer).
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return type(address).__name__
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens and return 0, or return the seconds until they are there."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def spend(self, now: float, cost: float) -> float:
        """Take ``cost`` tokens even into debt; return the seconds until the debt is paid."""
        self._refill(now)
        self.tokens -= cost
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def debt(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 if it is not in debt)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def peek(self, now: float) -> float:
        """Tokens held now (negative: in debt), taking none."""
        self._refill(now)
        return self.tokens

    def full(self, now: float) -> bool:
        """True when the bucket is as if it had never been used."""
        self._refill(now)
        return self.tokens >= self.burst


class _PeerBuckets:
    """A bucket per peer, forgetting peers whose bucket has refilled."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._swept = clock.seconds()

    def bucket(self, peer: str, now: float) -> TokenBucket:
        if now - self._swept >= _SWEEP_INTERVAL:
            self._swept = now
            # A full bucket is the same as none: forgetting it bounds memory
            # by the peers active in the last minute.
            self._buckets = {p: b for p, b in self._buckets.items() if not b.full(now)}
        b = self._buckets.get(peer)
        if b is None:
            b = self._buckets[peer] = TokenBucket(self.rate, self.burst, now)
        return b

    def __len__(self) -> int:
        return len(self._buckets)


class PeerRateLimiter:
    """Requests per second per peer, as a token bucket with a burst of ``2 * rate``."""

    def __init__(self, rate: float, clock: Clock) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self._clock = clock
        self._buckets = _PeerBuckets(rate, 2 * rate, clock)

    def check(self, peer: str) -> float:
        """0 when ``peer`` may make a request now (and count it), else seconds to wait."""
        now = self._clock.seconds()
        return self._buckets.bucket(peer, now).take(now)

    def tracked(self) -> int:
        """How many peers are remembered (for tests and status)."""
        return len(self._buckets)

    def left(self, peer: str) -> tuple[int, float]:
        """
        Requests ``peer`` may still make at once, and the seconds until it
        may make the next one (0: now), counting nothing.
        """
        now = self._clock.seconds()
        bucket = self._buckets.bucket(peer, now)
        tokens = bucket.peek(now)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / bucket.rate
        return max(0, int(tokens)), wait


class PeerConnections:
    """At most ``limit`` concurrent connections per peer."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, peer: str) -> bool:
        """Count a new connection of ``peer``; False (and nothing counted) past the limit."""
        n = self._open.get(peer, 0)
        if n >= self.limit:
            return False
        self._open[peer] = n + 1
        return True

    def release(self, peer: str) -> None:
        """A connection of ``peer`` has closed."""
        n = self._open.get(peer, 0) - 1
        if n > 0:
            self._open[peer] = n
        else:
            self._open.pop(peer, None)

    def count(self, peer: str) -> int:
        """Open connections of ``peer``."""
        return self._open.get(peer, 0)


class PeerBandwidth:
    """Bytes per second per peer; a burst of one second's worth."""

    def __init__(self, rate: int, clock: Clock) -> None:
        if rate < 1:
            raise ValueError("rate must be >= 1")
        self.rate = rate
        self._clock = clock
        self._buckets = _PeerBuckets(float(rate), float(rate), clock)

    def spend(self, peer: str, n: int) -> float:
        """Count ``n`` bytes sent to ``peer``; return how long it must now wait (0: none)."""
        now = self._clock.seconds()
        return self._buckets.bucket(peer, now).spend(now, n)

    def left(self, peer: str) -> int:
        """Bytes ``peer`` may be sent now before it is held back (0 while in debt)."""
        now = self._clock.seconds()
        return max(0, int(self._buckets.bucket(peer, now).peek(now)))

    def wait(self, peer: str) -> float:
        """Seconds until ``peer`` may be sent more (0: now)."""
        now = self._clock.seconds()
        return self._buckets.bucket(peer, now).debt(now)
