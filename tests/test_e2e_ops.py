"""
Operations end to end, against ``twist entropy`` subprocesses on loopback:

- SIGTERM while a large response is in flight: it completes in full, the
  listener stops accepting, the raw stream is closed, and the exit is clean;
- SIGHUP after the certificate files change: new handshakes (on an ``ssl:``
  endpoint and on a TLS-wrapped ``tcp:`` one) present the new certificate by
  fingerprint, an established connection keeps working, and a bad
  certificate is logged while the last good one stays;
- per-peer limits configured from the environment: a greedy client on
  127.0.0.2 is limited while 127.0.0.1 is served normally;
- request heads: a slow one is cut off after --header-timeout, an
  over-long request line is a 414 problem.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entropy_appliance.net import tls
from tests.twistd_helpers import REPO_ROOT, Appliance, free_port, start_appliance

pytestmark = pytest.mark.e2e


def wait_for(predicate: object, timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_seeded(app: Appliance) -> None:
    def ok() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=5)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    wait_for(ok, what="the appliance to be seeded")


# -- SIGTERM ---------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_response_finish(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, "--source", "kernel", "--shutdown-timeout", "60")
    try:
        wait_seeded(app)
        n = 64 * 1024 * 1024
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.settimeout(30)
        client.connect(("127.0.0.1", app.ports["http"]))
        client.sendall(f"GET /v1/random?bytes={n} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += client.recv(65536)
        head, _, body_start = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        got = len(body_start)
        while got < 1024 * 1024:
            got += len(client.recv(65536))

        stream = socket.create_connection(("127.0.0.1", app.ports["stream"]), timeout=30)
        assert stream.recv(1024)

        app.process.send_signal(signal.SIGTERM)

        # The listener stops accepting while the response is still in flight.
        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", app.ports["http"]), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True

        wait_for(refused, what="the HTTP listener to close")
        # The raw stream is closed: the client reads to EOF.
        stream_end = time.monotonic() + 30
        while stream.recv(1 << 20) and time.monotonic() < stream_end:
            pass
        assert time.monotonic() < stream_end
        stream.close()
        assert app.process.poll() is None, "stopped before the response was done"

        while True:
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        client.close()
        assert got == n, f"received {got} of {n} bytes"
        app.process.wait(30)
        assert app.process.returncode in (0, 143, -signal.SIGTERM), app.log()
        log = app.log()
        assert "waiting up to 60.0 s for 1 HTTP response(s) in flight" in log
        assert "every HTTP response in flight has finished" in log
    finally:
        app.stop()


# -- SIGHUP ----------------------------------------------------------------------


def peer_fingerprint(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def cert_fingerprint(material: tls.TLSMaterial) -> str:
    return tls.fingerprint(material.certificate).replace(":", "").lower()


def test_sighup_reloads_the_certificate_without_dropping_connections(tmp_path: Path) -> None:
    key, cert = str(tmp_path / "site.key"), str(tmp_path / "site.pem")
    first = tls.generate_self_signed(key, cert, "first.example")
    app = start_appliance(
        tmp_path, "--source", "kernel", "--tls-key", key, "--tls-cert", cert,
        ports={"https": "--https=ssl:{port}:interface=127.0.0.1",
               "wrapped": "--https=tcp:{port}:interface=127.0.0.1"})
    try:
        wait_seeded(app)
        for name in ("https", "wrapped"):
            assert peer_fingerprint(app.ports[name]) == cert_fingerprint(first)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        established = http.client.HTTPSConnection("127.0.0.1", app.ports["https"], context=ctx, timeout=10)
        established.request("GET", "/health")
        assert established.getresponse().read()

        second = tls.generate_self_signed(key, cert, "second.example")
        app.process.send_signal(signal.SIGHUP)
        for name in ("https", "wrapped"):
            wait_for(lambda name=name: peer_fingerprint(app.ports[name]) == cert_fingerprint(second),
                     what=f"the new certificate on {name}")
        # The connection made before the reload is still served.
        established.request("GET", "/health")
        assert established.getresponse().status == 200
        assert established.sock is not None
        old_der = established.sock.getpeercert(binary_form=True)
        assert old_der is not None and hashlib.sha256(old_der).hexdigest() == cert_fingerprint(first)
        established.close()

        Path(cert).write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        app.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the current TLS certificate" in app.log(), what="the error in the log")
        assert peer_fingerprint(app.ports["https"]) == cert_fingerprint(second)
        assert app.process.poll() is None
    finally:
        app.stop()


# -- per-peer limits ---------------------------------------------------------------


#: The greedy client's --peer-rate: requests per second, and a burst of twice that.
PEER_RATE = 2
#: Seconds the greedy client keeps asking: long enough that the refill, not
#: only the burst, shows in what it is served.
WINDOW = 4.0
#: Seconds between its requests, far below 1 / PEER_RATE, so it is refused often.
PAUSE = 0.01


def test_a_greedy_peer_is_limited_while_another_is_served(tmp_path: Path) -> None:
    """
    A client on 127.0.0.2 asking back to back gets its burst, then 429s; over
    the measured window it is served no more than the burst plus the rate
    times the elapsed time, however fast or slow the machine.  127.0.0.1 is
    served meanwhile, and a third raw stream from 127.0.0.2 is refused.
    """
    app = start_appliance(tmp_path, "--source", "kernel",
                          env={"ENTROPY_PEER_RATE": str(PEER_RATE), "ENTROPY_PEER_STREAMS": "2"})
    try:
        wait_seeded(app)
        # The polling above spent some of 127.0.0.1's tokens; 2 s refill its
        # whole burst (2 * PEER_RATE), and waiting longer changes nothing.
        time.sleep(2)
        greedy = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=10,
                                            source_address=("127.0.0.2", 0))
        polite = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=10)
        greedy.connect()
        codes: list[int] = []
        limited = None
        started = time.monotonic()
        while time.monotonic() - started < WINDOW:
            greedy.request("GET", "/health")
            resp = greedy.getresponse()
            body = resp.read()
            codes.append(resp.status)
            if resp.status == 429 and limited is None:
                limited = (resp, body)
            time.sleep(PAUSE)
        elapsed = time.monotonic() - started
        burst = 2 * PEER_RATE
        assert set(codes) == {200, 429}, codes
        assert codes[:burst] == [200] * burst, codes  # 127.0.0.2 starts with a full bucket
        # Every request counted by the server falls inside the measured window.
        assert codes.count(200) <= burst + PEER_RATE * elapsed + 1, (codes, elapsed)
        assert limited is not None
        resp, body = limited
        assert resp.reason == "Too Many Requests"
        assert resp.getheader("Retry-After") == "1"  # a token comes back within 1/rate s
        assert resp.getheader("Content-Type") == "application/problem+json"
        assert json.loads(body)["status"] == 429
        for _ in range(burst - 1):  # meanwhile, another client is served normally
            polite.request("GET", "/health")
            ok = polite.getresponse()
            ok.read()
            assert ok.status == 200
        greedy.close()
        polite.close()

        streams = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", app.ports["stream"]), timeout=10,
                                         source_address=("127.0.0.2", 0))
            assert s.recv(1024)
            streams.append(s)
        third = socket.create_connection(("127.0.0.1", app.ports["stream"]), timeout=10,
                                         source_address=("127.0.0.2", 0))
        try:
            assert third.recv(1024) == b""  # refused: closed at once
        except ConnectionResetError:
            pass
        third.close()
        other = socket.create_connection(("127.0.0.1", app.ports["stream"]), timeout=10)
        assert other.recv(1024)
        other.close()
        for s in streams:
            s.close()
    finally:
        app.stop()


def test_request_heads_are_bounded_in_time_and_length(tmp_path: Path) -> None:
    """
    A client that sends half a request head is cut off --header-timeout
    seconds later, unanswered; a request line longer than the server reads
    is answered with a 414 problem and the connection closed.  A prompt
    client meanwhile is served.
    """
    app = start_appliance(tmp_path, "--source", "kernel", "--header-timeout", "1",
                          "--stream", "none", "--https", "none")
    try:
        wait_seeded(app)
        slow = socket.create_connection(("127.0.0.1", app.ports["http"]), timeout=10)
        started = time.monotonic()
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n")
        try:
            assert slow.recv(1024) == b""
        except ConnectionResetError:
            pass  # aborted: the usual end
        assert 0.9 <= time.monotonic() - started < 8
        slow.close()

        conn = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=10)
        conn.request("GET", "/v1/uuid?count=1&pad=" + "a" * 70000)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 414 and resp.getheader("Connection") == "close"
        assert resp.getheader("Content-Type") == "application/problem+json"
        assert json.loads(body)["status"] == 414
        conn.close()

        conn = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=10)
        conn.request("GET", "/v1/uuid")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        app.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_stops_the_start_with_its_reason(tmp_path: Path, workers: str) -> None:
    """
    An endpoint that cannot be listened on fails the start with a message
    naming the option, the endpoint and why; nothing half-serves (with
    workers, the parent does not carry on while its workers fail).
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        done = subprocess.run(
            [sys.executable, "-m", "twisted", "entropy", "--source", "kernel", "--https", "none",
             "--workers", workers, "--stream", f"tcp:{free_port()}:interface=127.0.0.1",
             "--http", f"tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    assert f"--http tcp:{port}:interface=127.0.0.1: cannot listen (Address already in use)" in text
    assert "Traceback" not in text
