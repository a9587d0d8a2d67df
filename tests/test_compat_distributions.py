"""
The values of the compatible APIs are distributed as promised.

Each test draws from ``os.urandom`` through the same functions the APIs use
(:mod:`entropy_appliance.web.compat.distributions`), and rejects at a
false-failure rate of at most :data:`ALPHA` (one in a million): a
chi-square test with its exact p-value (the regularized upper incomplete
gamma function, computed here), or a Kolmogorov-Smirnov test with the
asymptotic Kolmogorov distribution, whose tail bounds that of the finite
sample from above for the sizes used.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from statistics import NormalDist

import pytest

from entropy_appliance.web.compat import distributions as dist

ALPHA = 1e-6


def upper_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), by its series (x < a + 1) or continued fraction."""
    if x <= 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction.
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(log_prefix) * h


def chi_square_p(observed: Counter[object], categories: Iterable[object]) -> float:
    """The p-value of ``observed`` counts against a uniform distribution on ``categories``."""
    cats = list(categories)
    n = sum(observed.values())
    assert set(observed) <= set(cats), set(observed) - set(cats)
    expected = n / len(cats)
    assert expected >= 20  # the chi-square approximation holds
    stat = sum((observed.get(c, 0) - expected) ** 2 / expected for c in cats)
    return upper_gamma_q((len(cats) - 1) / 2, stat / 2)


def ks_p(samples: list[float], cdf: Callable[[float], float]) -> float:
    """The asymptotic p-value of the Kolmogorov-Smirnov statistic of ``samples`` against ``cdf``."""
    xs = sorted(samples)
    n = len(xs)
    d = max(max((i + 1) / n - cdf(x), cdf(x) - i / n) for i, x in enumerate(xs))
    t = d * math.sqrt(n)
    return min(1.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * t * t) for k in range(1, 101)))


def test_the_tests_reject_what_they_should() -> None:
    """The p-values are right: a fair die passes, a die loaded by 2 % fails, a shifted normal fails."""
    assert upper_gamma_q(1.0, 2.0) == pytest.approx(math.exp(-2.0))
    assert upper_gamma_q(2.5, 10.0) == pytest.approx(0.0012497, rel=1e-4)  # chi2 sf(20, df=5)
    assert upper_gamma_q(0.5, 3.8415 / 2) == pytest.approx(0.05, rel=1e-3)  # chi2 sf(3.8415, df=1)
    loaded = Counter({face: 10000 for face in range(6)})
    loaded[0] += 1200
    assert chi_square_p(loaded, range(6)) < ALPHA
    normal = NormalDist()
    shifted = [normal.inv_cdf((i + 0.5) / 5000) + 0.1 for i in range(5000)]
    assert ks_p(shifted, normal.cdf) < ALPHA


@pytest.mark.parametrize("lo,hi", [(1, 6), (-3, 3), (0, 2 ** 33 + 1)])
def test_integers_are_uniform(lo: int, hi: int) -> None:
    values = dist.integers(os.urandom, 60000, lo, hi)
    assert min(values) >= lo and max(values) <= hi
    if hi - lo < 100:
        assert chi_square_p(Counter(values), range(lo, hi + 1)) > ALPHA
    else:
        # A wide range: uniform in each of 64 equal slices of it.
        span = hi - lo + 1
        assert chi_square_p(Counter((v - lo) * 64 // span for v in values), range(64)) > ALPHA


@pytest.mark.parametrize("n,lo,hi", [(3, 0, 9), (5, 0, 99)])
def test_without_replacement_is_distinct_and_uniform(n: int, lo: int, hi: int) -> None:
    """Small domains are shuffled, large ones redrawn: either way each place is uniform."""
    firsts: Counter[object] = Counter()
    lasts: Counter[object] = Counter()
    for _ in range(3000 if hi < 10 else 12000):
        sample = dist.integers(os.urandom, n, lo, hi, replacement=False)
        assert len(set(sample)) == n and all(lo <= v <= hi for v in sample)
        firsts[sample[0]] += 1
        lasts[sample[-1]] += 1
    assert chi_square_p(firsts, range(lo, hi + 1)) > ALPHA
    assert chi_square_p(lasts, range(lo, hi + 1)) > ALPHA


def test_decimal_fractions_are_uniform() -> None:
    two = dist.decimal_fractions(os.urandom, 100000, 2)
    assert chi_square_p(Counter(round(v * 100) for v in two), range(100)) > ALPHA
    fine = dist.decimal_fractions(os.urandom, 20000, 14)
    assert all(0 <= v < 1 for v in fine)
    assert ks_p(fine, lambda x: min(1.0, max(0.0, x))) > ALPHA
    # Fourteen places are used in full: the last digit is uniform too.
    last = Counter(int(f"{v:.14f}"[-1]) for v in fine)
    assert chi_square_p(last, range(10)) > ALPHA


@pytest.mark.parametrize("mean,sd", [(0.0, 1.0), (-250.5, 30.0)])
def test_gaussians_are_normal(mean: float, sd: float) -> None:
    values = dist.gaussians(os.urandom, 20000, mean, sd, 14)
    assert ks_p(values, NormalDist(mean, sd).cdf) > ALPHA
    # The far tails are reached as often as they should be: |z| > 2 about 4.55 % of the time.
    tails = sum(abs(v - mean) > 2 * sd for v in values)
    assert 600 < tails < 1250


def test_gaussians_are_rounded_to_significant_digits() -> None:
    for v in dist.gaussians(os.urandom, 200, 1000.0, 1.0, 3):
        assert v == float(f"{v:.2e}")
    assert dist.format_significant(123456.0, 2) == 120000.0


def test_strings_are_uniform_per_character() -> None:
    alphabet = list("abcde")
    values = dist.strings(os.urandom, 5000, 6, alphabet)
    assert all(len(s) == 6 for s in values)
    assert chi_square_p(Counter("".join(values)), alphabet) > ALPHA
    assert chi_square_p(Counter(s[5] for s in values), alphabet) > ALPHA
    every = dist.strings(os.urandom, 25, 2, alphabet, replacement=False)
    assert sorted(every) == sorted(a + b for a in alphabet for b in alphabet)


def test_uuids_are_version_4_with_uniform_random_bits() -> None:
    values = dist.uuids(os.urandom, 5000)
    assert all(v[14] == "4" and v[19] in "89ab" for v in values)
    # The first hex digit of each carries 4 random bits.
    assert chi_square_p(Counter(v[0] for v in values), "0123456789abcdef") > ALPHA
