"""
Raw TCP stream throughput against two baselines measured in the same run.

- the appliance: ``twistd -n entropy --source kernel`` as a subprocess, read
  for SECONDS by a plain socket reader (recv_into a 1 MiB buffer);
- ``dd if=/dev/urandom of=/dev/null bs=1M`` for the same time;
- the loopback ceiling: a separate process resending one prebuilt 1 MiB
  buffer with sendall, read by the same reader;
- AES-256-CTR keystream in this process (``cryptography``), 256 KiB per
  call into a new bytes object, as the DRBG makes each chunk;
- the one-core bound of a stream that makes its bytes and sends them on the
  same core, ``1 / (1/AES + 1/send)``, and the stream's share of it.

Prints MB/s (10^6 bytes per second) and both ratios.  Not a test: nothing is
asserted.  Usage: python bench/bench_stream.py [--seconds 5] [--connections K]
[--compare-workers 2] [--source device:FIFO] [--several] [--rounds 3]

With ``--connections K`` each figure is the sum of K concurrent readers (one
process each).  ``--compare-workers N`` also runs the appliance with
``--workers N`` in the same run and reports the gain over one process.

``--source device:FIFO`` also measures a device source against the kernel
source, both with ``--reseed-bytes`` (65536 by default, so that the pool
reseeds often and seed supply matters): the benchmark makes a FIFO in a
temporary directory and feeds it with ``tests/fifo_writer.py`` in ``fast``
mode (``--pipe-size`` is passed on to it).  ``device:PATH`` reads an existing
device instead.  The two run alternately ``--rounds`` times (3 by default),
so that a change of load on a shared machine hits both, and it prints the
median rate of each and their ratio (the target is 0.9 or more); a stream
that the appliance closes is reported with the bytes it gave.

``--several`` measures three sources at once (two FIFOs, each fed by its own
``fifo_writer.py``, and the kernel) against one source (the kernel), with
the same ``--reseed-bytes`` and ``--rounds``, alternated, medians and their
ratio (the target is 0.9 or more).  Per-peer limits are off in every run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _net import free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WRITER = REPO / "tests" / "fifo_writer.py"

#: (MB/s, bytes read before the server closed the stream, or None if it stayed open)
Reading = tuple[float, int | None]


def read_for(port: int, seconds: float) -> Reading:
    """Read from 127.0.0.1:port for ``seconds``; return MB/s and how the stream ended."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with socket.create_connection(("127.0.0.1", port)) as s:
        # Let the connection settle before timing.
        total = s.recv_into(view)
        start = now = time.perf_counter()
        end = start + seconds
        closed: int | None = None
        while total and now < end:
            n = s.recv_into(view)
            now = time.perf_counter()
            if not n:
                closed = total
                break
            total += n
        if not total:
            closed = 0
    return total / max(now - start, 1e-9) / 1e6, closed


def dd_urandom(seconds: float) -> float:
    """MB/s of dd reading /dev/urandom for about ``seconds``."""
    proc = subprocess.Popen(["dd", "if=/dev/urandom", "of=/dev/null", "bs=1M"],
                            stderr=subprocess.PIPE)
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    m = re.search(rb"(\d+) bytes .* copied, ([\d.]+) s", err)
    if not m:
        raise SystemExit(f"cannot read dd's figures: {err!r}")
    return int(m.group(1)) / float(m.group(2)) / 1e6


SENDER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(1)
conn, _ = srv.accept()
buf = bytes(range(256)) * 4096
try:
    while True:
        conn.sendall(buf)
except OSError:
    pass
"""


def loopback_ceiling(seconds: float) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SENDER, str(port)])
    try:
        wait_port_once(port)
        return read_for(port, seconds)[0]
    finally:
        proc.kill()
        proc.wait()


def aes_ctr_rate(seconds: float, chunk: int = 256 * 1024) -> float:
    """MB/s of AES-256-CTR keystream, ``chunk`` bytes per call into a new bytes object."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(chunk)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        enc.update(zeros)
        done += chunk
    return done / (time.perf_counter() - start) / 1e6


def wait_port_once(port: int) -> None:
    # The sender accepts one connection only: poll with bind-checks instead.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)


