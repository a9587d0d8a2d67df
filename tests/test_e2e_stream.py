"""
End to end: ``twistd -n entropy`` as a subprocess, the raw stream read over a
real socket, and a clean stop on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.twistd_helpers import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd(cwd: Path, *args: str, env: dict[str, str] | None = None,
           source_tree: bool = True) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if source_tree:
        full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    return subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "--logfile=-", "entropy", *args],
        cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stream_only(cwd: Path, port: int, source_tree: bool = True) -> subprocess.Popen[bytes]:
    """The appliance on the kernel source with only the raw stream, on ``port``."""
    return twistd(cwd, "--source", "kernel", "--stream", f"tcp:{port}:interface=127.0.0.1",
                  "--http", "none", "--https", "none", source_tree=source_tree)


def wait_port(proc: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"twistd exited {proc.returncode}:\n{out}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the stream port never opened")


def read_exactly(port: int, n: int) -> bytes:
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        while len(buf) < n:
            chunk = s.recv(min(1 << 20, n - len(buf)))
            assert chunk, f"stream closed after {len(buf)} bytes"
            buf += chunk
    return bytes(buf)


def chi_square_bytes(data: bytes) -> float:
    counts = [0] * 256
    for value in range(256):
        counts[value] = data.count(bytes([value]))
    expected = len(data) / 256
    return sum((c - expected) ** 2 / expected for c in counts)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("twistd did not stop within 10 s of SIGTERM") from None
    assert proc.returncode in (0, 143, -signal.SIGTERM), proc.returncode
    return out.decode(errors="replace")


def test_twistd_stream_10mb_then_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = stream_only(tmp_path, port)
    try:
        wait_port(proc, port)
        data = read_exactly(port, 10_000_000)
    except BaseException:
        proc.kill()
        raise
    assert len(data) == 10_000_000
    # 255 degrees of freedom: a uniform source lands near 255; 400 is
    # beyond any honest sample of this size (p < 1e-8).
    assert 150 < chi_square_bytes(data) < 400
    log = stop(proc)
    assert "entropy source: kernel" in log
    # Listeners close first, then the entropy pipeline.
    closed = log.index(f"Port {port} Closed")
    assert closed < log.index("entropy pipeline stopped")


def test_nc_head_gets_exactly_what_it_asked_for(tmp_path: Path) -> None:
    port = free_port()
    proc = stream_only(tmp_path, port)
    try:
        wait_port(proc, port)
        out = subprocess.run(
            ["bash", "-c", f"nc 127.0.0.1 {port} | head -c 1000000 | wc -c"],
            capture_output=True, timeout=60, check=True)
        assert out.stdout.strip() == b"1000000"
    finally:
        stop(proc)


def test_help_lists_every_option_with_default(tmp_path: Path) -> None:
    out = subprocess.run([*TWISTD, "entropy", "--help"], cwd=tmp_path, capture_output=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60)
    text = out.stdout.decode()
    for option, default in [("--source", "auto"), ("--stream", "tcp:9000"),
                            ("--reseed-interval", "1.0"), ("--reseed-bytes", "64M"),
                            ("--reseed-bits", "384"), ("--health-alpha", "2**-30"),
                            ("--http", "tcp:8080"), ("--https", "ssl:8443")]:
        assert option in text
        assert default in text, f"{option} default {default} missing"


@pytest.mark.parametrize("args,message", [
    (["--source", "usb"], "use auto, kernel or device:PATH"),
    (["--source", "device:/nonexistent/rng"], "No such file"),
    (["--stream", "tcp:notaport"], "--stream"),
    (["--reseed-bits", "128"], "256 <= N"),
    (["--reseed-interval", "0"], "0 < S"),
    (["--min-entropy", "9"], "0 < H <= 8"),
])
def test_bad_options_fail_at_startup(tmp_path: Path, args: list[str], message: str) -> None:
    out = subprocess.run([*TWISTD, "-n", "--pidfile=", "entropy", *args], cwd=tmp_path,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                         timeout=60)
    assert out.returncode != 0
    assert message in (out.stdout + out.stderr).decode()


def test_installed_package_runs_without_the_source_tree(tmp_path: Path) -> None:
    """After ``pip install .`` the plugin is found with no PYTHONPATH at all."""
    probe = subprocess.run(
        [sys.executable, "-c", "import entropy_appliance; print(entropy_appliance.__file__)"],
        cwd=tmp_path, capture_output=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if probe.returncode != 0:
        pytest.fail("entropy_appliance is not installed in this environment: run "
                    "the README's test command, which installs it with pip install '.[test]'")
    assert "site-packages" in probe.stdout.decode()
    port = free_port()
    proc = stream_only(tmp_path, port, source_tree=False)
    try:
        wait_port(proc, port)
        assert len(read_exactly(port, 100_000)) == 100_000
    finally:
        stop(proc)
