"""
Mixing fetched bytes into the local kernel pool: a plain write to
``/dev/urandom`` (credits nothing), or ``RNDADDENTROPY`` (root; credits bits).
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["RNDADDENTROPY", "SEED_MAX", "IoctlFunc", "seed_kernel"]

#: The most bytes --seed-kernel takes: the kernel pool holds 256 bits, and
#: more input only costs time.
SEED_MAX = 1024 * 1024

#: ``_IOW('R', 0x03, int[2])`` from <linux/random.h>.
RNDADDENTROPY = 0x40085203
#: Bytes per RNDADDENTROPY call.
_IOCTL_CHUNK = 512

#: ``fcntl.ioctl``'s shape; tests pass their own to see the calls without root.
IoctlFunc = Callable[[int, int, bytes], Any]


def seed_kernel(data: bytes, device: str = "/dev/urandom", credit_bits: int | None = None,
                ioctl: IoctlFunc = fcntl.ioctl) -> None:
    """
    Mix ``data`` into the kernel's pool.

    Without ``credit_bits`` it is a plain write to ``device``: mixed in,
    credited nothing.  With it, ``RNDADDENTROPY`` (root only) mixes the
    data and credits at most ``credit_bits`` bits, spread over the calls.
    """
    if credit_bits is None:
        with open(device, "wb", buffering=0) as f:
            view = memoryview(data)
            while view:
                written = f.write(view)
                view = view[written or 0:]
        return
    if not 0 <= credit_bits <= 8 * len(data):
        raise ValueError("credit must be between 0 and 8 bits per byte")
    fd = os.open(device, os.O_WRONLY)
    try:
        left = credit_bits
        for i in range(0, len(data), _IOCTL_CHUNK):
            chunk = data[i:i + _IOCTL_CHUNK]
            bits = min(left, 8 * len(chunk))
            left -= bits
            ioctl(fd, RNDADDENTROPY, struct.pack("ii", bits, len(chunk)) + chunk)
    finally:
        os.close(fd)
