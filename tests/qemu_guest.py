"""
A tiny Linux guest for QEMU whose virtio-rng is fed by an EGD server.

The kernel is Debian's own: the image package that ``linux-image-amd64``
depends on is fetched with ``apt-get download`` into a cache directory and
unpacked with ``dpkg-deb -x``, never installed on the host.  The initramfs
is built here (cpio ``newc``, gzip) around the static ``busybox`` of
Debian's ``busybox-static``, with the virtio modules the kernel does not
have built in, in dependency order (read from each module's ``depends=``).

Its init loads them, reads ``egd_bytes`` bytes from ``/dev/hwrng`` (killed
after ``egd_timeout`` seconds if the read blocks), prints on the serial
console the count, the SHA-256 and ``/sys/class/misc/hw_random/rng_current``
as ``EGD-GUEST key=value`` lines, and powers off; with ``egd_pause=N`` it
reads as much again N seconds later.  ``egd_dd=1`` reads with
``dd`` instead and prints its figures (for the benchmark).

Usage::

    kit = guest_kit()                       # downloads once, then cached
    result = boot(kit, "socket,id=c0,host=127.0.0.1,port=7000", workdir=tmp_path)
    result.count, result.sha256, result.rng_current
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GuestKit", "GuestResult", "RunningGuest", "guest_kit", "start", "boot", "cache_dir",
           "kvm_usable", "accelerator", "cpio_newc", "module_order"]

#: What the guest needs, besides what its kernel has built in.
WANTED_MODULES = ("virtio_pci", "virtio_rng")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
echo
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
if [ "${egd_probe:-0}" = 1 ]; then echo "EGD-GUEST probe=1"; poweroff -f; fi
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "EGD-GUEST error=insmod $m"; done
i=0
while [ ! -e /dev/hwrng ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "EGD-GUEST rng_current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
n=${egd_bytes:-65536}
t=${egd_timeout:-30}
start=$(cut -d ' ' -f 1 /proc/uptime)
if [ "${egd_dd:-0}" = 1 ]; then
    timeout -s KILL $t dd if=/dev/hwrng of=/tmp/out bs=4096 count=$((n / 4096)) iflag=fullblock 2>/tmp/dd.log
    echo "EGD-GUEST dd=$(tr '\n' ' ' < /tmp/dd.log)"
else
    timeout -s KILL $t head -c $n /dev/hwrng > /tmp/out
fi
end=$(cut -d ' ' -f 1 /proc/uptime)
echo "EGD-GUEST read_start=$start"
echo "EGD-GUEST read_end=$end"
echo "EGD-GUEST count=$(wc -c < /tmp/out)"
echo "EGD-GUEST sha256=$(sha256sum /tmp/out | cut -d ' ' -f 1)"
if [ "${egd_pause:-0}" -gt 0 ]; then
    sleep $egd_pause
    timeout -s KILL $t head -c $n /dev/hwrng > /tmp/again
    echo "EGD-GUEST count_again=$(wc -c < /tmp/again)"
fi
echo "EGD-GUEST done=1"
poweroff -f
"""


def cache_dir() -> Path:
    """Where the kernel package is kept between runs: ``$ENTROPY_TEST_CACHE`` or ~/.cache."""
    base = os.environ.get("ENTROPY_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "entropy-appliance-tests")
    path = Path(base) / "debian-kernel"
    path.mkdir(parents=True, exist_ok=True)
    return path


def kvm_usable() -> bool:
    """Whether /dev/kvm can be opened for reading and writing."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


#: How long the KVM probe's boot may take before KVM is judged too slow to use.
KVM_PROBE_SECONDS = 15.0

_accel: dict[Path, str] = {}


def accelerator(kit: GuestKit, workdir: Path) -> str:
    """
    ``kvm`` when /dev/kvm opens and a guest boots with it within
    :data:`KVM_PROBE_SECONDS` (a nested or emulated /dev/kvm may open and yet
    crawl), else ``tcg``; ``$ENTROPY_TEST_ACCEL`` decides if set.  Probed
    once per kernel.
    """
    forced = os.environ.get("ENTROPY_TEST_ACCEL")
    if forced:
        return forced
    if kit.kernel not in _accel:
        accel = "tcg"
        if kvm_usable():
            probe = _qemu(kit, "kvm", "egd_probe=1", workdir / "kvm-probe.console", [])
            with open(workdir / "kvm-probe.qemu.log", "wb") as log:
                process = subprocess.Popen(probe, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
            guest = RunningGuest(process, workdir / "kvm-probe.console", time.monotonic(),
                                 KVM_PROBE_SECONDS)
            if guest.finish().lines.get("probe") == "1":
                accel = "kvm"
        _accel[kit.kernel] = accel
    return _accel[kit.kernel]


@dataclass(frozen=True)
class GuestKit:
    """A kernel and an initramfs that boot the guest."""

    package: str
    kernel: Path
    initramfs: Path
    modules: tuple[str, ...]


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def kernel_package() -> str:
    """The concrete image package that ``linux-image-amd64`` depends on (``linux-image-6.1.0-57-amd64``)."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-[0-9][^\s]*)", line)
        if m:
            return m.group(1)
    raise RuntimeError(f"apt-cache names no kernel image that linux-image-amd64 depends on:\n{out}")


