"""
Pictures, sound and live events: the pure encoders in ``media`` and their
routes, in memory (StubTreq over the EntropyWeb resource, ``task.Clock``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import wave
from array import array
from typing import Any

import pytest
from PIL import Image
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from entropy_appliance.core.costs import PeerCosts
from entropy_appliance.core.drbg import CtrDrbg
from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import ReseedPolicy, SeedPool
from entropy_appliance.net.memory import HeapTrim
from entropy_appliance.web import media, openapi, rendering
from entropy_appliance.web.media import EventStream
from tests.web_helpers import call, failed_pool, header, make_web, seeded_pool


class CountingSource:
    """A deterministic data source that records what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        out = bytearray()
        while len(out) < n:
            self._counter += 1
            out += hashlib.sha512(self._counter.to_bytes(8, "big")).digest()
        return bytes(out[:n])


def constant(byte: int) -> Any:
    return lambda n: bytes([byte]) * n


def whole(body: bytes | list[bytes]) -> bytes:
    """A file the encoders return in pieces, or a response body, as one string."""
    return body if isinstance(body, bytes) else b"".join(body)


def decode_png(body: bytes | list[bytes]) -> Image.Image:
    image = Image.open(io.BytesIO(whole(body)))
    image.load()
    assert image.format == "PNG"
    return image


def decode_wav(body: bytes | list[bytes]) -> tuple[wave.Wave_read, array]:
    reader = wave.open(io.BytesIO(whole(body)))
    samples = array("h", reader.readframes(reader.getnframes()))
    return reader, samples


# -- images -------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "pil_mode"), [("rgb", "RGB"), ("gray", "L"), ("bits", "1")])
@pytest.mark.parametrize(("width", "height"), [(256, 256), (1, 1), (37, 5), (300, 17)])
def test_random_png_decodes_at_size_and_mode(mode: str, pil_mode: str, width: int, height: int) -> None:
    source = CountingSource()
    image = decode_png(rendering.random_png(source, width, height, mode))
    assert image.size == (width, height)
    assert image.mode == pil_mode
    assert source.calls == [rendering.image_bytes_needed(width, height, mode)]


def test_random_png_pixels_are_the_random_bytes() -> None:
    source = CountingSource()
    image = decode_png(rendering.random_png(source, 16, 4, "gray"))
    assert image.tobytes() == CountingSource()(64)
    assert len(set(image.tobytes())) > 30


def test_bits_mode_draws_each_bit_as_black_or_white() -> None:
    # 0b10100101: white, black, white, black, black, white, black, white
    image = decode_png(rendering.random_png(constant(0xA5), 8, 3, "bits"))
    row = [image.getpixel((x, 0)) for x in range(8)]
    assert row == [255, 0, 255, 0, 0, 255, 0, 255]
    rgb = image.convert("RGB")
    assert sorted(c for _, c in rgb.getcolors() or []) == [(0, 0, 0), (255, 255, 255)]


def test_image_limits() -> None:
    rendering.check_image(1, 4096, "bits")
    with pytest.raises(rendering.MediaParamError) as e:
        rendering.check_image(4097, 10)
    assert e.value.too_large and e.value.param == "width"
    with pytest.raises(rendering.MediaParamError) as e:
        rendering.check_image(10, 0)
    assert not e.value.too_large and e.value.param == "height"
    with pytest.raises(rendering.MediaParamError) as e:
        rendering.check_image(10, 10, "cmyk")
    assert not e.value.too_large and e.value.param == "mode"


# -- heatmap ------------------------------------------------------------------


def test_stuck_source_makes_a_uniform_heatmap() -> None:
    cols, rows = rendering.heatmap_grid(256, 256)
    stuck = decode_png(rendering.heatmap_png(b"\x42" * (cols * rows), 256, 256)).convert("RGB")
    assert stuck.size == (256, 256)
    colours = stuck.getcolors()
    assert colours is not None and len(colours) == 1
    # popcount(0x42) == 2: the colour of two set bits, everywhere.
    assert colours[0][1] == rendering.popcount_palette()[2]


