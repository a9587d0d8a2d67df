"""
Benchmark: the HTTP surface under wrk, beside Debian's pollen and another source tree, in one run.

Run as root from the repo root::

    git worktree add /tmp/base d217771     # once: the tree to compare with
    .venv/bin/python bench/bench_http.py --baseline-tree /tmp/base [--seconds 3] [--connections 32]
        [--workers 2] [--rounds 1] [--http-only] [--only TEXT] [--profile]

The script re-runs itself inside a private network namespace and mount
namespace (``unshare -n -m``): only loopback exists there (pollen binds all
interfaces and has no bind option), and a private tmpfs on /run carries a
syslog socket at /run/log, which pollen's syslog client finds when /dev/log
is absent.  Inside it starts pollen and ``twist entropy`` (kernel source,
``--peer-rate 0`` as every request comes from one address) from this
checkout and, given ``--baseline-tree DIR``, from ``DIR`` too (with
``PYTHONPATH=DIR``), side by side, each in its own working directory.

For one process, and for ``--workers N`` (default 2; 0: skip), it measures
with wrk, over http and (unless ``--http-only``) https:

- pollinate-style ``POST /`` (``challenge=<128 hex>``), req/s, beside
  pollen's own ``POST /``;
- keep-alive ``GET /v1/random?bytes=64``, req/s, beside pollen's
  ``GET /?challenge=`` (pollen's smallest random answer);
- ``GET /v1/random?bytes=1048576``, MB/s (pollen has no such answer).

``--only TEXT`` keeps the measurements whose label holds TEXT (``"1 MiB"``).
The appliances are measured in turn, test by test (pollen, the baseline,
this tree; ``--rounds`` times, keeping each one's best), so that a drift of
the machine falls on all of them alike.  Each line prints the figures and
the ratios this/baseline and this/pollen.  ``--profile`` instead runs this
tree's appliance under cProfile for one POST run and prints its top
functions.  Figures are printed, never asserted.
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
from dataclasses import dataclass
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


def supported(tree: Path, option: str) -> bool:
    """Whether ``twist entropy`` of ``tree`` knows ``option``."""
    out = subprocess.run([sys.executable, "-m", "twisted", "entropy", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(tree)), timeout=60).stdout
    return option in out


def syslog_sink(path: str) -> None:
    """A datagram socket at ``path`` that swallows syslog lines."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)

    def drain() -> None:
        while True:
            s.recv(65536)

    threading.Thread(target=drain, daemon=True).start()


def cell(value: float | None, width: int, digits: int = 0) -> str:
    """``value`` right-aligned in ``width`` columns, or a dash."""
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"


def git_describe(tree: Path) -> str:
    """The commit of ``tree`` (and "+changes" if its work tree differs), for the heading."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


@dataclass
class App:
    """One running appliance: its tree, process and ports."""

    name: str
    tree: Path
    process: subprocess.Popen[bytes]
    http: int
    https: int


@dataclass(frozen=True)
class Test:
    """One wrk measurement, and pollen's counterpart if it has one."""

    label: str
    scheme: str
    path: str
    unit: str
    post: bool = False
    pollen_path: str | None = None


