"""
End to end: QEMU's virtio-rng fed by the appliance's EGD server.

A real Linux guest (Debian's kernel, fetched and unpacked at test time, and
a busybox initramfs built here: :mod:`tests.qemu_guest`) boots with
``-object rng-egd,chardev=c0 -device virtio-rng-pci``, loads virtio-rng,
reads 64 KiB from ``/dev/hwrng`` and prints their count and SHA-256.  Two
guests at once, one over TCP and one over a unix socket, each read all of
it, and different bytes; the ``egd`` counter rose by as much.  With the
appliance's source failed, a guest reads nothing.

If the kernel cannot be downloaded the tests fail: they never skip.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu_guest import GuestKit, boot, guest_kit, start
from tests.test_e2e_starvation import Writer, get, poll, serving, start_writer, status
from tests.twistd_helpers import Appliance, start_appliance

pytestmark = pytest.mark.e2e

#: What each guest reads from /dev/hwrng.
GUEST_BYTES = 64 * 1024
#: How long a guest may take from start to power-off (a TCG boot takes about 6 s).
BOOT_BOUND = 90.0
#: How long the fail-closed guest waits for its read before giving up.
FAILED_READ_WAIT = 15


@pytest.fixture(scope="module")
def kit() -> GuestKit:
    """Debian's kernel and our initramfs; downloads the kernel package once per cache."""
    return guest_kit()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket names are limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="egd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def served_egd(app: Appliance) -> int:
    """The ``egd`` counter of /v1/status."""
    return int(status(app)["served"].get("egd", 0))


def metrics_egd(app: Appliance) -> float:
    """The ``egd`` surface of /metrics."""
    text = get(app, "/metrics").body.decode()
    m = re.search(r'^entropy_served_bytes_total\{surface="egd"\} (\S+)$', text, flags=re.M)
    assert m, text
    return float(m.group(1))


def wait_unix(path: Path, app: Appliance, timeout: float = 30.0) -> None:
    def accepts() -> bool:
        assert app.process.poll() is None, app.log()
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return True
        except OSError:
            return False

    poll(f"{path} accepts connections", accepts, timeout)


def test_two_guests_over_tcp_and_a_unix_socket_read_all_and_differ(kit: GuestKit, tmp_path: Path,
                                                                   short_dir: Path) -> None:
    sock = short_dir / "egd.sock"
    app = start_appliance(tmp_path, "--source", "kernel", "--https", "none", "--stream", "none",
                          "--egd", f"unix:{sock}",
                          ports={"egd": "--egd=tcp:{port}:interface=127.0.0.1"})
    try:
        wait_unix(sock, app)
        poll("the appliance serves", lambda: serving(app), 30)
        before = served_egd(app)
        guests = [
            start(kit, f"socket,id=c0,host=127.0.0.1,port={app.ports['egd']}", workdir=tmp_path,
                  name="tcp", nbytes=GUEST_BYTES, timeout=BOOT_BOUND),
            start(kit, f"socket,id=c0,path={sock}", workdir=tmp_path, name="unix",
                  nbytes=GUEST_BYTES, timeout=BOOT_BOUND),
        ]
        results = [g.finish() for g in guests]
        after = served_egd(app)
        in_metrics = metrics_egd(app)
        assert app.process.poll() is None
    finally:
        app.stop()
    for r in results:
        assert r.done, f"the guest did not finish (QEMU exit {r.returncode}):\n{r.console[-3000:]}"
        assert r.count == GUEST_BYTES, r.lines
        assert r.rng_current is not None and r.rng_current.startswith("virtio_rng"), r.lines
        assert r.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", r.sha256), r.lines
    tcp, unix = results
    assert tcp.sha256 != unix.sha256
    assert after - before >= 2 * GUEST_BYTES, (before, after)
    assert in_metrics >= after


def test_a_guest_reads_nothing_while_the_source_has_failed(kit: GuestKit, tmp_path: Path) -> None:
    fifo = tmp_path / "rng.fifo"
    os.mkfifo(fifo)
    writer: Writer = start_writer(fifo, tmp_path / "writer.mode", "fast")
    try:
        app = start_appliance(tmp_path, "--source", f"device:{fifo}", "--reseed-interval", "1",
                              "--https", "none", "--stream", "none",
                              ports={"egd": "--egd=tcp:{port}:interface=127.0.0.1"})
        try:
            poll("the appliance serves from the FIFO", lambda: serving(app), 30)
            writer.set_mode("stuck")
            poll("the source is failed", lambda: status(app)["state"] == "failed", 30)
            before = served_egd(app)
            started = time.monotonic()
            result = boot(kit, f"socket,id=c0,host=127.0.0.1,port={app.ports['egd']}", workdir=tmp_path,
                          name="failed", nbytes=GUEST_BYTES, read_timeout=FAILED_READ_WAIT,
                          timeout=BOOT_BOUND)
            took = time.monotonic() - started
            doc = status(app)
            assert app.process.poll() is None
        finally:
            app.stop()
    finally:
        writer.stop()
    assert result.done, f"the guest did not finish (QEMU exit {result.returncode}):\n{result.console[-3000:]}"
    assert result.rng_current is not None and result.rng_current.startswith("virtio_rng"), result.lines
    assert result.count == 0, result.lines
    assert doc["state"] == "failed"
    assert int(doc["served"].get("egd", 0)) == before
    assert took < BOOT_BOUND


def test_a_quiet_guest_is_not_cut_off_by_the_idle_timeout(kit: GuestKit, tmp_path: Path) -> None:
    """
    QEMU keeps its connection for the life of the guest, and the guest asks
    only now and then: a pause longer than ``--idle-timeout`` costs it
    nothing.  (QEMU never resends a request that was in flight when its
    connection closed, so a close there would leave the guest waiting.)
    """
    app = start_appliance(tmp_path, "--source", "kernel", "--https", "none", "--stream", "none",
                          "--idle-timeout", "2", ports={"egd": "--egd=tcp:{port}:interface=127.0.0.1"})
    try:
        poll("the appliance serves", lambda: serving(app), 30)
        result = boot(kit, f"socket,id=c0,host=127.0.0.1,port={app.ports['egd']}", workdir=tmp_path,
                      name="quiet", nbytes=GUEST_BYTES, pause=6, timeout=BOOT_BOUND)
        assert app.process.poll() is None
    finally:
        app.stop()
    assert result.done, f"the guest did not finish (QEMU exit {result.returncode}):\n{result.console[-3000:]}"
    assert result.count == GUEST_BYTES, result.lines
    assert result.lines.get("count_again") == str(GUEST_BYTES), result.lines
