"""
Tests for ``entropy-fetch`` against loopback servers started in the test:
a raw byte stream, HTTP and HTTPS (certificates made with cryptography), a
pollen server and a SOCKS5 proxy; ``python -m entropy_fetch`` run with the
server package hidden; plus one end-to-end run against the real appliance
under twistd.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import ipaddress
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from entropy_fetch.cli import main
from entropy_fetch.errors import EXIT_FAILURE, EXIT_SHORT, EXIT_USAGE, EXIT_VERIFY
from entropy_fetch.output import Encoder, Progress
from entropy_fetch.seed import RNDADDENTROPY, seed_kernel
from entropy_fetch.target import parse_target
from entropy_fetch.tls import parse_fingerprint
from tests.twistd_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


# -- helpers: running the command ----------------------------------------------


@dataclass
class Run:
    code: int
    out: bytes
    err: str


def fetch(*args: str, **kw: Any) -> Run:
    out = io.BytesIO()
    err = io.StringIO()
    code = main(list(args), stdout=out, stderr=err, **kw)
    return Run(code, out.getvalue(), err.getvalue())


# -- helpers: loopback servers -------------------------------------------------


def _listen() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


class ThreadServer:
    """Accepts connections on a loopback port and runs ``handle`` per connection in a thread."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.sock = _listen()
        self.port = self.sock.getsockname()[1]
        self._handle = handle
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for s in started:
        if isinstance(s, ThreadingHTTPServer):
            s.shutdown()
            s.server_close()
        else:
            s.close()


def stream_server(servers: list[Any], payload: bytes | None = None) -> ThreadServer:
    """A raw stream: ``payload`` then close, or random bytes until the client hangs up."""

    def handle(conn: socket.socket) -> None:
        if payload is not None:
            conn.sendall(payload)
            return
        chunk = os.urandom(65536)
        while True:
            conn.sendall(chunk)

    s = ThreadServer(handle)
    servers.append(s)
    return s


@dataclass
class HttpState:
    requests: list[str] = field(default_factory=list)
    data: bytes = b""
    mode: str = "ok"  # ok | short | unavailable | badpollen | noseed
    offset: int = 0


