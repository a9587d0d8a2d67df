"""
EGD throughput against the raw stream, measured in the same run.

- the appliance: ``twist entropy --source kernel`` as a subprocess with the
  raw stream and an EGD endpoint, every per-peer limit off
  (``--peer-streams 0 --peer-bandwidth 0 --idle-timeout 0``): all the
  traffic comes from one address;
- EGD: one client pipelining blocking reads (0x02) of 255 bytes, the most
  one request can ask, with 64 of them in flight: as soon as replies arrive
  it sends as many new requests as it got replies;
- the baseline: one reader of the raw stream (``recv_into`` a 1 MiB buffer).

The two alternate ``--rounds`` times (3 by default), so that a change of
load on a shared machine hits both; it prints the median MB/s (10^6 bytes
per second) of each, EGD's requests per second, and the ratio (the target
is 0.5 or more).  It also prints where an EGD round trip's time goes: the
CPU time the appliance's process and this client spend per 64 replies
(one window), against the wall time per window.  The client keeps its 64
requests in flight, but the server answers all it has in one send, so the
two take turns: a round trip costs the server's time plus the client's
plus the wake-ups between them.

``--qemu MIB`` adds a second figure: a guest (see ``tests/qemu_guest.py``;
Debian's kernel is downloaded once into the test cache) reads MIB MiB from
``/dev/hwrng`` with ``dd``, its virtio-rng fed by the appliance's EGD
endpoint, and, as the baseline, by QEMU's own ``rng-random`` backend on the
host's ``/dev/urandom``; the time is the guest's own (its uptime clock).

Not a test: nothing is asserted.  Usage:
python bench/bench_egd.py [--seconds 5] [--rounds 3] [--qemu 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _net import free_ports, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: The largest read one EGD request can ask for.
REQUEST = 255
#: Requests in flight.
IN_FLIGHT = 64


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) that process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """The CPU time the appliance (``pid``) and this process spend, per wall second, while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Cpu:
        self._server, self._client = cpu_seconds(self.pid), time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        self.server = (cpu_seconds(self.pid) - self._server) / wall
        self.client = (time.process_time() - self._client) / wall


def stream_rate(port: int, seconds: float) -> float:
    """MB/s of one raw-stream reader for ``seconds``."""
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        total = s.recv_into(buf)
        start = now = time.perf_counter()
        end = start + seconds
        while now < end:
            n = s.recv_into(buf)
            if not n:
                raise SystemExit("the raw stream closed")
            total += n
            now = time.perf_counter()
    return total / (now - start) / 1e6


def egd_rate(port: int, seconds: float) -> tuple[float, float]:
    """(MB/s, requests per second) of one client pipelining 0x02 requests, IN_FLIGHT at a time."""
    ask = bytes((0x02, REQUEST))
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(ask * IN_FLIGHT)
        # Warm up on the first replies, then time.
        received = 0
        while received < REQUEST * IN_FLIGHT:
            n = s.recv_into(buf)
            if not n:
                raise SystemExit("the EGD server closed the connection")
            received += n
        s.sendall(ask * IN_FLIGHT)
        base = received
        answered = received // REQUEST
        start = now = time.perf_counter()
        end = start + seconds
        while now < end:
            n = s.recv_into(buf)
            if not n:
                raise SystemExit("the EGD server closed the connection")
            received += n
            done = received // REQUEST
            if done > answered:
                s.sendall(ask * (done - answered))
                answered = done
            now = time.perf_counter()
    elapsed = now - start
    got = received - base
    return got / elapsed / 1e6, got / REQUEST / elapsed


def start_appliance(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    stream, egd, http = free_ports(3)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "twisted", "--log-format=text", "entropy", "--source", "kernel",
            "--https", "none", "--http", f"tcp:{http}:interface=127.0.0.1",
            "--stream", f"tcp:{stream}:interface=127.0.0.1", "--egd", f"tcp:{egd}:interface=127.0.0.1",
            "--peer-streams", "0", "--peer-bandwidth", "0", "--idle-timeout", "0", "--peer-rate", "0"]
    log = open(workdir / "appliance.log", "wb")
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    for port in (stream, egd, http):
        wait_port(port)
    return proc, {"stream": stream, "egd": egd, "http": http}


