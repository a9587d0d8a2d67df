"""
End to end: ``twist entropy --egd ...`` as a subprocess and a plain socket
client speaking EGD: served by the workers of ``--workers 2``, held to the raw
stream's per-peer limits, and on the unix socket of the systemd unit.  (QEMU as the client:
``tests/test_e2e_egd_qemu.py``.)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_e2e_starvation import poll, serving, status
from tests.twistd_helpers import REPO_ROOT, Appliance, read_exactly, start_appliance

pytestmark = pytest.mark.e2e

EGD_PORT = {"egd": "--egd=tcp:{port}:interface=127.0.0.1"}


def connect(app: Appliance) -> socket.socket:
    return socket.create_connection(("127.0.0.1", app.ports["egd"]), timeout=10)


def closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``s`` within ``seconds`` (nothing else arrives meanwhile)."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_workers_answer_egd(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, "--source", "kernel", "--workers", "2", "--https", "none",
                          "--stream", "none", ports=EGD_PORT)
    try:
        poll("the workers serve", lambda: serving(app), 60)
        with connect(app) as s:
            # The blocking reads come first: they wait, if need be, until this worker is seeded.
            s.sendall(b"\x04" + b"\x02\xff" * 4 + b"\x00\x01\x20")
            length = read_exactly(s, 1)[0]
            pid = int(read_exactly(s, length))
            data = read_exactly(s, 4 * 255)
            (bits,) = struct.unpack(">I", read_exactly(s, 4))
            count = read_exactly(s, 1)[0]
            more = read_exactly(s, count)
        # A worker answered, not the parent that reads the source.
        assert pid != app.pid and parent_of(pid) == app.pid
        assert bits == 384
        assert len(set(data[i:i + 16] for i in range(0, 1008, 16))) == 63
        assert count == 32 and len(more) == 32
        # The status names every listener by its surface, the EGD one too.
        listening = status(app)["listeners"]
        assert any(entry.startswith("egd tcp:") and str(app.ports["egd"]) in entry for entry in listening)
        assert any(entry.startswith("http tcp:") for entry in listening)
    finally:
        app.stop()


def test_per_peer_limits_hold_egd_connections(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, "--source", "kernel", "--https", "none", "--stream", "none",
                          "--peer-streams", "1", "--idle-timeout", "2", ports=EGD_PORT)
    try:
        poll("the appliance serves", lambda: serving(app), 30)
        with connect(app) as first:
            first.sendall(b"\x02\x10")
            assert len(read_exactly(first, 16)) == 16
            with connect(app) as second:
                # Past --peer-streams the connection is closed at once, unanswered.
                second.sendall(b"\x02\x10")
                assert closed_within(second, 10)
            # Quiet past --idle-timeout, owing nothing: still served.
            time.sleep(3)
            first.sendall(b"\x02\x10")
            assert len(read_exactly(first, 16)) == 16
            # Owing replies that it does not read, past --idle-timeout: closed.
            asked = 40_000 * 255
            first.sendall(b"\x02\xff" * 40_000)
            time.sleep(6)
            got, ended = drain(first, 30)
            assert ended and got < asked, (got, ended)
        assert status(app)["served"]["egd"] >= 32
    finally:
        app.stop()


def drain(s: socket.socket, seconds: float) -> tuple[int, bool]:
    """Read what ``s`` holds until the server's close (True) or ``seconds`` of silence (False)."""
    s.settimeout(seconds)
    got = 0
    try:
        while chunk := s.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        return got, True
    except TimeoutError:
        return got, False
    return got, True


def test_socket_activated_as_the_egd_unit_says(tmp_path: Path) -> None:
    """
    The socket unit's unix socket, handed over by systemd-socket-activate
    with the name ``egd``, and ``ENTROPY_EGD`` as the unit's comment sets it.
    """
    short = Path(tempfile.mkdtemp(prefix="egd-", dir="/tmp"))
    sock = short / "egd.sock"
    unit = (REPO_ROOT / "contrib/systemd/entropy-appliance-egd.socket").read_text()
    (setting,) = re.findall(r"Environment=(ENTROPY_EGD=\S+)", unit)
    (name,) = re.findall(r"^FileDescriptorName=(\S+)$", unit, flags=re.M)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTROPY_")}
    cmd = ["systemd-socket-activate", "-l", str(sock), f"--fdname={name}", "-E", f"PYTHONPATH={REPO_ROOT}",
           "-E", "PATH", "-E", setting, "--", sys.executable, "-c",
           "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-", "entropy",
           "--source", "kernel", "--stream", "none", "--http", "none", "--https", "none"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            return sock.exists()

        poll("systemd-socket-activate listens", listening, 30)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            # The first connection starts twistd; it waits in the backlog meanwhile.
            s.connect(str(sock))
            s.sendall(b"\x02\x20\x00")
            data = read_exactly(s, 32 + 4)
        assert len(set(data[:32])) > 8 and data[32:] == struct.pack(">I", 384)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate(timeout=10)[0].decode(errors="replace")
        shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Traceback" not in out, out