def test_fair_source_makes_a_varied_heatmap_and_bias_shows() -> None:
    cols, rows = rendering.heatmap_grid(128, 64)
    fair = decode_png(rendering.heatmap_png(CountingSource()(cols * rows), 128, 64)).convert("RGB")
    assert fair.size == (128, 64)
    assert len(fair.getcolors() or []) >= 6
    palette = rendering.popcount_palette()
    # A source stuck high and one stuck low look different at a glance.
    high = decode_png(rendering.heatmap_png(b"\xff" * (cols * rows), 128, 64)).convert("RGB")
    low = decode_png(rendering.heatmap_png(b"\x00" * (cols * rows), 128, 64)).convert("RGB")
    assert high.getpixel((0, 0)) == palette[8]
    assert low.getpixel((0, 0)) == palette[0]


@pytest.mark.parametrize(("width", "height"),
                         [(1, 1), (1, 4096), (4096, 1), (256, 256), (4096, 4096), (3, 1000)])
def test_heatmap_grid_is_small_and_fits(width: int, height: int) -> None:
    cols, rows = rendering.heatmap_grid(width, height)
    assert 1 <= cols <= width and 1 <= rows <= height
    assert cols * rows <= rendering.HEATMAP_MAX_SAMPLES


def test_heatmap_needs_enough_samples() -> None:
    with pytest.raises(ValueError):
        rendering.heatmap_png(b"\x00" * 10, 256, 256)


# -- sound --------------------------------------------------------------------


def roughness(samples: array) -> float:
    """Energy of the first difference over the energy of the signal: ~2 for white noise."""
    energy = sum(v * v for v in samples)
    diff = sum((samples[i] - samples[i - 1]) ** 2 for i in range(1, len(samples)))
    return diff / energy


@pytest.mark.parametrize("color", rendering.COLORS)
@pytest.mark.parametrize(("seconds", "rate"), [(1.0, 8000), (0.25, 22050), (0.1, 44100), (0.5, 48000)])
def test_noise_wav_parses_at_rate_and_length(color: str, seconds: float, rate: int) -> None:
    source = CountingSource()
    reader, samples = decode_wav(rendering.noise_wav(source, seconds, rate, color))
    assert reader.getframerate() == rate
    assert reader.getnchannels() == 1
    assert reader.getsampwidth() == 2
    assert reader.getnframes() == round(seconds * rate) == len(samples)
    assert source.calls == [rendering.noise_bytes_needed(seconds, rate, color)]
    # Normalised: the peak reaches -1 dBFS and nothing clips.
    assert max(max(samples), -min(samples)) in range(rendering.PEAK - 2, rendering.PEAK + 1)
    assert abs(sum(samples) / len(samples)) < 200


def test_noise_colours_sound_different() -> None:
    rough = {}
    for color in rendering.COLORS:
        _, samples = decode_wav(rendering.noise_wav(CountingSource(), 1.0, 8000, color))
        rough[color] = roughness(samples)
    assert rough["white"] > 1.5
    assert 0.15 < rough["pink"] < 1.0
    assert rough["brown"] < 0.15


def test_noise_is_different_each_time() -> None:
    import os

    a = rendering.noise_wav(os.urandom, 0.1, 8000, "pink")
    b = rendering.noise_wav(os.urandom, 0.1, 8000, "pink")
    assert a != b


def test_sound_limits() -> None:
    rendering.check_sound(60, 48000, "brown")
    for seconds, rate, color, param, too_large in [
        (60.5, 8000, "white", "seconds", True),
        (0, 8000, "white", "seconds", False),
        (-1, 8000, "white", "seconds", False),
        (float("nan"), 8000, "white", "seconds", False),
        (1, 16000, "white", "rate", False),
        (1, 8000, "blue", "color", False),
    ]:
        with pytest.raises(rendering.MediaParamError) as e:
            rendering.check_sound(seconds, rate, color)
        assert (e.value.param, e.value.too_large) == (param, too_large)


