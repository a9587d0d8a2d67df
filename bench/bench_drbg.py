"""Benchmark: CTR_DRBG generate(65536) throughput against raw AES-256-CTR in the same run.

Run from anywhere:  .venv/bin/python bench/bench_drbg.py [--seconds 2] [--size 65536]

Baselines:
- "raw AES-256-CTR keystream": one encryptor, reused, encrypting zeros; the
  ceiling for any AES-CTR based generator on this machine.
- "raw AES-256-CTR, new key per request": a fresh key schedule and context for
  every request, which a DRBG cannot avoid because its key changes each time.

Each figure is the best of several rounds of about ``--seconds`` in total, so a
noisy neighbour costs one round rather than the figure. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROUNDS = 5


def measure(fn: Callable[[], object], size: int, seconds: float) -> float:
    """Return the best MB/s (10^6 bytes per second) of ``fn`` over ``ROUNDS`` rounds."""
    best = 0.0
    per_round = seconds / ROUNDS
    for _ in range(ROUNDS):
        calls = 0
        start = time.perf_counter()
        deadline = start + per_round
        now = start
        while now < deadline:
            for _ in range(16):
                fn()
            calls += 16
            now = time.perf_counter()
        best = max(best, calls * size / (now - start) / 1e6)
    return best


def main() -> None:
    """Print the figures for the DRBG variants and both baselines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per figure")
    parser.add_argument("--size", type=int, default=65536, help="bytes per request")
    args = parser.parse_args()
    size: int = args.size
    seconds: float = args.seconds

    # Let the script run from a checkout without installing the package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from entropy_appliance.core.drbg import CtrDrbg

    zeros = bytes(size)
    key = os.urandom(32)
    iv = os.urandom(16)
    stream = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()

    def raw() -> object:
        return stream.update(zeros)

    def raw_rekeyed() -> object:
        return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(zeros)

    with_df = CtrDrbg(os.urandom(32), nonce=os.urandom(16))
    no_df = CtrDrbg(os.urandom(48), use_df=False)
    extra = os.urandom(32)

    rows = [
        ("raw AES-256-CTR keystream (baseline)", raw),
        ("raw AES-256-CTR, new key per request", raw_rekeyed),
        ("CtrDrbg use_df=True  generate(n)", lambda: with_df.generate(size)),
        ("CtrDrbg use_df=False generate(n)", lambda: no_df.generate(size)),
        (
            "CtrDrbg use_df=True  generate(n, 32 B extra)",
            lambda: with_df.generate(size, extra),
        ),
    ]
    print(
        f"request size n = {size} bytes, ~{seconds:g} s per figure, best of {ROUNDS} rounds"
    )
    baseline = 0.0
    for name, fn in rows:
        mbps = measure(fn, size, seconds)
        if not baseline:
            baseline = mbps
        usec = size / mbps
        print(
            f"{name:46s} {mbps:9.0f} MB/s  {usec:7.2f} us/request  ratio {mbps / baseline:5.2f}"
        )


if __name__ == "__main__":
    main()
