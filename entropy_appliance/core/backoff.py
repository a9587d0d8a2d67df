"""
Exponential backoff: the one schedule of retry delays every component uses
(a failed source, a failed health test, a crashed worker, a lost tor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """
    Delays of ``initial`` seconds, multiplied by ``factor`` after each use,
    up to ``maximum``; :meth:`reset` after a success starts over.
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    _current: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")
        self._current = self.initial

    @property
    def delay(self) -> float:
        """The delay the next retry will wait, without using it."""
        return self._current

    def next(self) -> float:
        """The delay to wait now; the one after it grows."""
        delay = self._current
        self._current = min(self._current * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self._current = self.initial
