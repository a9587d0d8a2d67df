"""
Tests for the systemd integration: sd_notify, the NotifyService, the unit
files (``systemd-analyze verify``), the device probe script, and the
appliance started as the units start it, under ``systemd-socket-activate``
with named file descriptors, reporting READY=1 and STOPPING=1 on a
NOTIFY_SOCKET that the test listens on.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.application.service import IService
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from entropy_appliance.app.systemd import NotifyService, sd_notify, status_line
from entropy_appliance.core.health import HealthTests
from entropy_appliance.core.pool import ReseedPolicy, SeedPool
from entropy_appliance.core.status import PoolStatus
from entropy_appliance.net.waiting import when_ready
from entropy_fetch.cli import main as fetch_main
from tests.twistd_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"
PROBE = UNITS / "entropy-appliance-probe"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


# -- helpers ---------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket names are limited to 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="ea-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class NotifyListener:
    """The systemd end of NOTIFY_SOCKET: a unix datagram socket that keeps every message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.env_value = address
        self.messages: list[str] = []

    def wait_for(self, key: str, timeout: float = 30.0,
                 proc: subprocess.Popen[bytes] | None = None) -> str:
        """Return the first message containing the line ``key`` (e.g. READY=1)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None and key == "READY=1":
                raise AssertionError(f"exited with {proc.returncode} before {key}: {_output(proc)}")
            for m in self.messages:
                if key in m.splitlines():
                    return m
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass
        raise AssertionError(f"no {key} within {timeout} s; got {self.messages!r}")

    def close(self) -> None:
        self.sock.close()




def fetch(*args: str) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    code = fetch_main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def fetch_when_seeded(url: str, n: int, deadline: float = 30.0) -> bytes:
    """Fetch ``n`` bytes, retrying while the fresh appliance still fails closed."""
    end = time.monotonic() + deadline
    while True:
        code, out, err = fetch("--bytes", str(n), "--timeout", "20", url)
        if code == 0:
            return out
        if time.monotonic() > end:
            raise AssertionError(f"entropy-fetch {url}: {code} {err}")
        time.sleep(0.2)


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists: keys may repeat."""
    text = re.sub(r"\\\n", " ", path.read_text())
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def socket_units() -> dict[str, Path]:
    """FileDescriptorName -> socket unit, for every socket unit we ship."""
    out = {}
    for path in sorted(UNITS.glob("*.socket")):
        (name,) = values(read_unit(path), "Socket", "FileDescriptorName")
        out[name] = path
    return out


def exec_start_args() -> list[str]:
    """The twistd arguments of the service's ExecStart=, with settings filled in."""
    unit = read_unit(UNITS / "entropy-appliance.service")
    (line,) = values(unit, "Service", "ExecStart")
    argv = shlex.split(line.replace("${ENTROPY_SOURCE}", "kernel"))
    assert argv[0].endswith("twistd")
    return argv[1:]


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


# -- sd_notify -------------------------------------------------------------------


def test_sd_notify_to_a_path_socket(short_dir: Path) -> None:
    listener = NotifyListener(str(short_dir / "notify"))
    try:
        assert sd_notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": listener.env_value})
        assert listener.wait_for("READY=1", 5) == "READY=1\nSTATUS=hello"
    finally:
        listener.close()


def test_sd_notify_to_an_abstract_socket() -> None:
    name = f"@entropy-appliance-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener(name)
    try:
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": name})
        listener.wait_for("STOPPING=1", 5)
    finally:
        listener.close()


def test_sd_notify_without_systemd_does_nothing(short_dir: Path) -> None:
    assert sd_notify("READY=1", {}) is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(short_dir / "nobody-listens")}) is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


# -- status line and NotifyService -------------------------------------------------


def _pool(clock: Clock) -> SeedPool:
    return SeedPool(clock, HealthTests(8.0, alpha=2.0 ** -30), ReseedPolicy(interval=1.0))


def test_status_line_tells_source_and_health() -> None:
    clock = Clock()
    pool = _pool(clock)
    assert status_line(pool.status()).startswith(
        "STARVED for 0.0 s, waiting for seed (waiting for the first seed); source kernel (kernel)")
    for _ in range(4):
        pool.write(os.urandom(4096))
    clock.advance(0.5)
    line = status_line(pool.status())
    assert line.startswith("serving; source kernel (kernel) ok")
    assert "reseeds 1, last 0.5 s ago" in line
    pool.source_failed("read error:\nEIO")
    line = status_line(pool.status())
    assert line.startswith("FAILING CLOSED (source failed: read error: EIO)")
    assert "source kernel (kernel) failed" in line and "error: read error: EIO" in line
    assert "\n" not in line


