"""SP 800-90A Rev.1 CTR_DRBG (section 10.2) with AES-256, with or without the derivation function.

This module is pure and synchronous: no Twisted, no I/O, no logging. The
block cipher comes from ``cryptography``; the DRBG mechanism itself is written
here because no well-kept library exposes CTR_DRBG with its instantiate /
reseed / generate interface and the known-answer behaviour we test against.

Speed: with a 128-bit counter field, the output blocks ``AES_K(V+1)``,
``AES_K(V+2)``, ... are exactly the AES-256-CTR keystream that starts at
counter ``V+1``, and the Update step that follows a generate needs the next
three blocks of that same keystream. A generate request therefore runs one
CTR encryptor over zeros followed by the 48 bytes of provided data, so its
cost is that of raw AES-CTR plus a fixed per-request overhead. OpenSSL's CTR
mode increments (and wraps) the whole 128-bit block, which is the increment
``V = (V + 1) mod 2^128`` that section 10.2.1 asks for when ``ctr_len`` equals
the block length.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.ciphers import (
    Cipher,
    CipherContext,
    algorithms,
    modes,
)

__all__ = [
    "BLOCKLEN",
    "KEYLEN",
    "MAX_BYTES_PER_REQUEST",
    "MAX_INPUT_LENGTH",
    "RESEED_INTERVAL",
    "SECURITY_STRENGTH",
    "SEEDLEN",
    "CtrDrbg",
    "DrbgError",
    "ReseedRequired",
    "block_cipher_df",
]

BytesLike = bytes | bytearray | memoryview

KEYLEN = 32
"""AES-256 key length in bytes."""
BLOCKLEN = 16
"""AES block length in bytes (outlen)."""
SEEDLEN = KEYLEN + BLOCKLEN
"""seedlen for AES-256 CTR_DRBG, in bytes (384 bits)."""
SECURITY_STRENGTH = 32
"""Security strength in bytes (256 bits); the minimum entropy input with the df."""
MAX_BYTES_PER_REQUEST = 2**16
"""max_number_of_bits_per_request (2^19 bits) expressed in bytes."""
RESEED_INTERVAL = 2**48
"""Maximum number of generate requests between reseeds (Table 3)."""
MAX_INPUT_LENGTH = 2**32 - 1
"""Upper bound, in bytes, on any input given to the derivation function.

