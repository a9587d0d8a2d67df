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

Both it and pollen serve one ECDSA P-256 certificate.  For one process,
and for ``--workers N`` (default 2; 0: skip), it measures, over http and
(unless ``--http-only``) https:

- pollinate-style ``POST /`` (``challenge=<128 hex>``), keep-alive (wrk),
  req/s, beside pollen's own ``POST /``;
- keep-alive ``GET /v1/random?bytes=64``, req/s, beside pollen's
  ``GET /?challenge=`` (pollen's smallest random answer);
- ``GET /v1/random?bytes=1048576``, MB/s (pollen has no such answer);
- ``POST /`` with a **new TLS connection per request** (``tls-close``): wrk
  over https with ``Connection: close``;
- ``POST /`` over TLS, one request per new connection, as pollinate's curl
  sends it: HTTP/1.1 with no ``Connection: close``, the client closes after
  the answer (``h1-conn``), and over h2 (``h2-conn``); and the same
  offering ``h2,http/1.1`` as curl does (``alpn-conn``), so the server's
  ALPN preference decides.  h2load opens ``--conn-rate`` connections a
  second (``-r``) for the whole time, one request each, and the figure is
  the 2xx answers over the time until the last one; a server slower than
  that rate finishes late, and its figure is its own rate;
- h2 keep-alive, ``h2load -c 32 -m 10``, ``POST /`` and ``GET 64 B``.
  Every h2 measurement offers only ``h2`` by ALPN, so it measures HTTP/2
  whatever the server prefers;
- latency: p50 and p99 of keep-alive ``POST /`` at a fixed moderate rate
  (``--rate`` req/s, spread over 10 wrk connections each pausing between
  requests), over http and https.

A ceiling comes first: Debian's nginx (one worker) serving a static 64-byte
file, over http, https keep-alive and h2, with the same clients; each line
prints this/nginx beside it.  Only 2xx answers are counted.

``--only TEXT`` keeps the measurements whose label holds TEXT (``"1 MiB"``).
``--glibc-tunables TEXT`` runs this tree's appliances with ``GLIBC_TUNABLES``
(see the README, "Performance", for the malloc thresholds).
The appliances are measured in turn, test by test (pollen, the baseline,
this tree; ``--rounds`` times, keeping each one's best), so that a drift of
the machine falls on all of them alike.  Each line prints the figures and
the ratios this/baseline and this/pollen.  ``--profile`` instead runs this
tree's appliance under cProfile, restarted for each measurement that
``--only`` keeps, and prints each one's top functions.  Figures are printed,
never asserted.
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
from collections.abc import Callable
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


@dataclass
class Result:
    """One client run: 2xx answers per second, bytes per second, latency percentiles (ms)."""

    rps: float
    bps: float
    p50: float | None = None
    p99: float | None = None


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise RuntimeError(f"latency {text!r} not understood")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> Result:
    """Run wrk; only 2xx answers count."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    tps = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if total is None or tps is None:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    bad = int(errors.group(1)) if errors else 0
    if bad:
        print(f"  WARNING: {bad} non-2xx responses from {url} (not counted)")
    elapsed = _ms(total.group(2) + total.group(3)) / 1e3
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    return Result((int(total.group(1)) - bad) / elapsed, float(tps.group(1)) * UNITS[tps.group(2).upper()],
                  p50 and _ms(p50.group(1)), p99 and _ms(p99.group(1)))


def h2load(url: str, argv: list[str], timeout: float) -> tuple[int, float]:
    """Run h2load once; return (2xx answers, seconds it took)."""
    out = subprocess.run(["h2load", *argv, url], capture_output=True, text=True, timeout=timeout).stdout
    done = re.search(r"finished in ([\d.]+)(\w+),", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    if done is None or ok is None:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    return int(ok.group(1)), _ms(done.group(1) + done.group(2)) / 1e3


def h2_keepalive(url: str, seconds: int, body: Path | None) -> Result:
    """h2load -c 32 -m 10 for ``seconds`` after a second of warm-up: 2xx answers per second."""
    argv = ["-c32", "-m10", "-t1", f"-D{seconds}", "--warm-up-time=1", "--npn-list=h2"]
    if body is not None:
        argv += ["-d", str(body), "-H", "content-type: application/x-www-form-urlencoded"]
    ok, elapsed = h2load(url, argv, seconds + 60)
    return Result(ok / elapsed, 0.0)


def per_connection(url: str, seconds: int, rate: int, body: Path, alpn: str) -> Result:
    """
    POSTs, one per new connection, offering ``alpn`` (``http/1.1``: HTTP/1.1
    only): ``rate`` connections a second for ``seconds``, by h2load.
    """
    total = rate * seconds
    argv = [f"-r{max(1, rate // 10)}", "--rate-period=100ms", f"-c{total}", f"-n{total}", "-m1", "-t1",
            "-d", str(body), "-H", "content-type: application/x-www-form-urlencoded"]
    argv += ["--h1"] if alpn == "http/1.1" else [f"--npn-list={alpn}"]
    ok, elapsed = h2load(url, argv, seconds + 120)
    return Result(ok / elapsed, 0.0)


def supported(tree: Path, option: str) -> bool:
    """Whether ``twist entropy`` of ``tree`` knows ``option``."""
    # Not from the current directory, which ``-m`` puts first on the path.
    out = subprocess.run([sys.executable, "-m", "twisted", "entropy", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(tree)), cwd="/", timeout=60).stdout
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
    """One measurement, and pollen's and nginx's counterparts if they have one."""

    label: str
    scheme: str
    path: str
    unit: str
    post: bool = False
    pollen_path: str | None = None
    #: wrk (keep-alive), close (wrk, Connection: close), h2 (h2load keep-alive),
    #: h1-conn, h2-conn, alpn-conn (h2load, one request per connection), latency (wrk at a rate).
    client: str = "wrk"
    #: Compared with nginx's static 64-byte file with the same client.
    ceiling: bool = False


def tests(http_only: bool) -> list[Test]:
    """The measurements, http first."""
    out = []
    for scheme in ("http",) if http_only else ("http", "https"):
        out += [
            Test(f"POST / {scheme}", scheme, "/", "req/s", post=True, pollen_path="/"),
            Test(f"GET 64 B {scheme}", scheme, "/v1/random?bytes=64", "req/s",
                 pollen_path="/?challenge=" + "ab" * 64, ceiling=True),
            Test(f"GET 1 MiB {scheme}", scheme, "/v1/random?bytes=1048576", "MB/s"),
        ]
    for scheme in ("http",) if http_only else ("http", "https"):
        out += [Test(f"POST / {scheme} p50 at rate", scheme, "/", "ms", post=True, pollen_path="/",
                     client="latency"),
                Test(f"POST / {scheme} p99 at rate", scheme, "/", "ms", post=True, pollen_path="/",
                     client="latency")]
    if not http_only:
        out += [
            Test("POST / tls-close", "https", "/", "req/s", post=True, pollen_path="/", client="close"),
            Test("POST / h1-conn", "https", "/", "req/s", post=True, pollen_path="/", client="h1-conn"),
            Test("POST / h2-conn", "https", "/", "req/s", post=True, pollen_path="/", client="h2-conn"),
            Test("POST / alpn-conn", "https", "/", "req/s", post=True, pollen_path="/", client="alpn-conn"),
            Test("POST / h2", "https", "/", "req/s", post=True, pollen_path="/", client="h2"),
            Test("GET 64 B h2", "https", "/v1/random?bytes=64", "req/s",
                 pollen_path="/?challenge=" + "ab" * 64, client="h2", ceiling=True),
        ]
    return out


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{http};
        listen 127.0.0.1:{https} ssl http2;
        ssl_certificate {tmp}/pollen.pem;
        ssl_certificate_key {tmp}/pollen.key;
        root {tmp}/www;
    }}
}}
"""


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """nginx, one worker, serving ``/r64`` (64 bytes) over http and https/h2."""
    www = tmp / "www"
    www.mkdir()
    (www / "r64").write_bytes(os.urandom(64))
    # The worker runs as nobody: it must reach and read the file (and the key).
    for path in (tmp, www, www / "r64", tmp / "pollen.pem", tmp / "pollen.key"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    http_port, https_port = free_port(), free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, http=http_port, https=https_port))
    process = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(tmp / "nginx.err")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(http_port)
    return process, http_port, https_port


def inner(args: argparse.Namespace) -> None:
    from entropy_appliance.net.tls import generate_self_signed

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    syslog_sink("/run/log")
    tmp = Path(tempfile.mkdtemp(prefix="bench_http."))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # One ECDSA P-256 pair for pollen and nginx; the appliances generate their own, also P-256.
        generate_self_signed(str(tmp / "pollen.key"), str(tmp / "pollen.pem"))
        p_http, p_https = free_port(), free_port()
        procs.append(subprocess.Popen(
            ["pollen", "-http-port", str(p_http), "-https-port", str(p_https), "-device", "/dev/urandom",
             "-cert", str(tmp / "pollen.pem"), "-key", str(tmp / "pollen.key")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(p_http)
        nginx: tuple[int, int] | None = None
        if shutil.which("nginx") is not None and not args.profile:
            process, n_http, n_https = start_nginx(tmp)
            procs.append(process)
            nginx = (n_http, n_https)

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
                     "--https", f"ssl:{a_https}:interface=127.0.0.1:backlog=4096"]
            if supported(tree, "--peer-rate"):
                argv += ["--peer-rate", "0"]
            for option in ("--peer-bandwidth", "--peer-streams", "--peer-connections"):
                if supported(tree, option):
                    argv += [option, "0"]
            if workers:
                argv += ["--workers", str(workers)]
            env = dict(os.environ, PYTHONPATH=str(tree))
            if args.glibc_tunables and name == "this":
                env["GLIBC_TUNABLES"] = args.glibc_tunables
            process = subprocess.Popen(argv, cwd=home, env=env,
                                       stdout=open(home / "app.log", "ab"), stderr=subprocess.STDOUT)
            procs.append(process)
            return App(name, tree, process, a_http, a_https)

        def ready(apps: list[App]) -> None:
            for app in apps:
                try:
                    wait_port(app.http)
                    wait_port(app.https)
                except RuntimeError:
                    log = (tmp / app.name / "app.log").read_text(errors="replace")
                    raise RuntimeError(f"{app.name} did not start; its log ends:\n{log[-3000:]}") from None
            time.sleep(1.5)  # every process seeded

        def stop(apps: list[App]) -> None:
            for app in apps:
                app.process.terminate()
            for app in apps:
                app.process.wait(30)

        challenge = hashlib.sha512(os.urandom(64)).hexdigest()
        form = tmp / "post.body"
        form.write_text(f"challenge={challenge}")
        post_lua = ('wrk.method = "POST"\n'
                    f'wrk.body = "challenge={challenge}"\n'
                    'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n')
        post = tmp / "post.lua"
        post.write_text(post_lua)
        close = tmp / "close.lua"
        close.write_text(post_lua + 'wrk.headers["Connection"] = "close"\n')
        paced = tmp / "paced.lua"
        # 10 connections, each waiting 10000/rate ms before each request: about ``rate`` req/s.
        paced.write_text(post_lua + f"function delay()\n  return {10000 / args.rate:.3f}\nend\n")
        s, c = args.seconds, args.connections

        def measure(test: Test, scheme: str, host_port: int, path: str) -> Result:
            url = f"{scheme}://127.0.0.1:{host_port}{path}"
            if test.client == "close":
                return wrk(url, s, 16, close)
            if test.client == "latency":
                return wrk(url, s, 10, paced)
            if test.client == "h2":
                return h2_keepalive(url, s, form if test.post else None)
            if test.client.endswith("-conn"):
                alpn = {"h1-conn": "http/1.1", "h2-conn": "h2", "alpn-conn": "h2,http/1.1"}[test.client]
                return per_connection(url, s, args.conn_rate, form, alpn)
            conns = min(c, 8) if test.unit == "MB/s" else c
            return wrk(url, s, conns, post if test.post else None)

        def value(test: Test, r: Result) -> float:
            if test.unit == "MB/s":
                return r.bps / 1e6
            if test.unit == "ms":
                return (r.p99 if "p99" in test.label else r.p50) or 0.0
            return r.rps

        better: Callable[[float, float], float] = max
        trees = [("this", REPO)]
        if args.baseline_tree is not None:
            trees.insert(0, ("baseline", Path(args.baseline_tree).resolve()))
        selected = [t for t in tests(args.http_only) if not args.only or args.only in t.label]

        if args.profile:
            for test in selected:
                if test.unit == "ms":
                    continue
                app = start_app("this", REPO, None, profile=True)
                ready([app])
                port = app.http if test.scheme == "http" else app.https
                r = measure(test, test.scheme, port, test.path)
                print(f"== {test.label}: this tree {value(test, r):10.0f} {test.unit} (profiled)")
                stop([app])
                stats = pstats.Stats(str(tmp / "profile.out"))
                stats.sort_stats("tottime").print_stats(args.profile_top)
            return

        print(f"wrk -t1 -c{c} -d{s}s (GET 1 MiB: -c{min(c, 8)}; tls-close: -c16 Connection: close; "
              f"latency: wrk -c10 paced to {args.rate:.0f} req/s); h2load -c32 -m10 -D{s} "
              f"(*-conn: {args.conn_rate} new connections/s); best of {args.rounds} round(s); "
              f"host CPUs: {os.cpu_count()}; load {os.getloadavg()[0]:.2f}")
        for name, tree in trees:
            print(f"  {name:8} {tree} ({git_describe(tree)})")
        layouts: list[tuple[str, int | None]] = [("one process", None)]
        if args.workers:
            layouts.append((f"--workers {args.workers}", args.workers))
        header = (f"{'':26}{'nginx':>9}{'pollen':>10}{'baseline':>11}{'this':>11}  {'unit':6}"
                  f"{'this/base':>10}{'this/pollen':>12}{'this/nginx':>11}")
        print(header)
        ceiling: dict[str, float] = {}
        for layout, workers in layouts:
            if workers and not all(supported(tree, "--workers") for _, tree in trees):
                print(f"{layout}: not supported by every tree, skipped")
                continue
            apps = [start_app(name, tree, workers) for name, tree in trees]
            ready(apps)
            print(layout)
            for test in selected:
                best: dict[str, float] = {}
                # Latency: the lowest of the rounds is kept, as rates keep the highest.
                better = min if test.unit == "ms" else max
                for _ in range(args.rounds):
                    if test.ceiling and nginx is not None and test.label not in ceiling:
                        r = measure(test, test.scheme, nginx[test.scheme == "https"], "/r64")
                        best["nginx"] = better(best.get("nginx", r.rps), r.rps)
                    if test.pollen_path is not None:
                        r = measure(test, test.scheme, p_http if test.scheme == "http" else p_https,
                                    test.pollen_path)
                        best["pollen"] = better(best.get("pollen", value(test, r)), value(test, r))
                    for app in apps:
                        port = app.http if test.scheme == "http" else app.https
                        r = measure(test, test.scheme, port, test.path)
                        best[app.name] = better(best.get(app.name, value(test, r)), value(test, r))
                if "nginx" in best:
                    ceiling[test.label] = best["nginx"]
                this, base, pollen = best["this"], best.get("baseline"), best.get("pollen")
                top = ceiling.get(test.label)
                digits = 2 if test.unit == "ms" else 0
                print(f"  {test.label:24}{cell(top, 9)}{cell(pollen, 10, digits)}"
                      f"{cell(base, 11, digits)}{cell(this, 11, digits)}  "
                      f"{test.unit:6}{cell(base and this / base, 10, 2)}"
                      f"{cell(pollen and this / pollen, 12, 2)}{cell(top and this / top, 11, 2)}",
                      flush=True)
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
    parser.add_argument("--profile", action="store_true",
                        help="profile this tree's appliance, once per measurement --only keeps")
    parser.add_argument("--profile-top", type=int, default=15, metavar="N",
                        help="functions printed per profiled measurement")
    parser.add_argument("--glibc-tunables", metavar="TEXT", default=None,
                        help="GLIBC_TUNABLES for this tree's appliances only, e.g. "
                             "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432")
    parser.add_argument("--conn-rate", type=int, default=2000, metavar="N",
                        help="new connections a second offered in the one-request-per-connection tests")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="the fixed request rate of the latency measurements, req/s")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    for tool in ("wrk", "pollen", "unshare", "ip", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed "
                     "(apt install wrk pollen util-linux iproute2 nghttp2-client; nginx is optional)")
    if args.baseline_tree is not None and not (Path(args.baseline_tree) / "entropy_appliance").is_dir():
        sys.exit(f"{args.baseline_tree} holds no entropy_appliance package "
                 "(make one with: git worktree add /tmp/base d217771)")
    argv = ["unshare", "-n", "-m", sys.executable, __file__, "--inner"] + sys.argv[1:]
    sys.exit(subprocess.run(argv).returncode)


if __name__ == "__main__":
    main()
