"""
Benchmark: the HTTP surface under wrk, against Debian's pollen server in the same run.

Run as root from the repo root::

    .venv/bin/python bench/bench_http.py [--seconds 5] [--connections 32] [--workers N]
        [--compare-workers N] [--profile]

The script re-runs itself inside a private network namespace and mount
namespace (``unshare -n -m``): only loopback exists there (pollen binds all
interfaces and has no bind option), and a private tmpfs on /run carries a
syslog socket at /run/log, which pollen's syslog client finds when /dev/log
is absent.  Inside it starts pollen and the appliance (``twist entropy``,
one process, kernel source) and runs wrk against both:

- pollinate-style ``POST /`` (``challenge=<128 hex>``), pollen and appliance,
  over http, with the ratio appliance/pollen;
- keep-alive ``GET /v1/random?bytes=64`` req/s, http and https;
- ``GET /v1/random?bytes=1048576`` MB/s, http and https.

The appliance runs with ``--peer-rate 0`` (every request comes from one
address) and, given ``--workers N``, with ``--workers N`` when its version
has that option.
``--profile`` runs the appliance under cProfile during the POST run and
prints the top functions.  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _net import free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


PROFILED_TWIST = """
import cProfile, sys
from twisted.application.twist import _twist
from twisted.application.twist._twist import Twist
_twist._exitWithSignal = lambda sig: None  # return normally so the profile is written
out = sys.argv[1]
prof = cProfile.Profile()
prof.enable()
try:
    Twist.main(["twist"] + sys.argv[2:])
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> tuple[float, float]:
    """Run wrk; return (requests/s, bytes/s)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tps = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or tps is None:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    if errors:
        print(f"  WARNING: {errors.group(1)} non-2xx responses from {url}")
    return float(rps.group(1)), float(tps.group(1)) * UNITS[tps.group(2).upper()]


def supported(option: str) -> bool:
    """Whether ``twist entropy`` of this checkout knows ``option``."""
    out = subprocess.run([sys.executable, "-m", "twisted", "entropy", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60).stdout
    return option in out


def syslog_sink(path: str) -> None:
    """A datagram socket at ``path`` that swallows syslog lines."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)

    def drain() -> None:
        while True:
            s.recv(65536)

    threading.Thread(target=drain, daemon=True).start()


