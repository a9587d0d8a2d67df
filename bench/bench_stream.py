"""
Raw TCP stream throughput against two baselines measured in the same run.

- the appliance: ``twistd -n entropy --source kernel`` as a subprocess, read
  for SECONDS by a plain socket reader (recv_into a 1 MiB buffer);
- ``dd if=/dev/urandom of=/dev/null bs=1M`` for the same time;
- the loopback ceiling: a separate process resending one prebuilt 1 MiB
  buffer with sendall, read by the same reader.

Prints MB/s (10^6 bytes per second) and both ratios.  Not a test: nothing is
asserted.  Usage: python bench/bench_stream.py [--seconds 5] [--connections K]
[--compare-workers 2]

With ``--connections K`` each figure is the sum of K concurrent readers (one
process each).  ``--compare-workers N`` also runs the appliance with
``--workers N`` in the same run and reports the gain over one process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _net import free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def read_for(port: int, seconds: float) -> float:
    """Read from 127.0.0.1:port for ``seconds``; return MB/s."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        # Let the connection settle before timing.
        s.recv_into(view)
        start = time.perf_counter()
        end = start + seconds
        while True:
            n = s.recv_into(view)
            if not n:
                raise SystemExit(f"connection closed after {total} bytes")
            total += n
            now = time.perf_counter()
            if now >= end:
                break
    return total / (now - start) / 1e6


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
        return read_for(port, seconds)
    finally:
        proc.kill()
        proc.wait()


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


def read_parallel(port: int, seconds: float, connections: int) -> float:
    """Sum of MB/s of ``connections`` concurrent readers, one process each."""
    if connections == 1:
        return read_for(port, seconds)
    with multiprocessing.Pool(connections) as pool:
        return sum(pool.starmap(read_for, [(port, seconds)] * connections))


def appliance(seconds: float, workers: int | None, connections: int = 1) -> float:
    port = free_port()
    args = ["--source", "kernel", "--stream", f"tcp:{port}:interface=127.0.0.1",
            "--http", "none", "--https", "none", "--peer-streams", "0"]
    if workers:
        args += ["--workers", str(workers)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--compare-workers", type=int, default=None, metavar="N")
    ns = parser.parse_args()
    k = ns.connections
    stream = appliance(ns.seconds, None, k)
    multi = appliance(ns.seconds, ns.compare_workers, k) if ns.compare_workers else None
    urandom = dd_urandom(ns.seconds)
    ceiling = loopback_ceiling(ns.seconds)
    print(f"readers                     {k:9d}")
    print(f"raw stream, 1 process       {stream:9.1f} MB/s")
    if multi is not None:
        print(f"raw stream, --workers {ns.compare_workers}     {multi:9.1f} MB/s"
              f"   ({multi / stream:.2f}x one process)")
    print(f"dd if=/dev/urandom bs=1M    {urandom:9.1f} MB/s")
    print(f"loopback sendall ceiling    {ceiling:9.1f} MB/s   (one connection)")
    print(f"stream / urandom            {stream / urandom:9.2f}x")
    print(f"stream / loopback ceiling   {stream / ceiling:9.2f}x")


if __name__ == "__main__":
    main()
