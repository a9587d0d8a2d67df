"""
``entropy-fetch``: fetch random bytes from an appliance (or any pollen server).

Usage::

    entropy-fetch [--bytes N] [--format binary|hex|base64] [-o FILE] URL

``URL`` is ``http(s)://host[:port]`` (``GET /v1/random``), ``tcp://host[:port]``
(the raw byte stream: read exactly N bytes, then hang up), or either of them
at an ``.onion`` host through ``--socks host:port`` (SOCKS5, the proxy
resolves the name).  ``--pollen`` speaks the pollinate challenge/response
instead, and ``--seed-kernel`` mixes the bytes into the local kernel pool.

What it promises: the output is exactly N bytes (before text encoding) or
the exit status is not zero.  ``-o FILE`` is written to a temporary file in
the same directory and renamed into place only when complete, so a failed
run never leaves a short file behind.

Why blocking stdlib (``http.client``, ``ssl``, ``socket``) and not Twisted:
a command-line fetch is one sequential download that then exits.  The
stdlib needs no event loop, starts fast at boot, and makes every length
check an explicit line of code.  The reactor would add nothing here.

Over HTTP the client always asks for ``format=binary`` and encodes hex or
base64 itself.  That way the length check counts the random bytes
themselves, a large N split into several requests still encodes as one
valid base64 text, and http and tcp URLs share one encoder.

Why no progress-bar dependency: the bar is a single stderr line, shown only
on a terminal.  A dozen lines of our own keep the client's install
footprint at the appliance's own requirements, which matters on boot-time
seeding hosts.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import secrets
import socket
import ssl
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

from entropy_appliance import __version__
from entropy_appliance.core.units import parse_size

__all__ = [
    "EXIT_FAILURE",
    "EXIT_SHORT",
    "EXIT_USAGE",
    "EXIT_VERIFY",
    "FetchError",
    "ShortRead",
    "Target",
    "TlsConfig",
    "VerificationError",
    "fetch_http",
    "fetch_pollen",
    "fetch_tcp",
    "main",
    "parse_fingerprint",
    "parse_size",
    "parse_target",
    "seed_kernel",
    "socks5_connect",
]

#: A network, protocol or server error.
EXIT_FAILURE = 1
#: Bad command line (argparse's own status).
EXIT_USAGE = 2
#: The server could not prove who it is: TLS identity, pin, or pollen challenge.
EXIT_VERIFY = 3
#: Fewer bytes arrived than were asked for.
EXIT_SHORT = 4

#: The most bytes asked for in one HTTP request; larger N is split.
REQUEST_MAX = 16 * 1024 * 1024
#: Read size for sockets and HTTP bodies.
READ_SIZE = 64 * 1024
#: The most bytes --seed-kernel takes: the kernel pool holds 256 bits, and
#: more input only costs time.
SEED_MAX = 1024 * 1024
#: Largest N accepted at all.
BYTES_MAX = 2 ** 40
#: A pollen reply is two 128-hex-digit lines; anything much longer is not one.
POLLEN_REPLY_MAX = 4096
#: Bytes of seed per pollen exchange (one SHA-512).
POLLEN_SEED = 64

#: ``_IOW('R', 0x03, int[2])`` from <linux/random.h>.
RNDADDENTROPY = 0x40085203
#: Bytes per RNDADDENTROPY call.
_IOCTL_CHUNK = 512

DEFAULT_PORTS = {"http": 80, "https": 443, "tcp": 9000}
USER_AGENT = f"entropy-fetch/{__version__}"


class FetchError(Exception):
    """A failure the user is told about in one sentence; carries the exit status."""

    exit_code = EXIT_FAILURE


class VerificationError(FetchError):
    """The server failed to prove its identity or to answer the challenge."""

    exit_code = EXIT_VERIFY


class ShortRead(FetchError):
    """The peer stopped before sending every byte asked for."""

    exit_code = EXIT_SHORT


# -- parsing ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A parsed URL: scheme (http, https, tcp), host, port and path."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        """``host:port`` for messages, with IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_onion(self) -> bool:
        """True for a Tor onion-service host name."""
        return self.host.lower().rstrip(".").endswith(".onion")


