"""
Start ``twist entropy`` (the appliance) as a subprocess on free loopback ports.

Usage::

    app = start_appliance(tmp_path, "--source", "kernel")
    try:
        url = app.url("http", "/v1/random?bytes=16")   # http, https, stream
        ...
    finally:
        app.stop()        # SIGTERM; asserts a clean exit (0 or 143) within seconds

- Runs ``python -m twisted --log-format=text entropy ...`` (Twisted's ``twist``
  runner: foreground, no pid file) with ``cwd=tmp_path`` and PYTHONPATH at
  the repo root, so the source-tree plugin is found and the default
  ``certs/`` (generated on first run) land in ``tmp_path/certs``.
- Unless the caller passes its own ``--http``/``--https``/``--stream``, each
  gets one free 127.0.0.1 port; ``app.ports`` maps ``http``/``https``/``stream``
  to them.  Pass ``ports={"name": "endpoint-template-with-{port}"}`` to add more.
- Waits until every port accepts connections, and kills the process if it
  does not start.  The log is in ``app.log_path``; ``app.log()`` reads it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Appliance", "start_appliance", "free_port", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_PORTS = {
    "http": "--http=tcp:{port}:interface=127.0.0.1",
    "https": "--https=ssl:{port}:interface=127.0.0.1",
    "stream": "--stream=tcp:{port}:interface=127.0.0.1",
}


_handed_out: set[int] = set()


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago, and never one this
    test process has handed out before: after many connections the kernel
    may offer the same port twice in a row, and two listeners of one
    appliance must not be given the same port.
    """
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port on 127.0.0.1")


@dataclass
class Appliance:
    """A running appliance subprocess."""

    process: subprocess.Popen[bytes]
    cwd: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The server's process id (for /proc/PID/status)."""
        return self.process.pid

    def url(self, scheme: str, path: str = "/") -> str:
        """``scheme://127.0.0.1:PORT/path`` for the port named ``scheme``."""
        return f"{scheme}://127.0.0.1:{self.ports[scheme]}{path}"

    @property
    def cert(self) -> Path:
        """The default certificate (generated on first run) of this appliance."""
        return self.cwd / "certs" / "server.pem"

    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """Resident set size of the server, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, and assert it exits cleanly (0 or 143) within ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError(f"appliance did not stop on SIGTERM:\n{self.log()}") from None
        assert self.process.returncode in (0, 143, -signal.SIGTERM), (
            f"appliance exited {self.process.returncode}:\n{self.log()}")


def _wait_ports(app: Appliance, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(app.ports.values())
    while pending and time.monotonic() < deadline:
        if app.process.poll() is not None:
            raise RuntimeError(f"appliance exited {app.process.returncode}:\n{app.log()}")
        for port in list(pending):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                pending.discard(port)
            except OSError:
                pass
        if pending:
            time.sleep(0.1)
    if pending:
        raise RuntimeError(f"ports {sorted(pending)} never opened:\n{app.log()}")


def start_appliance(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None,
                    ports: Mapping[str, str] | None = None, timeout: float = 30.0) -> Appliance:
    """Start the appliance with ``args`` in ``tmp_path``; return once its ports accept."""
    templates = {name: t for name, t in DEFAULT_PORTS.items()
                 if not any(a == t.split("=")[0] or a.startswith(t.split("=")[0] + "=") for a in args)}
    templates.update(ports or {})
    assigned = {name: free_port() for name in templates}
    argv = [sys.executable, "-m", "twisted", "--log-format=text", "entropy", *args]
    argv += [t.format(port=assigned[name]) for name, t in templates.items()]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), full_env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    full_env.update(env or {})
    log_path = tmp_path / "appliance.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=tmp_path, env=full_env, stdout=log,
                                   stderr=subprocess.STDOUT)
    app = Appliance(process, tmp_path, log_path, assigned)
    try:
        _wait_ports(app, timeout)
    except BaseException:
        process.kill()
        process.wait(5)
        raise
    return app


def read_exactly(s: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``s``; the connection must not close sooner."""
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def read_raw_stream(port: int, want: int) -> bytes:
    """Exactly ``want`` bytes of one connection to the raw stream on ``port``; it must not end sooner."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        return read_exactly(s, want)


def assert_new_blocks(data: bytes, seen: set[bytes]) -> None:
    """Every 16-byte block of ``data`` is one ``seen`` does not hold yet; they are added to it."""
    for j in range(0, len(data), 16):
        block = data[j:j + 16]
        assert block not in seen, "a 16-byte block appeared twice"
        seen.add(block)
