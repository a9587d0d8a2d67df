"""
Two appliances behind HAProxy against one appliance reached directly, in
one run, on loopback.

- Two ``twist entropy`` processes (kernel source, per-peer limits off, as
  every request comes from one address), each with ``haproxy:`` listeners
  for HTTP and the raw stream (``--trusted-proxy 127.0.0.1``) and plain
  ones beside them; node 1's plain listeners are the baseline.
- Debian's ``haproxy`` with the shipped ``contrib/haproxy/haproxy.cfg``,
  rewritten for loopback and two nodes exactly as the end-to-end test does
  (``tests/test_e2e_haproxy.derive_config``).
- ``POST /`` as pollinate sends it (``challenge=<128 hex>``), keep-alive,
  by ``wrk -c CONNECTIONS``: 2xx answers per second, through HAProxy and
  direct.
- The raw stream read by STREAMS concurrent readers (one process each) for
  SECONDS: MB/s (10^6 bytes per second), through HAProxy and direct.

The two run alternately ``--rounds`` times, so that a change of load on a
shared machine hits both; the medians and their ratio (through HAProxy /
direct) are printed.  On a machine with fewer cores than the two nodes,
HAProxy and the client need, the ratio says what the balancer costs rather
than what a second node adds.  Not a test: nothing is asserted.

Usage: python bench/bench_haproxy.py [--seconds 5] [--connections 32]
[--streams 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))
from _net import free_ports, wait_port  # noqa: E402
from bench_http import wrk  # noqa: E402
from bench_stream import read_parallel  # noqa: E402

from tests.test_e2e_haproxy import INTER, SHIPPED, derive_config  # noqa: E402

NO_LIMITS = ["--peer-rate", "0", "--peer-streams", "0", "--peer-connections", "0"]


def start_node(home: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    """One appliance: PROXY listeners for the balancer, plain ones for the baseline."""
    args = ["--source", "kernel", "--https", "none", "--trusted-proxy", "127.0.0.1", *NO_LIMITS,
            "--http", f"haproxy:tcp:{ports['http']}:interface=127.0.0.1",
            "--http", f"tcp:{ports['direct-http']}:interface=127.0.0.1",
            "--stream", f"haproxy:tcp:{ports['stream']}:interface=127.0.0.1",
            "--stream", f"tcp:{ports['direct-stream']}:interface=127.0.0.1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "twisted", "--log-format=text", "entropy", *args],
                            env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def both_up(stats_port: int, timeout: float = 30.0) -> None:
    """Return once HAProxy reports both nodes UP."""
    import csv
    import io
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/;csv", timeout=2) as r:
                rows = list(csv.DictReader(io.StringIO(r.read().decode().lstrip("# "))))
            states = {row["status"] for row in rows
                      if row["pxname"] == "entropy_http" and row["svname"].startswith("node")}
            if states == {"UP"}:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("HAProxy never saw both nodes up")


def alternate(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Run each case ``rounds`` times, in turn; the median of each."""
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds):
        for name, run in cases.items():
            figures[name].append(run())
            print(f"  round {round_ + 1}: {name} {figures[name][-1]:,.0f}", flush=True)
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("haproxy", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (apt-get install {tool})")
    names = ("http", "direct-http", "stream", "direct-stream", "https")
    free = iter(free_ports(2 * len(names) + 4))
    nodes = [{name: next(free) for name in names} for _ in range(2)]
    front = {name: next(free) for name in ("http", "https", "stream", "stats")}
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-haproxy-") as tmp:
        try:
            for i, ports in enumerate(nodes):
                home = Path(tmp) / f"node{i + 1}"
                home.mkdir()
                processes.append(start_node(home, ports))
            for ports in nodes:
                wait_port(ports["direct-http"])
            config = Path(tmp) / "haproxy.cfg"
            config.write_text(derive_config(SHIPPED.read_text(), nodes, front, INTER))
            processes.append(subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            both_up(front["stats"])
            time.sleep(1.0)
            body = Path(tmp) / "post.lua"
            body.write_text('wrk.method = "POST"\n'
                            f'wrk.body = "challenge={"ab" * 64}"\n'
                            'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n')
            s, c, k = args.seconds, args.connections, args.streams
            direct = nodes[0]
            figures = alternate(args.rounds, {
                "post-direct": lambda: wrk(f"http://127.0.0.1:{direct['direct-http']}/", s, c, body).rps,
                "post-haproxy": lambda: wrk(f"http://127.0.0.1:{front['http']}/", s, c, body).rps,
                "stream-direct": lambda: read_parallel(direct["direct-stream"], s, k)[0],
                "stream-haproxy": lambda: read_parallel(front["stream"], s, k)[0],
            })
        finally:
            for p in reversed(processes):
                stop(p)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; median of {args.rounds} rounds "
          f"of {args.seconds} s")
    print(f"{'':34}{'one node direct':>16}{'2 nodes via HAProxy':>21}{'ratio':>8}")
    for label, key, unit in ((f"POST / keep-alive, {c} conns", "post", "req/s"),
                             (f"raw stream, {k} readers", "stream", "MB/s")):
        d, h = figures[f"{key}-direct"], figures[f"{key}-haproxy"]
        print(f"{label + ' (' + unit + ')':34}{d:>16,.0f}{h:>21,.0f}{h / d:>8.2f}")


if __name__ == "__main__":
    main()
