"""
The dashboard end to end: the appliance runs under twistd on a free loopback
port, and Debian's chromium (headless, driven by playwright, never a
downloaded browser) loads ``/`` and watches the live values.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.twistd_helpers import Appliance, start_appliance

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]
PLACEHOLDER = "\u2026"

METRICS = [
    "health", "version", "uptime", "throughput", "throughput_total", "bytes_served",
    "pool_fill", "pool_fill_bytes", "pressure", "starved", "reseed_age", "reseed_interval", "reseeds",
    "bytes_generated", "source", "source_kind", "source_state", "health_state",
    "failures_rct", "failures_apt", "listeners", "onion", "connection",
    "source_state_0", "source_h_0", "source_read_0", "source_failures_0", "source_share_0",
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    appliance = start_appliance(tmp_path_factory.mktemp("dashboard"), "--source", "kernel",
                                "--https=none", "--stream=none")
    try:
        yield appliance
    finally:
        appliance.stop()


def open_browser(tmp_path: Path, width: int) -> Any:
    playwright = sync_playwright().start()
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
        args=CHROMIUM_ARGS, viewport={"width": width, "height": 900})
    return playwright, context


def metric(page: Page, name: str) -> str:
    return (page.locator(f'[data-metric="{name}"]').first.text_content() or "").strip()


def wait_for_change(page: Page, name: str, before: str, timeout_ms: int = 8000) -> None:
    page.wait_for_function(
        "([name, before]) => { const el = document.querySelector(`[data-metric=\"${name}\"]`);"
        " return el && el.textContent.trim() !== before; }",
        arg=[name, before], timeout=timeout_ms)


def test_dashboard_shows_live_values(app: Appliance, tmp_path: Path) -> None:
    playwright, context = open_browser(tmp_path, 1280)
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(app.url("http", "/"))

        page.wait_for_function(
            "() => document.querySelector('[data-metric=\"health\"]').textContent === 'healthy'",
            timeout=15000)
        # Rates need two status events.
        page.wait_for_function(
            "() => /\\/s$/.test(document.querySelector('[data-metric=\"throughput\"]').textContent)",
            timeout=15000)
        values = {name: metric(page, name) for name in METRICS}
        for name, value in values.items():
            assert value and PLACEHOLDER not in value, f"{name} shows {value!r}"
        assert values["source"] == "kernel"
        assert values["source_kind"] == "kernel"
        # One row per source: the kernel alone here, with all the seed.
        rows = page.locator("#sources tr")
        assert rows.count() == 1 and (rows.first.text_content() or "").startswith("kernel (kernel)")
        assert values["source_state_0"] == "ok" and values["source_h_0"] == "8"
        assert values["source_failures_0"] == "0/0" and values["source_share_0"] == "100%"
        assert values["connection"] == "live"
        assert values["failures_rct"] == values["failures_apt"] == "0"
        assert "127.0.0.1" in values["listeners"] and str(app.ports["http"]) in values["listeners"]
        assert values["onion"] == "none"
        assert values["reseed_interval"].startswith("every 1.00")

        # Live: the clock-driven values move by themselves ...
        wait_for_change(page, "uptime", values["uptime"])
        wait_for_change(page, "reseed_age", metric(page, "reseed_age"))
        # ... and traffic from elsewhere shows up in the bytes served.
        served = metric(page, "bytes_served")
        with urllib.request.urlopen(app.url("http", "/v1/random?bytes=2000000"), timeout=30) as r:
            assert len(r.read()) == 2000000
        wait_for_change(page, "bytes_served", served)
        page.wait_for_function("() => /MB$/.test(document.querySelector("
                               "'[data-metric=\"served_http\"]')?.textContent || '')", timeout=8000)

        # The pictures load.
        page.wait_for_function(
            "() => ['random-image', 'heatmap'].every(id => document.getElementById(id).naturalWidth === 128)",
            timeout=15000)

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")

        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(1500)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
        phone = tmp_path / "dashboard-phone.png"
        page.screenshot(path=str(phone), full_page=True)
        print(f"dashboard screenshot at phone width: {phone}")

        assert problems == []
    finally:
        context.close()
        playwright.stop()


def test_dashboard_falls_back_to_polling(app: Appliance, tmp_path: Path) -> None:
    playwright, context = open_browser(tmp_path, 800)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # A proxy that cannot pass event streams.
        page.route("**/v1/events", lambda route: route.fulfill(status=502, body="bad gateway"))
        page.goto(app.url("http", "/"))
        page.wait_for_function(
            "() => document.querySelector('[data-metric=\"connection\"]').textContent === 'live (polling)'",
            timeout=20000)
        before = metric(page, "uptime")
        wait_for_change(page, "uptime", before)
        assert metric(page, "health") == "healthy"
        assert errors == []
    finally:
        context.close()
        playwright.stop()
