"""
Throughput of the SP 800-90B health tests, against a per-sample Python loop.

Run from the checkout: ``.venv/bin/python -m bench.bench_health``.  Prints MB/s per case; the
baseline is the straightforward one-sample-at-a-time RCT + APT in the same
run, so the ratio is what the batch path buys.
"""

from __future__ import annotations

import os
import time

from entropy_appliance.core.health import HealthTests


def per_sample(data: bytes, rct_c: int, apt_c: int, window: int) -> bytes:
    """The baseline: both tests, one sample per Python iteration."""
    out = bytearray()
    run_value, run_length = -1, 0
    cur = bytearray()
    apt_value, apt_count = -1, 0
    fired = False
    for x in data:
        if x == run_value:
            run_length += 1
        else:
            run_value, run_length = x, 1
        if not cur:
            apt_value, apt_count = x, 1
        elif x == apt_value:
            apt_count += 1
        if run_length >= rct_c or apt_count >= apt_c:
            fired = True
        cur.append(x)
        if len(cur) == window:
            if not fired:
                out += cur
            cur.clear()
            fired = False
    return bytes(out)


def rate(total: int, seconds: float) -> str:
    return f"{total / seconds / 1e6:8.1f} MB/s"


def timed(label: str, total: int, fn: object) -> None:
    assert callable(fn)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    print(f"{label:<48} {rate(total, best)}")


def main() -> None:
    size = 8 << 20
    data = os.urandom(size)
    stuck = b"\x00" * size
    for h in (8.0, 1.0):
        for chunk in (4096, 65536, 1 << 20):

            def run(h: float = h, chunk: int = chunk) -> None:
                t = HealthTests(h, failure_limit=10**6, failure_span=10**6)
                for i in range(0, size, chunk):
                    t.feed(data[i:i + chunk])

            timed(f"HealthTests H={h:g} urandom, {chunk} B chunks", size, run)

    def run_stuck() -> None:
        # A limit out of reach keeps the failing path under test.
        t = HealthTests(8, failure_limit=10**6, failure_span=10**6)
        t.feed(os.urandom(t.startup_samples))
        for i in range(0, size, 65536):
            t.feed(stuck[i:i + 65536])

    timed("HealthTests H=8 stuck source, 65536 B chunks", size, run_stuck)

    t = HealthTests(8)
    small = data[: 1 << 20]
    timed(
        "baseline per-sample loop H=8 urandom",
        len(small),
        lambda: per_sample(small, t.rct_cutoff_value, t.apt_cutoff_value, t.window),
    )


if __name__ == "__main__":
    main()
