"""Tests for the SP 800-90B continuous health tests (entropy_appliance.core.health)."""

from __future__ import annotations

import math
import os
import random
from collections import deque
from fractions import Fraction

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from entropy_appliance.core.health import HealthTests, apt_cutoff, rct_cutoff
from entropy_appliance.core.states import HealthTest, SourceState

# -- an independent, per-sample reference --------------------------------------


class ReferenceHealth:
    """
    The tests as SP 800-90B states them, one sample at a time, with the same
    window commitment, startup and failure policy as the module promises.
    """

    def __init__(self, tests: HealthTests) -> None:
        self.rct_c = tests.rct_cutoff_value
        self.apt_c = tests.apt_cutoff_value
        self.window = tests.window
        self.startup_windows = tests.startup_windows
        self.failure_limit = tests.failure_limit
        self.failure_span = tests.failure_span
        self.failures = {"rct": 0, "apt": 0}
        self.samples_tested = 0
        self.samples_discarded = 0
        self.windows_passed = 0
        self.last_failure: str | None = None
        self.quarantined = bytearray()
        self.cur = bytearray()
        self._restart()

    def _restart(self) -> None:
        self.state = "startup"
        self.startup_left = self.startup_windows
        self.cur.clear()
        self.run_value = -1
        self.run_length = 0
        self.win_rct = False
        self.win_apt = False
        self.apt_value = -1
        self.apt_count = 0
        self.recent: deque[bool] = deque(maxlen=self.failure_span)

    def reset(self) -> None:
        self.samples_discarded += len(self.cur)
        self._restart()

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for x in data:
            if self.state == "failed":
                self.samples_discarded += 1
                self.quarantined.append(x)
                continue
            # Repetition Count Test (§4.4.1): B counts the current run.
            if x == self.run_value:
                self.run_length += 1
            else:
                self.run_value, self.run_length = x, 1
            if self.run_length >= self.rct_c:
                self.win_rct = True
            # Adaptive Proportion Test (§4.4.2): B counts the first sample.
            if not self.cur:
                self.apt_value, self.apt_count = x, 1
            elif x == self.apt_value:
                self.apt_count += 1
            if self.apt_count >= self.apt_c:
                self.win_apt = True
            self.cur.append(x)
            if len(self.cur) == self.window:
                self._close(out)
        return bytes(out)

    def _close(self, out: bytearray) -> None:
        w = bytes(self.cur)
        self.cur.clear()
        rct, apt = self.win_rct, self.win_apt
        self.win_rct = self.win_apt = False
        self.samples_tested += len(w)
        if not (rct or apt):
            self.windows_passed += 1
            if self.state == "startup":
                self.samples_discarded += len(w)
                self.startup_left -= 1
                if self.startup_left == 0:
                    self.state = "ok"
            else:
                self.recent.append(False)
                out += w
            return
        if apt:
            self.failures["apt"] += 1
        if rct:
            self.failures["rct"] += 1
        self.last_failure = "rct" if rct else "apt"
        self.samples_discarded += len(w)
        self.quarantined += w
        if self.state == "startup":
            self.state = "failed"
        else:
            self.recent.append(True)
            if sum(self.recent) >= self.failure_limit:
                self.state = "failed"


def assert_agree(fast: HealthTests, ref: ReferenceHealth) -> None:
    assert fast.state == ref.state
    assert fast.failures == ref.failures
    assert fast.samples_tested == ref.samples_tested
    assert fast.samples_discarded == ref.samples_discarded
    assert fast.windows_passed == ref.windows_passed
    assert fast.last_failure == ref.last_failure
    assert fast.buffered == len(ref.cur)
    n = fast.quarantine_size
    assert fast.quarantine(n) == bytes(ref.quarantined[max(0, len(ref.quarantined) - n):])


# -- helpers ---------------------------------------------------------------------


def no_repeats(n: int, rng: random.Random, avoid: int | None = None) -> bytes:
    """Random bytes with no two equal neighbours (so the RCT cannot fire)."""
    out = bytearray()
    prev = -1
    for _ in range(n):
        x = rng.randrange(256)
        while x == prev or x == avoid:
            x = rng.randrange(256)
        out.append(x)
        prev = x
    return bytes(out)