# -- routes -------------------------------------------------------------------


def test_random_image_route() -> None:
    web, stub = make_web()
    resp, body = call(stub, "GET", "https://appliance/v1/image/random?width=64&height=32&mode=gray")
    assert resp.code == 200
    assert header(resp, "Content-Type") == "image/png"
    assert header(resp, "Cache-Control") == "no-store"
    assert header(resp, "X-RNG-Source") == web.pool.source_name
    image = decode_png(body)
    assert (image.size, image.mode) == ((64, 32), "L")
    # The pool gave a child DRBG its seed; the child made the pixels.
    assert web.pool.status().served["image"] == media.CHILD_SEED


def test_random_image_defaults_and_bits() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "http://appliance/v1/image/random")
    assert resp.code == 200
    assert decode_png(body).size == (256, 256)
    resp, body = call(stub, "GET", "http://appliance/v1/image/random?mode=bits&width=9&height=2")
    image = decode_png(body)
    assert (image.size, image.mode) == ((9, 2), "1")


@pytest.mark.parametrize(("query", "status"), [
    ("width=0", 400), ("width=-3", 400), ("width=abc", 400), ("height=1.5", 400),
    ("mode=cmyk", 400), ("width=4097", 413), ("height=5000", 413), ("width=99999999999", 413),
    ("width=", 400), ("mode=", 400),
])
def test_random_image_bad_params(query: str, status: int) -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", f"http://appliance/v1/image/random?{query}")
    assert resp.code == status
    assert header(resp, "Content-Type") == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status and problem["detail"]


def test_images_and_sounds_fail_closed() -> None:
    _, stub = make_web(failed_pool())
    for url in ["/v1/image/random", "/v1/sound/noise?seconds=1"]:
        resp, body = call(stub, "GET", "http://appliance" + url)
        assert resp.code == 503
        assert header(resp, "Retry-After") is not None
        assert json.loads(body)["status"] == 503


def test_heatmap_route_draws_raw_samples() -> None:
    web, stub = make_web()
    before = web.pool.status().buffer.fill_bytes
    resp, body = call(stub, "GET", "http://appliance/v1/image/heatmap?width=64&height=64")
    assert resp.code == 200
    assert header(resp, "Content-Type") == "image/png"
    assert header(resp, "Cache-Control") == "no-store"
    cols, rows = rendering.heatmap_grid(64, 64)
    assert header(resp, "X-Raw-Samples") == str(cols * rows)
    assert decode_png(body).size == (64, 64)
    # The samples were consumed, so they will never seed the DRBG.
    assert web.pool.status().buffer.fill_bytes == before - cols * rows


def test_heatmap_is_503_when_the_pool_is_short() -> None:
    pool = SeedPool(Clock(), HealthTests(8.0), ReseedPolicy(interval=3600.0))
    _, stub = make_web(pool)
    resp, body = call(stub, "GET", "http://appliance/v1/image/heatmap")
    assert resp.code == 503
    assert header(resp, "Retry-After") == "1"
    assert "raw samples" in json.loads(body)["detail"]


def test_heatmap_of_a_stuck_source_is_uniform() -> None:
    pool = SeedPool(Clock(), HealthTests(1.0), ReseedPolicy(interval=3600.0))
    for _ in range(8):
        pool.write(b"\x07" * 4096)
    assert not pool.healthy
    _, stub = make_web(pool)
    resp, body = call(stub, "GET", "http://appliance/v1/image/heatmap?width=128&height=128")
    assert resp.code == 200
    colours = decode_png(body).convert("RGB").getcolors()
    assert colours is not None and [c for _, c in colours] == [rendering.popcount_palette()[3]]


