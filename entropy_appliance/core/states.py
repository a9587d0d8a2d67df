"""
The names of states and tests, as enums.

Each value is the string that status documents, metrics labels and logs
show, so the enums are :class:`~enum.StrEnum`: a member compares equal to
its value and serializes as it.  Code compares members, never literals.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PoolState", "SourceState", "HealthTest"]


class PoolState(StrEnum):
    """What the pool can do now."""

    #: Random bytes are served.
    OK = "ok"
    #: Healthy source, seed short for a due reseed: output waits.
    STARVED = "starved"
    #: The source failed its health tests or cannot be read: fail closed.
    FAILED = "failed"


class SourceState(StrEnum):
    """
    Where the source stands.  The health tests report ``STARTUP``, ``OK``
    or ``FAILED``; the pool adds ``STARTING`` (nothing read yet), and
    ``FAILED`` also when the source cannot be read.
    """

    #: Nothing has been read from the source yet.
    STARTING = "starting"
    #: The startup health test (SP 800-90B §4.3) is running.
    STARTUP = "startup"
    #: Its samples pass the continuous health tests.
    OK = "ok"
    #: It failed its health tests, or cannot be read.
    FAILED = "failed"


class HealthTest(StrEnum):
    """The SP 800-90B §4.4 continuous health tests."""

    #: The Repetition Count Test (§4.4.1).
    RCT = "rct"
    #: The Adaptive Proportion Test (§4.4.2).
    APT = "apt"