def parse_target(url: str) -> Target:
    """Parse ``http(s)://host[:port][/path]`` or ``tcp://host[:port]``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r}: the URL must start with http://, https:// or tcp://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host name")
    if scheme == "tcp" and parts.path not in ("", "/"):
        raise ValueError(f"{url!r}: a tcp:// URL has no path")
    return Target(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], parts.path or "/")


def parse_fingerprint(text: str) -> bytes:
    """Parse a SHA-256 fingerprint: 64 hex digits, colons and case ignored."""
    t = text.strip().replace(":", "").lower()
    if t.startswith("sha256"):
        t = t[len("sha256"):].lstrip("=/")
    try:
        digest = bytes.fromhex(t)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return digest


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- connecting ---------------------------------------------------------------

_SOCKS_ERRORS = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable (for an onion address: unknown or unpublished service)",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise FetchError(f"{what}: connection closed")
        buf += data
    return bytes(buf)


def socks5_connect(proxy: tuple[str, int], host: str, port: int, timeout: float) -> socket.socket:
    """
    Connect to ``host:port`` through a SOCKS5 proxy, with no authentication.

    The host name is sent to the proxy unresolved (address type 3), which is
    what Tor needs for ``.onion`` names and what keeps DNS off the local
    network.
    """
    what = f"SOCKS5 proxy {proxy[0]}:{proxy[1]}"
    try:
        sock = socket.create_connection(proxy, timeout=timeout)
    except OSError as e:
        raise FetchError(f"cannot connect to {what}: {_reason(e)}") from None
    try:
        sock.sendall(b"\x05\x01\x00")
        ver, method = _recv_exact(sock, 2, what)
        if ver != 5 or method != 0:
            raise FetchError(f"{what} refused unauthenticated access")
        name = host.encode("idna")
        if len(name) > 255:
            raise FetchError(f"host name too long for SOCKS5: {host}")
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        ver, rep, _rsv, atyp = _recv_exact(sock, 4, what)
        if ver != 5:
            raise FetchError(f"{what} sent a reply that is not SOCKS5")
        if rep != 0:
            why = _SOCKS_ERRORS.get(rep, f"error {rep}")
            raise FetchError(f"{what} could not reach {host}:{port}: {why}")
        if atyp == 1:
            _recv_exact(sock, 4 + 2, what)
        elif atyp == 4:
            _recv_exact(sock, 16 + 2, what)
        elif atyp == 3:
            (length,) = _recv_exact(sock, 1, what)
            _recv_exact(sock, length + 2, what)
        else:
            raise FetchError(f"{what} sent an unknown address type {atyp}")
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class TlsConfig:
    """
    How to trust the server.

    ``cacert``: a PEM bundle the chain must end in (else the system store).
    ``fingerprint``: the SHA-256 of the server certificate's DER; when it is
    given without ``cacert`` the pin alone decides, and no CA is consulted.
    """

    cacert: str | None = None
    fingerprint: bytes | None = None


def tls_wrap(sock: socket.socket, host: str, config: TlsConfig) -> ssl.SSLSocket:
    """
    Run the TLS handshake on ``sock`` and check the server's identity.

    The name check is service-identity's (RFC 6125), against the URL's host
    name or IP address; the pin is compared in constant time.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # service-identity checks the name below
    ctx.set_alpn_protocols(["http/1.1"])
    pin_only = config.fingerprint is not None and config.cacert is None
    if pin_only:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if config.cacert is not None:
            try:
                ctx.load_verify_locations(cafile=config.cacert)
            except (OSError, ssl.SSLError) as e:
                raise FetchError(f"--cacert {config.cacert}: cannot load it ({_reason(e)})") from None
        else:
            ctx.load_default_certs()
    try:
        tls = ctx.wrap_socket(sock, server_hostname=None if _is_ip(host) else host)
    except ssl.SSLCertVerificationError as e:
        sock.close()
        source = f"--cacert {config.cacert}" if config.cacert else "the system's trusted CAs"
        raise VerificationError(
            f"TLS: the certificate of {host} is not trusted by {source} ({e.verify_message})"
        ) from None
    except ssl.SSLError as e:
        sock.close()
        raise FetchError(f"TLS handshake with {host} failed: {_reason(e)}") from None
    der = tls.getpeercert(binary_form=True)
    try:
        if der is None:
            raise VerificationError(f"TLS: {host} sent no certificate")
        if config.fingerprint is not None:
            got = hashlib.sha256(der).digest()
            if not hmac.compare_digest(got, config.fingerprint):
                raise VerificationError(
                    f"TLS: the certificate of {host} has SHA-256 fingerprint "
                    f"{_colons(got)}, not the pinned {_colons(config.fingerprint)}"
                )
        if not pin_only:
            _check_identity(der, host)
    except BaseException:
        tls.close()
        raise
    return tls