@pytest.mark.parametrize("color", rendering.COLORS)
def test_noise_route(color: str) -> None:
    web, stub = make_web()
    resp, body = call(stub, "GET", f"http://appliance/v1/sound/noise?seconds=0.5&rate=22050&color={color}")
    assert resp.code == 200
    assert header(resp, "Content-Type") == "audio/wav"
    assert header(resp, "Cache-Control") == "no-store"
    reader, samples = decode_wav(body)
    assert (reader.getframerate(), len(samples)) == (22050, 11025)
    assert web.pool.status().served["sound"] == media.CHILD_SEED


def test_noise_route_defaults() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "http://appliance/v1/sound/noise")
    reader, samples = decode_wav(body)
    assert reader.getframerate() == rendering.DEFAULT_RATE
    assert len(samples) == round(rendering.DEFAULT_SECONDS * rendering.DEFAULT_RATE)


@pytest.mark.parametrize(("query", "status"), [
    ("seconds=0", 400), ("seconds=-1", 400), ("seconds=abc", 400), ("seconds=nan", 400),
    ("seconds=inf", 400), ("seconds=1e999", 400), ("seconds=1_0", 400), ("rate=16000", 400),
    ("rate=abc", 400), ("color=blue", 400), ("seconds=60.01", 413), ("seconds=3600", 413),
    ("seconds=", 400), ("rate=", 400), ("color=", 400),
])
def test_noise_bad_params(query: str, status: int) -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", f"http://appliance/v1/sound/noise?{query}")
    assert resp.code == status
    assert json.loads(body)["status"] == status


def test_openapi_describes_media_routes() -> None:
    _, stub = make_web()
    _, body = call(stub, "GET", "http://appliance/openapi.json")
    paths = json.loads(body)["paths"]
    for path in ["/v1/image/random", "/v1/image/heatmap", "/v1/sound/noise", "/v1/events"]:
        assert path in paths
    heatmap = paths["/v1/image/heatmap"]["get"]
    assert "RAW SOURCE DATA" in heatmap["summary"]
    assert "BEFORE the CTR_DRBG" in heatmap["description"]
    assert {"400", "413", "503"} <= set(heatmap["responses"])
    image = paths["/v1/image/random"]["get"]
    width = next(p for p in image["parameters"] if p["name"] == "width")
    assert width["schema"]["maximum"] == rendering.MAX_SIZE
    noise = paths["/v1/sound/noise"]["get"]
    params = {p["name"]: p["schema"] for p in noise["parameters"]}
    assert params["seconds"]["maximum"] == rendering.MAX_SECONDS
    assert params["rate"]["enum"] == list(rendering.RATES)
    assert {"400", "413"} <= set(noise["responses"])
    assert openapi.problem_responses(400)["400"]["content"] == noise["responses"]["400"]["content"]


# -- the dashboard --------------------------------------------------------------


def test_dashboard_page_and_assets() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "http://appliance/")
    assert resp.code == 200
    assert header(resp, "Content-Type") == "text/html; charset=utf-8"
    page = body.decode()
    for metric in ["bytes_served", "reseed_age", "reseed_interval", "health", "pool_fill", "pressure",
                   "source", "source_kind", "listeners", "onion", "throughput"]:
        assert f'data-metric="{metric}"' in page
    # Offline: nothing is loaded from anywhere but the appliance.
    assert "http://" not in page and "https://" not in page.replace("https://this-host/", "")
    for name, kind in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        assert f"/static/{name}" in page
        resp, asset = call(stub, "GET", f"http://appliance/static/{name}")
        assert resp.code == 200
        assert header(resp, "Content-Type", ).startswith(kind)  # type: ignore[union-attr]
        assert b"http://" not in asset and b"https://" not in asset
    resp, _ = call(stub, "GET", "http://appliance/static/index.py")
    assert resp.code == 404


