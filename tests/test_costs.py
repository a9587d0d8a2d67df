"""The budgets of costly requests, as pure accounting: per-peer cost and files in flight, the gate."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from entropy_appliance.core.costs import JobGate, PeerCosts


def test_a_peer_spends_its_burst_then_waits_for_the_rate() -> None:
    clock = Clock()
    costs = PeerCosts(rate=100.0, burst=300.0, in_flight=10, clock=clock)
    assert costs.admit("a", 200) == 0
    assert costs.admit("a", 100) == 0
    # The bucket is empty: 50 more take half a second to come back.
    assert costs.admit("a", 50) == pytest.approx(0.5)
    assert costs.open("a") == 2
    clock.advance(0.5)
    assert costs.admit("a", 50) == 0
    # Another peer has its own bucket.
    assert costs.admit("b", 300) == 0


def test_a_cost_above_the_burst_is_charged_as_the_burst() -> None:
    clock = Clock()
    costs = PeerCosts(rate=10.0, burst=100.0, in_flight=10, clock=clock)
    assert costs.admit("a", 10_000) == 0
    assert costs.admit("a", 10_000) == pytest.approx(10.0)


def test_files_in_flight_are_capped_per_peer() -> None:
    clock = Clock()
    costs = PeerCosts(rate=0, burst=0, in_flight=2, clock=clock)
    assert costs.admit("a", 1) == 0 and costs.admit("a", 1) == 0
    assert costs.admit("a", 1) == 1.0
    assert costs.admit("b", 1) == 0
    costs.done("a")
    assert costs.admit("a", 1) == 0
    costs.done("a")
    costs.done("a")
    costs.done("a")  # more ends than starts change nothing
    assert costs.open("a") == 0


def test_refused_requests_cost_nothing() -> None:
    clock = Clock()
    costs = PeerCosts(rate=100.0, burst=100.0, in_flight=1, clock=clock)
    assert costs.admit("a", 10) == 0
    assert costs.admit("a", 10) == 1.0  # in flight: refused before the bucket
    costs.done("a")
    assert costs.admit("a", 90) == 0  # 90 were still there


def test_idle_peers_are_forgotten() -> None:
    clock = Clock()
    costs = PeerCosts(rate=100.0, burst=100.0, in_flight=4, clock=clock)
    for i in range(50):
        costs.admit(f"10.0.0.{i}", 50)
        costs.done(f"10.0.0.{i}")
    assert costs.tracked() == 50
    clock.advance(61)
    costs.admit("10.0.1.1", 1)
    assert costs.tracked() == 1


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError):
        PeerCosts(rate=-1, burst=1, in_flight=1, clock=Clock())
    with pytest.raises(ValueError):
        PeerCosts(rate=1, burst=0, in_flight=1, clock=Clock())
    with pytest.raises(ValueError):
        PeerCosts(rate=1, burst=1, in_flight=0, clock=Clock())
    with pytest.raises(ValueError):
        JobGate(0, 1)
    with pytest.raises(ValueError):
        JobGate(1, -1)


def test_the_gate_lets_in_its_limit_and_queues_the_rest_in_order() -> None:
    gate = JobGate(limit=2, queue=2)
    started: list[str] = []
    for name in "abcd":
        assert gate.acquire(lambda n=name: started.append(n)) is not None
    assert started == ["a", "b"] and gate.running == 2 and gate.waiting == 2
    # The queue is full: refused at once, and never started.
    assert gate.acquire(lambda: started.append("e")) is None
    gate.release()
    assert started == ["a", "b", "c"] and gate.running == 2
    gate.release()
    gate.release()
    gate.release()
    assert started == ["a", "b", "c", "d"] and gate.running == 0 and gate.waiting == 0


def test_a_withdrawn_wait_never_starts() -> None:
    gate = JobGate(limit=1, queue=4)
    started: list[str] = []
    gate.acquire(lambda: started.append("a"))
    withdraw = gate.acquire(lambda: started.append("b"))
    gate.acquire(lambda: started.append("c"))
    assert withdraw is not None
    withdraw()
    withdraw()
    gate.release()
    assert started == ["a", "c"] and gate.running == 1
