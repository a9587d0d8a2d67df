"""
The OpenAPI document against the running appliance, with a schema-based fuzzer.

A ``twist entropy`` subprocess serves ``/openapi.json``; schemathesis loads
it and, for every operation but the endless ``/v1/events`` stream, sends
schema-valid and schema-violating requests (explicit examples, boundary
"coverage" cases and random ones) and runs every check it has: no 5xx,
documented status codes, content types, headers and bodies, valid data
accepted, invalid data rejected, wrong methods answered 405 with ``Allow``.
The event stream gets its own test, which reads the first event only.

Two things the document states in words because JSON Schema cannot:

- ``bytes`` above ``--max-bytes``, an image side above 4096 and ``seconds``
  above 60 are rejected with 413 (Payload Too Large), as the issues require.
  The parameter schemas carry those maxima, and 413 is a documented
  response of each route, so the fuzzer is told that 413 is a rejection too.
- Every operation documents 414 (a request line over 64 KiB, which long
  generated values can reach) and 429; the appliance runs with
  ``--peer-rate 0`` here, so that the fuzzer's pace meets no 429.
- ``/v1/integers`` answers 400 when ``min > max``, a constraint between two
  parameters.  Generated cases keep ``min <= max``, so that the valid-data
  check tests what the document promises; the 400 itself is tested in
  ``test_web_integers.py``.

The drop-in ANU and RANDOM.ORG APIs are in the document, so they are
fuzzed too: their errors are in their own shapes (ANU's ``{"success":
false}``, JSON-RPC error objects), as the document states.  A JSON-RPC
call that is well formed but wrong (unknown method, bad params) is answered
200 with an error object, as RANDOM.ORG answers it; only bodies that are
not JSON-RPC requests at all are rejected with 400, and that is what the
request schema describes.

The run is seeded (derandomized) and bounded in examples per operation; the
request timeout only stops a hung request from hanging the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from schemathesis.engine import StopReason, events, from_schema

from tests.twistd_helpers import Appliance, start_appliance

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 30
REQUEST_TIMEOUT = 20.0
EVENTS_PATH = "/v1/events"

# schemathesis's own list of statuses that reject invalid data, plus the
# 413 the routes answer for a size above their limit.
REJECTION_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                      "428", "429", "5xx"]

CONFIG = schemathesis.Config.from_dict({
    "seed": 20261126,
    "workers": 1,
    "continue-on-failure": True,
    "suppress-health-check": ["all"],
    "request-timeout": REQUEST_TIMEOUT,
    "generation": {
        "mode": "all",
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
    },
    "checks": {
        "enabled": True,
        "negative_data_rejection": {"expected-statuses": REJECTION_STATUSES},
    },
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
})

APPLIANCE_ARGS = ("--source", "kernel", "--max-bytes", "1M", "--peer-rate", "0",
                  "--https", "none", "--stream", "none")


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One appliance for the whole module, on a free loopback port."""
    app = start_appliance(tmp_path_factory.mktemp("fuzz"), *APPLIANCE_ARGS)
    try:
        yield app
    finally:
        app.stop()


def _as_int(value: Any) -> int | None:
    """``value`` as an integer if it is one, or a string of one (as the coverage phase sends)."""
    if type(value) is int:
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,40}", value):
        return int(value)
    return None


def order_integer_bounds(context: Any, case: schemathesis.Case) -> schemathesis.Case:
    """Swap ``min`` and ``max`` of /v1/integers when both are integers and min > max."""
    query = case.query
    if case.operation.path == "/v1/integers" and isinstance(query, dict):
        lo, hi = _as_int(query.get("min")), _as_int(query.get("max"))
        if lo is not None and hi is not None and lo > hi:
            query["min"], query["max"] = query["max"], query["min"]
    return case


def _clip(text: str, limit: int = 1500) -> str:
    """``text``, cut short: a failing case may carry a URL of tens of kilobytes."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def run_fuzzer(url: str) -> tuple[list[str], int, set[str]]:
    """
    Run schemathesis over the document at ``url`` (every operation but the
    event stream); return a line per failed check or error, how many test
    cases it sent, and the operations it ran (``"GET /health"``).
    """
    loaded = schemathesis.openapi.from_url(url, config=CONFIG, timeout=REQUEST_TIMEOUT)
    schema = loaded.exclude(path=EVENTS_PATH)
    schema.hook("map_case")(order_integer_bounds)
    problems: list[str] = []
    cases = 0
    ran: set[str] = set()
    finished = False
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            ran.add(recorder.label)
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.append(_clip(f"{recorder.label}: {check.name}: {failure.title}\n"
                                              f"{failure.message}\n{check.failure_info.code_sample}"))
        elif isinstance(event, events.NonFatalError):
            problems.append(_clip(f"{event.label}: error: {event.info.format()}"))
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            finished = True
            if event.stop_reason != StopReason.COMPLETED:
                problems.append(f"the run stopped early: {event.stop_reason}")
    assert finished, "the fuzzer never finished"
    return problems, cases, ran


def test_every_operation_conforms_to_the_document(appliance: Appliance) -> None:
    problems, cases, ran = run_fuzzer(appliance.url("http", "/openapi.json"))
    print(f"schemathesis sent {cases} test cases")
    assert cases > 100
    # The drop-in ANU and RANDOM.ORG APIs are fuzzed like the appliance's own routes.
    assert {"GET /API/jsonI.php", "GET /anu/", "POST /json-rpc/4/invoke",
            "GET /json-rpc/4/public-key.pem", "GET /health"} <= ran, sorted(ran)
    if problems:
        pytest.fail("\n\n".join(dict.fromkeys(problems)), pytrace=False)


def _first_event(url: str, timeout: float) -> tuple[requests.Response, dict[str, str]]:
    """The response to ``GET url`` and the fields of its first event that has data."""
    fields: dict[str, str] = {}
    with requests.get(url, stream=True, timeout=timeout,
                      headers={"Accept": "text/event-stream"}) as resp:
        # The stream never ends, so read only until the first event is complete.
        for raw in resp.iter_lines():
            line = raw.decode("utf-8")
            if not line:
                if "data" in fields:
                    return resp, fields
                fields = {}
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    raise AssertionError(f"the stream ended without an event; last fields {fields}")


def test_event_stream_first_event_matches_the_document(appliance: Appliance) -> None:
    doc = requests.get(appliance.url("http", "/openapi.json"), timeout=REQUEST_TIMEOUT).json()
    content = doc["paths"][EVENTS_PATH]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    root = {"components": doc["components"]}
    event_schema = {**content["text/event-stream"]["schema"], **root}

    resp, event = _first_event(appliance.url("http", EVENTS_PATH), timeout=10.0)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-store"
    assert event["id"] == "1"
    jsonschema_rs.validator_for(event_schema).validate(event)
    status = json.loads(event["data"])
    jsonschema_rs.validator_for({"$ref": "#/components/schemas/Status", **root}).validate(status)
    assert status["healthy"] is True
    assert status["source"]["name"] == "kernel"
