"""
Output formats of ``/v1/random``, as incremental encoders, and unbiased
integers by rejection sampling (``/v1/integers`` and the compatible APIs).

Every format knows its exact ``Content-Length`` for ``n`` raw bytes before a
byte is generated, and encodes chunk by chunk, so a streamed body and a
buffered one are byte-for-byte the same.  Raw data stays ``bytes`` until it
reaches :meth:`Format.encode` at the edge.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Format", "FORMATS", "DEFAULT_FORMAT", "uniform_integers"]


@dataclass(frozen=True)
class Format:
    """One output encoding of random bytes."""

    name: str
    content_type: bytes
    #: Raw chunks handed to :meth:`encode` must be a multiple of this (but
    #: the last), so that chunked encoding equals one-shot encoding.
    granule: int = 1

    def prefix(self, n: int) -> bytes:
        """Bytes written before the first encoded chunk."""
        if self.name == "json":
            return b'{"bytes": %d, "format": "base64", "data": "' % n
        return b""

    def suffix(self) -> bytes:
        """Bytes written after the last encoded chunk."""
        return b'"}' if self.name == "json" else b""

    def encoded_length(self, n: int) -> int:
        """Length of the encoding of ``n`` raw bytes, prefix and suffix excluded."""
        if self.name == "binary":
            return n
        if self.name == "hex":
            return 2 * n
        return 4 * (-(-n // 3))

    def content_length(self, n: int) -> int:
        """The exact body length for ``n`` raw bytes."""
        return len(self.prefix(n)) + self.encoded_length(n) + len(self.suffix())

    def encode(self, raw: bytes) -> bytes:
        """Encode one chunk of raw bytes."""
        if self.name == "binary":
            return raw
        if self.name == "hex":
            return binascii.hexlify(raw)
        return base64.b64encode(raw)

    def chunk_size(self, preferred: int) -> int:
        """The largest multiple of :attr:`granule` not above ``preferred``."""
        return max(self.granule, preferred - preferred % self.granule)


FORMATS: dict[str, Format] = {
    "binary": Format("binary", b"application/octet-stream"),
    "hex": Format("hex", b"text/plain; charset=us-ascii"),
    "base64": Format("base64", b"text/plain; charset=us-ascii", granule=3),
    "json": Format("json", b"application/json", granule=3),
}

DEFAULT_FORMAT = "binary"

_U64 = 1 << 64


def uniform_integers(random_bytes: Callable[[int], bytes], count: int, lo: int, hi: int) -> list[int]:
    """
    ``count`` integers uniform in [lo, hi], by rejection sampling of 64-bit
    draws, so that no value is favoured by a modulo (``hi - lo < 2**63``).
    """
    span = hi - lo + 1
    limit = _U64 - _U64 % span
    out: list[int] = []
    # Rejection happens with probability span / 2**64 <= 1/8 here, so a few
    # rounds always suffice; the bound only guards against a broken source.
    for _ in range(64):
        need = count - len(out)
        if need <= 0:
            break
        draws = need + need // 4 + 1
        raw = random_bytes(8 * draws)
        for v in struct.unpack(f">{draws}Q", raw):
            if v < limit:
                out.append(lo + v % span)
                if len(out) == count:
                    break
    if len(out) < count:
        raise RuntimeError("rejection sampling did not converge")
    return out