def tests(http_only: bool) -> list[Test]:
    """The measurements, http first."""
    out = []
    for scheme in ("http",) if http_only else ("http", "https"):
        out += [
            Test(f"POST / {scheme}", scheme, "/", "req/s", post=True, pollen_path="/"),
            Test(f"GET 64 B {scheme}", scheme, "/v1/random?bytes=64", "req/s",
                 pollen_path="/?challenge=" + "ab" * 64),
            Test(f"GET 1 MiB {scheme}", scheme, "/v1/random?bytes=1048576", "MB/s"),
        ]
    return out


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
        wait_port(p_http)

        def start_app(name: str, tree: Path, workers: int | None, profile: bool = False) -> App:
            home = tmp / name
            home.mkdir(exist_ok=True)
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
            if supported(tree, "--peer-rate"):
                argv += ["--peer-rate", "0"]
            if workers:
                argv += ["--workers", str(workers)]
            process = subprocess.Popen(argv, cwd=home, env=dict(os.environ, PYTHONPATH=str(tree)),
                                       stdout=open(home / "app.log", "ab"), stderr=subprocess.STDOUT)
            procs.append(process)
            return App(name, tree, process, a_http, a_https)

        def ready(apps: list[App]) -> None:
            for app in apps:
                wait_port(app.http)
                wait_port(app.https)
            time.sleep(1.5)  # every process seeded

        def stop(apps: list[App]) -> None:
            for app in apps:
                app.process.terminate()
            for app in apps:
                app.process.wait(30)

        challenge = hashlib.sha512(os.urandom(64)).hexdigest()
        post = tmp / "post.lua"
        post.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = "challenge={challenge}"\n'
            'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n')
        s, c = args.seconds, args.connections
        trees = [("this", REPO)]
        if args.baseline_tree is not None:
            trees.insert(0, ("baseline", Path(args.baseline_tree).resolve()))

        if args.profile:
            app = start_app("this", REPO, None, profile=True)
            ready([app])
            rps, _ = wrk(f"http://127.0.0.1:{app.http}/", s, c, post)
            print(f"POST / this tree {rps:10.0f} req/s (profiled)")
            stop([app])
            stats = pstats.Stats(str(tmp / "profile.out"))
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
            return

        print(f"wrk -t1 -c{c} -d{s}s (GET 1 MiB: -c{min(c, 8)}), best of {args.rounds} round(s); "
              f"host CPUs: {os.cpu_count()}")
        for name, tree in trees:
            print(f"  {name:8} {tree} ({git_describe(tree)})")
        layouts: list[tuple[str, int | None]] = [("one process", None)]
        if args.workers:
            layouts.append((f"--workers {args.workers}", args.workers))
        header = (f"{'':24}{'pollen':>10}{'baseline':>11}{'this':>11}  {'unit':6}"
                  f"{'this/base':>10}{'this/pollen':>12}")
        print(header)
        for layout, workers in layouts:
            if workers and not all(supported(tree, "--workers") for _, tree in trees):
                print(f"{layout}: not supported by every tree, skipped")
                continue
            apps = [start_app(name, tree, workers) for name, tree in trees]
            ready(apps)
            print(layout)
            for test in tests(args.http_only):
                if args.only and args.only not in test.label:
                    continue
                best: dict[str, float] = {}
                conns = min(c, 8) if test.unit == "MB/s" else c
                for _ in range(args.rounds):
                    if test.pollen_path is not None:
                        port = p_http if test.scheme == "http" else p_https
                        rps, _ = wrk(f"{test.scheme}://127.0.0.1:{port}{test.pollen_path}", s, conns,
                                     post if test.post else None)
                        best["pollen"] = max(best.get("pollen", 0.0), rps)
                    for app in apps:
                        port = app.http if test.scheme == "http" else app.https
                        rps, bps = wrk(f"{test.scheme}://127.0.0.1:{port}{test.path}", s, conns,
                                       post if test.post else None)
                        value = rps if test.unit == "req/s" else bps / 1e6
                        best[app.name] = max(best.get(app.name, 0.0), value)
                this, base, pollen = best["this"], best.get("baseline"), best.get("pollen")
                print(f"  {test.label:22}{cell(pollen, 10)}{cell(base, 11)}{cell(this, 11)}  "
                      f"{test.unit:6}{cell(base and this / base, 10, 2)}"
                      f"{cell(pollen and this / pollen, 12, 2)}")
            stop(apps)
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
    parser.add_argument("--seconds", type=int, default=3, help="each wrk run's length")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="also measure the appliances with --workers N (0: one process only)")
    parser.add_argument("--baseline-tree", metavar="DIR", default=None,
                        help="another source tree to measure beside this one (e.g. a git worktree)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per figure; the best is kept")
    parser.add_argument("--http-only", action="store_true", help="skip the https measurements")
    parser.add_argument("--only", metavar="TEXT", default=None,
                        help="only the measurements whose label holds TEXT, e.g. '1 MiB'")
    parser.add_argument("--profile", action="store_true", help="profile this tree's appliance in a POST run")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    for tool in ("wrk", "pollen", "unshare", "ip"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt install wrk pollen util-linux iproute2)")
    if args.baseline_tree is not None and not (Path(args.baseline_tree) / "entropy_appliance").is_dir():
        sys.exit(f"{args.baseline_tree} holds no entropy_appliance package "
                 "(make one with: git worktree add /tmp/base d217771)")
    argv = ["unshare", "-n", "-m", sys.executable, __file__, "--inner"] + sys.argv[1:]
    sys.exit(subprocess.run(argv).returncode)


if __name__ == "__main__":
    main()