def started(tests: HealthTests) -> HealthTests:
    """Run the startup test on healthy samples."""
    assert tests.feed(os.urandom(tests.startup_samples)) == b""
    assert tests.state is SourceState.OK
    return tests


# -- cutoffs ---------------------------------------------------------------------


def expected_apt(h: float, alpha: float, window: int) -> int:
    """Smallest c with P[X >= c] <= alpha, X ~ Binomial(W, 2**-H), by a plain sum."""
    p = Fraction(2.0**-h)
    q = 1 - p
    a = Fraction(alpha)
    # Upper tails from the top down, each term straight from the formula.
    tails = [Fraction(0)] * (window + 2)
    for k in range(window, -1, -1):
        tails[k] = tails[k + 1] + math.comb(window, k) * p**k * q ** (window - k)
    return min(c for c in range(window + 2) if tails[c] <= a)


@pytest.mark.parametrize(
    "h, alpha, window",
    [
        (8, 2.0**-30, 512),
        (1, 2.0**-30, 512),
        (3.5, 2.0**-20, 512),
        (0.25, 2.0**-40, 64),
        (6.0, 1e-6, 1024),
        (2, 0.01, 32),
        (0.01, 2.0**-30, 16),
    ],
)
def test_apt_cutoff_matches_binomial_tail(h: float, alpha: float, window: int) -> None:
    assert apt_cutoff(h, alpha, window) == expected_apt(h, alpha, window)


@pytest.mark.parametrize(
    "h, expected", [(0.5, 410), (1, 311), (2, 177), (4, 62), (8, 13)]
)
def test_apt_cutoff_reproduces_the_standard_table(h: float, expected: int) -> None:
    # SP 800-90B Table 2, non-binary samples, W = 512, alpha = 2**-20.
    assert apt_cutoff(h, 2.0**-20, 512) == expected


def test_apt_cutoff_defaults() -> None:
    # alpha = 2**-30 at H = 1 gives the 325 often quoted for W = 512.
    assert apt_cutoff(1) == 325
    assert apt_cutoff(8) == apt_cutoff(8, 2.0**-30, 512)


def test_apt_cutoff_beyond_window_when_claim_is_tiny() -> None:
    # With p close to 1 even a constant window is plausible: the test cannot fire.
    assert apt_cutoff(0.0001, 2.0**-30, 512) == 513


@pytest.mark.parametrize(
    "h, alpha", [(1, 2.0**-20), (8, 2.0**-30), (0.1, 2.0**-20), (3, 2.0**-30),
                 (7.5, 1e-9), (0.5, 0.5), (2.5, 2.0**-64)]
)
def test_rct_cutoff_is_smallest_run_within_alpha(h: float, alpha: float) -> None:
    c = rct_cutoff(h, alpha)
    # A run of C has probability at most 2**(-H (C-1)) <= alpha; a run of C-1 not.
    bits = Fraction(repr(h))  # the entropy claim as written
    if math.frexp(alpha)[0] == 0.5:
        need = Fraction(-math.frexp(alpha)[1] + 1)
    else:
        need = Fraction(-math.log2(alpha))
    assert bits * (c - 1) >= need
    assert bits * (c - 2) < need


def test_rct_cutoff_known_values() -> None:
    assert rct_cutoff(1, 2.0**-20) == 21
    assert rct_cutoff(8, 2.0**-20) == 4
    assert rct_cutoff(8) == 5
    assert rct_cutoff(1) == 31
    # Claims are taken as written: 7 / 0.7 is exactly 10, so C = 11.
    assert rct_cutoff(0.7, 2.0**-7) == 11
    assert rct_cutoff(0.1, 2.0**-20) == 201