def test_notify_service_ready_only_once_seeded() -> None:
    clock = Clock()
    pool = _pool(clock)
    sent: list[str] = []
    svc = NotifyService(pool.status, clock, notify=sent.append, interval=10.0,
                        ready=lambda: when_ready(pool))
    assert verifyObject(IService, svc)
    svc.startService()
    # Listening, but nothing to serve yet: not READY, and the status says why.
    assert len(sent) == 1
    assert sent[0].startswith("STATUS=STARVED for 0.0 s, waiting for seed (waiting for the first seed); "
                              "source kernel (kernel) starting")
    for _ in range(4):
        pool.write(os.urandom(4096))
    assert sent[1].splitlines()[0] == "READY=1"
    assert sent[1].splitlines()[1].startswith("STATUS=serving; source kernel (kernel) ok")
    clock.advance(9.9)
    assert len(sent) == 2
    clock.advance(0.1)
    assert sent[2].startswith("STATUS=serving; source kernel (kernel) ok")
    clock.advance(10)
    assert len(sent) == 4
    svc.stopService()
    assert sent[-1].splitlines() == ["STOPPING=1", "STATUS=stopping"]
    clock.advance(100)
    assert len(sent) == 5
    assert [m for m in sent if m.startswith("READY=1")] == [sent[1]]


def test_notify_service_waits_out_a_source_that_fails_before_the_first_seed() -> None:
    clock = Clock()
    pool = _pool(clock)
    sent: list[str] = []
    svc = NotifyService(pool.status, clock, notify=sent.append, interval=10.0,
                        ready=lambda: when_ready(pool))
    svc.startService()
    pool.source_failed("EIO")
    clock.advance(5)
    assert not any(m.startswith("READY=1") for m in sent)
    pool.source_recovered()
    for _ in range(4):
        pool.write(os.urandom(4096))
    clock.advance(1)
    assert [m for m in sent if m.startswith("READY=1")] != []
    svc.stopService()


def test_notify_service_survives_a_broken_status() -> None:
    clock = Clock()
    sent: list[str] = []

    def broken() -> PoolStatus:
        raise RuntimeError("no pool")

    svc = NotifyService(broken, clock, notify=sent.append)
    svc.startService()
    clock.advance(10)
    unavailable = "STATUS=status unavailable: no pool"
    assert sent == [unavailable, "READY=1\n" + unavailable, unavailable]
    svc.stopService()


def test_make_service_adds_the_notify_service_last() -> None:
    from entropy_appliance.tap import Options, makeService

    options = Options()
    options.parseOptions(["--source", "kernel", "--stream", "tcp:0:interface=127.0.0.1",
                          "--http", "none", "--https", "none"])
    top = makeService(options)
    children = list(top)  # type: ignore[call-overload]
    assert isinstance(children[-1], NotifyService)


# -- unit files ------------------------------------------------------------------


def test_service_unit_hardening_and_readiness() -> None:
    unit = read_unit(UNITS / "entropy-appliance.service")

    def one(key: str) -> str:
        (v,) = values(unit, "Service", key)
        return v

    assert one("Type") == "notify"
    assert one("User") == "entropy"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("PrivateTmp") == "yes"
    assert one("DevicePolicy") == "closed"
    assert one("CapabilityBoundingSet") == ""
    allowed = values(unit, "Service", "DeviceAllow")
    assert "/dev/hwrng r" in allowed and "/dev/qrandom0 r" in allowed
    assert all(a.endswith(" r") for a in allowed), "RNG devices are read-only"
    assert one("ExecStartPre").endswith("/entropy-appliance-probe")
    assert "ENTROPY_MODULE=" in values(unit, "Service", "Environment")
    args = exec_start_args()
    assert args[:3] == ["--nodaemon", "--pidfile=", "entropy"]


#: Socket units that the service does not require: off unless the operator turns them on.
OPTIONAL_SOCKETS = {"egd"}


