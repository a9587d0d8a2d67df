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

Which device ``auto`` picks is :mod:`entropy_appliance.source.detection`.
"""

from __future__ import annotations

import errno
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


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source`` value: a kind and, for devices, a path."""

    kind: str
    path: str | None = None

    @property
    def name(self) -> str:
        """What the logs and status call this source."""
        return self.path or self.kind


def _kind_of_path(path: str) -> str:
    base = os.path.basename(path)
    if base.startswith("qrandom"):
        return "quantis"
    if base == "hwrng":
        return "hwrng"
    if base.startswith("chaoskey"):
        return "chaoskey"
    return "device"


def parse_source(spec: str) -> SourceSpec:
    """
    Parse ``auto``, ``kernel`` or ``device:PATH``; raise ValueError with a
    sentence a person can act on.  ``auto`` is resolved by
    :func:`entropy_appliance.source.detection.detect`.
    """
    if spec in ("auto", "kernel"):
        return SourceSpec(spec)
    if spec.startswith("device:"):
        path = spec[len("device:"):]
        if not path:
            raise ValueError("device: needs a path, e.g. device:/dev/hwrng")
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            raise ValueError(f"cannot use {path}: {e.strerror}") from None
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
            raise ValueError(f"{path} is not a character device, FIFO or file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{path} is not readable by this user")
        return SourceSpec(_kind_of_path(path), path)
    raise ValueError(
        f"unknown source {spec!r}: use auto, kernel or device:PATH "
        "(e.g. device:/dev/qrandom0, device:/dev/hwrng)"
    )


def open_source(spec: SourceSpec) -> Source:
    """Make the reader for a resolved spec."""
    if spec.kind == "kernel":
        return KernelSource()
    if spec.path is None or spec.kind == "auto":
        raise ValueError("resolve 'auto' with detection.detect() first")
    return DeviceSource(spec.path, spec.kind)