def test_pollen_still_answers_on_root() -> None:
    _, stub = make_web()
    resp, body = call(stub, "GET", "http://appliance/?challenge=" + "ab" * 64)
    assert resp.code == 200
    assert header(resp, "Content-Type", ).startswith("text/plain")  # type: ignore[union-attr]
    assert len(body.splitlines()) == 2


# -- Server-Sent Events ---------------------------------------------------------


def parse_events(data: bytes) -> list[dict[str, Any]]:
    events = []
    for block in data.split(b"\n\n"):
        lines = [line for line in block.split(b"\n") if line.startswith(b"data: ")]
        if lines:
            events.append(json.loads(b"".join(line[6:] for line in lines)))
    return events


def test_events_stream_one_status_a_second_until_the_client_leaves() -> None:
    clock = Clock()
    pool = seeded_pool(clock)
    web, stub = make_web(pool, clock=clock)
    responses: list[Any] = []
    stub.get("http://appliance/v1/events").addCallback(responses.append)
    stub.flush()
    assert responses, "the event stream sent no headers"
    resp = responses[0]
    assert resp.code == 200
    assert header(resp, "Content-Type") == "text/event-stream; charset=utf-8"
    assert header(resp, "Cache-Control") == "no-store"
    chunks: list[bytes] = []
    done = stub.collect(resp, chunks.append)
    stub.flush()
    first = parse_events(b"".join(chunks))
    assert len(first) == 1
    assert first[0]["healthy"] is True
    assert first[0]["source"]["name"] == pool.source_name
    assert first[0]["uptime_seconds"] == 0

    for _ in range(3):
        clock.advance(1.0)
        stub.flush()
    events = parse_events(b"".join(chunks))
    assert [e["uptime_seconds"] for e in events] == [0, 1, 2, 3]
    assert events[-1] == json.loads(json.dumps(web.status()))

    # The client leaves: the server stops its timer and writes no more.
    outcome: list[Any] = []
    done.addBoth(outcome.append)
    for pump in list(stub._agent._pumps):  # the client side of the in-memory connection
        pump.clientIO.loseConnection()
    stub.flush()
    assert len(outcome) == 1
    assert clock.getDelayedCalls() == []
    clock.advance(5.0)
    stub.flush()
    assert len(parse_events(b"".join(chunks))) == 4


class FakeRequest:
    """The part of a twisted.web request that an event stream uses."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.headers: dict[bytes, bytes] = {}
        self.written: list[bytes] = []
        self.finished: Deferred[None] = Deferred()

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def notifyFinish(self) -> Any:
        return self.finished


def test_event_stream_stops_when_cancelled_or_finished() -> None:
    clock = Clock()
    request = FakeRequest()
    counter = iter(range(100))
    stream = EventStream(request, lambda: {"n": next(counter)}, clock)  # type: ignore[arg-type]
    d = stream.start()
    clock.advance(1)
    clock.advance(1)
    assert [e["n"] for e in parse_events(b"".join(request.written))] == [0, 1, 2]
    assert request.written[0].startswith(b"retry: ")
    d.cancel()
    assert not stream.running and clock.getDelayedCalls() == []
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    request.finished.errback(Failure(ConnectionDone()))
    stream.stop()
    clock.advance(10)
    assert len(parse_events(b"".join(request.written))) == 3
    d.addErrback(lambda f: None)



# -- costly routes ----------------------------------------------------------------


def test_a_child_drbg_is_a_ctr_drbg_from_its_seed_reseeded_from_the_next() -> None:
    seeds = os.urandom(2 * media.CHILD_SEED)
    child = media.ChildDrbg(seeds, reseed_bytes=1000, personalization=b"p")
    out = child(600) + child(900)
    first, second = seeds[:media.CHILD_SEED], seeds[media.CHILD_SEED:]
    expected = CtrDrbg(first[:32], nonce=first[32:], personalization=b"p")
    want = expected.generate(600) + expected.generate(400)
    expected.reseed(second)
    assert out == want + expected.generate(500)
    # Its seeds cover 2000 bytes, and not one more.
    child(500)
    with pytest.raises(ValueError):
        child(1)
    assert media.child_seeds(2000, 1000) == 2 and media.child_seeds(1, 1000) == 1
    with pytest.raises(ValueError):
        media.ChildDrbg(seeds[:-1], 1000, b"p")


class Offload:
    """Holds each file's work until the test runs it, as a busy thread pool would."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[list[bytes]]]] = []

    def __call__(self, work: Any) -> Deferred[list[bytes]]:
        d: Deferred[list[bytes]] = Deferred()
        self.pending.append((work, d))
        return d

    def run(self) -> None:
        work, d = self.pending.pop(0)
        d.callback(work())


