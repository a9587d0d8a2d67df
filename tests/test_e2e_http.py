"""
End to end: ``twist entropy`` as a subprocess on loopback, real curl and pollinate.

HTTP, HTTPS and HTTP/2 (ALPN), TLS 1.0/1.1 and non-AEAD suites refused (to a
client shown able to offer them), a 100 MB streamed body read fast and slowly
with the server's RSS bounded, the real pollinate client, and /metrics
through prometheus_client's parser.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.twistd_helpers import Appliance, start_appliance

pytestmark = pytest.mark.e2e

BIG = 100_000_000
#: The server may grow by this much while streaming 100 MB (chunks and buffers, not the body).
RSS_SLACK_KIB = 48 * 1024


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--fail-with-body", *args], capture_output=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    a = start_appliance(tmp_path_factory.mktemp("appliance"), "--source", "kernel")
    try:
        yield a
    finally:
        a.stop()


def test_http_https_and_h2(app: Appliance) -> None:
    r = curl("-D", "-", app.url("http", "/v1/random?bytes=16&format=hex"))
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert re.fullmatch(rb"[0-9a-f]{32}", body)
    assert b"cache-control: no-store" in head.lower() and b"x-rng-source:" in head.lower()
    cacert = ["--cacert", str(app.cert)]
    r = curl(*cacert, "-o", "/dev/null", "-w", "%{http_version}",
             f"https://localhost:{app.ports['https']}/v1/random?bytes=16")
    assert r.returncode == 0, r.stderr
    # curl offers h2 and http/1.1: by default the server chooses http/1.1.
    r = curl("--http2", "-k", "-o", "-", "-w", "\n%{http_version}", app.url("https", "/v1/random?bytes=16"))
    assert r.returncode == 0 and r.stdout.endswith(b"\n1.1"), r.stderr
    assert len(r.stdout) == 16 + 4
    # A client that offers only h2 gets h2.
    assert alpn(app.ports["https"], ["h2"]) == "h2"
    assert alpn(app.ports["https"], ["h2", "http/1.1"]) == "http/1.1"
    assert "SHA-256 fingerprint" in app.log()


def alpn(port: int, offered: list[str]) -> str | None:
    """The protocol the server chooses among ``offered``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls_sock:
            return tls_sock.selected_alpn_protocol()


def test_prefer_h2_speaks_http2_to_curl(tmp_path: Path) -> None:
    a = start_appliance(tmp_path, "--source", "kernel", "--prefer-h2", "--stream", "none", "--http", "none")
    try:
        r = curl("--http2", "-k", "-w", "\n%{http_version}", a.url("https", "/v1/uuid?count=3"))
        body, _, version = r.stdout.rpartition(b"\n")
        assert version == b"2" and len(json.loads(body)) == 3, r.stderr
        assert alpn(a.ports["https"], ["http/1.1", "h2"]) == "h2"
    finally:
        a.stop()


def handshake(port: int, version: ssl.TLSVersion, ciphers: str) -> tuple[str | None, str]:
    """
    Complete a TLS handshake on 127.0.0.1:``port`` offering only ``version``
    and ``ciphers``; return the negotiated (version, suite).  Raises
    :class:`ssl.SSLError` when the server refuses.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # SECLEVEL=0 lifts the client's own floor (Debian's OpenSSL refuses TLS 1.0
    # and 1.1 by itself), so whatever is refused below is refused by the server.
    ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    with warnings.catch_warnings():
        # Python deprecates naming TLS 1.0/1.1; offering them is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version(), cipher[0]


class _HandshakeOnly(socketserver.BaseRequestHandler):
    """Completes (or fails) one server-side handshake, then hangs up."""

    def handle(self) -> None:
        assert isinstance(self.server, _PermissiveServer)
        try:
            with self.server.context.wrap_socket(self.request, server_side=True):
                pass
        except OSError:  # ssl.SSLError included: a refused handshake is the client's business
            pass


class _PermissiveServer(socketserver.ThreadingTCPServer):
    """A TLS server on a free 127.0.0.1 port, one thread per connection."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _HandshakeOnly)
        self.context = context


