"""Shared fixtures for the in-memory web tests: seeded and unseeded pools, StubTreq."""

from __future__ import annotations

import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock

from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import ReseedPolicy, SeedPool
from entropy_appliance.web import EntropyWeb


def seeded_pool(clock: Clock | None = None) -> SeedPool:
    """A pool over a test source (os.urandom) that has passed startup and is serving."""
    pool = SeedPool(clock or Clock(), HealthTests(8.0), ReseedPolicy(interval=3600.0))
    for _ in range(64):
        pool.write(os.urandom(4096))
        if pool.healthy:
            break
    assert pool.healthy
    return pool


def failed_pool() -> SeedPool:
    """A pool whose source cannot be read: it fails closed at once."""
    pool = SeedPool(Clock(), HealthTests(8.0), ReseedPolicy(interval=1.0))
    pool.source_failed("EIO reading /dev/hwrng: Input/output error")
    return pool


def make_web(pool: SeedPool | None = None, **kwargs: Any) -> tuple[EntropyWeb, StubTreq]:
    """An app over ``pool`` (seeded by default) and a StubTreq on its root resource."""
    p = pool if pool is not None else seeded_pool()
    clock = kwargs.pop("clock", Clock())
    web = EntropyWeb(p, clock, **kwargs)
    return web, StubTreq(web.resource())


def call(stub: StubTreq, method: str, url: str, **kwargs: Any) -> tuple[Any, bytes]:
    """Run one request through ``stub`` to completion; return (response, body)."""
    results: list[Any] = []
    d = stub.request(method, url, **kwargs)
    d.addCallback(lambda resp: stub.content(resp).addCallback(lambda body: (resp, body)))
    d.addBoth(results.append)
    stub.flush()
    assert results, f"{method} {url} did not complete"
    if not isinstance(results[0], tuple):
        results[0].raiseException()
    resp, body = results[0]
    return resp, body


def header(resp: Any, name: str) -> str | None:
    """One response header as text, or None."""
    values = resp.headers.getRawHeaders(name)
    return None if not values else values[0].decode() if isinstance(values[0], bytes) else values[0]