def _check_identity(der: bytes, host: str) -> None:
    from cryptography import x509
    from service_identity import VerificationError as IdentityError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    cert = x509.load_der_x509_certificate(der)
    try:
        if _is_ip(host):
            verify_certificate_ip_address(cert, host)
        else:
            verify_certificate_hostname(cert, host)
    except IdentityError as e:
        raise VerificationError(f"TLS: the certificate is not valid for {host} ({e})") from None
    except Exception as e:  # CertificateError and friends: no usable SAN at all
        raise VerificationError(f"TLS: cannot check the certificate for {host} ({e})") from None


def _colons(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})"
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e) or type(e).__name__


Connector = Callable[[], socket.socket]


def make_connector(target: Target, socks: tuple[str, int] | None, timeout: float,
                   tls: TlsConfig) -> Connector:
    """
    A function that opens one connection to ``target``: direct or through
    SOCKS5, then TLS for https.
    """

    def connect() -> socket.socket:
        if socks is not None:
            sock = socks5_connect(socks, target.host, target.port, timeout)
        else:
            try:
                sock = socket.create_connection((target.host, target.port), timeout=timeout)
            except OSError as e:
                raise FetchError(f"cannot connect to {target.authority}: {_reason(e)}") from None
        sock.settimeout(timeout)
        if target.scheme == "https":
            return tls_wrap(sock, target.host, tls)
        return sock

    return connect


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection whose sockets come from a :data:`Connector`."""

    def __init__(self, target: Target, connector: Connector, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._connector = connector

    def connect(self) -> None:
        self.sock = self._connector()


# -- fetching -----------------------------------------------------------------


def fetch_tcp(connector: Connector, n: int, target: Target) -> Iterator[bytes]:
    """Read exactly ``n`` bytes from the raw stream, then hang up."""
    sock = connector()
    try:
        remaining = n
        while remaining:
            try:
                data = sock.recv(min(remaining, READ_SIZE))
            except OSError as e:
                raise FetchError(
                    f"reading from {target.authority} failed after {n - remaining} of {n} bytes: "
                    f"{_reason(e)}") from None
            if not data:
                raise ShortRead(
                    f"{target.authority} closed the stream after {n - remaining} of {n} bytes "
                    "(the appliance closes it when it fails closed)")
            remaining -= len(data)
            yield data
    finally:
        sock.close()


def _http_error(resp: http.client.HTTPResponse, where: str) -> FetchError:
    body = resp.read(POLLEN_REPLY_MAX)
    detail = ""
    ctype = resp.getheader("Content-Type", "")
    if "json" in ctype:
        try:
            problem: Any = json.loads(body)
            detail = str(problem.get("detail") or problem.get("title") or "")
        except (ValueError, AttributeError):
            detail = ""
    elif body and "text/" in ctype:
        detail = body.decode("utf-8", "replace").strip().splitlines()[0][:200]
    retry = resp.getheader("Retry-After")
    msg = f"{where} answered {resp.status} {resp.reason}"
    if detail:
        msg += f": {detail}"
    if retry:
        msg += f" (retry after {retry} s)"
    return FetchError(msg)


def _base_path(path: str) -> str:
    path = path.rstrip("/")
    if path.endswith("/v1/random"):
        return path
    return path + "/v1/random"


def fetch_http(connector: Connector, n: int, target: Target, timeout: float,
               request_max: int = REQUEST_MAX) -> Iterator[bytes]:
    """
    GET ``n`` bytes from ``/v1/random`` in requests of at most
    ``request_max`` bytes over one keep-alive connection, checking each
    response's length.
    """
    conn = _Connection(target, connector, timeout)
    path = _base_path(target.path)
    where = f"{target.scheme}://{target.authority}{path}"
    done = 0
    try:
        while done < n:
            k = min(request_max, n - done)
            query = urlencode({"bytes": k, "format": "binary"})
            try:
                conn.request("GET", f"{path}?{query}", headers={
                    "User-Agent": USER_AGENT, "Accept": "application/octet-stream"})
                resp = conn.getresponse()
            except FetchError:
                raise
            except (OSError, http.client.HTTPException) as e:
                raise FetchError(f"{where}: request failed after {done} of {n} bytes: "
                                 f"{_reason(e)}") from None
            if resp.status != 200:
                raise _http_error(resp, where)
            if resp.length is not None and resp.length != k:
                raise ShortRead(f"{where} announced {resp.length} bytes for a request of {k}")
            got = 0
            while got < k:
                try:
                    data = resp.read(min(READ_SIZE, k - got))
                except http.client.IncompleteRead:
                    data = b""
                except (OSError, http.client.HTTPException) as e:
                    raise FetchError(f"{where}: reading failed after {done + got} of {n} bytes: "
                                     f"{_reason(e)}") from None
                if not data:
                    raise ShortRead(f"{where}: the response ended after {done + got} of {n} bytes")
                got += len(data)
                yield data
            if resp.length is None and resp.read(1):
                raise FetchError(f"{where} sent more than the {k} bytes asked for")
            done += k
    finally:
        conn.close()


def fetch_pollen(connector: Connector, n: int, target: Target, timeout: float) -> Iterator[bytes]:
    """
    Run the pollinate challenge/response until ``n`` bytes of seed arrive.

    Each exchange POSTs ``challenge=<128 hex digits>``; the reply's first
    line must be the hex SHA-512 of the challenge text, and its second line
    (64 bytes, in hex) is the seed.
    """
    conn = _Connection(target, connector, timeout)
    where = f"{target.scheme}://{target.authority}{target.path}"
    done = 0
    try:
        while done < n:
            challenge = secrets.token_hex(64)
            expected = hashlib.sha512(challenge.encode("ascii")).hexdigest()
            try:
                conn.request("POST", target.path, body=f"challenge={challenge}", headers={
                    "User-Agent": USER_AGENT,
                    "Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                if resp.status != 200:
                    raise _http_error(resp, where)
                # Fewer than max+1 bytes means the body is over; more is no pollen reply.
                body = resp.read(POLLEN_REPLY_MAX + 1)
            except FetchError:
                raise
            except (OSError, http.client.HTTPException) as e:
                raise FetchError(f"{where}: pollen exchange failed: {_reason(e)}") from None
            if len(body) > POLLEN_REPLY_MAX:
                raise VerificationError(f"{where}: the pollen reply is too long to be one")
            lines = body.decode("ascii", "replace").splitlines()
            if not lines or not hmac.compare_digest(lines[0].strip(), expected):
                raise VerificationError(
                    f"{where} failed the pollen challenge: line 1 is not the SHA-512 of our challenge")
            try:
                seed = bytes.fromhex(lines[1].strip()) if len(lines) > 1 else b""
            except ValueError:
                seed = b""
            if len(seed) != POLLEN_SEED:
                raise ShortRead(f"{where}: the pollen reply has no 64-byte seed on line 2")
            piece = seed[: n - done]
            done += len(piece)
            yield piece
    finally:
        conn.close()


# -- output -------------------------------------------------------------------


class Encoder:
    """Streams bytes out as binary, hex, or base64 (one line, newline-terminated)."""

    def __init__(self, fmt: str) -> None:
        if fmt not in ("binary", "hex", "base64"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self._carry = b""

    def encode(self, data: bytes) -> bytes:
        """Encode one chunk; base64 holds back up to two bytes for the next."""
        if self.fmt == "binary":
            return data
        if self.fmt == "hex":
            return data.hex().encode("ascii")
        data = self._carry + data
        cut = len(data) - len(data) % 3
        self._carry = data[cut:]
        return base64.b64encode(data[:cut])

    def finish(self) -> bytes:
        """The tail: base64 padding and the final newline of text formats."""
        if self.fmt == "binary":
            return b""
        tail = base64.b64encode(self._carry) if self.fmt == "base64" else b""
        self._carry = b""
        return tail + b"\n"


class Output:
    """
    Where the bytes go.  For a file: a temporary file beside it, renamed
    into place by :meth:`commit`; :meth:`abort` removes it.
    """

    def __init__(self, path: str | None, stdout: IO[bytes]) -> None:
        self.path = path
        self._tmp: str | None = None
        if path is None:
            self._f: IO[bytes] = stdout
        else:
            full = os.path.abspath(path)
            fd, self._tmp = tempfile.mkstemp(
                dir=os.path.dirname(full), prefix=f".{os.path.basename(full)}.", suffix=".part")
            self._f = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """Write some output."""
        if data:
            self._f.write(data)

    def commit(self) -> None:
        """Everything arrived: flush, and move the file into place."""
        self._f.flush()
        if self._tmp is not None and self.path is not None:
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self.path)
            self._tmp = None

    def abort(self) -> None:
        """Something failed: leave no partial file."""
        if self._tmp is not None:
            self._f.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None
        else:
            try:
                self._f.flush()
            except OSError:
                pass


class Progress:
    """A one-line progress report on stderr, redrawn at most a few times a second."""

    def __init__(self, total: int, stream: IO[str], enabled: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self._stream = stream
        self.enabled = enabled
        self._clock = clock
        self._start = clock()
        self._last = -1.0
        self.done = 0

    def update(self, n: int) -> None:
        """Count ``n`` more bytes."""
        self.done += n
        if self.enabled:
            now = self._clock()
            if now - self._last >= 0.2:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / elapsed / 1e6
        self._stream.write(f"\r{self.done}/{self.total} bytes {pct:5.1f}% {rate:8.2f} MB/s")
        self._stream.flush()

    def close(self) -> None:
        """Draw the final figure and end the line."""
        if self.enabled:
            self._draw(self._clock())
            self._stream.write("\n")
            self._stream.flush()


# -- seeding the kernel -------------------------------------------------------

IoctlFunc = Callable[[int, int, bytes], Any]


def seed_kernel(data: bytes, device: str = "/dev/urandom", credit_bits: int | None = None,
                ioctl: IoctlFunc = fcntl.ioctl) -> None:
    """
    Mix ``data`` into the kernel's pool.

    Without ``credit_bits`` it is a plain write to ``device``: mixed in,
    credited nothing.  With it, ``RNDADDENTROPY`` (root only) mixes the
    data and credits at most ``credit_bits`` bits, spread over the calls.
    """
    if credit_bits is None:
        with open(device, "wb", buffering=0) as f:
            view = memoryview(data)
            while view:
                written = f.write(view)
                view = view[written or 0:]
        return
    if not 0 <= credit_bits <= 8 * len(data):
        raise ValueError("credit must be between 0 and 8 bits per byte")
    fd = os.open(device, os.O_WRONLY)
    try:
        left = credit_bits
        for i in range(0, len(data), _IOCTL_CHUNK):
            chunk = data[i:i + _IOCTL_CHUNK]
            bits = min(left, 8 * len(chunk))
            left -= bits
            ioctl(fd, RNDADDENTROPY, struct.pack("ii", bits, len(chunk)) + chunk)
    finally:
        os.close(fd)


# -- the command --------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that prints to a given stream, so that main() can be run in-process."""

    def __init__(self, stream: IO[str], **kw: Any) -> None:
        super().__init__(**kw)
        self._stream = stream

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            self._stream.write(message)


