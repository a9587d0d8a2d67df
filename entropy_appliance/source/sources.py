"""
Entropy sources: the kernel CSPRNG and character devices.

A source is a blocking reader of raw 8-bit samples.  Its ``read`` may block
(it is called from a thread pool, never the reactor thread) and raises
:class:`SourceError` for every condition that makes the source unusable:
end of file, EAGAIN, EIO, a device that disappears.

Each kind claims a default min-entropy per 8-bit sample, used by the health
tests.  These are deliberately honest rather than flattering:

- ``kernel`` (getrandom): 8.0.  The kernel's output is already a conditioned
  CSPRNG; the health tests then only catch gross failures.
- ``quantis`` (/dev/qrandomN): 7.0.  The card's output is post-processed; we
  leave a margin below full entropy.
- ``hwrng`` (/dev/hwrng): 1.0.  Drivers behind hwrng range from conditioned
  to raw noise; with no model of the device, claim little.
- ``chaoskey`` (/dev/chaoskeyN): 1.0, for the same reason (raw noise mode).
- ``device`` (any other path): 1.0.

A ``--source`` value may claim its own: ``device:/dev/hwrng,min-entropy=0.5``.
Which devices ``auto`` picks is :mod:`entropy_appliance.source.detection`.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "SourceError",
    "Source",
    "KernelSource",
    "DeviceSource",
    "SourceSpec",
    "SourceUnavailable",
    "parse_source",
    "open_source",
    "DEFAULT_MIN_ENTROPY",
]

DEFAULT_MIN_ENTROPY: dict[str, float] = {
    "kernel": 8.0,
    "quantis": 7.0,
    "hwrng": 1.0,
    "chaoskey": 1.0,
    "device": 1.0,
}


class SourceError(Exception):
    """The source cannot deliver samples now (EOF, EAGAIN, EIO, gone)."""


class Source(Protocol):
    """A blocking reader of raw 8-bit samples."""

    name: str
    kind: str

    def read(self, n: int) -> bytes:
        """Read exactly ``n`` raw bytes, or raise SourceError."""
        ...

    def close(self) -> None:
        """Release the source."""
        ...


class KernelSource:
    """The kernel CSPRNG through getrandom(2)."""

    name = "kernel"
    kind = "kernel"

    def read(self, n: int) -> bytes:
        """Read ``n`` bytes from getrandom."""
        try:
            return os.getrandom(n)
        except OSError as e:  # pragma: no cover - only on a broken kernel
            raise SourceError(f"getrandom failed: {e.strerror}") from e

    def close(self) -> None:
        """Nothing to release."""


class DeviceSource:
    """
    A character device, FIFO or file, read with plain blocking reads.

    The file is opened lazily and reopened after an error, so a device that
    comes back (a re-plugged ChaosKey) is picked up by the next retry.
    """

    def __init__(self, path: str, kind: str = "device") -> None:
        self.path = path
        self.name = path
        self.kind = kind
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                # O_NONBLOCK only for the open: a FIFO with no writer must
                # give EOF (and a retry), not hang the reader thread.
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as e:
                raise SourceError(f"cannot open {self.path}: {e.strerror}") from e
            os.set_blocking(fd, True)
            self._fd = fd
        return self._fd

    def read(self, n: int) -> bytes:
        """
        Read up to ``n`` bytes: whatever one read returns, at least one
        byte.  A slow device (a board hwrng gives a few KB/s) is not made to
        fill a large request before anything is tested and used.  EOF is an
        error.
        """
        fd = self._open()
        try:
            chunk = os.read(fd, n)
        except OSError as e:
            self.close()
            name = errno.errorcode.get(e.errno or 0, "error")
            raise SourceError(f"{name} reading {self.path}: {e.strerror}") from e
        if not chunk:
            self.close()
            raise SourceError(f"end of file on {self.path}")
        return chunk

    def close(self) -> None:
        """Close the file descriptor if open."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass


class SourceUnavailable(ValueError):
    """A device that cannot be opened now (missing, not readable): it may come later."""

    def __init__(self, message: str, spec: SourceSpec) -> None:
        super().__init__(message)
        self.spec = spec


