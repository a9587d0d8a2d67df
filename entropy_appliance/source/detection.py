"""
Auto-detection: which hardware entropy sources ``--source auto`` uses.

``auto`` uses every device these rules accept, and the kernel CSPRNG beside
them (:func:`detect_all`): a device that fails is then left out while the
others carry on.  The rules, in order, under a root directory (``/`` unless
a test or the probe says otherwise), pick the first as well
(:func:`probe`, :func:`detect`):

1. Quantis: the first readable ``/dev/qrandom*``.
2. The kernel's hw_random device ``/dev/hwrng``, when it is readable and
   ``/sys/class/misc/hw_random/rng_current`` names a driver (not ``none``):
   without a current driver the node exists but every read fails.
3. ChaosKey: the first readable ``/dev/chaoskey*``.
4. Otherwise the kernel CSPRNG.

The systemd probe (``contrib/systemd/entropy-appliance-probe``) runs these
same rules as ``python3 -m entropy_appliance.source.detection``, which
prints one line: the device found, or ``kernel``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO, TypeAlias

from entropy_appliance.source.sources import SourceSpec

__all__ = ["Detected", "probe", "detect", "probe_all", "detect_all", "hwrng_driver", "main"]

#: Where the kernel names the hw_random driver in use, under the root.
RNG_CURRENT = "sys/class/misc/hw_random/rng_current"

StrPath: TypeAlias = str | os.PathLike[str]


@dataclass(frozen=True)
class Detected:
    """What detection found: the source, and for ``hwrng`` the driver behind it."""

    spec: SourceSpec
    driver: str | None = None

    def describe(self) -> str:
        """``PATH (KIND)``, with the driver for hwrng; ``kernel`` when no device was found."""
        if self.spec.path is None:
            return self.spec.kind
        driver = f", driver {self.driver}" if self.driver else ""
        return f"{self.spec.path} ({self.spec.kind}{driver})"


def _readable(pattern: str) -> list[str]:
    return [path for path in sorted(glob.glob(pattern)) if os.access(path, os.R_OK)]


def _first_readable(pattern: str) -> str | None:
    return next(iter(_readable(pattern)), None)


def hwrng_driver(root: StrPath = "/") -> str | None:
    """The hw_random driver the kernel uses now, or None if there is none."""
    try:
        with open(os.path.join(root, RNG_CURRENT), encoding="ascii") as f:
            driver = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return driver if driver and driver != "none" else None


def probe(root: StrPath = "/") -> Detected:
    """Apply the rules of the module docstring under ``root``."""
    dev = os.path.join(root, "dev")
    path = _first_readable(os.path.join(dev, "qrandom*"))
    if path is not None:
        return Detected(SourceSpec("quantis", path))
    hwrng = os.path.join(dev, "hwrng")
    driver = hwrng_driver(root)
    if driver is not None and os.access(hwrng, os.R_OK):
        return Detected(SourceSpec("hwrng", hwrng), driver)
    path = _first_readable(os.path.join(dev, "chaoskey*"))
    if path is not None:
        return Detected(SourceSpec("chaoskey", path))
    return Detected(SourceSpec("kernel"))


def detect(root: StrPath = "/") -> SourceSpec:
    """The first source of :func:`probe_all`: the best single device, or the kernel."""
    return probe(root).spec


def probe_all(root: StrPath = "/") -> list[Detected]:
    """
    Every hardware source under ``root`` that the rules of the module
    docstring accept (every readable Quantis, ``/dev/hwrng`` with a driver,
    every readable ChaosKey, in that order), then the kernel CSPRNG.
    """
    dev = os.path.join(root, "dev")
    found = [Detected(SourceSpec("quantis", p)) for p in _readable(os.path.join(dev, "qrandom*"))]
    hwrng = os.path.join(dev, "hwrng")
    driver = hwrng_driver(root)
    if driver is not None and os.access(hwrng, os.R_OK):
        found.append(Detected(SourceSpec("hwrng", hwrng), driver))
    found += [Detected(SourceSpec("chaoskey", p)) for p in _readable(os.path.join(dev, "chaoskey*"))]
    return [*found, Detected(SourceSpec("kernel"))]


def detect_all(root: StrPath = "/") -> list[SourceSpec]:
    """The sources that ``--source auto`` resolves to: every device found, and the kernel."""
    return [d.spec for d in probe_all(root)]


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    """
    Print what ``--source auto`` picks under ``--root``, as one line
    (:meth:`Detected.describe`): the device, or ``kernel``.  Exit 0.
    """
    parser = argparse.ArgumentParser(
        prog="python -m entropy_appliance.source.detection",
        description="Print the entropy source that --source auto picks: a device, or kernel.")
    parser.add_argument("--root", default="/",
                        help="look under this directory instead of / (for tests)")
    args = parser.parse_args(argv)
    print(probe(args.root).describe(), file=stdout or sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