def _parser(stream: IO[str]) -> argparse.ArgumentParser:
    p = _Parser(
        stream,
        prog="entropy-fetch",
        description="Fetch random bytes from an entropy appliance (http, https, the raw tcp "
                    "stream, or an onion service through SOCKS5), or seed the kernel from it.",
        epilog="Exit status: 0 success, 1 network or server error, 2 usage, "
               "3 the server failed verification (TLS or pollen), 4 short read.",
    )
    p.add_argument("url", metavar="URL",
                   help="http(s)://host[:port], tcp://host[:port] (raw stream, default port 9000), "
                        "or a pollen server URL with --pollen")
    p.add_argument("-b", "--bytes", default="64", metavar="N",
                   help="how many random bytes (K/M/G suffixes; default 64)")
    p.add_argument("-f", "--format", default="binary", choices=["binary", "hex", "base64"],
                   help="output encoding (default binary; hex and base64 end with a newline)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE (mode 0600, replaced only when complete) instead of stdout")
    p.add_argument("--cacert", metavar="FILE", help="trust only this PEM CA bundle for https")
    p.add_argument("--fingerprint", metavar="SHA256",
                   help="pin the server certificate's SHA-256 (hex, colons allowed); "
                        "alone, it replaces CA checks")
    p.add_argument("--socks", metavar="HOST:PORT",
                   help="connect through this SOCKS5 proxy (e.g. tor at 127.0.0.1:9050); "
                        "the proxy resolves the host name; needed for .onion")
    p.add_argument("--pollen", action="store_true",
                   help="speak the pollinate challenge/response (POST to URL) instead of /v1/random")
    p.add_argument("--seed-kernel", action="store_true",
                   help="mix the bytes into the kernel pool (write to /dev/urandom) instead of "
                        "printing them")
    p.add_argument("--credit", nargs="?", const="auto", metavar="BITS",
                   help="with --seed-kernel, as root: use RNDADDENTROPY and credit BITS "
                        "(default min(8*N, 256))")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="network timeout per operation (default 30)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # For tests: where --seed-kernel writes, and the HTTP request size.
    p.add_argument("--device", default="/dev/urandom", help=argparse.SUPPRESS)
    p.add_argument("--request-size", default=str(REQUEST_MAX), help=argparse.SUPPRESS)
    return p