def costly_web(limits: media.MediaLimits, pool: SeedPool | None = None) -> tuple[Any, Any, Clock,
                                                                                 Offload]:
    clock = Clock()
    web, stub = make_web(pool or seeded_pool(clock), clock=clock)
    offload = Offload()
    web.media = media.MediaWeb(web, limits, offload=offload)
    return web, stub, clock, offload


def start(stub: Any, url: str) -> list[Any]:
    """Send a request; the list gets (response, body) once it is answered."""
    out: list[Any] = []
    d = stub.request("GET", "http://appliance" + url)
    d.addCallback(lambda resp: stub.content(resp).addCallback(lambda body: (resp, body)))
    d.addBoth(out.append)
    stub.flush()
    return out


def test_a_peer_past_its_cost_budget_gets_429_with_retry_after() -> None:
    cost = rendering.image_cost(512, 512, "rgb")
    web, stub = make_web()
    web.media.limit(media.MediaLimits(peer_rate=1 << 20, peer_burst=2 * cost))
    url = "http://appliance/v1/image/random?width=512&height=512&mode=rgb"
    # The bucket holds two of these files: a third waits for the rate.
    for _ in range(2):
        resp, _ = call(stub, "GET", url)
        assert resp.code == 200
    resp, body = call(stub, "GET", url)
    assert resp.code == 429
    assert header(resp, "Content-Type") == "application/problem+json"
    assert int(header(resp, "Retry-After") or 0) == math.ceil(cost / (1 << 20))
    assert "--peer-media-rate" in json.loads(body)["detail"]
    # Another client has a bucket of its own.
    assert web.media.costs.admit("192.0.2.1", cost) == 0


def test_the_default_budget_holds_two_of_the_largest_files() -> None:
    limits = media.MediaLimits()
    assert limits.peer_burst == 2 * rendering.MAX_COST
    costs = PeerCosts(limits.peer_rate, limits.peer_burst, limits.peer_in_flight, Clock())
    assert costs.admit("a", rendering.MAX_COST) == 0 and costs.admit("a", rendering.MAX_COST) == 0
    assert costs.admit("a", rendering.MAX_COST) == pytest.approx(
        rendering.MAX_COST / limits.peer_rate)


def test_small_files_cost_little() -> None:
    _, stub = make_web()
    for _ in range(50):
        resp, _ = call(stub, "GET", "http://appliance/v1/image/random?width=64&height=64")
        assert resp.code == 200


def test_a_peer_has_a_few_files_in_flight_at_most() -> None:
    _, stub, clock, offload = costly_web(media.MediaLimits(jobs=8, peer_in_flight=2))
    first = start(stub, "/v1/image/random?width=8&height=8")
    second = start(stub, "/v1/sound/noise?seconds=0.1")
    third = start(stub, "/v1/image/heatmap?width=8&height=8")
    assert not first and not second
    resp, body = third[0]
    assert resp.code == 429 and header(resp, "Retry-After") == "1"
    assert "in flight" in json.loads(body)["detail"]
    offload.run()
    stub.flush()
    assert first[0][0].code == 200
    # One file has left: the next one is let in.
    assert not start(stub, "/v1/image/random?width=8&height=8")


