"""
SP 800-90B §4.4 continuous health tests for 8-bit samples.

:class:`HealthTests` runs the Repetition Count Test (RCT, §4.4.1) and the
Adaptive Proportion Test (APT, §4.4.2) on every sample it is fed, and only
hands on samples that both tests approved.  It is pure, synchronous code.

The promises, in one place:

- **Windows are the unit of approval.**  Samples are cut into consecutive,
  non-overlapping APT windows of ``window`` samples, across calls to
  :meth:`HealthTests.feed`.  A window is returned only once it is complete
  and neither test fired on any of its samples; a window in which a test
  fired is discarded whole and is never returned.  Fewer than ``window``
  samples wait in a buffer for the rest of their window.
- **The RCT is continuous.**  Its run counter carries across windows and
  across calls, and a failure does not restart it: every sample that
  extends a run of ``rct_cutoff_value`` or more identical samples is a
  failure, so a stuck source fails every window it touches.
- **Startup (§4.3).**  After construction and after every :meth:`reset`,
  the first ``startup_samples`` (at least 1024, rounded up to whole
  windows) are tested and then discarded even if they pass: keeping them
  would be allowed, but discarding them is the simpler honest choice and
  costs two windows per start.  Any failure during startup fails the
  source at once.
- **Failure policy.**  After startup, a failing window is an intermittent
  failure: it is discarded and testing goes on.  ``failure_limit`` failing
  windows among the last ``failure_span`` windows (64 by default, 32 KiB
  of samples at ``window=512``) is a persistent failure and the state
  becomes ``SourceState.FAILED``.  With ``alpha = 2**-30`` a healthy source fails a
  window about once in 2**29 windows, so three within 64 windows is a
  fault, not bad luck; a stuck source reaches it within three windows.
- **Failed means closed.**  Once failed, :meth:`feed` returns ``b""`` and
  tests nothing until :meth:`reset`, which re-runs the startup test.  The
  caller decides when to retry (with backoff).
- **Quarantine.**  The raw samples of failing windows, and whatever is fed
  while failed, are kept in a bounded ring (64 KiB by default) that
  :meth:`quarantine` reads for diagnostics such as a heatmap of a failing
  device.  Those bytes are never returned by :meth:`feed` and must never
  be used as seed.

Speed: the APT of a window is one ``bytes.count`` and the RCT is one
compiled regular expression over each batch of whole windows plus the run
carried in from the previous batch, so no Python code runs per sample.
"""

from __future__ import annotations

import math
import re
from collections import deque
from fractions import Fraction

from entropy_appliance.core.states import HealthTest, SourceState
from entropy_appliance.core.status import HealthStatus

__all__ = ["HealthTests", "apt_cutoff", "rct_cutoff", "failing_run"]

DEFAULT_ALPHA = 2.0**-30
DEFAULT_WINDOW = 512
MIN_STARTUP_SAMPLES = 1024
# The exact tail sum costs about W**2 big-integer steps; the standard uses
# W = 512 for 8-bit samples, so 4096 leaves room without a slow start.
MAX_WINDOW = 4096

def _check_entropy(h: float) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise ValueError(f"min-entropy must be a number of bits per sample, not {h!r}")
    h = float(h)
    if not (math.isfinite(h) and 0.0 < h <= 8.0):
        raise ValueError(
            f"min-entropy must be in (0, 8] bits per 8-bit sample, not {h!r}"
        )
    return h


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a probability, not {alpha!r}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(
            f"alpha (false-positive probability) must be in (0, 1), not {alpha!r}"
        )
    return alpha


