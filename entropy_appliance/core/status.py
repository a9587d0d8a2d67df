"""
The seed pool's status: one frozen, typed snapshot.

:meth:`SeedPool.status <entropy_appliance.core.pool.SeedPool.status>` returns
a :class:`PoolStatus`.  Python readers (metrics, the systemd status line)
read its attributes, so a renamed field is a type error, not a ``KeyError``
at scrape time.  :meth:`PoolStatus.as_dict` makes the JSON document that
``/v1/status`` serves; its keys are the field names, except
:attr:`PoolStatus.buffer`, which the document calls ``"pool"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from entropy_appliance.core.states import HealthTest, PoolState, SourceState

__all__ = [
    "PoolStatus",
    "StarvedStatus",
    "SourceStatus",
    "HealthStatus",
    "BufferStatus",
    "DrbgStatus",
    "to_json",
]


def to_json(value: Any) -> Any:
    """
    A status value as plain JSON types: dataclasses become dicts (a field's
    ``metadata["key"]`` renames it), enums their values, mappings dicts with
    string keys, sequences lists.
    """
    if is_dataclass(value) and not isinstance(value, type):
        return {f.metadata.get("key", f.name): to_json(getattr(value, f.name))
                for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


@dataclass(frozen=True)
class StarvedStatus:
    """Time and requests spent waiting for seed while the source was healthy."""

    #: Seconds starved without a break (0 when not starved).
    seconds: float
    #: Seconds starved in all, the current stretch included.
    total_seconds: float
    #: Waits that consumers began while starved.
    waits: int
    #: Requests refused because seed was short.
    refusals: int


@dataclass(frozen=True)
class HealthStatus:
    """The health tests' state and settings."""

    state: SourceState
    rct_cutoff: int
    apt_cutoff: int
    apt_window: int
    samples_tested: int
    samples_discarded: int


@dataclass(frozen=True)
class SourceStatus:
    """The entropy source: what it is, how it stands, what was read."""

    name: str
    kind: str
    state: SourceState
    #: Why the last read failed, or None.
    error: str | None
    bytes_read: int
    #: Failed reads.
    errors: int
    #: The claimed min-entropy, in bits per 8-bit sample.
    min_entropy: float
    #: Failing windows per test since start.
    health_failures: Mapping[HealthTest, int]
    health: HealthStatus
    #: Approved samples buffered for the next seeds.
    buffered_bytes: int = 0
    #: Its share of the credited entropy of the last seed (0..1).
    share: float = 0.0
    #: Whether it gave samples to the current seed.
    in_seed: bool = False
    #: Failed, and not yet back: it gives nothing until it passes its
    #: startup test again.
    left_out: bool = False


@dataclass(frozen=True)
class BufferStatus:
    """The buffer of approved seed samples and the demand on it."""

    fill_bytes: int
    fill_percent: float
    #: The read-ahead target, following demand.
    high_water_bytes: int
    demand_bytes_per_second: float
    #: The share of seed draws that found the buffer short.
    pressure: float
    seed_draws: int
    seed_draws_short: int


@dataclass(frozen=True)
class DrbgStatus:
    """The CTR_DRBG: reseeds and output."""

    mechanism: str
    reseeds: int
    reseed_failures: int
    #: Seconds since the last reseed; None before the first.
    reseed_age_seconds: float | None
    reseed_interval_seconds: float
    reseed_bytes: int
    reseed_bits: int
    bytes_since_reseed: int
    bytes_generated: int


@dataclass(frozen=True)
class PoolStatus:
    """One snapshot of the seed pool, its source and its DRBG."""

    state: PoolState
    #: True while random bytes are served (``state`` is OK).
    healthy: bool
    #: Why no byte is served now, or None.
    reason: str | None
    starved: StarvedStatus
    source: SourceStatus
    buffer: BufferStatus = field(metadata={"key": "pool"})
    drbg: DrbgStatus
    #: Random bytes served, by surface (``"stream"``, ``"http"`` ...).
    served: Mapping[str, int]
    #: Requests refused while failing closed.
    fail_closed_refusals: int
    #: Every source, in the order given (``source`` is all of them together).
    sources: tuple[SourceStatus, ...] = ()
    #: Fewer healthy sources than this fail closed (``--min-sources``).
    min_sources: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The ``/v1/status`` document of the pool: plain, JSON-ready types."""
        doc: dict[str, Any] = to_json(self)
        return doc
