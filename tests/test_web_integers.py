"""/v1/integers: bounds (property tests), no modulo bias (chi-square), errors."""

from __future__ import annotations

import json
import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_appliance.web.app import uniform_integers
from tests.web_helpers import call, make_web

BOUND = 10**18


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(-BOUND, BOUND), width=st.integers(0, 2 * BOUND), count=st.integers(1, 50))
def test_values_stay_within_bounds(lo: int, width: int, count: int) -> None:
    hi = min(BOUND, lo + width)
    values = uniform_integers(os.urandom, count, lo, hi)
    assert len(values) == count
    assert all(lo <= v <= hi for v in values)


def test_rejection_discards_draws_that_would_bias() -> None:
    # span 3: 2**64 % 3 == 1, so the single largest draw must be rejected.
    draws = [2**64 - 1, 0, 2**64 - 2]
    feed = iter(draws)

    def fake(n: int) -> bytes:
        return b"".join(struct.pack(">Q", next(feed, 5)) for _ in range(n // 8))

    values = uniform_integers(fake, 2, 0, 2)
    assert values == [0, (2**64 - 2) % 3]


def test_dice_pass_a_chi_square_test() -> None:
    _, stub = make_web()
    counts = [0] * 6
    for _ in range(6):
        resp, body = call(stub, "GET", "http://a/v1/integers?count=10000&min=1&max=6")
        assert resp.code == 200
        for v in json.loads(body):
            counts[v - 1] += 1
    n = sum(counts)
    expected = n / 6
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    # 5 degrees of freedom: P(chi2 > 25.74) = 1e-4.
    assert chi2 < 25.74, counts


def test_route_bounds_and_errors() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", f"http://a/v1/integers?count=100&min={-BOUND}&max={BOUND}")
    assert resp.code == 200
    values = json.loads(body)
    assert len(values) == 100 and all(-BOUND <= v <= BOUND for v in values)
    resp, body = call(stub, "GET", "http://a/v1/integers?min=7&max=7&count=3")
    assert json.loads(body) == [7, 7, 7]
    for bad in ["min=1", "max=1", "min=2&max=1", f"min={-BOUND - 1}&max=0", f"min=0&max={BOUND + 1}",
                "min=1&max=6&count=0", "min=1&max=6&count=10001", "min=a&max=6", "min=1&max=6&count=x",
                "min=1&max=6&count=", "min=&max=6"]:
        resp, body = call(stub, "GET", f"http://a/v1/integers?{bad}")
        assert resp.code == 400, bad
        assert json.loads(body)["status"] == 400