@contextmanager
def permissive_server(key: Path, cert: Path) -> Iterator[int]:
    """
    A Python ssl server on 127.0.0.1 with ``key``/``cert`` that accepts TLS 1.0
    and up with every suite OpenSSL has; yields its port.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    with _PermissiveServer(context) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield int(server.server_address[1])
        finally:
            server.shutdown()
            thread.join()


#: What the appliance must refuse, each offered alone: (version, suites).  The
#: key is ECDSA, so these are the CBC suites that would fit it; everything
#: before TLS 1.2 has only CBC (or worse) suites, so DEFAULT offers all of them.
REFUSED = {
    "TLS 1.0": (ssl.TLSVersion.TLSv1, "DEFAULT"),
    "TLS 1.1": (ssl.TLSVersion.TLSv1_1, "DEFAULT"),
    "TLS 1.2 ECDHE-ECDSA-AES128-SHA256": (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256"),
    "TLS 1.2 ECDHE-ECDSA-AES256-SHA": (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-SHA"),
}


#: How ``SSLSocket.version()`` names each version.
VERSION_NAMES = {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1",
                 ssl.TLSVersion.TLSv1_2: "TLSv1.2"}


@pytest.mark.parametrize("offer", list(REFUSED))
def test_old_versions_and_non_aead_suites_are_refused(app: Appliance, offer: str) -> None:
    """
    A client that really offers TLS 1.0/1.1, or only a CBC suite in TLS 1.2,
    gets no connection; the same client completes that very handshake with
    a permissive server holding the appliance's key, and reaches the
    appliance with TLS 1.2 and an AEAD suite.
    """
    version, ciphers = REFUSED[offer]
    with permissive_server(app.cwd / "certs" / "server.key", app.cert) as control:
        negotiated, suite = handshake(control, version, ciphers)
    assert negotiated == VERSION_NAMES[version]
    assert "GCM" not in suite and "CHACHA20" not in suite
    assert handshake(app.ports["https"], ssl.TLSVersion.TLSv1_2, "ECDHE+AESGCM")[0] == "TLSv1.2"
    with pytest.raises(ssl.SSLError) as refused:
        handshake(app.ports["https"], version, ciphers)
    # The server said no (an alert), rather than the client giving up.
    assert "ALERT" in str(refused.value.reason), refused.value


def test_errors_over_the_wire(app: Appliance) -> None:
    r = curl("-o", "-", "-w", "\n%{http_code} %{content_type}", app.url("http", "/v1/random?bytes=-1"))
    body, _, status = r.stdout.rpartition(b"\n")
    assert status == b"400 application/problem+json" and json.loads(body)["status"] == 400
    r = curl("-X", "PATCH", "-D", "-", app.url("https", "/health"), "-k")
    assert b" 405" in r.stdout.split(b"\r\n")[0] and b"allow: get" in r.stdout.lower()


def _stream(app: Appliance, scheme: str, extra: list[str]) -> tuple[int, int]:
    """Fetch BIG bytes with curl while sampling the server's RSS; return (size, max RSS growth)."""
    base = app.rss_kib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], app.rss_kib())

    t = threading.Thread(target=sample)
    t.start()
    try:
        r = curl("-k", "-o", "/dev/null", "-w", "%{size_download}", *extra,
                 app.url(scheme, f"/v1/random?bytes={BIG}"), timeout=120)
    finally:
        done.set()
        t.join()
    assert r.returncode == 0, r.stderr
    return int(r.stdout), peak[0] - base


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_100mb_streamed_at_full_speed_with_bounded_memory(app: Appliance, scheme: str) -> None:
    size, growth = _stream(app, scheme, [])
    assert size == BIG
    assert growth < RSS_SLACK_KIB, f"server RSS grew by {growth} KiB"


def test_100mb_read_by_a_slow_client_with_bounded_memory(app: Appliance) -> None:
    size, growth = _stream(app, "http", ["--limit-rate", "40M"])
    assert size == BIG
    assert growth < RSS_SLACK_KIB, f"server RSS grew by {growth} KiB"


def test_client_hangs_up_mid_stream_and_server_carries_on(app: Appliance) -> None:
    r = curl("-o", "/dev/null", "--max-time", "0.5", "--limit-rate", "1M",
             app.url("http", f"/v1/random?bytes={BIG}"))
    assert r.returncode != 0
    assert curl(app.url("http", "/health")).returncode == 0


def test_real_pollinate_over_http_and_https(app: Appliance, tmp_path: Path) -> None:
    assert shutil.which("pollinate"), "install Debian's pollinate: apt-get install -y pollinate"
    for server, extra in [
        (app.url("http", "/"), []),
        (f"https://localhost:{app.ports['https']}/", ["--curl-opts", f"--cacert {app.cert}"]),
    ]:
        r = subprocess.run(["pollinate", "-t", "--strict", "-s", server, *extra],
                           capture_output=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0, (r.stdout, r.stderr)
        # --strict makes a failed challenge check exit 1; the seed is a SHA-512,
        # printed raw (64 bytes) or as hex depending on /etc/default/pollinate.
        assert len(r.stdout) == 64 or re.fullmatch(rb"[0-9a-f]{128}", r.stdout), r.stdout
    served = json.loads(curl(app.url("http", "/v1/status")).stdout)["served"]
    assert served["pollen"] >= 128


def test_metrics_parse(app: Appliance) -> None:
    curl(app.url("http", "/v1/uuid"))
    r = curl(app.url("http", "/metrics"))
    assert r.returncode == 0
    names = {f.name: f for f in text_string_to_metric_families(r.stdout.decode())}
    assert {"entropy_healthy", "entropy_pool_fill_bytes", "entropy_drbg_reseeds",
            "entropy_drbg_reseed_age_seconds", "entropy_health_failures", "entropy_source_state",
            "entropy_served_bytes", "entropy_http_requests"} <= set(names)
    uuid_requests = [s for s in names["entropy_http_requests"].samples
                     if s.labels.get("route") == "/v1/uuid" and s.labels.get("status") == "200"]
    assert uuid_requests and uuid_requests[0].value >= 1


def test_no_h2_offers_only_http11(tmp_path: Path) -> None:
    a = start_appliance(tmp_path, "--source", "kernel", "--no-h2", "--stream", "none", "--http", "none")
    try:
        r = curl("--http2", "-k", "-o", "/dev/null", "-w", "%{http_version}", a.url("https", "/health"))
        assert r.stdout == b"1.1", r.stderr
    finally:
        a.stop()