def inner(args: argparse.Namespace) -> None:
    from entropy_appliance.net.tls import generate_self_signed

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    syslog_sink("/run/log")
    tmp = Path(tempfile.mkdtemp(prefix="bench_http."))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        generate_self_signed(str(tmp / "pollen.key"), str(tmp / "pollen.pem"))
        p_http, p_https = free_port(), free_port()
        procs.append(subprocess.Popen(
            ["pollen", "-http-port", str(p_http), "-https-port", str(p_https), "-device", "/dev/urandom",
             "-cert", str(tmp / "pollen.pem"), "-key", str(tmp / "pollen.key")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        env = dict(os.environ, PYTHONPATH=str(REPO))

        def start_app(workers: int | None, profile: bool) -> tuple[subprocess.Popen[bytes], int, int]:
            a_http, a_https = free_port(), free_port()
            argv = [sys.executable]
            if profile:
                # twist exits through its SIGTERM handler; dump the profile on the way out.
                argv += ["-c", PROFILED_TWIST, str(tmp / "profile.out")]
            else:
                argv += ["-m", "twisted"]
            argv += ["--log-format=text", "--log-level=warn", "entropy", "--source",
                     "kernel", "--stream", "none", "--http", f"tcp:{a_http}:interface=127.0.0.1",
                     "--https", f"ssl:{a_https}:interface=127.0.0.1"]
            if supported("--peer-rate"):
                argv += ["--peer-rate", "0"]
            if workers is not None:
                argv += ["--workers", str(workers)]
            app = subprocess.Popen(argv, cwd=tmp, env=env, stdout=open(tmp / "app.log", "ab"),
                                   stderr=subprocess.STDOUT)
            procs.append(app)
            for port in (a_http, a_https):
                wait_port(port)
            time.sleep(1.5)  # every process seeded
            return app, a_http, a_https

        def stop_app(app: subprocess.Popen[bytes]) -> None:
            app.terminate()
            app.wait(30)

        wait_port(p_http)
        challenge = hashlib.sha512(os.urandom(64)).hexdigest()
        post = tmp / "post.lua"
        post.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = "challenge={challenge}"\n'
            'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n')
        s, c = args.seconds, args.connections
        workers = args.workers if args.workers is not None and supported("--workers") else None
        processes = f"--workers {workers}" if workers else "one process"
        print(f"wrk -t1 -c{c} -d{s}s; appliance: {processes}; host CPUs: {os.cpu_count()}")

        def measure(a_http: int, a_https: int, label: str) -> dict[str, float]:
            out: dict[str, float] = {}
            out["post"], _ = wrk(f"http://127.0.0.1:{a_http}/", s, c, post)
            out["post_tls"], _ = wrk(f"https://127.0.0.1:{a_https}/", s, c, post)
            for scheme, port in (("http", a_http), ("https", a_https)):
                out[f"get64_{scheme}"], _ = wrk(f"{scheme}://127.0.0.1:{port}/v1/random?bytes=64", s, c)
            for scheme, port in (("http", a_http), ("https", a_https)):
                _, bps = wrk(f"{scheme}://127.0.0.1:{port}/v1/random?bytes=1048576", s, min(c, 8))
                out[f"mib_{scheme}"] = bps / 1e6
            return out

        app, a_http, a_https = start_app(workers, args.profile)
        if args.profile:
            app_rps, _ = wrk(f"http://127.0.0.1:{a_http}/", s, c, post)
            print(f"POST / appliance {app_rps:10.0f} req/s (profiled)")
            stop_app(app)
            stats = pstats.Stats(str(tmp / "profile.out"))
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
            return
        pollen_rps, _ = wrk(f"http://127.0.0.1:{p_http}/", s, c, post)
        pollen_tls, _ = wrk(f"https://127.0.0.1:{p_https}/", s, c, post)
        one = measure(a_http, a_https, processes)
        stop_app(app)
        print(f"POST / pollinate-style   pollen {pollen_rps:10.0f} req/s   "
              f"appliance {one['post']:10.0f} req/s   ratio {one['post'] / pollen_rps:.2f}  "
              "(target >= 0.5 one process, 0.8 with workers)")
        print(f"POST / over https        pollen {pollen_tls:10.0f} req/s   "
              f"appliance {one['post_tls']:10.0f} req/s   ratio {one['post_tls'] / pollen_tls:.2f}")
        for scheme in ("http", "https"):
            print(f"GET bytes=64 {scheme:5}       appliance {one[f'get64_{scheme}']:10.0f} req/s")
        for scheme in ("http", "https"):
            print(f"GET bytes=1MiB {scheme:5}     appliance {one[f'mib_{scheme}']:10.0f} MB/s"
                  + ("  (target >= 1000 MB/s)" if scheme == "http" else ""))
        if args.compare_workers:
            app, a_http, a_https = start_app(args.compare_workers, False)
            many = measure(a_http, a_https, f"--workers {args.compare_workers}")
            stop_app(app)
            pollen_again, _ = wrk(f"http://127.0.0.1:{p_http}/", s, c, post)
            pollen_mean = (pollen_rps + pollen_again) / 2
            n = args.compare_workers
            print(f"--workers {n} against {processes}, same run:")
            for key, unit in (("post", "req/s"), ("post_tls", "req/s"), ("get64_http", "req/s"),
                              ("get64_https", "req/s"), ("mib_http", "MB/s"), ("mib_https", "MB/s")):
                gain = many[key] / one[key]
                print(f"  {key:12} {one[key]:10.0f} -> {many[key]:10.0f} {unit:5}  gain {gain:.2f}x")
            print(f"  POST / with --workers {n}: {many['post']:.0f} req/s against pollen {pollen_mean:.0f} "
                  f"(mean of its two runs): ratio {many['post'] / pollen_mean:.2f}  (target >= 0.8)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="pass --workers N to the appliance")
    parser.add_argument("--compare-workers", type=int, default=None, metavar="N",
                        help="also run the appliance with --workers N and report the gain")
    parser.add_argument("--profile", action="store_true", help="profile the appliance in the POST run")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    for tool in ("wrk", "pollen", "unshare", "ip"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt install wrk pollen util-linux iproute2)")
    argv = ["unshare", "-n", "-m", sys.executable, __file__, "--inner", "--seconds", str(args.seconds),
            "--connections", str(args.connections)] + (["--profile"] if args.profile else [])
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    if args.compare_workers is not None:
        argv += ["--compare-workers", str(args.compare_workers)]
    sys.exit(subprocess.run(argv).returncode)


if __name__ == "__main__":
    main()