def test_each_named_socket_has_its_own_unit_and_flag() -> None:
    sockets = socket_units()
    assert sorted(sockets) == ["egd", "http", "https", "stream"]
    args = exec_start_args()
    for name, path in sockets.items():
        if name in OPTIONAL_SOCKETS:
            continue
        unit = read_unit(path)
        assert values(unit, "Socket", "Service") == ["entropy-appliance.service"]
        assert f"systemd:domain=INET:name={name}" in args
        assert args[args.index(f"systemd:domain=INET:name={name}") - 1] == f"--{name}"
    service = read_unit(UNITS / "entropy-appliance.service")
    required = " ".join(values(service, "Unit", "Requires")).split()
    assert sorted(required) == sorted(p.name for n, p in sockets.items() if n not in OPTIONAL_SOCKETS)


def test_the_egd_socket_is_a_unix_socket_turned_on_by_its_variable() -> None:
    """EGD has no authentication: a unix socket whose group says who may connect, off by default."""
    path = socket_units()["egd"]
    unit = read_unit(path)
    assert values(unit, "Socket", "Service") == ["entropy-appliance.service"]
    (listen,) = values(unit, "Socket", "ListenStream")
    assert listen.startswith("/run/entropy-appliance/")
    assert values(unit, "Socket", "SocketMode") == ["0660"]
    assert "--egd" not in exec_start_args()
    assert "Environment=ENTROPY_EGD=systemd:domain=UNIX:name=egd" in path.read_text()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """
    ``systemd-analyze verify`` runs offline.  It checks that the Exec paths
    exist on this host, so the copy points them at this checkout's twistd
    and probe; everything else is the shipped text.
    """
    twistd = shutil.which("twistd", path=str(Path(sys.executable).parent))
    assert twistd is not None
    text = (UNITS / "entropy-appliance.service").read_text()
    text = text.replace("/usr/bin/twistd", twistd)
    text = text.replace("/usr/libexec/entropy-appliance/entropy-appliance-probe", str(PROBE))
    (tmp_path / "entropy-appliance.service").write_text(text)
    for path in UNITS.glob("*.socket"):
        shutil.copy(path, tmp_path / path.name)
    names = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


# -- the probe script ------------------------------------------------------------


