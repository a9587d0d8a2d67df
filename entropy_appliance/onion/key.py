"""
The onion service's key: an ED25519-V3 secret key, which *is* the address.

Keys are kept in tor's own ``hs_ed25519_secret_key`` file format, so that a
key moves between a tor ``HiddenServiceDir`` and the appliance in either
direction; ``ADD_ONION``'s ``ED25519-V3:<base64>`` text is read as well.
:func:`load_or_create_key` creates a missing key with mode 0600 and never
replaces an existing file, not even a corrupt one: that would lose the
address.  Pure: no Twisted, no tor.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from entropy_appliance.core.keyfile import KeyFileError, load_or_create, read_key_file

__all__ = [
    "OnionKey",
    "OnionKeyError",
    "load_key",
    "load_or_create_key",
    "onion_address",
    "parse_key",
]

#: The header of tor's own ``hs_ed25519_secret_key`` file (32 bytes).  Using
#: tor's format lets an operator move a key between a tor ``HiddenServiceDir``
#: and the appliance in either direction.
_TOR_KEY_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
_BLOB_PREFIX = "ED25519-V3:"

# Ed25519 curve constants (RFC 8032, section 5.1).
_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


class OnionKeyError(Exception):
    """The onion key file is missing, unreadable or not an ED25519-V3 key."""


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_Point = tuple[int, int, int, int]
_BASE: _Point = (_BX, _BY, 1, _BX * _BY % _P)


def _add(a: _Point, b: _Point) -> _Point:
    # Unified addition in extended coordinates (Hisil, Wong, Carter, Dawson
    # 2008, a = -1); it also doubles.
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * _D * t1 * t2 % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _public_key(scalar: int) -> bytes:
    """``scalar * B``, encoded as an Ed25519 public key."""
    # Tor keeps only the expanded secret key (scalar || prefix), and the
    # ``cryptography`` package builds Ed25519 keys only from seeds, so the one
    # scalar multiplication needed to name a stored key is done here.  It is
    # not secret-timing sensitive in any way that matters: it runs once at
    # startup on a key that never leaves this process.
    q: _Point = (0, 1, 1, 0)
    p = _BASE
    while scalar:
        if scalar & 1:
            q = _add(q, p)
        p = _add(p, p)
        scalar >>= 1
    x, y, z, _ = q
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def onion_address(public_key: bytes) -> str:
    """The 56-character v3 onion address (without ``.onion``) of a key."""
    version = b"\x03"
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + version).digest()[:2]
    return base64.b32encode(public_key + checksum + version).decode("ascii").lower()


@dataclass(frozen=True)
class OnionKey:
    """An ED25519-V3 onion service key in tor's expanded form (64 bytes)."""

    expanded: bytes

    def __post_init__(self) -> None:
        e = self.expanded
        if len(e) != 64:
            raise OnionKeyError(f"an expanded ED25519 key has 64 bytes, not {len(e)}")
        # Tor's expanded keys are clamped (RFC 8032, 5.1.5); anything else is
        # a damaged file, not a key.
        if e[0] & 7 or e[31] & 0x80 or not e[31] & 0x40:
            raise OnionKeyError("the key bytes are not a clamped ED25519 scalar")
        scalar = int.from_bytes(e[:32], "little")
        if scalar % _L == 0:
            raise OnionKeyError("the key scalar is degenerate")

    @classmethod
    def generate(cls) -> OnionKey:
        """A fresh key from the operating system's CSPRNG."""
        seed = os.urandom(32)
        h = bytearray(hashlib.sha512(seed).digest())
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        return cls(bytes(h))

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return _public_key(int.from_bytes(self.expanded[:32], "little"))

    @property
    def service_id(self) -> str:
        """The address without ``.onion``, as tor's ``ServiceID``."""
        return onion_address(self.public_key)

    @property
    def address(self) -> str:
        """The full ``<56 chars>.onion`` address."""
        return self.service_id + ".onion"

    def control_blob(self) -> str:
        """The key as ``ADD_ONION`` takes it: ``ED25519-V3:<base64>``."""
        return _BLOB_PREFIX + base64.b64encode(self.expanded).decode("ascii")

    def file_bytes(self) -> bytes:
        """The key in tor's ``hs_ed25519_secret_key`` file format."""
        return _TOR_KEY_HEADER + self.expanded

    def __repr__(self) -> str:
        # The secret never goes to a log or a traceback.
        return f"OnionKey(<secret for {self.service_id}.onion>)"


_UNKNOWN_FORMAT = "neither tor's hs_ed25519_secret_key format nor ED25519-V3:<base64> text"


def parse_key(data: bytes) -> OnionKey:
    """
    Parse a key file: tor's ``hs_ed25519_secret_key`` format, or the
    ``ED25519-V3:<base64>`` text that ``ADD_ONION`` returns.
    """
    if data.startswith(_TOR_KEY_HEADER):
        body = data[len(_TOR_KEY_HEADER):]
        if len(body) != 64:
            raise OnionKeyError(f"tor key file body has {len(body)} bytes, not 64")
        return OnionKey(body)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise OnionKeyError(_UNKNOWN_FORMAT) from None
    if text.startswith("PrivateKey="):
        text = text[len("PrivateKey="):]
    if not text.startswith(_BLOB_PREFIX):
        raise OnionKeyError(_UNKNOWN_FORMAT)
    try:
        raw = base64.b64decode(text[len(_BLOB_PREFIX):], validate=True)
    except ValueError:
        raise OnionKeyError("the ED25519-V3 key is not valid base64") from None
    return OnionKey(raw)


def load_key(path: str) -> OnionKey:
    """Read and check the key at ``path``; :class:`OnionKeyError` if unusable."""
    try:
        data = read_key_file(path, "onion key", 4096)
    except KeyFileError as e:
        raise OnionKeyError(str(e)) from None
    try:
        return parse_key(data)
    except OnionKeyError as e:
        raise OnionKeyError(
            f"onion key {path} is corrupt ({e}); restore it from a backup, or move it "
            "away to get a new key and a NEW address") from None


def load_or_create_key(path: str) -> tuple[OnionKey, bool]:
    """
    The key at ``path``, created (mode 0600) if the file does not exist.

    Returns ``(key, created)``.  An existing file is never replaced, even a
    corrupt one: losing it would lose the address.
    """
    def generate() -> tuple[OnionKey, bytes]:
        key = OnionKey.generate()
        return key, key.file_bytes()

    try:
        return load_or_create(path, "onion key", load_key, generate)
    except KeyFileError as e:
        raise OnionKeyError(str(e)) from None
