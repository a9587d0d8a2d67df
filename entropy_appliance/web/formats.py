"""
Output formats of ``/v1/random``, as incremental encoders.

Every format knows its exact ``Content-Length`` for ``n`` raw bytes before a
byte is generated, and encodes chunk by chunk, so a streamed body and a
buffered one are byte-for-byte the same.  Raw data stays ``bytes`` until it
reaches :meth:`Format.encode` at the edge.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

__all__ = ["Format", "FORMATS", "DEFAULT_FORMAT"]


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
