"""
The values of the compatible APIs, drawn from random bytes without bias.

Every function takes ``random_bytes(n) -> bytes`` (the pool's output) and
promises:

- integers: exactly uniform on their range, by rejection sampling
  (:func:`~entropy_appliance.web.formats.uniform_integers`); without
  replacement, a uniformly random ordered sample of distinct values (a
  partial Fisher-Yates shuffle over a small domain, redraws of repeats over
  a large one);
- decimal fractions with ``d`` places: ``k / 10**d`` for ``k`` exactly
  uniform in ``[0, 10**d)``, so every printed value is equally likely, with
  no rounding of a float that could favour some;
- Gaussians: the inverse normal CDF of a uniform with the full 53 bits of a
  double (``(k + 1/2) / 2**53``), rounded to the significant digits asked;
- strings: each character an exactly uniform pick of the alphabet;
- UUIDs: version 4 (RFC 9562) from 16 random bytes;
- blobs: the random bytes themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from statistics import NormalDist

from entropy_appliance.web.formats import uniform_integers

__all__ = [
    "RandomBytes",
    "integers",
    "decimal_fractions",
    "gaussians",
    "strings",
    "uuids",
    "format_significant",
]

RandomBytes = Callable[[int], bytes]

_STANDARD = NormalDist()
_DOUBLE_BITS = 53

#: A domain at most this many times larger than the sample is shuffled;
#: above it, repeats are rare enough to redraw.
_SHUFFLE_FACTOR = 4


def integers(random_bytes: RandomBytes, n: int, lo: int, hi: int, replacement: bool = True) -> list[int]:
    """``n`` integers uniform in [lo, hi]; distinct ones if not ``replacement`` (n <= hi - lo + 1)."""
    if replacement:
        return uniform_integers(random_bytes, n, lo, hi)
    size = hi - lo + 1
    if n > size:
        raise ValueError(f"{n} distinct values asked of a domain of {size}")
    if size <= _SHUFFLE_FACTOR * n:
        # Partial Fisher-Yates: the first n places of a uniform shuffle.
        pool = list(range(lo, hi + 1))
        for i in range(n):
            j = uniform_integers(random_bytes, 1, i, size - 1)[0]
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:n]
    seen: dict[int, None] = {}
    # Each round keeps at least three quarters of what it draws; the bound
    # only guards against a broken source.
    for _ in range(64):
        need = n - len(seen)
        if need <= 0:
            break
        for v in uniform_integers(random_bytes, need, lo, hi):
            seen.setdefault(v)
    if len(seen) < n:
        raise RuntimeError("sampling without replacement did not converge")
    return list(seen)[:n]


def decimal_fractions(random_bytes: RandomBytes, n: int, places: int,
                      replacement: bool = True) -> list[float]:
    """``n`` numbers ``k / 10**places`` in [0, 1), ``k`` uniform; distinct if not ``replacement``."""
    scale = 10 ** places
    return [k / scale for k in integers(random_bytes, n, 0, scale - 1, replacement)]


def gaussians(random_bytes: RandomBytes, n: int, mean: float, sd: float, digits: int) -> list[float]:
    """``n`` draws of N(mean, sd**2), each rounded to ``digits`` significant digits."""
    top = (1 << _DOUBLE_BITS) - 1
    out = []
    for k in uniform_integers(random_bytes, n, 0, top):
        z = _STANDARD.inv_cdf((k + 0.5) / (1 << _DOUBLE_BITS))
        out.append(format_significant(mean + sd * z, digits))
    return out


def format_significant(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` significant decimal digits."""
    return float(f"{x:.{digits - 1}e}")


def strings(random_bytes: RandomBytes, n: int, length: int, alphabet: Sequence[str],
            replacement: bool = True) -> list[str]:
    """``n`` strings of ``length`` characters of ``alphabet``; distinct if not ``replacement``."""
    size = len(alphabet)
    if not replacement and n > size ** length:
        raise ValueError(f"{n} distinct strings asked of {size ** length} possible")
    seen: dict[str, None] = {}
    out: list[str] = []
    for _ in range(64):
        need = n - len(out)
        if need <= 0:
            break
        picks = uniform_integers(random_bytes, need * length, 0, size - 1)
        for i in range(need):
            s = "".join(alphabet[p] for p in picks[i * length:(i + 1) * length])
            if replacement:
                out.append(s)
            elif s not in seen:
                seen[s] = None
                out.append(s)
    if len(out) < n:
        # Distinct strings from a domain barely larger than n: shuffle the domain.
        if replacement or size ** length > 1_000_000:
            raise RuntimeError("sampling strings did not converge")
        index = integers(random_bytes, n, 0, size ** length - 1, replacement=False)
        out = [_nth_string(i, length, alphabet) for i in index]
    return out


def _nth_string(i: int, length: int, alphabet: Sequence[str]) -> str:
    chars = []
    for _ in range(length):
        i, r = divmod(i, len(alphabet))
        chars.append(alphabet[r])
    return "".join(reversed(chars))


def uuids(random_bytes: RandomBytes, n: int) -> list[str]:
    """``n`` version-4 UUIDs."""
    raw = random_bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[i:i + 16], version=4)) for i in range(0, 16 * n, 16)]