def _check_int(name: str, value: int, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, not {value!r}")
    return value


def _neg_log2(alpha: float) -> Fraction:
    """-log2(alpha), exact when alpha is a power of two (the usual case)."""
    mantissa, exponent = math.frexp(alpha)
    if mantissa == 0.5:
        return Fraction(1 - exponent)
    return Fraction(-math.log2(alpha))


def rct_cutoff(h: float, alpha: float = DEFAULT_ALPHA) -> int:
    """
    The Repetition Count Test cutoff of SP 800-90B §4.4.1:
    ``C = 1 + ceil(-log2(alpha) / H)``.

    A run of ``C`` identical samples fails the test.  The division is done
    in exact rational arithmetic, so a ratio that is a whole number (such
    as ``H = 0.7``, ``alpha = 2**-7``) is not pushed up by rounding.
    """
    h = _check_entropy(h)
    alpha = _check_alpha(alpha)
    # The claim as written (shortest round-trip decimal), so that 0.7 bits
    # and alpha = 2**-7 give exactly 10 and not the binary64 10.000...06.
    return 1 + math.ceil(_neg_log2(alpha) / Fraction(repr(h)))


def _binomial_critical(n: int, p: float, alpha: float) -> int:
    """
    The smallest ``c`` with ``P[X >= c] <= alpha`` for ``X ~ Binomial(n, p)``.

    Exact for the binary64 values of ``p`` and ``alpha``: every probability
    is an integer over the common denominator ``d**n`` (``d`` a power of
    two), so no rounding can move the answer across the boundary.
    """
    a, d = p.as_integer_ratio()
    b = d - a  # 1 - p == b / d
    alpha_num, alpha_den = alpha.as_integer_ratio()
    total = d**n
    # tail / total <= alpha_num / alpha_den, without division:
    limit = alpha_num * total
    if 2 * a <= d:
        # Mass sits low: walk the CDF upwards from k = 0.
        term = b**n  # comb(n, 0) * a**0 * b**n
        cdf = 0
        for k in range(n + 1):
            cdf += term
            if (total - cdf) * alpha_den <= limit:
                return k + 1
            if k < n:
                term = term * (n - k) * a // ((k + 1) * b)
        return n + 1
    # Mass sits high: walk the upper tail downwards from k = n.
    term = a**n
    tail = 0
    for k in range(n, -1, -1):
        tail += term
        if tail * alpha_den > limit:
            return k + 1
        if k > 0:
            term = term * k * b // ((n - k + 1) * a)
    return 0


def apt_cutoff(
    h: float, alpha: float = DEFAULT_ALPHA, window: int = DEFAULT_WINDOW
) -> int:
    """
    The Adaptive Proportion Test cutoff of SP 800-90B §4.4.2:
    ``C = 1 + CRITBINOM(W, 2**-H, 1 - alpha)``.

    That is the smallest ``C`` such that a window of ``W`` samples holds
    ``C`` or more copies of its first sample with probability at most
    ``alpha`` when each sample matches with probability ``2**-H``.  It is
    computed exactly (integers, no floating-point tail sums).  A cutoff
    above ``window`` means the test cannot fire at that entropy claim.
    """
    h = _check_entropy(h)
    alpha = _check_alpha(alpha)
    window = _check_int("window", window, 2, MAX_WINDOW)
    return _binomial_critical(window, 2.0**-h, alpha)


class HealthTests:
    """
    The continuous RCT and APT over a stream of 8-bit samples, with the
    startup test, the failure policy and a quarantine of discarded samples
    (see the module docstring for the promises).

    ``feed`` returns only samples of complete windows that passed both
    tests; ``state`` is ``STARTUP``, ``OK`` or ``FAILED`` (a :class:`SourceState`).
    """

    def __init__(
        self,
        min_entropy: float,
        alpha: float = DEFAULT_ALPHA,
        window: int = DEFAULT_WINDOW,
        startup_samples: int = MIN_STARTUP_SAMPLES,
        failure_limit: int = 3,
        failure_span: int = 64,
        quarantine_size: int = 65536,
    ) -> None:
        self.min_entropy = _check_entropy(min_entropy)
        self.alpha = _check_alpha(alpha)
        self.window = _check_int("window", window, 2, MAX_WINDOW)
        startup_samples = _check_int(
            "startup_samples", startup_samples, MIN_STARTUP_SAMPLES
        )
        self.failure_limit = _check_int("failure_limit", failure_limit, 1)
        self.failure_span = _check_int("failure_span", failure_span, failure_limit)
        self.quarantine_size = _check_int("quarantine_size", quarantine_size, 0)
        self.startup_windows = -(-startup_samples // self.window)
        self.startup_samples = self.startup_windows * self.window

        self.rct_cutoff_value = rct_cutoff(self.min_entropy, self.alpha)
        self.apt_cutoff_value = apt_cutoff(self.min_entropy, self.alpha, self.window)
        if self.apt_cutoff_value < 2:
            # The first sample of a window always counts once.
            raise ValueError(
                f"alpha {self.alpha!r} is too large for a window of {self.window}: "
                "the APT would fail every window"
            )
        try:
            # A run of C identical bytes, as long as it goes.
            self._rct_re = re.compile(
                rb"(.)\1{%d,}" % (self.rct_cutoff_value - 1), re.DOTALL
            )
        except (OverflowError, re.error) as e:
            raise ValueError(
                f"min-entropy {self.min_entropy!r} gives an RCT cutoff too large "
                "to test"
            ) from e

        # Cumulative counters: they survive reset().
        self._failures = {test: 0 for test in HealthTest}
        self.samples_tested = 0
        self.samples_discarded = 0
        self.samples_returned = 0
        self.windows_passed = 0
        self.windows_failed = 0
        self.last_failure: HealthTest | None = None
        self._quarantine = bytearray()

        self._buffer = bytearray()
        self._reset_state()

    def _reset_state(self) -> None:
        self._state = SourceState.STARTUP
        self._startup_left = self.startup_windows
        self._buffer.clear()
        # The RCT run carried from the last tested sample: (value, length).
        self._run_value = -1
        self._run_length = 0
        self._recent: deque[bool] = deque(maxlen=self.failure_span)

    # -- reporting ------------------------------------------------------------

    @property
    def state(self) -> SourceState:
        """``STARTUP``, ``OK`` or ``FAILED``; never ``STARTING``."""
        return self._state

    @property
    def failures(self) -> dict[HealthTest, int]:
        """Failing windows per test since construction (a copy)."""
        return dict(self._failures)

    @property
    def buffered(self) -> int:
        """Samples waiting for the rest of their window (< ``window``)."""
        return len(self._buffer)

    def snapshot(self) -> HealthStatus:
        """The tests' state and settings, for status documents."""
        return HealthStatus(
            state=self.state,
            rct_cutoff=self.rct_cutoff_value,
            apt_cutoff=self.apt_cutoff_value,
            apt_window=self.window,
            samples_tested=self.samples_tested,
            samples_discarded=self.samples_discarded,
        )

    def quarantine(self, n: int) -> bytes:
        """
        The last ``n`` (or fewer, if fewer are kept) raw samples that were
        discarded because a test fired or the source had failed.

        For diagnostics only: these bytes are never returned by
        :meth:`feed` and must never be used as seed.
        """
        n = _check_int("n", n, 0)
        if n == 0:
            return b""
        return bytes(self._quarantine[-n:])

    # -- control --------------------------------------------------------------

    def reset(self) -> None:
        """
        Forget the failure and re-run the startup test on the next samples.

        Buffered samples of an unfinished window are discarded; counters
        and the quarantine are kept.
        """
        self.samples_discarded += len(self._buffer)
        self._reset_state()

    def _to_quarantine(self, raw: bytes | memoryview) -> None:
        cap = self.quarantine_size
        if cap == 0:
            return
        q = self._quarantine
        if len(raw) >= cap:
            q[:] = raw[len(raw) - cap:]
        else:
            q += raw
            if len(q) > cap:
                del q[: len(q) - cap]

    def _drop(self, raw: bytes | memoryview) -> None:
        """Samples that arrive while failed: untested, kept only for diagnosis."""
        self.samples_discarded += len(raw)
        self._to_quarantine(raw)

    # -- the tests ------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """
        Test ``data`` (continuing the stream of earlier calls) and return the
        samples of every window completed by it in which neither test
        fired.  Returns ``b""`` while failed.
        """
        if not data:
            return b""
        if self._state is SourceState.FAILED:
            self._drop(data)
            return b""
        w = self.window
        buf = self._buffer
        have = len(buf) + len(data)
        if have < w:
            buf += data
            return b""
        whole = have - have % w
        cut = whole - len(buf)
        block = bytes(buf) + bytes(data[:cut]) if buf else bytes(data[:cut])
        buf.clear()
        buf += data[cut:]
        out, stopped_at = self._test_block(block)
        if stopped_at is not None:
            # Failed mid-way: the rest of this batch and the buffer are
            # never tested.
            self._drop(memoryview(block)[stopped_at:])
            self._drop(bytes(buf))
            buf.clear()
        result = b"".join(out)
        self.samples_returned += len(result)
        return result

    def _rct_fired(self, block: bytes) -> bytearray:
        """One flag per window of ``block``: did any of its samples fail the RCT."""
        w = self.window
        c = self.rct_cutoff_value
        fired = bytearray(len(block) // w)

        def mark(first_failing: int, end: int) -> None:
            for i in range(first_failing // w, (end - 1) // w + 1):
                fired[i] = 1

        # The run carried in from before this block continues into it.
        first = block[0]
        lead = len(block) - len(block.lstrip(block[:1]))
        if first == self._run_value:
            start = max(0, c - 1 - self._run_length)
            if start < lead:
                mark(start, lead)
        for m in self._rct_re.finditer(block):
            s, e = m.span()
            mark(s + c - 1, e)

        last = block[-1]
        trail = len(block) - len(block.rstrip(block[-1:]))
        if trail == len(block) and last == self._run_value:
            self._run_length += trail
        else:
            self._run_value = last
            self._run_length = trail
        return fired

    def _test_block(self, block: bytes) -> tuple[list[bytes], int | None]:
        """
        Test whole windows; returns the approved windows and, if the source
        failed part-way, the offset of the first untested sample.
        """
        w = self.window
        apt_c = self.apt_cutoff_value
        rct = self._rct_fired(block)
        out: list[bytes] = []
        for i in range(len(rct)):
            start = i * w
            end = start + w
            apt = block.count(block[start], start, end) >= apt_c
            self.samples_tested += w
            if not (apt or rct[i]):
                self.windows_passed += 1
                if self._state is SourceState.STARTUP:
                    self.samples_discarded += w
                    self._startup_left -= 1
                    if self._startup_left == 0:
                        self._state = SourceState.OK
                else:
                    self._recent.append(False)
                    out.append(block[start:end])
                continue
            # A test fired: the window is discarded whole.
            self.windows_failed += 1
            if apt:
                self._failures[HealthTest.APT] += 1
                self.last_failure = HealthTest.APT
            if rct[i]:
                # A stuck run is the more telling diagnosis, so it wins.
                self._failures[HealthTest.RCT] += 1
                self.last_failure = HealthTest.RCT
            self.samples_discarded += w
            self._to_quarantine(memoryview(block)[start:end])
            if self._state is SourceState.STARTUP:
                self._state = SourceState.FAILED
            else:
                self._recent.append(True)
                if sum(self._recent) >= self.failure_limit:
                    self._state = SourceState.FAILED
            if self._state is SourceState.FAILED:
                return out, end
        return out, None


def failing_run(h: float, alpha: float = DEFAULT_ALPHA, window: int = DEFAULT_WINDOW,
                failure_limit: int = 3) -> int:
    """
    The length of a run of identical samples that makes a
    :class:`HealthTests` with these settings fail persistently: it fires the
    RCT in at least ``failure_limit`` whole windows wherever it starts.
    """
    return rct_cutoff(h, alpha) + (failure_limit + 1) * window
