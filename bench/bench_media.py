"""Benchmark: the largest images and sounds the media routes make.

Run from the repository root:  .venv/bin/python bench/bench_media.py

Prints the seconds to encode a 4096x4096 PNG in each mode and a 60 s, 48 kHz
WAV in each colour, with the random bytes drawn beforehand (as the routes do,
in the reactor thread) so only the encoding is timed.  Baseline in the same
run: Pillow saving a 4096x4096 RGB PNG of the same bytes at its default
settings.  Nothing is asserted.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from entropy_appliance.web import rendering  # noqa: E402


def best(fn: object, rounds: int = 3) -> float:
    """The best wall time of ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    """Print the figures."""
    size = rendering.MAX_SIZE
    rgb = os.urandom(size * size * 3)
    baseline = best(lambda: Image.frombytes("RGB", (size, size), rgb).save(io.BytesIO(), "PNG"), 1)
    print(f"baseline: Pillow default PNG {size}x{size} rgb: {baseline:.2f} s")
    for mode in rendering.MODES:
        data = os.urandom(rendering.image_bytes_needed(size, size, mode))
        t = best(lambda d=data, m=mode: rendering.random_png(lambda n: d, size, size, m), 1)
        print(f"random_png {size}x{size} {mode}: {t:.2f} s")
    raw = os.urandom(rendering.HEATMAP_MAX_SAMPLES)
    print(f"heatmap_png {size}x{size}: {best(lambda: rendering.heatmap_png(raw, size, size)):.2f} s")
    for color in rendering.COLORS:
        data = os.urandom(rendering.noise_bytes_needed(60, 48000, color))
        t = best(lambda d=data, c=color: rendering.noise_wav(lambda n: d, 60, 48000, c))
        print(f"noise_wav 60 s 48000 Hz {color}: {t:.2f} s ({60 / t:.0f}x real time)")


if __name__ == "__main__":
    main()