@dataclass
class _Plan:
    target: Target
    n: int
    socks: tuple[str, int] | None
    tls: TlsConfig
    credit: int | None
    request_max: int


def _plan(p: argparse.ArgumentParser, a: argparse.Namespace) -> _Plan:
    try:
        target = parse_target(a.url)
    except ValueError as e:
        p.error(str(e))
    try:
        n = parse_size(a.bytes)
    except ValueError as e:
        p.error(f"--bytes: {e}")
    if not 1 <= n <= BYTES_MAX:
        p.error("--bytes must be between 1 and 1T")
    socks = None
    if a.socks:
        try:
            socks = parse_hostport(a.socks)
        except ValueError as e:
            p.error(f"--socks: {e}")
    elif target.is_onion:
        p.error(f"{target.host} is an onion address: give --socks HOST:PORT "
                "(tor's SOCKS port, usually 127.0.0.1:9050)")
    fingerprint = None
    if a.fingerprint:
        try:
            fingerprint = parse_fingerprint(a.fingerprint)
        except ValueError as e:
            p.error(f"--fingerprint: {e}")
    if (a.cacert or fingerprint) and target.scheme != "https":
        p.error("--cacert and --fingerprint need an https:// URL")
    if a.pollen and target.scheme == "tcp":
        p.error("--pollen needs an http:// or https:// URL")
    credit = None
    if a.credit is not None:
        if not a.seed_kernel:
            p.error("--credit needs --seed-kernel")
        if a.credit == "auto":
            credit = min(8 * n, 256)
        elif a.credit.isdigit() and int(a.credit) <= 8 * n:
            credit = int(a.credit)
        else:
            p.error(f"--credit {a.credit!r}: must be a whole number of bits, at most 8*N")
    if a.seed_kernel:
        if a.output:
            p.error("--seed-kernel and -o exclude each other: seed material should not be kept")
        if a.format != "binary":
            p.error("--format applies to output, and --seed-kernel writes none")
        if n > SEED_MAX:
            p.error("--seed-kernel takes at most 1M bytes: the kernel pool holds 256 bits")
    try:
        request_max = parse_size(a.request_size)
    except ValueError as e:
        p.error(str(e))
    if not a.timeout > 0:
        p.error("--timeout must be more than 0 seconds")
    return _Plan(target, n, socks, TlsConfig(a.cacert, fingerprint), credit, max(1, request_max))