def qemu_figures(port: int, mib: int, workdir: Path) -> None:
    sys.path.insert(0, str(REPO))
    from tests.qemu_guest import accelerator, boot, guest_kit

    kit = guest_kit()
    accel = accelerator(kit, workdir)
    n = mib * 1024 * 1024
    figures = {}
    for name, chardev in (("egd", f"socket,id=c0,host=127.0.0.1,port={port}"), ("urandom", None)):
        r = boot(kit, chardev, workdir=workdir, name=name, nbytes=n, read_timeout=300, timeout=360, dd=True)
        seconds = r.read_seconds
        if r.count != n or not seconds:
            raise SystemExit(f"the {name} guest read {r.count} of {n} bytes:\n{r.console[-2000:]}")
        figures[name] = n / seconds / 1e6
        print(f"guest dd from /dev/hwrng, {name:8} backend: {figures[name]:8.2f} MB/s "
              f"({mib} MiB in {seconds:.2f} s, {accel})")
    print(f"guest ratio egd/rng-random:                 {figures['egd'] / figures['urandom']:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--qemu", type=int, default=0, metavar="MIB",
                        help="also boot a guest that reads MIB MiB with dd (0: no)")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, ports = start_appliance(workdir)
        try:
            stream_rate(ports["stream"], 1.0)  # the pool seeds and warms up
            streams, egds, requests, loads = [], [], [], []
            for _ in range(args_rounds(ns)):
                with Cpu(proc.pid) as stream_cpu:
                    streams.append(stream_rate(ports["stream"], ns.seconds))
                with Cpu(proc.pid) as egd_cpu:
                    mb, rps = egd_rate(ports["egd"], ns.seconds)
                egds.append(mb)
                requests.append(rps)
                loads.append((stream_cpu, egd_cpu, rps))
            s, e, r = statistics.median(streams), statistics.median(egds), statistics.median(requests)
            print(f"raw stream (1 reader):                       {s:8.1f} MB/s   rounds {fmt(streams)}")
            print(f"EGD 0x02 x {REQUEST} B, {IN_FLIGHT} in flight:             {e:8.1f} MB/s   "
                  f"rounds {fmt(egds)}")
            print(f"EGD requests per second:                     {r:8.0f}")
            print(f"ratio EGD/raw stream:                        {e / s:8.2f}   (target >= 0.5)")
            print_costs(loads)
            if ns.qemu:
                qemu_figures(ports["egd"], ns.qemu, workdir)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def print_costs(loads: list[tuple[Cpu, Cpu, float]]) -> None:
    """Where a window of EGD replies goes: wall time, the appliance's CPU and the client's."""
    med = statistics.median
    per_window = [IN_FLIGHT / rps for _, _, rps in loads]  # wall seconds per window
    server = med(e.server * w for (_, e, _), w in zip(loads, per_window, strict=True))
    client = med(e.client * w for (_, e, _), w in zip(loads, per_window, strict=True))
    print(f"EGD per window of {IN_FLIGHT} replies:               {med(per_window) * 1e6:8.1f} us wall, "
          f"{server * 1e6:.1f} us appliance CPU, {client * 1e6:.1f} us client CPU")
    print(f"CPU busy, raw stream: appliance {med(s.server for s, _, _ in loads):.0%}, "
          f"client {med(s.client for s, _, _ in loads):.0%}; "
          f"EGD: appliance {med(e.server for _, e, _ in loads):.0%}, "
          f"client {med(e.client for _, e, _ in loads):.0%}")


def args_rounds(ns: argparse.Namespace) -> int:
    return max(1, int(ns.rounds))


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
