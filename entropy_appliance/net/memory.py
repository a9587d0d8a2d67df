"""
Giving freed heap memory back to the system after a burst.

glibc's ``malloc`` keeps what a program frees for its next allocations: in
the main heap below the last block still in use, and in the arena of each
thread that allocated it.  After 1,000 raw-stream readers leave, or after a
picture was rendered in a worker thread, the process keeps its peak RSS
although the memory is free.  ``malloc_trim(0)`` hands every whole free page
of every arena back (``madvise``), at the cost of a walk over the free lists
and a page fault when a page is used again.

:class:`HeapTrim` therefore trims only after enough memory was let go, and
at most once per ``delay``: a burst of endings costs one trim.  A large job
in a worker thread trims at its end instead (:meth:`HeapTrim.now`), in that
thread: the next job may run in another thread, with an arena of its own.
Elsewhere than on glibc there is no ``malloc_trim`` and it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["HeapTrim", "malloc_trim"]

#: Memory let go, in bytes, that is worth a trim.
TRIM_THRESHOLD = 16 * 1024 * 1024

#: Seconds from the first release past the threshold to the trim.
TRIM_DELAY = 1.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def malloc_trim() -> bool:
    """Hand free heap pages back to the system; True if any were (False: none, or not glibc)."""
    return _malloc_trim is not None and bool(_malloc_trim(0))


class HeapTrim:
    """
    Counts memory let go (:meth:`released`) and, once ``threshold`` bytes
    have been, trims the heap ``delay`` seconds later on ``clock``.
    """

    def __init__(self, clock: IReactorTime, threshold: int = TRIM_THRESHOLD,
                 delay: float = TRIM_DELAY, trim: Callable[[], bool] = malloc_trim) -> None:
        self._clock = clock
        self._threshold = threshold
        self._delay = delay
        self._trim = trim
        self._released = 0
        self._call: IDelayedCall | None = None
        #: Trims done so far.
        self.trims = 0

    def released(self, n: int) -> None:
        """``n`` bytes (an estimate) were let go."""
        self._released += n
        if self._released >= self._threshold and self._call is None:
            self._call = self._clock.callLater(self._delay, self._run)

    def now(self) -> bool:
        """Trim at once, from any thread; True if memory was given back."""
        return self._trim()

    def _run(self) -> None:
        self._call = None
        self._released = 0
        self.trims += 1
        self._trim()
