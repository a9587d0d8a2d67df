"""
The appliance's own signing key, for RANDOM.ORG's signed methods.

The algorithm is RANDOM.ORG's: RSASSA-PKCS1-v1_5 with SHA-512, so that code
written to check RANDOM.ORG's signatures checks ours once given our public
key.  The key is RSA 3072 (128-bit security, NIST SP 800-57's level for use
beyond 2030).  What is signed is the ``random`` object of the answer in
canonical JSON: keys sorted, no white space, non-ASCII escaped, as Python's
``json.dumps(random, sort_keys=True, separators=(",", ":"))`` writes it.
Canonical bytes let ``verifySignature`` (and any third party) check a
``random`` object that a client has parsed and serialised again, in any key
order.

The key is kept like the onion key (:mod:`entropy_appliance.core.keyfile`):
a PKCS#8 PEM file, mode 0600, created on first start and never replaced,
not even when corrupt, since every signature already handed out names it.
The public key is published at ``/json-rpc/4/public-key.pem``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from entropy_appliance.core.keyfile import KeyFileError, load_or_create, read_key_file

__all__ = ["SigningKey", "SigningKeyError", "KEY_BITS", "canonical", "load_signing_key",
           "load_or_create_signing_key"]

KEY_BITS = 3072


class SigningKeyError(Exception):
    """The signing key file is unreadable or not an RSA private key."""


def canonical(random: Any) -> bytes:
    """The bytes that are signed for a ``random`` object."""
    return json.dumps(random, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


class SigningKey:
    """An RSA private key that signs and verifies ``random`` objects."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def generate(cls, bits: int = KEY_BITS) -> SigningKey:
        """A fresh key (OpenSSL's CSPRNG, through ``cryptography``)."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))

    def pem(self) -> bytes:
        """The private key as an unencrypted PKCS#8 PEM file."""
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def sign(self, random: Any) -> str:
        """The base64 signature of ``random``."""
        signature = self._key.sign(canonical(random), padding.PKCS1v15(), hashes.SHA512())
        return base64.b64encode(signature).decode("ascii")

    def verify(self, random: Any, signature: str) -> bool:
        """Whether ``signature`` (base64) is this key's signature of ``random``."""
        try:
            raw = base64.b64decode(signature, validate=True)
            data = canonical(random)
        except (binascii.Error, ValueError, TypeError):
            return False
        try:
            self._key.public_key().verify(raw, data, padding.PKCS1v15(), hashes.SHA512())
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        # The secret never goes to a log or a traceback.
        return f"SigningKey(<RSA {self._key.key_size} secret>)"


def load_signing_key(path: str) -> SigningKey:
    """The key at ``path``; :class:`SigningKeyError` if unreadable or not an RSA key."""
    try:
        data = read_key_file(path, "signing key", 1024 * 1024)
    except KeyFileError as e:
        raise SigningKeyError(str(e)) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(
            f"signing key {path} is corrupt ({e}); restore it from a backup, or move it away to "
            "get a new key (signatures made with the old one then no longer verify)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError(f"signing key {path} is not an RSA private key")
    return SigningKey(key)


def load_or_create_signing_key(path: str) -> tuple[SigningKey, bool]:
    """The key at ``path``, created (mode 0600) if missing; ``(key, created)``. Never replaces a file."""
    def generate() -> tuple[SigningKey, bytes]:
        key = SigningKey.generate()
        return key, key.pem()

    try:
        return load_or_create(path, "signing key", load_signing_key, generate)
    except KeyFileError as e:
        raise SigningKeyError(str(e)) from None
