"""/metrics through prometheus_client's parser, and the OpenAPI document and its registry."""

from __future__ import annotations

import json

from klein import Klein
from prometheus_client.parser import text_string_to_metric_families

from entropy_appliance.net.waiting import when_ready
from entropy_appliance.web import openapi
from tests.web_helpers import call, header, make_web


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_report_pool_requests_and_extras() -> None:
    _, stub = make_web(status_extras={"onion": lambda: {"state": "published", "address": "x.onion"}})
    call(stub, "GET", "http://a/v1/random?bytes=100")
    call(stub, "GET", "http://a/v1/random?bytes=0")
    call(stub, "GET", "http://a/nope")
    resp, body = call(stub, "GET", "http://a/metrics")
    assert resp.code == 200
    assert header(resp, "Content-Type").startswith("text/plain")
    m = samples(body)
    assert m[("entropy_healthy", ())] == 1
    assert m[("entropy_state", (("state", "ok"),))] == 1
    assert m[("entropy_state", (("state", "starved"),))] == 0
    assert m[("entropy_state", (("state", "failed"),))] == 0
    assert m[("entropy_starved_seconds_total", ())] >= 0
    assert ("entropy_starved_waits_total", ()) in m
    assert m[("entropy_drbg_reseeds_total", ())] >= 1
    assert m[("entropy_served_bytes_total", (("surface", "http"),))] == 100
    assert m[("entropy_pool_fill_bytes", ())] >= 0
    assert ("entropy_drbg_reseed_age_seconds", ()) in m
    assert m[("entropy_health_failures_total", (("source", "kernel"), ("test", "rct")))] == 0
    assert m[("entropy_health_failures_total", (("source", "kernel"), ("test", "apt")))] == 0
    assert m[("entropy_source_state", (("source", "kernel"), ("state", "ok")))] == 1
    for other in ("starting", "startup", "failed"):
        assert m[("entropy_source_state", (("source", "kernel"), ("state", other)))] == 0
    assert m[("entropy_onion_state", (("state", "published"),))] == 1
    req = "entropy_http_requests_total"
    assert m[(req, (("method", "GET"), ("route", "/v1/random"), ("status", "200")))] == 1
    assert m[(req, (("method", "GET"), ("route", "/v1/random"), ("status", "400")))] == 1
    assert m[(req, (("method", "GET"), ("route", "other"), ("status", "404")))] == 1


def test_openapi_describes_every_route_and_the_limits() -> None:
    web, stub = make_web(max_bytes=12345)
    resp, body = call(stub, "GET", "http://a/openapi.json")
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    core = {"/", "/v1/random", "/v1/integers", "/v1/uuid", "/v1/status", "/health", "/metrics",
            "/openapi.json"}
    assert core <= {r.rule for r in web.app.url_map.iter_rules()}
    assert core <= set(doc["paths"])
    params = {p["name"]: p for p in doc["paths"]["/v1/random"]["get"]["parameters"]}
    assert params["bytes"]["schema"]["maximum"] == 12345
    assert set(params["format"]["schema"]["enum"]) == {"binary", "hex", "base64", "json"}
    responses = doc["paths"]["/v1/random"]["get"]["responses"]
    assert {"200", "400", "413", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]
    assert "X-RNG-Source" in responses["200"]["headers"]
    assert "post" in doc["paths"]["/"]
    assert "Problem" in doc["components"]["schemas"]


def test_every_route_is_described_and_may_answer_414_and_429() -> None:
    web, stub = make_web()
    doc = json.loads(call(stub, "GET", "http://a/openapi.json")[1])
    for app in web.klein_apps():
        for rule, ops in openapi.operations(app):
            assert set(ops) == {m.lower() for m in rule.methods} - {"head", "options"}, rule.rule
    operations = [(path, method, op) for path, item in doc["paths"].items()
                  for method, op in item.items()]
    # 14 of the appliance's own, 4 of the ANU and RANDOM.ORG compatible APIs.
    assert len(operations) == 18
    for path, method, op in operations:
        responses = op["responses"]
        assert {"200", "414", "429"} <= set(responses), (path, method)
        assert "application/problem+json" in responses["414"]["content"]
        assert "Retry-After" in responses["429"]["headers"]
    draws = {"/", "/v1/random", "/v1/integers", "/v1/uuid", "/v1/image/random", "/v1/image/heatmap",
             "/v1/sound/noise", "/health", "/API/jsonI.php", "/anu/", "/json-rpc/4/invoke"}
    assert {path for path, _, op in operations if "503" in op["responses"]} == draws
    sized = {path for path, _, op in operations if "413" in op["responses"]}
    assert sized == {"/", "/v1/random", "/v1/image/random", "/v1/image/heatmap", "/v1/sound/noise",
                     "/json-rpc/4/invoke"}


class Extension:
    """A Klein app of its own, described beside its route as the appliance's are."""

    app = Klein()

    @app.route("/v1/extension/<int:n>", methods=["GET"])
    @openapi.operation("getExtension", "An extension route.",
                       parameters=[lambda ctx: {"name": "n", "in": "path", "required": True,
                                                "schema": {"maximum": ctx.max_bytes}}],
                       ok=openapi.ok("Fine.", {"text/plain": {"type": "string"}}), problems=[400])
    def extension(self, request: object, n: int) -> bytes:
        return b"%d" % n


def test_a_route_described_beside_it_is_in_the_document() -> None:
    doc = openapi.build_document([Extension().app], openapi.OpenAPIContext("1.2.3", 77))
    op = doc["paths"]["/v1/extension/{n}"]["get"]
    assert op["operationId"] == "getExtension"
    assert op["parameters"][0]["schema"]["maximum"] == 77
    assert list(op["responses"]) == ["200", "400", "414", "429"]
    assert doc["info"]["version"] == "1.2.3"


def test_metrics_tell_starved_from_failed() -> None:
    from tests.test_pool import seed_fully, slow_pipeline

    pool, source, held, clock = slow_pipeline()
    seed_fully(pool, held)
    pool._buffer.clear()
    clock.advance(1.0)
    pool.ready()  # a request finds it short
    when_ready(pool).addErrback(lambda _: None)
    clock.advance(2.0)
    _, stub = make_web(pool, clock=clock)
    m = samples(call(stub, "GET", "http://a/metrics")[1])
    assert m[("entropy_state", (("state", "starved"),))] == 1
    assert m[("entropy_state", (("state", "failed"),))] == 0
    assert m[("entropy_starved_current_seconds", ())] == 2.0
    assert m[("entropy_starved_waits_total", ())] == 1
    pool.source_failed("EIO")
    m = samples(call(stub, "GET", "http://a/metrics")[1])
    assert m[("entropy_state", (("state", "failed"),))] == 1
    assert m[("entropy_state", (("state", "starved"),))] == 0
    assert m[("entropy_starved_seconds_total", ())] == 2.0