def read_parallel(port: int, seconds: float, connections: int) -> Reading:
    """Sum of MB/s of ``connections`` concurrent readers, one process each."""
    if connections == 1:
        return read_for(port, seconds)
    with multiprocessing.Pool(connections) as pool:
        readings = pool.starmap(read_for, [(port, seconds)] * connections)
    closed = [c for _, c in readings if c is not None]
    return sum(r for r, _ in readings), (min(closed) if closed else None)


@contextmanager
def fifo_source(pipe_size: int | None) -> Iterator[str]:
    """A FIFO in a temporary directory, fed by ``fifo_writer.py`` in fast mode."""
    with tempfile.TemporaryDirectory(prefix="bench-fifo-") as tmp:
        fifo = os.path.join(tmp, "rng.fifo")
        control = os.path.join(tmp, "writer.mode")
        os.mkfifo(fifo)
        with open(control, "w", encoding="ascii") as f:
            f.write("fast\n")
        extra = [] if pipe_size is None else ["--pipe-size", str(pipe_size)]
        # The writer waits in open() until the appliance opens the FIFO.
        writer = subprocess.Popen([sys.executable, str(WRITER), fifo, control, *extra])
        try:
            yield f"device:{fifo}"
        finally:
            if writer.poll() is None:
                writer.terminate()
                try:
                    writer.wait(5)
                except subprocess.TimeoutExpired:
                    writer.kill()
                    writer.wait(5)


