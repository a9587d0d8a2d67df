"""
The onion service against real tor processes.

- A shared tor with ``DisableNetwork 1`` (no Tor network needed): the address
  appears in ``/v1/status`` within seconds, is stable across restarts, and is
  in tor's list of detached onion services exactly while the appliance runs.
- A tor the appliance launches itself: it is relaunched when it dies, and it
  is stopped with the appliance.
- A private Tor network on loopback (:mod:`tests.tornet`): through a client's
  SOCKS port, the site and the raw stream answer at the .onion address.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from entropy_fetch.errors import FetchError
from entropy_fetch.socks import socks5_connect
from tests.tornet import TorNetwork, rss_bytes
from tests.twistd_helpers import Appliance, start_appliance

pytestmark = [pytest.mark.tor, pytest.mark.e2e]


def test_tor_is_installed() -> None:
    """The README's test command installs Debian's tor; without it these tests cannot run."""
    assert shutil.which("tor") and shutil.which("tor-gencert"), "install tor: apt-get install -y tor"



def _wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- an appliance in a subprocess (tests/twistd_helpers.py) ---------------------------


def _status(app: Appliance) -> dict[str, Any] | None:
    """``/v1/status``, or None if it does not answer right now."""
    if app.process.poll() is not None:
        raise AssertionError(f"the appliance exited ({app.process.returncode}):\n{app.log()[-4000:]}")
    try:
        with urllib.request.urlopen(app.url("http", "/v1/status"), timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _onion(app: Appliance) -> dict[str, Any]:
    status = _status(app)
    assert status is not None
    return status["onion"]


def _wait_for_address(app: Appliance, timeout: float = 30) -> str:
    """The onion address, once tor has accepted the service."""
    def address() -> str | None:
        status = _status(app)
        return status["onion"]["address"] if status else None
    return str(_wait_for("the onion address in /v1/status", address, timeout))


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short: unix socket paths are limited to about 100 bytes.
    d = Path(tempfile.mkdtemp(prefix="eo-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def appliances() -> Iterator[Callable[[Path, list[str]], Appliance]]:
    started: list[Appliance] = []

    def start(workdir: Path, args: list[str]) -> Appliance:
        a = start_appliance(workdir, "--source", "kernel", "--https", "none", *args)
        started.append(a)
        return a

    try:
        yield start
    finally:
        for a in started:
            if a.process.poll() is None:
                try:
                    a.stop(timeout=20)
                except AssertionError:
                    pass  # the test's own failure is the one to report


# --- a shared tor without network ----------------------------------------------------


class ControlClient:
    """A minimal synchronous tor control client (cookie auth) for checking tor's view."""

    def __init__(self, socket_path: Path, cookie: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(socket_path))
        self.file = self.sock.makefile("rwb")
        self.command(f"AUTHENTICATE {cookie.read_bytes().hex()}")

    def command(self, line: str) -> list[str]:
        self.file.write(line.encode() + b"\r\n")
        self.file.flush()
        replies = []
        while True:
            reply = self.file.readline().decode().rstrip("\r\n")
            if not reply:
                raise AssertionError("tor closed the control connection")
            replies.append(reply[4:])
            if reply[3] == " ":
                if not reply.startswith("250"):
                    raise AssertionError(f"{line.split()[0]}: {reply}")
                return replies

    def detached_onions(self) -> set[str]:
        reply = self.command("GETINFO onions/detached")
        ids: set[str] = set()
        for line in reply:
            if line.startswith("onions/detached="):
                ids.update(x for x in line.split("=", 1)[1].split() if x)
            elif line and line != "OK" and "=" not in line:
                ids.add(line)
        return ids

    def close(self) -> None:
        self.sock.close()