@pytest.mark.parametrize("bad", [0, -1, 8.01, float("nan"), float("inf"), True, "8"])
def test_cutoffs_reject_bad_entropy(bad: object) -> None:
    with pytest.raises(ValueError, match="min-entropy"):
        rct_cutoff(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min-entropy"):
        apt_cutoff(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan")])
def test_cutoffs_reject_bad_alpha(bad: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        rct_cutoff(1, bad)
    with pytest.raises(ValueError, match="alpha"):
        apt_cutoff(1, bad)


@pytest.mark.parametrize("bad", [1, 0, 4097, 512.0, True])
def test_apt_cutoff_rejects_bad_window(bad: object) -> None:
    with pytest.raises(ValueError, match="window"):
        apt_cutoff(1, 2.0**-30, bad)  # type: ignore[arg-type]


# -- construction ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"min_entropy": 0}, "min-entropy"),
        ({"min_entropy": 9}, "min-entropy"),
        ({"min_entropy": 8, "alpha": 0}, "alpha"),
        ({"min_entropy": 8, "alpha": 1.0}, "alpha"),
        ({"min_entropy": 8, "window": 1}, "window"),
        ({"min_entropy": 8, "window": 100000}, "window"),
        ({"min_entropy": 8, "startup_samples": 1023}, "startup_samples"),
        ({"min_entropy": 8, "failure_limit": 0}, "failure_limit"),
        ({"min_entropy": 8, "failure_limit": 5, "failure_span": 4}, "failure_span"),
        ({"min_entropy": 8, "quarantine_size": -1}, "quarantine_size"),
        ({"min_entropy": 1e-12}, "RCT cutoff"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        HealthTests(**kwargs)  # type: ignore[arg-type]


def test_cutoffs_and_startup_are_exposed() -> None:
    t = HealthTests(2, alpha=2.0**-20, window=512, startup_samples=1500)
    assert (t.rct_cutoff_value, t.apt_cutoff_value) == (11, 177)
    assert t.window == 512
    assert t.startup_samples == 1536  # rounded up to whole windows
    assert t.state is SourceState.STARTUP
    assert t.failures == {"rct": 0, "apt": 0}
    assert t.last_failure is None


# -- behaviour on sources --------------------------------------------------------


@pytest.mark.parametrize("h", [8, 1])
def test_healthy_source_passes(h: float) -> None:
    t = HealthTests(h)
    data = os.urandom(256 * 1024 + 100)
    out = b"".join(t.feed(data[i:i + 4000]) for i in range(0, len(data), 4000))
    assert t.state is SourceState.OK
    assert t.failures == {"rct": 0, "apt": 0}
    # Startup windows are discarded, the tail waits for its window.
    assert out == data[t.startup_samples:len(data) - 100]
    assert t.buffered == 100
    assert t.samples_tested == len(data) - 100
    assert t.samples_discarded == t.startup_samples
    assert t.quarantine(1024) == b""


def test_partial_window_is_held_back() -> None:
    t = started(HealthTests(8))
    chunk = os.urandom(511)
    assert t.feed(chunk) == b""
    assert t.buffered == 511
    last = os.urandom(1)
    assert t.feed(last) == chunk + last
    assert t.buffered == 0


def test_stuck_source_fails_rct_and_returns_nothing() -> None:
    t = HealthTests(8)
    assert t.feed(b"\x5a" * 100_000) == b""
    assert t.state is SourceState.FAILED
    assert t.failures["rct"] == 1
    assert t.last_failure is HealthTest.RCT
    assert t.feed(os.urandom(10_000)) == b""
    assert t.state is SourceState.FAILED


def test_source_sticking_after_startup_fails_within_the_limit() -> None:
    t = started(HealthTests(8, failure_limit=3))
    good = os.urandom(512)
    assert t.feed(good) == good
    assert t.feed(b"\x00" * 512 * 10) == b""
    assert t.state is SourceState.FAILED
    assert t.failures["rct"] == 3
    assert t.quarantine(512) == b"\x00" * 512


def test_rct_run_straddling_windows_and_calls() -> None:
    # Four equal samples end one window, a fifth starts the next: H = 8 allows 4.
    t = started(HealthTests(8))
    rng = random.Random(1)
    first = no_repeats(508, rng, avoid=7) + b"\x07" * 4
    assert t.feed(first) == first
    second = b"\x07" + no_repeats(511, rng, avoid=7)
    assert t.feed(second[:1]) == b""
    assert t.feed(second[1:]) == b""
    assert t.failures == {"rct": 1, "apt": 0}
    assert t.quarantine(512) == second


def test_biased_source_fails_apt_not_rct() -> None:
    # Claimed 8 bits, but one value takes every 16th sample, never twice in a row.
    rng = random.Random(2)
    data = bytearray()
    for _ in range(8):
        for _ in range(32):
            data += b"\xaa" + no_repeats(15, rng, avoid=0xAA)
    t = HealthTests(8)
    assert t.apt_cutoff_value < 32
    assert t.feed(bytes(data)) == b""
    assert t.state is SourceState.FAILED
    assert t.failures == {"rct": 0, "apt": 1}
    assert t.last_failure is HealthTest.APT


def test_discarded_windows_are_never_returned() -> None:
    t = started(HealthTests(8, failure_limit=10**6, failure_span=10**6))
    rng = random.Random(3)
    bad = b"\xee" * 12 + no_repeats(500, rng, avoid=0xEE)
    healthy: list[bytes] = []
    stream = bytearray()
    n_bad = 0
    for i in range(200):
        if i % 3 == 1:
            stream += bad
            n_bad += 1
        else:
            w = os.urandom(512)
            healthy.append(w)
            stream += w
    out = bytearray()
    pos = 0
    while pos < len(stream):
        n = rng.randrange(1, 3000)
        out += t.feed(bytes(stream[pos:pos + n]))
        pos += n
    assert t.state is SourceState.OK
    assert bytes(out) == b"".join(healthy)
    assert b"\xee" * 12 not in out
    assert t.failures == {"rct": n_bad, "apt": 0}
    assert t.quarantine(512) == bad
    assert t.samples_discarded == t.startup_samples + n_bad * 512


def test_failure_policy_counts_failures_in_the_last_span() -> None:
    bad = b"\x01" * 512

    def good() -> bytes:
        # The RCT run carries across windows: a good window that began with
        # 0x01 would extend the bad window's run and fail, 1 time in 256.
        w = os.urandom(512)
        return w if w[0] != 1 else b"\x02" + w[1:]

    # Failures farther apart than the span never add up.
    t = started(HealthTests(8, failure_limit=2, failure_span=8))
    for _ in range(5):
        assert t.feed(bad) == b""
        for _ in range(8):
            w = good()
            assert t.feed(w) == w
    assert t.state is SourceState.OK
    assert t.failures["rct"] == 5

    # Two within the span is persistent.
    t = started(HealthTests(8, failure_limit=2, failure_span=8))
    t.feed(bad)
    for _ in range(6):
        t.feed(good())
    assert t.state is SourceState.OK
    t.feed(bad)
    assert t.state is SourceState.FAILED


def test_failure_mid_batch_discards_the_rest() -> None:
    t = started(HealthTests(8, failure_limit=1))
    good = os.urandom(1024)
    data = good + b"\x00" * 512 + os.urandom(2000)
    assert t.feed(data) == good
    assert t.state is SourceState.FAILED
    assert t.buffered == 0
    assert t.samples_tested == t.startup_samples + 1536
    # Everything after the failing window is quarantined, never returned.
    assert t.quarantine(10**6).endswith(data[1024:])


def test_startup_failure_is_immediate() -> None:
    t = HealthTests(8, failure_limit=3)
    assert t.feed(os.urandom(512) + b"\x00" * 512 + os.urandom(4096)) == b""
    assert t.state is SourceState.FAILED
    assert t.windows_passed == 1


def test_reset_reruns_startup_and_keeps_counters() -> None:
    t = HealthTests(8)
    t.feed(b"\x00" * 2048)
    assert t.state is SourceState.FAILED
    t.reset()
    assert t.state is SourceState.STARTUP
    assert t.failures["rct"] == 1
    quarantined = t.quarantine(512)
    assert quarantined == b"\x00" * 512
    # The startup samples are tested and discarded again.
    assert t.feed(os.urandom(1024)) == b""
    assert t.state is SourceState.OK
    w = os.urandom(512)
    assert t.feed(w) == w
    # A constant window fails both tests; nothing new since the reset.
    assert t.failures == {"rct": 1, "apt": 1}


def test_reset_forgets_partial_window_and_run() -> None:
    t = started(HealthTests(8))
    rng = random.Random(4)
    # A tested window ending in a run of four, one short of the cutoff.
    first = no_repeats(508, rng, avoid=3) + b"\x03" * 4
    assert t.feed(first) == first
    t.feed(b"\x03\x03")
    t.reset()
    assert t.buffered == 0
    # Had the run carried over, the first startup window would fail.
    assert t.feed(b"\x03" + no_repeats(1023, rng, avoid=3)) == b""
    assert t.state is SourceState.OK


def test_quarantine_is_bounded_and_validated() -> None:
    t = HealthTests(8, quarantine_size=1000)
    t.feed(b"\x00" * 512)
    t.feed(bytes(range(256)) * 10)
    q = t.quarantine(5000)
    assert len(q) == 1000
    assert q == (bytes(range(256)) * 10)[-1000:]
    assert t.quarantine(0) == b""
    with pytest.raises(ValueError):
        t.quarantine(-1)


def test_accounting_adds_up() -> None:
    t = HealthTests(8, failure_limit=2)
    fed = 0
    returned = 0
    for chunk in (os.urandom(3000), b"\x09" * 700, os.urandom(1500), b"\x09" * 600):
        fed += len(chunk)
        returned += len(t.feed(chunk))
    assert fed == returned + t.samples_discarded + t.buffered
    assert returned == t.samples_returned


# -- the fast path against the reference -------------------------------------------


segments = st.one_of(
    st.tuples(st.integers(0, 3), st.integers(1, 40)).map(lambda r: bytes([r[0]]) * r[1]),
    st.binary(min_size=1, max_size=64),
    st.tuples(st.integers(0, 255), st.integers(1, 12)).map(lambda r: bytes([r[0]]) * r[1]),
    # A healthy-looking stretch: no repeats, every value once.
    st.tuples(st.integers(0, 255), st.integers(1, 256)).map(
        lambda r: bytes((r[0] + i) % 256 for i in range(r[1]))
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    h=st.sampled_from([0.5, 1.0, 2.0, 4.0, 7.3, 8.0]),
    alpha=st.sampled_from([2.0**-8, 2.0**-20, 2.0**-30]),
    window=st.sampled_from([2, 3, 8, 16, 64]),
    failure_limit=st.integers(1, 4),
    span_extra=st.integers(0, 20),
    healthy_start=st.booleans(),
    parts=st.lists(segments, max_size=200),
    cuts=st.lists(st.integers(1, 200), min_size=1, max_size=40),
    resets=st.sets(st.integers(0, 40), max_size=3),
)
def test_fast_path_agrees_with_reference(
    h: float,
    alpha: float,
    window: int,
    failure_limit: int,
    span_extra: int,
    healthy_start: bool,
    parts: list[bytes],
    cuts: list[int],
    resets: set[int],
) -> None:
    fast = HealthTests(
        h, alpha, window,
        failure_limit=failure_limit,
        failure_span=failure_limit + span_extra,
        quarantine_size=300,
    )
    ref = ReferenceHealth(fast)
    # No two neighbours equal and each window's first value seen once: passes
    # any cutoff, so the interesting part is tested in the "ok" state too.
    start = bytes(range(256)) * 5
    data = (start[: fast.startup_samples] if healthy_start else b"") + b"".join(parts)
    pos = 0
    i = 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        chunk = data[pos:pos + n]
        assert fast.feed(chunk) == ref.feed(chunk)
        assert_agree(fast, ref)
        if i in resets:
            fast.reset()
            ref.reset()
            assert_agree(fast, ref)
        pos += n
        i += 1
    event(f"final state {fast.state}")
    event(f"rct fired {fast.failures['rct'] > 0}, apt fired {fast.failures['apt'] > 0}")
    event(f"returned samples {fast.samples_returned > 0}")


@settings(max_examples=20, deadline=None)
@given(
    stuck=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 40)), max_size=12),
    cuts=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
)
def test_fast_path_agrees_at_standard_window(
    stuck: list[tuple[int, int]], cuts: list[int]
) -> None:
    rng = random.Random(len(stuck) * 7919 + sum(cuts))
    data = bytearray(rng.randbytes(20_000))
    for at, length in stuck:
        data[at * 9: at * 9 + length] = bytes([data[at * 9]]) * length
    fast = HealthTests(8, failure_limit=4, failure_span=64)
    ref = ReferenceHealth(fast)
    pos = 0
    i = 0
    while pos < len(data):
        chunk = bytes(data[pos:pos + cuts[i % len(cuts)]])
        assert fast.feed(chunk) == ref.feed(chunk)
        assert_agree(fast, ref)
        pos += len(chunk)
        i += 1
