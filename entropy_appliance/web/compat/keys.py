"""
What the compatible APIs are configured with: which of them are on
(``--compat``), the API keys they accept (``--api-keys``), and the per-peer
budgets they report (RANDOM.ORG's ``bitsLeft``, ``requestsLeft`` and
``advisoryDelay``).

The ``--api-keys`` file holds one key per line.  Blank lines and lines
starting with ``#`` are ignored, and each line is stripped of surrounding
white space.  A key is 1 to 128 printable ASCII characters without spaces
(a RANDOM.ORG key is a UUID, an ANU key 40 letters and digits: both fit).
The same keys are checked by both APIs: ANU's ``x-api-key`` header and
RANDOM.ORG's ``apiKey`` parameter.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

from entropy_appliance.core.peers import PeerBandwidth, PeerRateLimiter

__all__ = [
    "APIS",
    "CompatConfig",
    "ApiKeys",
    "ApiKeysError",
    "PeerBudget",
    "UNLIMITED",
    "parse_apis",
    "load_api_keys",
]

#: Every compatible API, by the name ``--compat`` gives it.
APIS = ("anu", "randomorg")

#: What ``bitsLeft`` and ``requestsLeft`` report when no per-peer limit
#: applies: the largest 32-bit signed integer, which RANDOM.ORG's clients in
#: every language read (some parse these members as 32-bit integers).
UNLIMITED = 2 ** 31 - 1

_KEY = re.compile(r"[!-~]{1,128}")

#: The largest ``--api-keys`` file read.
MAX_KEYS_FILE = 1024 * 1024


class ApiKeysError(ValueError):
    """The ``--api-keys`` file cannot be used; the message says why."""


def parse_apis(text: str) -> frozenset[str]:
    """``--compat``: a comma-separated list of :data:`APIS`, ``all``, or ``none``."""
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    if words == ["none"]:
        return frozenset()
    if words == ["all"]:
        return frozenset(APIS)
    unknown = sorted(set(words) - set(APIS))
    if not words or unknown or "none" in words:
        raise ValueError(f"{text!r} names {', '.join(unknown) or 'no API'}; use a comma-separated "
                         f"list of {', '.join(APIS)}, or all, or none")
    return frozenset(words)


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys; None: any key is accepted (no ``--api-keys``)."""

    keys: frozenset[str] | None = None

    @property
    def checked(self) -> bool:
        """Whether keys are checked at all."""
        return self.keys is not None

    def accepts(self, key: str | None) -> bool:
        """Whether ``key`` may be used (compared in constant time per key)."""
        if self.keys is None:
            return True
        if key is None:
            return False
        given = key.encode("utf-8", "replace")
        found = False
        for k in self.keys:
            found |= hmac.compare_digest(given, k.encode())
        return found


def load_api_keys(path: str) -> ApiKeys:
    """Read an ``--api-keys`` file (see the module docstring); :class:`ApiKeysError` if unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEYS_FILE + 1)
    except OSError as e:
        raise ApiKeysError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_KEYS_FILE:
        raise ApiKeysError(f"{path} is larger than {MAX_KEYS_FILE} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ApiKeysError(f"{path} is not ASCII text: one key per line") from None
    keys = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _KEY.fullmatch(line):
            raise ApiKeysError(f"{path} line {number}: a key is 1 to 128 printable characters "
                               "without spaces")
        keys.add(line)
    if not keys:
        raise ApiKeysError(f"{path} holds no key: every request would be refused")
    return ApiKeys(frozenset(keys))


@dataclass(frozen=True)
class PeerBudget:
    """
    The per-peer limits the APIs report: requests (``--peer-rate``) and
    bytes (``--peer-bandwidth``); None where the limit is off.
    """

    rate: PeerRateLimiter | None = None
    bandwidth: PeerBandwidth | None = None

    def requests_left(self, peer: str) -> tuple[int, float]:
        """Requests ``peer`` may make at once, and seconds until its next (0: now)."""
        if self.rate is None:
            return UNLIMITED, 0.0
        left, wait = self.rate.left(peer)
        return min(left, UNLIMITED), wait

    def bits_left(self, peer: str) -> int:
        """Random bits ``peer`` may be sent now before it is held back."""
        if self.bandwidth is None:
            return UNLIMITED
        return min(8 * self.bandwidth.left(peer), UNLIMITED)


@dataclass(frozen=True)
class CompatConfig:
    """The compatible APIs of one process, as the options validate them."""

    apis: frozenset[str] = frozenset(APIS)
    keys: ApiKeys = field(default_factory=ApiKeys)
    #: Where the RANDOM.ORG signing key is kept (created on first start).
    signing_key: str = "certs/signing_rsa.pem"