def http_server(servers: list[Any], state: HttpState,
                tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    """/v1/random (serving ``state.data`` in order) and the pollen protocol on POST."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, ctype: str, body: bytes, extra: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            state.requests.append(self.path)
            url = urlsplit(self.path)
            q = parse_qs(url.query)
            if url.path != "/v1/random" or q.get("format") != ["binary"]:
                self._send(404, "text/plain", b"not here\n")
                return
            if state.mode == "unavailable":
                problem = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                           "detail": "source failed its health tests"}
                self._send(503, "application/problem+json", json.dumps(problem).encode(),
                           {"Retry-After": "1"})
                return
            n = int(q["bytes"][0])
            body = state.data[state.offset:state.offset + n]
            state.offset += n
            if state.mode == "short":
                self._send(200, "application/octet-stream", body[: n // 2], length=n)
                self.close_connection = True
                return
            self._send(200, "application/octet-stream", body)

        def do_POST(self) -> None:
            state.requests.append("POST " + self.path)
            length = int(self.headers["Content-Length"])
            form = parse_qs(self.rfile.read(length).decode())
            challenge = form["challenge"][0]
            line1 = hashlib.sha512(challenge.encode()).hexdigest()
            if state.mode == "badpollen":
                line1 = hashlib.sha512(b"something else").hexdigest()
            seed = state.data[state.offset:state.offset + 64]
            state.offset += 64
            line2 = "" if state.mode == "noseed" else seed.hex()
            self._send(200, "text/plain; charset=utf-8", f"{line1}\n{line2}\n".encode())

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    servers.append(httpd)
    return httpd


def socks_server(servers: list[Any], routes: dict[tuple[str, int], int], seen: list[str]) -> ThreadServer:
    """A SOCKS5 proxy that maps (name, port) to a loopback port and relays."""

    def recv_exact(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            d = conn.recv(n - len(buf))
            if not d:
                raise OSError("closed")
            buf += d
        return buf

    def handle(conn: socket.socket) -> None:
        _ver, nmethods = recv_exact(conn, 2)
        recv_exact(conn, nmethods)
        conn.sendall(b"\x05\x00")
        _ver, _cmd, _rsv, atyp = recv_exact(conn, 4)
        assert atyp == 3, "the client must let the proxy resolve names"
        (length,) = recv_exact(conn, 1)
        name = recv_exact(conn, length).decode()
        (port,) = struct.unpack(">H", recv_exact(conn, 2))
        seen.append(f"{name}:{port}")
        local = routes.get((name, port))
        if local is None:
            conn.sendall(b"\x05\x04\x00\x01" + bytes(6))
            return
        up = socket.create_connection(("127.0.0.1", local))
        conn.sendall(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while d := a.recv(65536):
                    b.sendall(d)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(up, conn), daemon=True)
        t.start()
        pump(conn, up)
        t.join(10)
        up.close()

    s = ThreadServer(handle)
    servers.append(s)
    return s


# -- helpers: certificates -----------------------------------------------------


@dataclass
class Pki:
    ca_pem: Path
    other_ca_pem: Path
    server: ssl.SSLContext
    wrong_name_server: ssl.SSLContext
    fingerprint: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
          ca: bool, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(signer, hashes.SHA256())


def _server_ctx(tmp: Path, tag: str, key: ec.EllipticCurvePrivateKey,
                chain: list[x509.Certificate]) -> ssl.SSLContext:
    kp, cp = tmp / f"{tag}.key", tmp / f"{tag}.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cp, kp)
    return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", "Test CA", ca_key, ca_key, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("Other CA", "Other CA", other_key, other_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("localhost", "Test CA", leaf_key, ca_key, ca=False, sans=[
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    wrong = _cert("elsewhere", "Test CA", leaf_key, ca_key, ca=False,
                  sans=[x509.DNSName("elsewhere.example")])
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "other.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    fp = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    return Pki(
        ca_pem=tmp / "ca.pem", other_ca_pem=tmp / "other.pem",
        server=_server_ctx(tmp, "leaf", leaf_key, [leaf]),
        wrong_name_server=_server_ctx(tmp, "wrong", leaf_key, [wrong]),
        fingerprint=":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper(),
    )


# -- parsing -------------------------------------------------------------------


def test_parse_target_defaults_and_errors() -> None:
    assert parse_target("tcp://host").port == 9000
    assert parse_target("https://h/").port == 443
    t = parse_target("http://[::1]:8080/x")
    assert (t.host, t.port, t.path, t.authority) == ("::1", 8080, "/x", "[::1]:8080")
    for bad in ("ftp://h", "tcp://h/path", "http://:80", "http://h:99999"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_fingerprint_accepts_colons_and_case() -> None:
    digest = hashlib.sha256(b"x").digest()
    colons = ":".join(f"{b:02X}" for b in digest)
    assert parse_fingerprint(colons) == digest
    assert parse_fingerprint(digest.hex()) == digest
    with pytest.raises(ValueError):
        parse_fingerprint("abcd")


def test_usage_errors_exit_2() -> None:
    assert fetch("--fingerprint", "zz", "https://127.0.0.1:1").code == EXIT_USAGE
    assert fetch("tcp://127.0.0.1:1", "--credit").code == EXIT_USAGE
    assert fetch("--bytes", "0", "tcp://127.0.0.1:1").code == EXIT_USAGE
    assert fetch("--pollen", "tcp://127.0.0.1:1").code == EXIT_USAGE
    assert fetch("--seed-kernel", "-o", "x", "tcp://127.0.0.1:1").code == EXIT_USAGE
    r = fetch("tcp://abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefab.onion:9000")
    assert r.code == EXIT_USAGE and "--socks" in r.err


# -- raw stream ------------------------------------------------------------------


def test_tcp_reads_exactly_n_bytes(servers: list[Any]) -> None:
    s = stream_server(servers)
    r = fetch("--bytes", "1M", f"tcp://127.0.0.1:{s.port}")
    assert r.code == 0, r.err
    assert len(r.out) == 1024 * 1024


def test_tcp_short_read_is_an_error(servers: list[Any]) -> None:
    s = stream_server(servers, payload=os.urandom(1000))
    r = fetch("--bytes", "5000", f"tcp://127.0.0.1:{s.port}")
    assert r.code == EXIT_SHORT
    assert "after 1000 of 5000 bytes" in r.err
    assert "incomplete" in r.err


def test_hex_and_base64_are_encoded_locally(servers: list[Any]) -> None:
    data = os.urandom(1000)
    s = stream_server(servers, payload=data)
    r = fetch("--bytes", "1000", "--format", "hex", f"tcp://127.0.0.1:{s.port}")
    assert r.code == 0 and r.out == data.hex().encode() + b"\n"
    r = fetch("--bytes", "1000", "--format", "base64", f"tcp://127.0.0.1:{s.port}")
    assert r.code == 0 and r.out == base64.b64encode(data) + b"\n"


def test_base64_encoder_is_correct_across_any_chunking() -> None:
    data = os.urandom(1001)
    for step in (1, 2, 3, 7, 500):
        enc = Encoder("base64")
        out = b"".join(enc.encode(data[i:i + step]) for i in range(0, len(data), step)) + enc.finish()
        assert base64.b64decode(out) == data


def test_connection_refused_is_a_clear_failure() -> None:
    s = _listen()
    port = s.getsockname()[1]
    s.close()
    r = fetch(f"tcp://127.0.0.1:{port}")
    assert r.code == EXIT_FAILURE
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in r.err


# -- HTTP ------------------------------------------------------------------------


def test_http_splits_large_requests_and_checks_lengths(servers: list[Any]) -> None:
    state = HttpState(data=os.urandom(2500))
    httpd = http_server(servers, state)
    r = fetch("--bytes", "2500", "--request-size", "1000", "--format", "base64",
              f"http://127.0.0.1:{httpd.server_port}")
    assert r.code == 0, r.err
    assert base64.b64decode(r.out) == state.data
    assert state.requests == [f"/v1/random?bytes={k}&format=binary" for k in (1000, 1000, 500)]


def test_http_short_body_leaves_no_file(servers: list[Any], tmp_path: Path) -> None:
    state = HttpState(data=os.urandom(4000), mode="short")
    httpd = http_server(servers, state)
    target = tmp_path / "seed.bin"
    target.write_bytes(b"old contents")
    r = fetch("--bytes", "4000", "-o", str(target), f"http://127.0.0.1:{httpd.server_port}")
    assert r.code == EXIT_SHORT
    assert "ended after 2000 of 4000 bytes" in r.err
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.bin"]


def test_output_file_is_complete_and_private(servers: list[Any], tmp_path: Path) -> None:
    state = HttpState(data=os.urandom(3000))
    httpd = http_server(servers, state)
    target = tmp_path / "out.hex"
    r = fetch("--bytes", "3000", "--format", "hex", "-o", str(target),
              f"http://127.0.0.1:{httpd.server_port}/")
    assert r.code == 0, r.err
    assert r.out == b""
    assert target.read_bytes() == state.data.hex().encode() + b"\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.hex"]


def test_http_503_reports_the_problem_detail(servers: list[Any]) -> None:
    httpd = http_server(servers, HttpState(mode="unavailable"))
    r = fetch(f"http://127.0.0.1:{httpd.server_port}")
    assert r.code == EXIT_FAILURE
    assert "503" in r.err and "source failed its health tests" in r.err and "retry after 1" in r.err
    assert r.out == b""


# -- TLS -------------------------------------------------------------------------


def test_https_with_cacert(servers: list[Any], pki: Pki) -> None:
    state = HttpState(data=os.urandom(64))
    httpd = http_server(servers, state, tls=pki.server)
    for host in ("127.0.0.1", "localhost"):
        state.offset = 0
        r = fetch("--cacert", str(pki.ca_pem), f"https://{host}:{httpd.server_port}")
        assert r.code == 0, r.err
        assert r.out == state.data


def test_https_wrong_ca_is_refused(servers: list[Any], pki: Pki) -> None:
    httpd = http_server(servers, HttpState(data=os.urandom(64)), tls=pki.server)
    r = fetch("--cacert", str(pki.other_ca_pem), f"https://127.0.0.1:{httpd.server_port}")
    assert r.code == EXIT_VERIFY
    assert "not trusted by --cacert" in r.err
    assert r.out == b""


def test_https_wrong_name_is_refused(servers: list[Any], pki: Pki) -> None:
    httpd = http_server(servers, HttpState(data=os.urandom(64)), tls=pki.wrong_name_server)
    r = fetch("--cacert", str(pki.ca_pem), f"https://localhost:{httpd.server_port}")
    assert r.code == EXIT_VERIFY
    assert "not valid for localhost" in r.err


def test_https_pinned_fingerprint(servers: list[Any], pki: Pki) -> None:
    state = HttpState(data=os.urandom(64))
    httpd = http_server(servers, state, tls=pki.server)
    r = fetch("--fingerprint", pki.fingerprint, f"https://127.0.0.1:{httpd.server_port}")
    assert r.code == 0, r.err
    assert r.out == state.data


def test_https_bad_fingerprint_is_refused(servers: list[Any], pki: Pki) -> None:
    httpd = http_server(servers, HttpState(data=os.urandom(64)), tls=pki.server)
    wrong = hashlib.sha256(b"not the cert").hexdigest()
    r = fetch("--fingerprint", wrong, f"https://127.0.0.1:{httpd.server_port}")
    assert r.code == EXIT_VERIFY
    assert "not the pinned" in r.err and pki.fingerprint in r.err
    assert r.out == b""


# -- pollen ----------------------------------------------------------------------


def test_pollen_takes_line_two_as_the_seed(servers: list[Any]) -> None:
    state = HttpState(data=os.urandom(128))
    httpd = http_server(servers, state)
    r = fetch("--pollen", "--bytes", "100", f"http://127.0.0.1:{httpd.server_port}/")
    assert r.code == 0, r.err
    assert r.out == state.data[:100]
    assert state.requests == ["POST /", "POST /"]


def test_pollen_wrong_challenge_response_is_refused(servers: list[Any]) -> None:
    httpd = http_server(servers, HttpState(data=os.urandom(64), mode="badpollen"))
    r = fetch("--pollen", f"http://127.0.0.1:{httpd.server_port}/")
    assert r.code == EXIT_VERIFY
    assert "failed the pollen challenge" in r.err
    assert r.out == b""


def test_pollen_without_seed_is_a_short_read(servers: list[Any]) -> None:
    httpd = http_server(servers, HttpState(data=os.urandom(64), mode="noseed"))
    r = fetch("--pollen", f"http://127.0.0.1:{httpd.server_port}/")
    assert r.code == EXIT_SHORT


def test_pollen_over_https(servers: list[Any], pki: Pki) -> None:
    state = HttpState(data=os.urandom(64))
    httpd = http_server(servers, state, tls=pki.server)
    r = fetch("--pollen", "--cacert", str(pki.ca_pem), f"https://localhost:{httpd.server_port}/")
    assert r.code == 0, r.err
    assert r.out == state.data


# -- seeding the kernel ------------------------------------------------------------


def test_seed_kernel_writes_the_bytes_to_the_device(servers: list[Any], tmp_path: Path) -> None:
    data = os.urandom(256)
    s = stream_server(servers, payload=data)
    device = tmp_path / "urandom"
    device.write_bytes(b"")
    r = fetch("--seed-kernel", "--bytes", "256", "--device", str(device), f"tcp://127.0.0.1:{s.port}")
    assert r.code == 0, r.err
    assert device.read_bytes() == data
    assert r.out == b""
    assert "not credited" in r.err


def test_seed_kernel_short_read_touches_nothing(servers: list[Any], tmp_path: Path) -> None:
    s = stream_server(servers, payload=os.urandom(10))
    device = tmp_path / "urandom"
    device.write_bytes(b"")
    r = fetch("--seed-kernel", "--bytes", "64", "--device", str(device), f"tcp://127.0.0.1:{s.port}")
    assert r.code == EXIT_SHORT
    assert device.read_bytes() == b""
    assert "not touched" in r.err


def test_seed_kernel_credit_uses_rndaddentropy(tmp_path: Path) -> None:
    calls: list[tuple[int, int, bytes]] = []
    device = tmp_path / "random"
    device.write_bytes(b"")
    data = os.urandom(1200)
    seed_kernel(data, str(device), credit_bits=1000,
                ioctl=lambda fd, req, arg: calls.append((fd, req, arg)))
    assert [c[1] for c in calls] == [RNDADDENTROPY] * 3
    credited = [struct.unpack("ii", c[2][:8]) for c in calls]
    assert credited == [(1000, 512), (0, 512), (0, 176)]
    assert b"".join(c[2][8:] for c in calls) == data


def test_seed_kernel_credit_from_the_command_line(servers: list[Any], tmp_path: Path) -> None:
    data = os.urandom(64)
    s = stream_server(servers, payload=data)
    device = tmp_path / "random"
    device.write_bytes(b"")
    calls: list[bytes] = []
    r = fetch("--seed-kernel", "--credit", "--device", str(device), f"tcp://127.0.0.1:{s.port}",
              ioctl=lambda fd, req, arg: calls.append(arg), geteuid=lambda: 0)
    assert r.code == 0, r.err
    assert calls == [struct.pack("ii", 256, 64) + data]
    assert "credited 256 bits" in r.err


def test_credit_without_root_is_refused_before_fetching(servers: list[Any], tmp_path: Path) -> None:
    seen: list[str] = []
    proxy = socks_server(servers, {}, seen)
    calls: list[bytes] = []
    r = fetch("--seed-kernel", "--credit", "--socks", f"127.0.0.1:{proxy.port}", f"tcp://{ONION}",
              ioctl=lambda fd, req, arg: calls.append(arg), geteuid=lambda: 1000)
    assert r.code == EXIT_USAGE
    assert "--credit (RNDADDENTROPY) needs root" in r.err
    assert calls == [] and seen == []


# -- SOCKS5 ----------------------------------------------------------------------

ONION = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcd.onion"


def test_tcp_through_socks_resolves_remotely(servers: list[Any]) -> None:
    data = os.urandom(5000)
    s = stream_server(servers, payload=data)
    seen: list[str] = []
    proxy = socks_server(servers, {(ONION, 9000): s.port}, seen)
    r = fetch("--bytes", "5000", "--socks", f"127.0.0.1:{proxy.port}", f"tcp://{ONION}")
    assert r.code == 0, r.err
    assert r.out == data
    assert seen == [f"{ONION}:9000"]


def test_http_through_socks(servers: list[Any]) -> None:
    state = HttpState(data=os.urandom(300))
    httpd = http_server(servers, state)
    seen: list[str] = []
    proxy = socks_server(servers, {(ONION, 80): httpd.server_port}, seen)
    r = fetch("--bytes", "300", "--socks", f"127.0.0.1:{proxy.port}", f"http://{ONION}/")
    assert r.code == 0, r.err
    assert r.out == state.data
    assert seen == [f"{ONION}:80"]


def test_socks_unreachable_onion_is_reported(servers: list[Any]) -> None:
    proxy = socks_server(servers, {}, [])
    r = fetch("--socks", f"127.0.0.1:{proxy.port}", f"tcp://{ONION}")
    assert r.code == EXIT_FAILURE
    assert "could not reach" in r.err and "host unreachable" in r.err


# -- progress --------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(servers: list[Any]) -> None:
    ticks = iter(range(1000))
    tty = Tty()
    p = Progress(2000, tty, enabled=tty.isatty(), clock=lambda: float(next(ticks)))
    p.update(1000)
    p.update(1000)
    p.close()
    assert "\r1000/2000 bytes" in tty.getvalue() and "2000/2000 bytes 100.0%" in tty.getvalue()
    s = stream_server(servers)
    r = fetch("--bytes", "100K", f"tcp://127.0.0.1:{s.port}")
    assert r.code == 0 and r.err == ""


# -- the command as a program ---------------------------------------------------


def test_module_runs_without_the_server_package(servers: list[Any]) -> None:
    """``python -m entropy_fetch`` works where ``entropy_appliance`` cannot be imported at all."""
    data = os.urandom(48)
    s = stream_server(servers, payload=data)
    # A None entry in sys.modules makes every import of that name fail.
    script = ("import runpy, sys; sys.modules['entropy_appliance'] = None; "
              "sys.argv[0] = 'entropy-fetch'; runpy.run_module('entropy_fetch', run_name='__main__')")
    done = subprocess.run(
        [sys.executable, "-c", script, "--bytes", "48", "--format", "hex", f"tcp://127.0.0.1:{s.port}"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data.hex().encode() + b"\n"
    assert done.stderr == b""


# -- end to end against the appliance --------------------------------------------



def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited early: {proc.stdout.read() if proc.stdout else b''!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listening on {port} after {deadline} s")


@pytest.mark.e2e
def test_end_to_end_with_the_real_appliance(tmp_path: Path) -> None:
    """The installed command against twistd: raw stream, http, https (CA and pin) and pollen."""
    stream, web, tls = free_port(), free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "entropy", "--source", "kernel", "--stream", f"tcp:{stream}:interface=127.0.0.1",
         "--http", f"tcp:{web}:interface=127.0.0.1", "--https", f"ssl:{tls}:interface=127.0.0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "entropy_fetch", *args],
                              env=env, capture_output=True, timeout=120)

    try:
        for port in (stream, web, tls):
            _wait_port(port, proc)
        out = tmp_path / "r.bin"
        for _attempt in range(50):  # the first DRBG seed may still be on its way
            done = cli("--bytes", "3M", "-o", str(out), f"tcp://127.0.0.1:{stream}")
            if done.returncode != EXIT_SHORT:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr
        assert out.stat().st_size == 3 * 1024 * 1024

        hexed = cli("--bytes", "32", "--format", "hex", f"tcp://127.0.0.1:{stream}")
        assert hexed.returncode == 0, hexed.stderr
        assert len(bytes.fromhex(hexed.stdout.decode().strip())) == 32

        # 20 MiB in requests of at most 8 MiB, as base64.
        b64 = cli("--bytes", "20M", "--request-size", "8M", "--format", "base64",
                  f"http://127.0.0.1:{web}")
        assert b64.returncode == 0, b64.stderr
        assert len(base64.b64decode(b64.stdout)) == 20 * 1024 * 1024

        cert = tmp_path / "certs" / "server.pem"
        pinned = x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(hashes.SHA256()).hex()
        for trust in (["--cacert", str(cert)], ["--fingerprint", pinned]):
            r = cli(*trust, "--bytes", "100", f"https://localhost:{tls}")
            assert r.returncode == 0, r.stderr
            assert len(r.stdout) == 100
        wrong = cli("--fingerprint", "00" * 32, f"https://localhost:{tls}")
        assert wrong.returncode == EXIT_VERIFY and wrong.stdout == b""

        pollen = cli("--pollen", "--bytes", "128", f"http://127.0.0.1:{web}/")
        assert pollen.returncode == 0, pollen.stderr
        assert len(pollen.stdout) == 128
    finally:
        proc.terminate()
        proc.wait(30)