def _modinfo(data: bytes, key: str) -> str | None:
    m = re.search(rb"(?:^|\x00)" + key.encode() + rb"=([^\x00]*)\x00", data)
    return m.group(1).decode() if m else None


def _module_bytes(path: Path) -> bytes:
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko"):
        return path.read_bytes()
    raise RuntimeError(f"{path}: a compressed module this helper cannot unpack (only .ko and .ko.xz)")


def module_order(moddir: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """
    The modules that ``wanted`` need and ``modules.builtin`` does not list,
    each after the modules it depends on: (name, path).
    """
    builtin = {Path(line.strip()).name.split(".")[0].replace("-", "_")
               for line in (moddir / "modules.builtin").read_text().splitlines() if line.strip()}
    files = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        files[path.name.split(".")[0].replace("-", "_")] = path
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name in chain:
            raise RuntimeError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        path = files.get(name)
        if path is None:
            raise RuntimeError(f"module {name} is neither built in nor in {moddir}")
        for dep in filter(None, (_modinfo(_module_bytes(path), "depends") or "").split(",")):
            visit(dep.replace("-", "_"), chain + (name,))
        seen.add(name)
        order.append((name, path))

    for name in wanted:
        visit(name, ())
    return order


@dataclass
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def cpio_newc(entries: Iterable[_Entry]) -> bytes:
    """A cpio archive in the ``newc`` format the kernel unpacks as an initramfs."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\x00" * (-out.tell() % 4))

    for ino, e in enumerate([*entries, _Entry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\x00"
        fields = [ino, e.mode, 0, 0, 2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data), 0, 0,
                  e.rdev[0], e.rdev[1], len(name), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name)
        pad()
        out.write(e.data)
        pad()
    return out.getvalue()


def _busybox() -> Path:
    found = shutil.which("busybox") or "/bin/busybox"
    path = Path(found).resolve()
    if not path.exists():
        raise RuntimeError("no busybox: install Debian's busybox-static")
    head = path.read_bytes()[:4096]
    if b"ld-linux" in head:
        raise RuntimeError(f"{path} is dynamically linked: install Debian's busybox-static")
    return path


def guest_kit(cache: Path | None = None) -> GuestKit:
    """
    Debian's kernel (downloaded into ``cache`` once, unpacked there) and an
    initramfs built now.  Any failure raises: a test that needs the guest
    fails rather than skips.
    """
    cache = cache or cache_dir()
    package = kernel_package()
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        _run(["apt-get", "download", package], cwd=cache)
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} left no .deb in {cache}")
    tree = cache / package
    if not (tree / ".unpacked").exists():
        shutil.rmtree(tree, ignore_errors=True)
        _run(["dpkg-deb", "-x", str(debs[-1]), str(tree)])
        (tree / ".unpacked").write_text(debs[-1].name)
    (kernel,) = sorted((tree / "boot").glob("vmlinuz-*"))
    (moddir,) = sorted((tree / "lib" / "modules").iterdir())
    modules = module_order(moddir, WANTED_MODULES)
    entries = [_Entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "proc", "sys", "tmp", "lib",
                                                         "lib/modules")]
    entries.append(_Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_Entry("bin/busybox", stat.S_IFREG | 0o755, _busybox().read_bytes()))
    entries.append(_Entry("init", stat.S_IFREG | 0o755, INIT.encode()))
    for name, path in modules:
        entries.append(_Entry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, _module_bytes(path)))
    order = "".join(f"{name}.ko\n" for name, _ in modules)
    entries.append(_Entry("modules.order", stat.S_IFREG | 0o644, order.encode()))
    initramfs = cache / f"egd-guest-{package}.cpio.gz"
    tmp = initramfs.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio_newc(entries), compresslevel=6))
    os.replace(tmp, initramfs)
    return GuestKit(package, kernel, initramfs, tuple(name for name, _ in modules))


@dataclass
class GuestResult:
    """What the guest printed, and how QEMU ended."""

    console: str
    returncode: int | None
    seconds: float
    lines: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int | None:
        """Bytes the guest read from /dev/hwrng, or None if it never said."""
        text = self.lines.get("count")
        return int(text) if text is not None and text.strip().isdigit() else None

    @property
    def sha256(self) -> str | None:
        return self.lines.get("sha256")

    @property
    def rng_current(self) -> str | None:
        return self.lines.get("rng_current")

    @property
    def read_seconds(self) -> float | None:
        """How long the guest's read took, by its uptime clock (10 ms resolution)."""
        try:
            return float(self.lines["read_end"]) - float(self.lines["read_start"])
        except (KeyError, ValueError):
            return None

    @property
    def done(self) -> bool:
        return self.lines.get("done") == "1"


def _qemu(kit: GuestKit, accel: str, append: str, console: Path, devices: list[str]) -> list[str]:
    """The QEMU command line of the guest, its console in the file ``console``."""
    console.unlink(missing_ok=True)
    return ["qemu-system-x86_64", "-accel", accel, "-m", "256", "-smp", "1",
            "-nographic", "-nodefaults", "-no-reboot", "-monitor", "none", "-serial", f"file:{console}",
            "-kernel", str(kit.kernel), "-initrd", str(kit.initramfs),
            "-append", f"console=ttyS0 quiet panic=-1 {append}", *devices]


@dataclass
class RunningGuest:
    """A QEMU process started by :func:`start`, its console file and its deadline."""

    process: subprocess.Popen[bytes]
    console: Path
    started: float
    timeout: float

    def finish(self) -> GuestResult:
        """Wait for QEMU to exit (killed at the deadline); parse what the guest printed."""
        try:
            self.process.wait(max(0.1, self.started + self.timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        lines = {m.group(1): m.group(2).strip()
                 for m in re.finditer(r"EGD-GUEST (\w+)=(.*?)\r?$", text, flags=re.M)}
        return GuestResult(text, self.process.returncode, time.monotonic() - self.started, lines)


def start(kit: GuestKit, chardev: str | None, *, workdir: Path, name: str = "guest", nbytes: int = 65536,
          read_timeout: float = 30, timeout: float = 90, dd: bool = False, pause: int = 0) -> RunningGuest:
    """
    Start the guest with its virtio-rng on an ``rng-egd`` backend over
    ``chardev`` (a ``-chardev`` value whose id is ``c0``; None: QEMU's
    ``rng-random`` backend on /dev/urandom instead); it reads
    ``nbytes`` within ``read_timeout`` seconds (and, with ``pause``, as
    many again that many seconds later: ``count_again``), and QEMU is
    killed after ``timeout`` seconds at the latest.
    """
    console = workdir / f"{name}.console"
    append = (f"egd_bytes={nbytes} egd_timeout={int(read_timeout)} egd_pause={int(pause)}"
              + (" egd_dd=1" if dd else ""))
    if chardev is None:
        # QEMU's own backend: the host's /dev/urandom (the ceiling of virtio-rng itself).
        rng = ["-object", "rng-random,id=rng0,filename=/dev/urandom"]
    else:
        rng = ["-chardev", chardev, "-object", "rng-egd,id=rng0,chardev=c0"]
    rng += ["-device", "virtio-rng-pci,rng=rng0"]
    cmd = _qemu(kit, accelerator(kit, workdir), append, console, rng)
    with open(workdir / f"{name}.qemu.log", "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return RunningGuest(process, console, time.monotonic(), timeout)


def boot(kit: GuestKit, chardev: str | None, *, workdir: Path, **kwargs: Any) -> GuestResult:
    """:func:`start` the guest and wait for it to finish."""
    return start(kit, chardev, workdir=workdir, **kwargs).finish()