def appliance(seconds: float, workers: int | None, connections: int = 1,
              source: str | list[str] = "kernel", reseed_bytes: int | None = None) -> Reading:
    port = free_port()
    sources = [source] if isinstance(source, str) else source
    args = [arg for spec in sources for arg in ("--source", spec)]
    args += ["--stream", f"tcp:{port}:interface=127.0.0.1",
            "--http", "none", "--https", "none", "--peer-streams", "0"]
    if workers:
        args += ["--workers", str(workers)]
    if reseed_bytes is not None:
        args += ["--reseed-bytes", str(reseed_bytes)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile=/dev/null", "entropy", *args], env=env, cwd="/tmp")
    try:
        wait_port(port)
        time.sleep(1.0)  # let every worker get its first seed
        return read_parallel(port, seconds, connections)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def device_appliance(source: str, seconds: float, connections: int, reseed_bytes: int,
                     pipe_size: int | None) -> Reading:
    """The appliance on ``device:FIFO`` (a fed FIFO) or ``device:PATH``."""
    if source == "device:FIFO":
        with fifo_source(pipe_size) as spec:
            return appliance(seconds, None, connections, spec, reseed_bytes)
    return appliance(seconds, None, connections, source, reseed_bytes)


def compare_sources(source: str, seconds: float, connections: int, reseed_bytes: int,
                    pipe_size: int | None, rounds: int) -> tuple[Reading, Reading]:
    """
    Kernel and ``source`` runs, alternated ``rounds`` times so that a change
    of load on a shared machine hits both; the median of each, and the first
    closed stream if any.
    """
    kernel: list[Reading] = []
    device: list[Reading] = []
    for _ in range(rounds):
        kernel.append(appliance(seconds, None, connections, "kernel", reseed_bytes))
        device.append(device_appliance(source, seconds, connections, reseed_bytes, pipe_size))

    def median(readings: list[Reading]) -> Reading:
        closed = [c for _, c in readings if c is not None]
        return statistics.median(r for r, _ in readings), (min(closed) if closed else None)

    return median(kernel), median(device)


def compare_several(seconds: float, connections: int, reseed_bytes: int, pipe_size: int | None,
                    rounds: int) -> tuple[Reading, Reading]:
    """
    One source (the kernel) against three (two fed FIFOs and the kernel),
    alternated ``rounds`` times; the median of each.
    """
    one: list[Reading] = []
    three: list[Reading] = []
    for _ in range(rounds):
        one.append(appliance(seconds, None, connections, "kernel", reseed_bytes))
        with fifo_source(pipe_size) as first, fifo_source(pipe_size) as second:
            three.append(appliance(seconds, None, connections, [first, second, "kernel"],
                                   reseed_bytes))

    def median(readings: list[Reading]) -> Reading:
        closed = [c for _, c in readings if c is not None]
        return statistics.median(r for r, _ in readings), (min(closed) if closed else None)

    return median(one), median(three)


def rate(reading: Reading) -> str:
    """MB/s, and how many bytes a stream that was closed gave."""
    mb_s, closed = reading
    note = "" if closed is None else f"   (server closed the stream after {closed} bytes)"
    return f"{mb_s:9.1f} MB/s{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--compare-workers", type=int, default=None, metavar="N")
    parser.add_argument("--source", default="kernel", metavar="kernel|device:FIFO|device:PATH",
                        help="also measure this device source against the kernel source")
    parser.add_argument("--reseed-bytes", type=int, default=65536,
                        help="--reseed-bytes of the source comparison (default 65536)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated kernel/device runs of the source comparison (median)")
    parser.add_argument("--several", action="store_true",
                        help="also measure three sources (two fed FIFOs and the kernel) against "
                             "the kernel alone, with --reseed-bytes and --rounds")
    parser.add_argument("--pipe-size", type=int, default=None,
                        help="pipe buffer of the FIFO writer (default: its own, one page)")
    ns = parser.parse_args()
    if ns.source != "kernel" and not ns.source.startswith("device:"):
        parser.error("--source: kernel, device:FIFO or device:PATH")
    k = ns.connections
    reading = appliance(ns.seconds, None, k)
    stream = reading[0]
    multi = appliance(ns.seconds, ns.compare_workers, k) if ns.compare_workers else None
    kernel_rb = device = None
    if ns.source != "kernel":
        kernel_rb, device = compare_sources(ns.source, ns.seconds, k, ns.reseed_bytes,
                                            ns.pipe_size, max(1, ns.rounds))
    several = (compare_several(ns.seconds, k, ns.reseed_bytes, ns.pipe_size, max(1, ns.rounds))
               if ns.several else None)
    urandom = dd_urandom(ns.seconds)
    ceiling = loopback_ceiling(ns.seconds)
    aes = aes_ctr_rate(min(ns.seconds, 2.0))
    bound = 1 / (1 / aes + 1 / ceiling)
    print(f"readers                     {k:9d}")
    print(f"raw stream, 1 process       {rate(reading)}")
    if multi is not None:
        print(f"raw stream, --workers {ns.compare_workers}     {rate(multi)}"
              f"   ({multi[0] / stream:.2f}x one process)")
    if kernel_rb is not None and device is not None:
        print(f"with --reseed-bytes {ns.reseed_bytes}, median of {max(1, ns.rounds)} alternated runs:")
        print(f"  raw stream, kernel        {rate(kernel_rb)}")
        print(f"  raw stream, {ns.source:13s} {rate(device)}")
        if device[1] is None and kernel_rb[0]:
            print(f"  {ns.source} / kernel    {device[0] / kernel_rb[0]:9.2f}x   (target >= 0.90)")
        else:
            print(f"  {ns.source} / kernel          n/a   (a stream was closed; target >= 0.90)")
    if several is not None:
        one, three = several
        print(f"with --reseed-bytes {ns.reseed_bytes}, median of {max(1, ns.rounds)} alternated runs:")
        print(f"  raw stream, 1 source (kernel)          {rate(one)}")
        print(f"  raw stream, 3 sources (2 FIFOs+kernel) {rate(three)}")
        if three[1] is None and one[0]:
            print(f"  three sources / one                    {three[0] / one[0]:9.2f}x   (target >= 0.90)")
        else:
            print("  three sources / one                          n/a   (a stream was closed)")
    print(f"dd if=/dev/urandom bs=1M    {urandom:9.1f} MB/s")
    print(f"loopback sendall ceiling    {ceiling:9.1f} MB/s   (one connection)")
    print(f"AES-256-CTR keystream       {aes:9.1f} MB/s   (256 KiB per call)")
    print(f"one-core bound              {bound:9.1f} MB/s   (1 / (1/AES + 1/send))")
    print(f"stream / one-core bound     {stream / bound:9.2f}x   (target >= 0.70)")
    print(f"stream / urandom            {stream / urandom:9.2f}x")
    print(f"stream / loopback ceiling   {stream / ceiling:9.2f}x")


if __name__ == "__main__":
    main()
