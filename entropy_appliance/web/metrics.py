"""
``/metrics``: Prometheus exposition made by ``prometheus_client``.

Two kinds of figures:

- :class:`PoolCollector` reads the typed ``pool.status()`` at scrape time, so
  the pool keeps its plain counters and nothing is duplicated: pool fill, reseeds,
  reseed age, bytes generated and served by surface, fail-closed refusals;
  and per source (label ``source``): bytes read, read errors, claimed
  min-entropy, buffered samples, share of the last seed, health failures by
  test, state.  Every ``status_extras`` hook
  whose value is a mapping with a string ``"state"`` is exported as
  ``entropy_<name>_state{state="..."} 1`` (e.g. the onion service), and
  every one with a mapping ``"connections"`` of counts as the counter
  ``entropy_<name>_connections{outcome="..."}`` (e.g. the PROXY listeners).
- :class:`WebMetrics` owns the per-app registry and the request counter,
  which the Site bumps once per finished request (route, method, status).

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so two
apps in one process (tests) never share counters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from entropy_appliance.core.pool import SeedPool
from entropy_appliance.core.states import HealthTest, PoolState, SourceState
from entropy_appliance.core.status import PoolStatus, SourceStatus

__all__ = ["PoolCollector", "WebMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


def _one_hot(name: str, documentation: str, states: type[StrEnum], current: StrEnum,
             **labels: str) -> GaugeMetricFamily:
    """
    A 0/1 sample for every member of ``states``, 1 for ``current``: the
    whole label set is always there, so a query for a state that is not
    current finds 0 rather than nothing.
    """
    family = GaugeMetricFamily(name, documentation, labels=[*labels, "state"])
    for each in states:
        family.add_metric([*labels.values(), each.value], 1 if each is current else 0)
    return family


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]

#: The figures of one snapshot that are a single number: kind, name, help, value.
_SCALARS: tuple[tuple[_Family, str, str, Callable[[PoolStatus], float]], ...] = (
    (GaugeMetricFamily, "entropy_healthy", "1 while random bytes may be served, else 0.",
     lambda s: 1 if s.healthy else 0),
    (GaugeMetricFamily, "entropy_starved_current_seconds",
     "Seconds starved without a break (0 when not starved).", lambda s: s.starved.seconds),
    (CounterMetricFamily, "entropy_starved_seconds",
     "Seconds spent starved: healthy source, seed short for a due reseed.",
     lambda s: s.starved.total_seconds),
    (CounterMetricFamily, "entropy_starved_waits", "Times a consumer waited for seed while starved.",
     lambda s: s.starved.waits),
    (GaugeMetricFamily, "entropy_pool_target_bytes",
     "The read-ahead target of the seed buffer, following demand.",
     lambda s: s.buffer.high_water_bytes),
    (GaugeMetricFamily, "entropy_pool_fill_bytes", "Approved seed samples buffered.",
     lambda s: s.buffer.fill_bytes),
    (GaugeMetricFamily, "entropy_pool_fill_ratio", "Seed pool fill, 0..1 of its high-water mark.",
     lambda s: s.buffer.fill_percent / 100.0),
    (CounterMetricFamily, "entropy_pool_seed_draws", "Seed draws from the pool.",
     lambda s: s.buffer.seed_draws),
    (CounterMetricFamily, "entropy_pool_seed_draws_short", "Seed draws that found the pool too low.",
     lambda s: s.buffer.seed_draws_short),
    (CounterMetricFamily, "entropy_drbg_reseeds", "Successful DRBG (re)seeds.",
     lambda s: s.drbg.reseeds),
    (CounterMetricFamily, "entropy_drbg_reseed_failures",
     "Reseeds that were due and could not be done.", lambda s: s.drbg.reseed_failures),
    (GaugeMetricFamily, "entropy_drbg_reseed_age_seconds",
     "Seconds since the last reseed (NaN before the first).",
     lambda s: _nan_if_none(s.drbg.reseed_age_seconds)),
    (GaugeMetricFamily, "entropy_drbg_reseed_interval_seconds", "Longest time between reseeds.",
     lambda s: s.drbg.reseed_interval_seconds),
    (CounterMetricFamily, "entropy_drbg_generated_bytes", "DRBG output bytes.",
     lambda s: s.drbg.bytes_generated),
    (CounterMetricFamily, "entropy_fail_closed_refusals",
     "Requests for random bytes refused while failing closed.", lambda s: s.fail_closed_refusals),
)

_SourceFigure = Callable[[SourceStatus], float]

#: The figures of each source, labelled ``source``: kind, name, help, value.
_PER_SOURCE: tuple[tuple[_Family, str, str, _SourceFigure], ...] = (
    (CounterMetricFamily, "entropy_source_read_bytes", "Raw bytes read from each source.",
     lambda s: s.bytes_read),
    (CounterMetricFamily, "entropy_source_errors", "Failed reads of each source.",
     lambda s: s.errors),
    (GaugeMetricFamily, "entropy_source_min_entropy",
     "Claimed min-entropy of each source, bits per 8-bit sample.", lambda s: s.min_entropy),
    (GaugeMetricFamily, "entropy_source_buffered_bytes",
     "Approved samples of each source buffered for the next seeds.", lambda s: s.buffered_bytes),
    (GaugeMetricFamily, "entropy_source_seed_share",
     "Each source's share of the credited entropy of the last seed, 0..1.", lambda s: s.share),
)


class PoolCollector(Collector):
    """Exports one snapshot of the seed pool (and of status extras) per scrape."""

    def __init__(self, pool: SeedPool,
                 extras: Mapping[str, Callable[[], Any]] | None = None) -> None:
        self._pool = pool
        self._extras = extras if extras is not None else {}

    def collect(self) -> Iterable[Any]:
        """Yield the metric families of one ``status()`` snapshot."""
        s = self._pool.status()
        for family, name, documentation, value in _SCALARS:
            yield family(name, documentation, value=value(s))
        yield _one_hot("entropy_state",
                       "1 for the appliance's current state (ok, starved, failed), else 0.",
                       PoolState, s.state)
        served = CounterMetricFamily("entropy_served_bytes", "Random bytes served, by surface.",
                                     labels=["surface"])
        for surface, n in sorted(s.served.items()):
            served.add_metric([surface], n)
        yield served
        sources = s.sources or (s.source,)
        for family, name, documentation, figure in _PER_SOURCE:
            metric = family(name, documentation, labels=["source"])
            for one in sources:
                metric.add_metric([one.name], figure(one))
            yield metric
        failures = CounterMetricFamily("entropy_health_failures",
                                       "SP 800-90B health test failures, by source and test.",
                                       labels=["source", "test"])
        for one in sources:
            for test in sorted(HealthTest):
                failures.add_metric([one.name, test.value], one.health_failures.get(test, 0))
        yield failures
        state = GaugeMetricFamily("entropy_source_state",
                                  "1 for each source's current health state, else 0.",
                                  labels=["source", "state"])
        for one in sources:
            for each in SourceState:
                state.add_metric([one.name, each.value], 1 if each is one.state else 0)
        yield state
        yield from self._extra_states()

    def _extra_states(self) -> Iterable[Any]:
        for key, hook in sorted(self._extras.items()):
            try:
                value = hook()
            except Exception:
                # A broken hook must not take the whole scrape down.
                continue
            name = "".join(c if c.isalnum() else "_" for c in key.lower())
            connections = value.get("connections") if isinstance(value, Mapping) else None
            if isinstance(connections, Mapping):
                counter = CounterMetricFamily(f"entropy_{name}_connections",
                                              f"Connections to the {key} listeners, by outcome.",
                                              labels=["outcome"])
                for outcome, n in sorted(connections.items()):
                    counter.add_metric([str(outcome)], n)
                yield counter
            if isinstance(value, Mapping) and isinstance(value.get("state"), str):
                family = GaugeMetricFamily(f"entropy_{name}_state",
                                           f"1 for the current state of {key}.",
                                           labels=["state"])
                family.add_metric([value["state"]], 1)
                yield family


class WebMetrics:
    """The registry of one web app: the pool collector and request counters."""

    def __init__(self, pool: SeedPool,
                 extras: Mapping[str, Callable[[], Any]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(PoolCollector(pool, extras))
        self.requests = Counter(
            "entropy_http_requests", "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=self.registry)
        # ``labels()`` validates and looks its child up on every call, which
        # costs more than the increment at the hot routes' rate; the few
        # children are kept here instead.
        self._children: dict[tuple[str, str, int], Any] = {}

    def observe(self, route: str, method: str, status: int) -> None:
        """Count one finished request."""
        key = (route, method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(route, method, str(status))
        child.inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