@dataclass(frozen=True)
class SourceSpec:
    """
    A parsed ``--source`` value: a kind, for devices a path, and the claimed
    min-entropy if the value names one (None: ``--min-entropy``, else the
    kind's default).
    """

    kind: str
    path: str | None = None
    min_entropy: float | None = None

    @property
    def name(self) -> str:
        """What the logs and status call this source."""
        return self.path or self.kind

    def text(self) -> str:
        """The ``--source`` value that names this source, its claim included."""
        base = self.kind if self.path is None else f"device:{self.path}"
        return base if self.min_entropy is None else f"{base},min-entropy={self.min_entropy!r}"

    def claim(self, default: float | None = None) -> float:
        """Its min-entropy: its own, else ``default`` (``--min-entropy``), else its kind's."""
        if self.min_entropy is not None:
            return self.min_entropy
        return default if default is not None else DEFAULT_MIN_ENTROPY[self.kind]


def _kind_of_path(path: str) -> str:
    base = os.path.basename(path)
    if base.startswith("qrandom"):
        return "quantis"
    if base == "hwrng":
        return "hwrng"
    if base.startswith("chaoskey"):
        return "chaoskey"
    return "device"


def _claim(text: str, options: list[str]) -> float | None:
    """The ``min-entropy=H`` option of a ``--source`` value, checked; None if absent."""
    claim = None
    for option in options:
        key, eq, value = option.partition("=")
        if key.strip() != "min-entropy" or not eq:
            raise ValueError(f"{text!r}: unknown option {option!r}; the one option is min-entropy=H")
        if claim is not None:
            raise ValueError(f"{text!r}: min-entropy is given twice")
        try:
            claim = float(value)
        except ValueError:
            claim = math.nan
        if not (math.isfinite(claim) and 0.0 < claim <= 8.0):
            raise ValueError(f"{text!r}: min-entropy must be a number with 0 < H <= 8 bits per sample")
    return claim


def parse_source(spec: str, check: bool = True) -> SourceSpec:
    """
    Parse ``auto``, ``kernel`` or ``device:PATH``, each optionally followed
    by ``,min-entropy=H`` (not ``auto``); raise ValueError with a sentence a
    person can act on.  ``auto`` is resolved by
    :func:`entropy_appliance.source.detection.detect_all`.

    With ``check``, a device path is looked at: something that is not a
    character device, FIFO or file is a ValueError, and a path that does not
    exist or cannot be read a :class:`SourceUnavailable` (which carries the
    spec, for a caller that would rather retry it later).
    """
    text, *options = spec.split(",")
    claim = _claim(spec, options)
    if text in ("auto", "kernel"):
        if text == "auto" and claim is not None:
            raise ValueError("auto takes no min-entropy: each source it finds has its kind's, "
                             "or --min-entropy")
        return SourceSpec(text, None, claim)
    if text.startswith("device:"):
        path = text[len("device:"):]
        if not path:
            raise ValueError("device: needs a path, e.g. device:/dev/hwrng")
        found = SourceSpec(_kind_of_path(path), path, claim)
        if not check:
            return found
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            raise SourceUnavailable(f"cannot use {path}: {e.strerror}", found) from None
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
            raise ValueError(f"{path} is not a character device, FIFO or file")
        if not os.access(path, os.R_OK):
            raise SourceUnavailable(f"{path} is not readable by this user", found)
        return found
    raise ValueError(
        f"unknown source {spec!r}: use auto, kernel or device:PATH "
        "(e.g. device:/dev/qrandom0, device:/dev/hwrng), optionally followed by "
        ",min-entropy=H"
    )


def open_source(spec: SourceSpec) -> Source:
    """Make the reader for a resolved spec."""
    if spec.kind == "kernel":
        return KernelSource()
    if spec.path is None or spec.kind == "auto":
        raise ValueError("resolve 'auto' with detection.detect() first")
    return DeviceSource(spec.path, spec.kind)
