"""Byte counts as people write them: ``65536``, ``64K``, ``16M``, ``1G``."""

from __future__ import annotations

__all__ = ["parse_size"]

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4,
          "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4}


def parse_size(text: str) -> int:
    """Parse a byte count with an optional binary suffix; raise ValueError."""
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num):]
    if unit not in _UNITS or not num.isdigit():
        raise ValueError(f"{text!r} is not a size (e.g. 65536, 64K, 16M, 1G)")
    return int(num) * _UNITS[unit]