def test_the_gate_makes_the_rest_wait_their_turn_then_503() -> None:
    web, stub, clock, offload = costly_web(
        media.MediaLimits(jobs=1, queue=1, queue_wait=5.0, peer_in_flight=8))
    running = start(stub, "/v1/image/random?width=8&height=8")
    waiting = start(stub, "/v1/image/random?width=8&height=8")
    refused = start(stub, "/v1/image/random?width=8&height=8")
    assert not running and not waiting and len(offload.pending) == 1
    resp, body = refused[0]
    assert resp.code == 503 and header(resp, "Retry-After") == "5"
    assert "1 at once, 1 more waiting" in json.loads(body)["detail"]
    # The place frees up: the waiting request gets it, and then its answer.
    offload.run()
    stub.flush()
    assert running[0][0].code == 200 and not waiting and len(offload.pending) == 1
    offload.run()
    stub.flush()
    assert waiting[0][0].code == 200
    assert web.media.gate.running == 0


def test_a_request_that_waits_too_long_gets_503() -> None:
    web, stub, clock, offload = costly_web(
        media.MediaLimits(jobs=1, queue=4, queue_wait=5.0, peer_in_flight=8))
    start(stub, "/v1/sound/noise?seconds=0.1")
    waiting = start(stub, "/v1/sound/noise?seconds=0.1")
    clock.advance(4.9)
    stub.flush()
    assert not waiting
    clock.advance(0.1)
    stub.flush()
    resp, body = waiting[0]
    assert resp.code == 503 and "waited 5 s" in json.loads(body)["detail"]
    assert web.media.gate.waiting == 0
    offload.run()
    assert web.media.gate.running == 0


def test_a_client_that_leaves_gives_back_its_turn_but_work_keeps_its_place() -> None:
    web, stub, clock, offload = costly_web(
        media.MediaLimits(jobs=1, queue=4, peer_in_flight=8))
    start(stub, "/v1/image/random?width=8&height=8")
    start(stub, "/v1/image/random?width=8&height=8")
    assert web.media.gate.running == 1 and web.media.gate.waiting == 1
    for pump in list(stub._agent._pumps):
        pump.clientIO.loseConnection()
    stub.flush()
    # The waiting request left the queue; the one at work keeps its place
    # until its work is done, since that work holds its memory till then.
    assert web.media.gate.waiting == 0 and web.media.gate.running == 1
    offload.run()
    stub.flush()
    assert web.media.gate.running == 0 and clock.getDelayedCalls() == []
    assert web.media.costs.open("127.0.0.1") == 0


def test_the_work_runs_off_the_reactor_thread_on_a_seed_from_the_pool() -> None:
    web, stub, clock, offload = costly_web(media.MediaLimits())
    done = start(stub, "/v1/image/random?width=300&height=200&mode=gray")
    # On the reactor thread only the seed was drawn: the pixels are the work's.
    assert not done and web.pool.status().served["image"] == media.CHILD_SEED
    bytes_before = web.pool.status().drbg.bytes_generated
    offload.run()
    stub.flush()
    resp, body = done[0]
    assert resp.code == 200 and decode_png(body).size == (300, 200)
    assert web.pool.status().drbg.bytes_generated == bytes_before
    assert resp.length == len(body)


def test_a_source_failure_during_the_work_answers_503() -> None:
    clock = Clock()
    pool = seeded_pool(clock)
    _, stub, _, offload = costly_web(media.MediaLimits(), pool)
    done = start(stub, "/v1/sound/noise?seconds=0.1")
    pool.source_failed("unplugged")
    offload.run()
    stub.flush()
    resp, body = done[0]
    assert resp.code == 503 and "unplugged" in json.loads(body)["detail"]


def test_a_heatmap_that_cannot_spare_samples_gives_its_place_back() -> None:
    pool = SeedPool(Clock(), HealthTests(8.0), ReseedPolicy(interval=3600.0))
    web, stub, _, offload = costly_web(media.MediaLimits(), pool)
    resp, _ = start(stub, "/v1/image/heatmap")[0]
    assert resp.code == 503 and web.media.gate.running == 0 and not offload.pending