class SharedTor:
    """Debian's tor with DisableNetwork 1, a unix ControlPort and cookie auth."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "tor"
        self.dir.mkdir(mode=0o700)
        self.control = self.dir / "control"
        torrc = self.dir / "torrc"
        torrc.write_text("\n".join([
            f"DataDirectory {self.dir}",
            f"ControlPort unix:{self.control}",
            "CookieAuthentication 1",
            "SocksPort 0",
            "DisableNetwork 1",
            f"Log notice file {self.dir / 'notice.log'}",
            f"__OwningControllerProcess {os.getpid()}",
        ]) + "\n")
        self.process = subprocess.Popen(
            ["tor", "--defaults-torrc", os.devnull, "-f", str(torrc), "--quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for("tor's control socket", self.control.exists, 30, 0.1)

    def client(self) -> ControlClient:
        return ControlClient(self.control, self.dir / "control_auth_cookie")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def shared_tor(workdir: Path) -> Iterator[SharedTor]:
    tor = SharedTor(workdir)
    try:
        yield tor
    finally:
        tor.stop()


def test_shared_tor_address_at_once_stable_and_removed_on_shutdown(
        workdir: Path, shared_tor: SharedTor, appliances: Callable[[Path, list[str]], Appliance]) -> None:
    args = ["--onion", "--tor-control", f"unix:{shared_tor.control}"]
    control = shared_tor.client()
    try:
        first = appliances(workdir, args)
        address = _wait_for_address(first, timeout=30)
        assert address.endswith(".onion") and len(address) == 62
        onion = _onion(first)
        assert onion["state"] == "starting"  # no network: never published, never blocked on it
        assert onion["ports"] == {"80": "http", "9000": "stream"}
        # The key was created private, under certs/ by default.
        key = workdir / "certs" / "onion_ed25519.key"
        assert key.stat().st_mode & 0o777 == 0o600
        # The site and the stream did not wait for tor.
        assert _status(first) is not None
        with socket.create_connection(("127.0.0.1", first.ports["stream"]), timeout=5) as s:
            assert len(s.recv(64)) > 0

        service_id = address.removesuffix(".onion")
        assert service_id in control.detached_onions()
        first.stop(timeout=20)  # asserts a clean exit
        assert service_id not in control.detached_onions()

        second = appliances(workdir, args)
        assert _wait_for_address(second, timeout=30) == address
        assert service_id in control.detached_onions()
        second.stop(timeout=20)  # asserts a clean exit
        assert service_id not in control.detached_onions()
    finally:
        control.close()


def test_leftover_service_from_a_crash_is_replaced(
        workdir: Path, shared_tor: SharedTor, appliances: Callable[[Path, list[str]], Appliance]) -> None:
    args = ["--onion", "--tor-control", f"unix:{shared_tor.control}"]
    control = shared_tor.client()
    try:
        crashed = appliances(workdir, args)
        address = _wait_for_address(crashed)
        crashed.process.kill()  # no clean shutdown: the detached service stays in tor
        crashed.process.wait(timeout=10)
        assert address.removesuffix(".onion") in control.detached_onions()
        again = appliances(workdir, args)
        assert _wait_for_address(again) == address
        again.stop(timeout=20)  # asserts a clean exit
        assert address.removesuffix(".onion") not in control.detached_onions()
    finally:
        control.close()


def test_client_authorization_accepted_by_tor(
        workdir: Path, shared_tor: SharedTor, appliances: Callable[[Path, list[str]], Appliance]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    auth = workdir / "clients"
    auth.mkdir()
    pub = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    b32 = base64.b32encode(pub).decode().rstrip("=")
    (auth / "laptop.auth").write_text(f"descriptor:x25519:{b32}\n")
    a = appliances(workdir, ["--onion", "--tor-control", f"unix:{shared_tor.control}",
                             "--onion-client-auth", str(auth)])
    _wait_for_address(a)
    assert _onion(a)["client_auth"] == 1
    a.stop(timeout=20)  # asserts a clean exit


def test_corrupt_key_is_a_startup_error_and_is_kept(
        workdir: Path, shared_tor: SharedTor, appliances: Callable[[Path, list[str]], Appliance]) -> None:
    key = workdir / "broken.key"
    key.write_bytes(b"== ed25519v1-secret: type0 ==\0\0\0 truncated")
    with pytest.raises(RuntimeError, match="corrupt"):
        appliances(workdir, ["--onion", "--tor-control", f"unix:{shared_tor.control}",
                             "--onion-key", str(key)])
    assert key.read_bytes() == b"== ed25519v1-secret: type0 ==\0\0\0 truncated"


def test_missing_tor_binary_is_a_startup_error(
        workdir: Path, appliances: Callable[[Path, list[str]], Appliance]) -> None:
    with pytest.raises(RuntimeError, match="apt install tor"):
        appliances(workdir, ["--onion", "--tor-binary", str(workdir / "no-such-tor")])


# --- a tor the appliance launches -------------------------------------------------------


def _tor_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "tor.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def test_launched_tor_is_relaunched_when_it_dies_and_stopped_with_us(
        workdir: Path, appliances: Callable[[Path, list[str]], Appliance]) -> None:
    data_dir = workdir / "tordata"
    extra = workdir / "extra-torrc"
    extra.write_text(f"DisableNetwork 1\nPidFile {data_dir / 'tor.pid'}\n")
    a = appliances(workdir, ["--onion", "--tor-config", str(extra), "--tor-data-dir", str(data_dir)])
    address = _wait_for_address(a, timeout=60)
    assert _onion(a)["tor"] == "launched"
    pid = _wait_for("the launched tor's pid file", lambda: _tor_pid(data_dir), 10)

    os.kill(pid, signal.SIGKILL)
    _wait_for("the state to say tor is gone", lambda: _onion(a)["state"] == "failed", 10, 0.05)
    assert _onion(a)["address"] == address
    assert _status(a) is not None  # the site keeps serving
    new_pid = _wait_for("a relaunched tor", lambda: (_tor_pid(data_dir) or pid) != pid and _tor_pid(data_dir),
                        30)
    _wait_for("the service re-added", lambda: _onion(a)["state"] == "starting"
              and "accepted" in _onion(a)["detail"], 60)

    a.stop(timeout=20)  # asserts a clean exit
    _wait_for("the launched tor to exit", lambda: not Path(f"/proc/{new_pid}").exists(), 15)


# --- through a real Tor circuit -------------------------------------------------------------


def _http_get(socks_port: int, host: str, path: str, timeout: float) -> tuple[int, bytes]:
    with socks5_connect(("127.0.0.1", socks_port), host, 80, timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.timeout(420)
def test_site_and_stream_through_a_private_tor_network(
        appliances: Callable[[Path, list[str]], Appliance]) -> None:
    base = Path(tempfile.mkdtemp(prefix="eo-net-"))
    began = time.monotonic()
    deadline = began + 240
    try:
        with TorNetwork(base / "net", relays=3) as net:
            net.build()
            consensus = net.start(timeout=120)
            appliance_tor = base / "appliance-tor"
            a = appliances(base, ["--onion", "--tor-config", str(net.network_config(base / "tornet.torrc")),
                                  "--tor-data-dir", str(appliance_tor)])
            socks = net.add_client()
            address = _wait_for_address(a, timeout=60)

            status, body, tries = 0, b"", 0
            while time.monotonic() < deadline:
                tries += 1
                try:
                    status, body = _http_get(socks, address, "/v1/random?bytes=32", timeout=15)
                    if status == 200:
                        break
                except (OSError, FetchError):
                    pass  # not reachable yet: the descriptor is still on its way
                time.sleep(1)
            fetched = time.monotonic() - began
            assert status == 200, f"no answer through Tor after {tries} tries\n{net.log_tails()}"
            assert len(body) == 32

            with socks5_connect(("127.0.0.1", socks), address, 9000, timeout=30) as s:
                streamed = b""
                while len(streamed) < 65536:
                    chunk = s.recv(65536)
                    assert chunk, "the raw stream closed"
                    streamed += chunk
            assert len(set(streamed)) > 200  # bytes, not a constant

            # published once tor reported a descriptor upload
            _wait_for("state published", lambda: _onion(a)["state"] == "published", 60)

            appliance_tor_pid = _tor_pid_from_dir(appliance_tor)
            pids = net.pids() + [a.process.pid] + ([appliance_tor_pid] if appliance_tor_pid else [])
            memory = sum(rss_bytes(p) for p in pids)
            a.stop(timeout=20)  # asserts a clean exit
            if appliance_tor_pid:
                gone = Path(f"/proc/{appliance_tor_pid}")
                _wait_for("the launched tor to exit", lambda: not gone.exists(), 15)
            print(f"\ntor network: consensus {consensus:.1f} s, first onion fetch {fetched:.1f} s after "
                  f"launch ({tries} tries), {len(pids)} processes, RSS {memory / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _tor_pid_from_dir(data_dir: Path) -> int | None:
    # The launched tor holds a lock on its data directory; find it by its torrc.
    torrc = str(data_dir / "torrc")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if torrc.encode() in cmdline:
            return int(entry.name)
    return None