def probe(env: dict[str, str], timeout: float = 30,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the probe with this checkout's python3 first on PATH, as a venv install would."""
    full = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["sh", str(PROBE)], env=full, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def test_probe_kernel_needs_no_device() -> None:
    r = probe({"ENTROPY_SOURCE": "kernel"})
    assert r.returncode == 0
    assert "source kernel: the kernel CSPRNG needs no device" in r.stdout


def test_probe_explicit_device_present(tmp_path: Path) -> None:
    dev = tmp_path / "qrandom0"
    dev.write_bytes(b"")
    r = probe({"ENTROPY_SOURCE": f"device:{dev}", "ENTROPY_PROBE_TIMEOUT": "0"})
    assert r.returncode == 0
    assert f"device {dev} is present" in r.stdout


def test_probe_explicit_device_missing_fails_without_fallback(tmp_path: Path) -> None:
    r = probe({"ENTROPY_SOURCE": f"device:{tmp_path}/hwrng", "ENTROPY_PROBE_TIMEOUT": "1"})
    assert r.returncode == 1
    assert "did not appear within 1s; not falling back" in r.stdout


def test_probe_takes_a_list_and_lets_the_appliance_retry_a_missing_device(tmp_path: Path) -> None:
    dev = tmp_path / "qrandom0"
    dev.write_bytes(b"")
    r = probe({"ENTROPY_SOURCE": f"device:{dev},min-entropy=7  device:{tmp_path}/hwrng kernel",
               "ENTROPY_PROBE_TIMEOUT": "0"})
    assert r.returncode == 0, r.stdout
    assert f"device {dev} is present" in r.stdout
    assert f"device {tmp_path}/hwrng did not appear within 0s; the appliance starts without it" in r.stdout
    r = probe({"ENTROPY_SOURCE": "auto kernel"})
    assert r.returncode == 2 and "auto stands alone" in r.stdout


def test_probe_waits_for_the_device(tmp_path: Path) -> None:
    dev = tmp_path / "hwrng"
    timer = threading.Timer(1.0, dev.write_bytes, args=(b"",))
    timer.start()
    try:
        r = probe({"ENTROPY_SOURCE": f"device:{dev}", "ENTROPY_PROBE_TIMEOUT": "20"})
    finally:
        timer.cancel()
    assert r.returncode == 0, r.stdout
    assert f"device {dev} is present" in r.stdout


def test_probe_auto_falls_back_to_the_kernel(tmp_path: Path) -> None:
    r = probe({"ENTROPY_SOURCE": "auto", "ENTROPY_PROBE_ROOT": str(tmp_path)})
    assert r.returncode == 0
    assert "no hardware RNG device found; falling back to the kernel CSPRNG" in r.stdout


def test_probe_auto_finds_hwrng_with_its_driver(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "hwrng").write_bytes(b"")
    (tmp_path / "dev" / "chaoskey0").write_bytes(b"")
    (tmp_path / "sys/class/misc/hw_random").mkdir(parents=True)
    (tmp_path / "sys/class/misc/hw_random/rng_current").write_text("tpm-rng-0\n")
    r = probe({"ENTROPY_SOURCE": "auto", "ENTROPY_PROBE_ROOT": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"source auto: found {tmp_path}/dev/hwrng (hwrng, driver tpm-rng-0)" in r.stdout
    (tmp_path / "sys/class/misc/hw_random/rng_current").write_text("none\n")
    r = probe({"ENTROPY_SOURCE": "auto", "ENTROPY_PROBE_ROOT": str(tmp_path)})
    assert f"source auto: found {tmp_path}/dev/chaoskey0 (chaoskey)" in r.stdout


def test_probe_never_imports_from_its_working_directory(tmp_path: Path) -> None:
    """
    The probe runs as root in the state directory, which the appliance's
    user owns: a package planted there must not run.
    """
    planted = tmp_path / "state" / "entropy_appliance"
    (planted / "source").mkdir(parents=True)
    (planted / "__init__.py").write_text(f"open({str(tmp_path / 'owned')!r}, 'w').close()\n")
    (planted / "source" / "__init__.py").write_text("")
    (planted / "source" / "detection.py").write_text("print('/dev/planted (quantis)')\n")
    r = probe({"ENTROPY_SOURCE": "auto", "ENTROPY_PROBE_ROOT": str(tmp_path)}, cwd=tmp_path / "state")
    assert r.returncode == 0
    assert "no hardware RNG device found; falling back to the kernel CSPRNG" in r.stdout
    assert not (tmp_path / "owned").exists()


def test_probe_auto_without_the_package_says_so_and_goes_on(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                       "echo \"ModuleNotFoundError: No module named 'entropy_appliance'\" >&2\nexit 1\n")
    python3.chmod(0o755)
    r = probe({"ENTROPY_SOURCE": "auto", "ENTROPY_PROBE_ROOT": str(tmp_path),
               "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 0
    assert ("cannot run python3 -m entropy_appliance.source.detection "
            "(ModuleNotFoundError: No module named 'entropy_appliance'); "
            "the appliance detects its source when it starts") in r.stdout


def test_probe_loads_the_module_and_finds_its_device(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    fake = tmp_path / "modprobe"
    # The fake loader creates the device node the way udev would.
    fake.write_text(f'#!/bin/sh\necho "$1" > {tmp_path}/loaded\n: > {tmp_path}/dev/qrandom0\n')
    fake.chmod(0o755)
    r = probe({"ENTROPY_SOURCE": "auto", "ENTROPY_MODULE": "quantis_pcie", "ENTROPY_PROBE_TIMEOUT": "5",
               "ENTROPY_PROBE_ROOT": str(tmp_path), "ENTROPY_MODPROBE": str(fake)})
    assert r.returncode == 0, r.stdout
    assert (tmp_path / "loaded").read_text().strip() == "quantis_pcie"
    assert "kernel module quantis_pcie loaded" in r.stdout
    assert f"source auto: found {tmp_path}/dev/qrandom0 (quantis)" in r.stdout


def test_probe_module_failure_is_logged_then_falls_back(tmp_path: Path) -> None:
    fake = tmp_path / "modprobe"
    fake.write_text('#!/bin/sh\necho "FATAL: Module $1 not found." >&2\nexit 1\n')
    fake.chmod(0o755)
    r = probe({"ENTROPY_SOURCE": "auto", "ENTROPY_MODULE": "quantis_pcie", "ENTROPY_PROBE_TIMEOUT": "1",
               "ENTROPY_PROBE_ROOT": str(tmp_path), "ENTROPY_MODPROBE": str(fake)})
    assert r.returncode == 0
    assert "modprobe quantis_pcie failed: FATAL: Module quantis_pcie not found." in r.stdout
    assert "no hardware RNG device appeared within 1s after loading quantis_pcie; falling back" in r.stdout


def test_probe_rejects_bad_settings() -> None:
    assert probe({"ENTROPY_PROBE_TIMEOUT": "soon"}).returncode == 2
    assert probe({"ENTROPY_MODULE": "-r everything"}).returncode == 2
    assert probe({"ENTROPY_SOURCE": "/dev/hwrng"}).returncode == 2


# -- end to end ------------------------------------------------------------------


def _launch(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return wait_exit(proc)


def _output(proc: subprocess.Popen[bytes]) -> str:
    return proc.stdout.read().decode(errors="replace") if proc.stdout else ""


def _run_and_check(proc: subprocess.Popen[bytes], listener: NotifyListener,
                   check: Callable[[], None], trigger: Callable[[], None] | None = None) -> None:
    try:
        if trigger is not None:
            trigger()
        ready = listener.wait_for("READY=1", proc=proc)
        assert "STATUS=" in ready and "source kernel (kernel)" in ready
        check()
        code = _stop(proc)
        stopping = listener.wait_for("STOPPING=1", 10)
        assert "STATUS=stopping" in stopping
        # twistd re-raises the signal after a clean stop, so -15 is as clean as 0.
        assert code in (0, -signal.SIGTERM), _output(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.e2e
def test_twistd_reports_ready_only_when_listening_and_stopping_on_sigterm(
        short_dir: Path, tmp_path: Path) -> None:
    listener = NotifyListener(str(short_dir / "notify"))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=listener.env_value)
    proc = _launch([*TWISTD, "--nodaemon", "--pidfile=", "entropy", "--source", "kernel",
                    "--stream", f"tcp:{port}:interface=127.0.0.1", "--http", "none", "--https", "none"],
                   tmp_path, env)

    def check() -> None:
        # At READY=1 the port is already listening: this connects at once.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert len(fetch_when_seeded(f"tcp://127.0.0.1:{port}", 4096)) == 4096

    try:
        _run_and_check(proc, listener, check)
    finally:
        listener.close()


def _socket_activated(short_dir: Path, tmp_path: Path, names: list[str], args: list[str]) -> None:
    """
    Start the appliance the way the units do: one listening socket per
    socket unit in ``names``, named by its FileDescriptorName=, made by
    systemd-socket-activate, and twistd with ``args``; then talk to each.
    """
    listener = NotifyListener(str(short_dir / "notify"))
    ports = {name: free_port() for name in names}
    cmd = ["systemd-socket-activate"]
    for name in names:
        cmd += ["-l", f"127.0.0.1:{ports[name]}"]
    cmd += ["--fdname=" + ":".join(names), "-E", f"PYTHONPATH={ROOT}", "-E", "PATH",
            "-E", f"NOTIFY_SOCKET={listener.env_value}", "--", *TWISTD, *args]
    proc = _launch(cmd, tmp_path, dict(os.environ))

    def trigger() -> None:
        # Without --accept, systemd-socket-activate execs its child on the
        # first connection; that connection waits in the backlog meanwhile.
        end = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["stream"]), timeout=5).close()
                return
            except ConnectionRefusedError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def check() -> None:
        assert len(fetch_when_seeded(f"tcp://127.0.0.1:{ports['stream']}", 10000)) == 10000
        assert len(fetch_when_seeded(f"http://127.0.0.1:{ports['http']}", 4096)) == 4096
        if "https" in ports:
            cert = tmp_path / "certs" / "server.pem"
            code, out, err = fetch("--cacert", str(cert), "--bytes", "64",
                                   f"https://localhost:{ports['https']}")
            assert code == 0, err
            assert len(out) == 64

    try:
        _run_and_check(proc, listener, check, trigger)
    finally:
        listener.close()


@pytest.mark.e2e
def test_socket_activation_stream_and_http(short_dir: Path, tmp_path: Path) -> None:
    """The units' ExecStart= with the stream and http sockets (https turned off)."""
    args = exec_start_args()
    i = args.index("--https")
    args[i + 1] = "none"
    _socket_activated(short_dir, tmp_path, ["stream", "http"], args)


@pytest.mark.e2e
def test_socket_activation_exactly_as_the_units_say(short_dir: Path, tmp_path: Path) -> None:
    """Every socket unit, named as it says, and the units' ExecStart= unchanged."""
    _socket_activated(short_dir, tmp_path, sorted(socket_units()), exec_start_args())