def main(argv: Sequence[str] | None = None, *, stdout: IO[bytes] | None = None,
         stderr: IO[str] | None = None, ioctl: IoctlFunc = fcntl.ioctl) -> int:
    """Run ``entropy-fetch``; returns the exit status."""
    err = stderr if stderr is not None else sys.stderr
    out_stream = stdout if stdout is not None else sys.stdout.buffer
    p = _parser(err)
    try:
        a = p.parse_args(argv)
        plan = _plan(p, a)
    except SystemExit as e:  # argparse reports usage errors this way
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if plan.credit is not None and os.geteuid() != 0:
        err.write("entropy-fetch: error: --credit (RNDADDENTROPY) needs root\n")
        return EXIT_USAGE

    connector = make_connector(plan.target, plan.socks, a.timeout, plan.tls)
    chunks: Iterator[bytes]
    if a.pollen:
        chunks = fetch_pollen(connector, plan.n, plan.target, a.timeout)
    elif plan.target.scheme == "tcp":
        chunks = fetch_tcp(connector, plan.n, plan.target)
    else:
        chunks = fetch_http(connector, plan.n, plan.target, a.timeout, plan.request_max)

    progress = Progress(plan.n, err, enabled=not a.quiet and err.isatty())
    if a.seed_kernel:
        return _run_seed(chunks, plan, a.device, progress, err, ioctl)

    try:
        output = Output(a.output, out_stream)
    except OSError as e:
        err.write(f"entropy-fetch: error: -o {a.output}: {_reason(e)}\n")
        return EXIT_FAILURE
    encoder = Encoder(a.format)
    try:
        for data in chunks:
            output.write(encoder.encode(data))
            progress.update(len(data))
        output.write(encoder.finish())
        if progress.done != plan.n:
            raise ShortRead(f"got {progress.done} of {plan.n} bytes")
        output.commit()
    except FetchError as e:
        output.abort()
        progress.close()
        err.write(f"entropy-fetch: error: {e}\n")
        if a.output is None:
            err.write("entropy-fetch: the output on stdout is incomplete\n")
        return e.exit_code
    except BrokenPipeError:
        output.abort()
        err.write("entropy-fetch: error: the output was closed before every byte was written\n")
        return EXIT_FAILURE
    except OSError as e:
        output.abort()
        err.write(f"entropy-fetch: error: {_reason(e)}\n")
        return EXIT_FAILURE
    progress.close()
    return 0


def _run_seed(chunks: Iterator[bytes], plan: _Plan, device: str, progress: Progress,
              err: IO[str], ioctl: IoctlFunc) -> int:
    # Collect everything first, so that a failed fetch mixes and credits nothing.
    buf = bytearray()
    try:
        for data in chunks:
            buf += data
            progress.update(len(data))
        if len(buf) != plan.n:
            raise ShortRead(f"got {len(buf)} of {plan.n} bytes")
    except FetchError as e:
        progress.close()
        err.write(f"entropy-fetch: error: {e}; the kernel pool was not touched\n")
        return e.exit_code
    progress.close()
    try:
        seed_kernel(bytes(buf), device, plan.credit, ioctl)
    except OSError as e:
        err.write(f"entropy-fetch: error: seeding the kernel through {device}: {_reason(e)}\n")
        return EXIT_FAILURE
    finally:
        buf[:] = bytes(len(buf))
    how = f"credited {plan.credit} bits" if plan.credit is not None else "not credited"
    err.write(f"entropy-fetch: mixed {plan.n} bytes into the kernel pool via {device} ({how})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