def test_the_heap_is_trimmed_as_big_work_ends_and_after_many_small_files() -> None:
    clock = Clock()
    web, stub = make_web(seeded_pool(clock), clock=clock)
    trims: list[int] = []
    web.media = media.MediaWeb(web, trim=HeapTrim(clock, trim=lambda: bool(trims.append(1))))
    # Big work trims as it ends, in its own thread: no timer.
    resp, _ = call(stub, "GET", "http://appliance/v1/image/random?width=2048&height=2048")
    assert resp.code == 200 and trims == [1]
    # Small files are counted, and trimmed for together a second after enough.
    for _ in range(8):
        resp, _ = call(stub, "GET", "http://appliance/v1/image/random?width=640&height=480")
        assert resp.code == 200
    assert trims == [1]
    clock.advance(1.0)
    assert trims == [1, 1]


def test_head_costs_nothing() -> None:
    web, stub = make_web()
    for _ in range(5):
        resp, body = call(stub, "HEAD", "http://appliance/v1/image/random?width=4096&height=4096")
        assert resp.code == 200 and body == b""
    assert web.media.costs.tracked() == 0


def test_the_costs_follow_the_measured_memory() -> None:
    # The largest file is the RGB image; every other is smaller.
    assert rendering.MAX_COST == rendering.image_cost(4096, 4096, "rgb")
    assert 100 << 20 < rendering.MAX_COST < 128 << 20
    assert rendering.image_cost(4096, 4096, "bits") < rendering.image_cost(4096, 4096, "gray")
    assert rendering.sound_cost(60, 48000, "pink") < rendering.MAX_COST
    assert rendering.heatmap_cost(4096, 4096) < rendering.image_cost(4096, 4096, "gray")


def test_the_options_set_the_budgets(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.python.usage import UsageError

    from entropy_appliance.app.options import parse_config

    monkeypatch.chdir(tmp_path)
    assert parse_config([]).media == media.MediaLimits()
    config = parse_config(["--media-jobs", "3", "--peer-media-rate", "8M"])
    assert (config.media.jobs, config.media.peer_rate) == (3, 8 << 20)
    assert parse_config(["--peer-media-rate", "0"]).media.peer_rate == 0
    for args, message in [(["--media-jobs", "0"], "1 <= N <= 10"),
                          (["--media-jobs", "2.5"], "--media-jobs"),
                          (["--peer-media-rate", "lots"], "is not a size")]:
        with pytest.raises(UsageError, match=message):
            parse_config(args)


def test_a_body_that_waits_for_its_reader_is_not_timed_out_by_the_queue() -> None:
    clock = Clock()
    web, _ = make_web(seeded_pool(clock), clock=clock)
    request = DummyRequest([b""])
    request.method = b"GET"
    request.args = {b"seconds": [b"10"]}

    class SlowConsumer:
        """Pauses the body after each write, as a full transport does."""

        def __init__(self) -> None:
            self.producer: Any = None

        def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
            self.producer = producer

    consumer = SlowConsumer()
    request.registerProducer = consumer.registerProducer  # type: ignore[method-assign]
    original = request.write

    def write_then_pause(data: bytes) -> None:
        original(data)
        consumer.producer.pauseProducing()

    request.write = write_then_pause  # type: ignore[method-assign]
    done = web.media.sound_noise(request)
    assert isinstance(done, Deferred) and not done.called
    # The work was done inline and its place given back; the body waits for
    # its reader, however long, without a 503 from the queue's deadline.
    assert web.media.gate.running == 0 and clock.getDelayedCalls() == []
    clock.advance(60)
    assert not done.called
    while not done.called:
        consumer.producer.resumeProducing()
    assert b"".join(request.written)[:4] == b"RIFF"