Table 3 allows 2^35 bits per input, but Block_Cipher_df encodes the total
length of its input as a 32-bit byte count, so that is the binding limit.
"""

_MOD128 = (1 << 128) - 1
_DF_KEY = bytes(range(KEYLEN))
_ZERO_SEED = bytes(SEEDLEN)
_ZERO_KEY = bytes(KEYLEN)
_ZERO_BLOCK = bytes(BLOCKLEN)
# One shared, read-only run of zeros: slicing a memoryview of it costs no copy,
# so a request never allocates its plaintext.
_ZEROS = memoryview(bytes(MAX_BYTES_PER_REQUEST + BLOCKLEN))


class DrbgError(ValueError):
    """An input to the DRBG is invalid (wrong length, negative size, bad parameter)."""


class ReseedRequired(Exception):
    """The reseed counter has passed the reseed interval; call ``reseed`` first.

    No output is produced and the state is unchanged when this is raised.
    """


def _next_counter(v: bytes) -> bytes:
    """Return ``(V + 1) mod 2^128`` as a 16-byte big-endian block."""
    return ((int.from_bytes(v, "big") + 1) & _MOD128).to_bytes(BLOCKLEN, "big")


def _ctr(key: bytes, v: bytes) -> CipherContext:
    """Return an AES-256-CTR encryptor whose first keystream block is ``AES_K(V+1)``."""
    return Cipher(algorithms.AES(key), modes.CTR(_next_counter(v))).encryptor()


_BCC_FIRST_BLOCKS = tuple(i.to_bytes(4, "big") + bytes(BLOCKLEN - 4) for i in range(3))


class _BccChain(threading.local):
    """One AES-CBC encryptor under the df's constant key, kept per thread.

    Creating a cipher context (key schedule and OpenSSL lookup) costs far
    more than encrypting the few blocks of a typical df input, and the df key
    never changes, so the context is kept and reused.  A CBC encryptor
    carries its last ciphertext block into the next call; XORing that block
    into the first block of a new message cancels it, so every call computes
    a fresh zero-IV CBC-MAC.  Thread-local, since a context must not be used
    by two threads at once.
    """

    def __init__(self) -> None:
        self.enc = Cipher(algorithms.AES(_DF_KEY), modes.CBC(_ZERO_BLOCK)).encryptor()
        self.last = _ZERO_BLOCK

    def mac(self, first: bytes, rest: bytes) -> bytes:
        """BCC(K, first || rest): the last block of zero-IV CBC under the df key."""
        head = _xor(first, self.last)
        out: bytes = self.enc.update(head + rest)
        self.last = out[-BLOCKLEN:]
        return self.last


_bcc = _BccChain()


def block_cipher_df(input_string: bytes, number_of_bytes: int) -> bytes:
    """Block_Cipher_df of section 10.3.2, returning ``number_of_bytes`` bytes.

    BCC (section 10.3.3) is a CBC-MAC with a zero IV under the constant key
    ``00 01 .. 1f``; see :class:`_BccChain` for why one context serves every
    call.  The final output loop ``X = E(K, X)`` is a CBC encryption of zero
    blocks with IV ``X``.
    """
    if len(input_string) > MAX_INPUT_LENGTH:
        raise DrbgError("derivation function input exceeds 2^32 - 1 bytes")
    s = (
        len(input_string).to_bytes(4, "big")
        + number_of_bytes.to_bytes(4, "big")
        + input_string
        + b"\x80"
    )
    s += bytes(-len(s) % BLOCKLEN)
    # SEEDLEN is three blocks, so exactly three BCC values make up ``temp``.
    temp = b"".join([_bcc.mac(first, s) for first in _BCC_FIRST_BLOCKS])
    key, x = temp[:KEYLEN], temp[KEYLEN:SEEDLEN]
    nblocks = -(-number_of_bytes // BLOCKLEN)
    enc = Cipher(algorithms.AES(key), modes.CBC(x)).encryptor()
    out = enc.update(bytes(nblocks * BLOCKLEN)) + enc.finalize()
    return out[:number_of_bytes]


class CtrDrbg:
    """An instantiated AES-256 CTR_DRBG (SP 800-90A Rev.1, section 10.2).

    ``entropy_input`` must come from an approved entropy source. With the
    derivation function (``use_df=True``) it must be at least 32 bytes (the
    256-bit security strength); the nonce and personalization string are
    optional and, per section 8.6.7, the nonce's contribution may instead be
    carried as extra entropy input (at least 48 bytes in total). Without the
    derivation function the entropy input must be exactly ``SEEDLEN`` (48)
    bytes of full entropy, the personalization string and additional inputs
    may be at most 48 bytes, and the nonce is not part of the algorithm
    (section 10.2.1.3.1) and is ignored.

    Prediction resistance is not offered: a caller that wants fresh entropy
    in an output calls ``reseed`` first. The working state is never shown by
    ``repr`` and the object refuses to be pickled or copied, since a copy
    would replay the same output stream.
    """

    __slots__ = ("_key", "_reseed_counter", "_reseed_interval", "_use_df", "_v")

    def __init__(
        self,
        entropy_input: BytesLike,
        nonce: BytesLike = b"",
        personalization: BytesLike = b"",
        use_df: bool = True,
        *,
        reseed_interval: int = RESEED_INTERVAL,
    ) -> None:
        """Instantiate (sections 10.2.1.3.1 and 10.2.1.3.2).

        ``reseed_interval`` may be lowered (never raised above
        ``RESEED_INTERVAL``) to force reseeds more often.
        """
        if not 1 <= reseed_interval <= RESEED_INTERVAL:
            raise DrbgError(
                f"reseed_interval must be between 1 and 2^48, got {reseed_interval}"
            )
        self._use_df = bool(use_df)
        self._reseed_interval = reseed_interval
        entropy = self._check_entropy(entropy_input)
        pers = bytes(personalization)
        if self._use_df:
            seed_material = block_cipher_df(entropy + bytes(nonce) + pers, SEEDLEN)
        else:
            seed_material = _xor(
                entropy, self._pad_no_df(pers, "personalization string")
            )
        self._key = _ZERO_KEY
        self._v = _ZERO_BLOCK
        self._update(seed_material)
        self._reseed_counter = 1

    @property
    def use_df(self) -> bool:
        """Whether this instance uses Block_Cipher_df."""
        return self._use_df

    @property
    def reseed_counter(self) -> int:
        """The number of generate requests since the last (re)seed, plus one."""
        return self._reseed_counter

    @property
    def reseed_interval(self) -> int:
        """The number of generate requests allowed between reseeds."""
        return self._reseed_interval

    def reseed(
        self, entropy_input: BytesLike, additional_input: BytesLike = b""
    ) -> None:
        """Reseed (sections 10.2.1.4.1 and 10.2.1.4.2) and reset the reseed counter to 1.

        The entropy input follows the same length rules as at instantiation.
        """
        entropy = self._check_entropy(entropy_input)
        extra = bytes(additional_input)
        if self._use_df:
            seed_material = block_cipher_df(entropy + extra, SEEDLEN)
        else:
            seed_material = _xor(entropy, self._pad_no_df(extra, "additional input"))
        self._update(seed_material)
        self._reseed_counter = 1

    def generate(self, num_bytes: int, additional_input: BytesLike = b"") -> bytes:
        """Return ``num_bytes`` pseudorandom bytes (section 10.2.1.5).

        A request larger than ``MAX_BYTES_PER_REQUEST`` is served as a run of
        standard requests of at most that size, each with its own Update and
        each counted in ``reseed_counter``. The additional input is applied to
        the first request only: it is then already folded into the working
        state from which every later request derives, so repeating it would
        add a derivation per chunk and nothing else. The result is therefore
        byte-for-byte the concatenation of ``generate(MAX, additional_input)``
        followed by plain ``generate`` calls for the rest. If the whole run
        would pass the reseed interval, ``ReseedRequired`` is raised before
        any output is produced, so a caller never gets a truncated answer.
        """
        if num_bytes < 0:
            raise DrbgError(f"num_bytes must not be negative, got {num_bytes}")
        extra = bytes(additional_input)
        # Validate before touching the state, so a rejected call changes nothing.
        if not self._use_df:
            self._pad_no_df(extra, "additional input")
        elif len(extra) > MAX_INPUT_LENGTH:
            raise DrbgError("additional input exceeds 2^32 - 1 bytes")
        requests = max(1, -(-num_bytes // MAX_BYTES_PER_REQUEST))
        if self._reseed_counter + requests - 1 > self._reseed_interval:
            raise ReseedRequired(
                f"reseed required: {requests} request(s) would pass the reseed interval"
            )
        if num_bytes <= MAX_BYTES_PER_REQUEST:
            return self._generate_one(num_bytes, extra)
        parts = [self._generate_one(MAX_BYTES_PER_REQUEST, extra)]
        remaining = num_bytes - MAX_BYTES_PER_REQUEST
        while remaining > 0:
            size = min(remaining, MAX_BYTES_PER_REQUEST)
            parts.append(self._generate_one(size, b""))
            remaining -= size
        return b"".join(parts)

    def __repr__(self) -> str:
        """Describe the instance without any part of its working state."""
        return (
            f"<CtrDrbg AES-256 use_df={self._use_df} "
            f"reseed_counter={self._reseed_counter}/{self._reseed_interval}>"
        )

    def __reduce__(self) -> tuple[object, ...]:
        """Refuse pickling and copying: either would leak or duplicate the secret state."""
        raise TypeError("CtrDrbg state is secret; it cannot be pickled or copied")

    def _generate_one(self, num_bytes: int, extra: bytes) -> bytes:
        """One standard generate request of at most ``MAX_BYTES_PER_REQUEST`` bytes."""
        if extra:
            if self._use_df:
                provided = block_cipher_df(extra, SEEDLEN)
            else:
                provided = self._pad_no_df(extra, "additional input")
            self._update(provided)
        else:
            provided = _ZERO_SEED
        enc = _ctr(self._key, self._v)
        out: bytes = enc.update(_ZEROS[:num_bytes])
        tail = -num_bytes % BLOCKLEN
        if tail:
            # The spec consumes whole blocks; skip the unused end of the last one.
            enc.update(_ZEROS[:tail])
        # The Update that closes the request uses the next blocks of this keystream.
        new_state: bytes = enc.update(provided)
        self._key = new_state[:KEYLEN]
        self._v = new_state[KEYLEN:]
        self._reseed_counter += 1
        return out

    def _update(self, provided_data: bytes) -> None:
        """CTR_DRBG_Update (section 10.2.1.2)."""
        enc = _ctr(self._key, self._v)
        new_state: bytes = enc.update(provided_data)
        self._key = new_state[:KEYLEN]
        self._v = new_state[KEYLEN:]

    def _check_entropy(self, entropy_input: BytesLike) -> bytes:
        """Return the entropy input as bytes, or raise if its length is not allowed."""
        entropy = bytes(entropy_input)
        if self._use_df:
            if len(entropy) < SECURITY_STRENGTH:
                raise DrbgError(
                    f"entropy input must be at least {SECURITY_STRENGTH} bytes, got {len(entropy)}"
                )
            if len(entropy) > MAX_INPUT_LENGTH:
                raise DrbgError("entropy input exceeds 2^32 - 1 bytes")
        elif len(entropy) != SEEDLEN:
            raise DrbgError(
                f"without the derivation function the entropy input must be exactly "
                f"{SEEDLEN} bytes, got {len(entropy)}"
            )
        return entropy

    @staticmethod
    def _pad_no_df(data: bytes, what: str) -> bytes:
        """Zero-pad an input to ``SEEDLEN`` for the no-df variant, rejecting longer ones."""
        if len(data) > SEEDLEN:
            raise DrbgError(
                f"without the derivation function the {what} may be at most "
                f"{SEEDLEN} bytes, got {len(data)}"
            )
        return data + bytes(SEEDLEN - len(data))


def _xor(a: bytes, b: bytes) -> bytes:
    """XOR two equal-length byte strings."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")
