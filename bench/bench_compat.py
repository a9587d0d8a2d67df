"""
Benchmark: the ANU and RANDOM.ORG compatible APIs beside the appliance's own ``/v1/integers``.

Run from the repo root::

    .venv/bin/python bench/bench_compat.py [--seconds 3] [--connections 16]

Starts one ``twist entropy`` (kernel source, ``--peer-rate 0`` as every
request comes from one address, plain HTTP only) and measures, with wrk
over keep-alive connections, 2xx answers per second of:

- the baseline, ``GET /v1/integers?count=10&min=1&max=6``;
- ANU's legacy ``GET /API/jsonI.php?length=10&type=uint8``;
- RANDOM.ORG's ``generateIntegers`` (n=10, 1..6) and ``generateUUIDs`` (n=10);
- RANDOM.ORG's ``generateSignedIntegers`` (n=10), which signs each answer
  with the RSA 3072 key;
- a batch of 4 ``generateIntegers`` calls in one request.

A second of the baseline runs first, uncounted, to warm the process up.
Each line prints req/s and the ratio to the baseline.  Only 2xx answers
are counted (a JSON-RPC error is a 200, so the answers are checked once
before the run).  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _net import free_port, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def rpc(method: str, request_id: int = 1, **params: object) -> dict[str, object]:
    return {"jsonrpc": "2.0", "method": method, "params": {"apiKey": "bench", **params},
            "id": request_id}


CASES: list[tuple[str, str, object | None]] = [
    ("GET /v1/integers (baseline)", "/v1/integers?count=10&min=1&max=6", None),
    ("ANU GET /API/jsonI.php uint8", "/API/jsonI.php?length=10&type=uint8", None),
    ("RANDOM.ORG generateIntegers", "/json-rpc/4/invoke", rpc("generateIntegers", n=10, min=1, max=6)),
    ("RANDOM.ORG generateUUIDs", "/json-rpc/4/invoke", rpc("generateUUIDs", n=10)),
    ("RANDOM.ORG generateSignedIntegers", "/json-rpc/4/invoke",
     rpc("generateSignedIntegers", n=10, min=1, max=6)),
    ("RANDOM.ORG batch of 4 calls", "/json-rpc/4/invoke",
     [rpc("generateIntegers", i, n=10, min=1, max=6) for i in range(4)]),
]


def check(url: str, body: object | None) -> None:
    """One request: it must be a 200 with no JSON-RPC error, or the figures would count errors."""
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
        answer = json.loads(resp.read())
    for one in answer if isinstance(answer, list) else [answer]:
        if isinstance(one, dict) and "error" in one:
            raise RuntimeError(f"{url} answers an error: {one}")


def wrk(url: str, seconds: int, connections: int, script: Path | None) -> float:
    """2xx answers per second."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if total is None:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    bad = int(errors.group(1)) if errors else 0
    return (int(total.group(1)) - bad) / (float(total.group(2)) * scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [sys.executable, "-m", "twisted", "entropy", "--source", "kernel", "--peer-rate", "0",
             "--http", f"tcp:{port}:interface=127.0.0.1", "--https", "none", "--stream", "none"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            base = f"http://127.0.0.1:{port}"
            # A second of warm-up, uncounted: the first measurement would pay for the process's.
            wrk(base + CASES[0][1], 1, args.connections, None)
            baseline = None
            print(f"{'answer':40s} {'req/s':>10s} {'ratio':>7s}")
            for label, path, body in CASES:
                check(base + path, body)
                script = None
                if body is not None:
                    script = Path(tmp) / "post.lua"
                    script.write_text('wrk.method = "POST"\n'
                                      'wrk.headers["Content-Type"] = "application/json"\n'
                                      f"wrk.body = {json.dumps(json.dumps(body))}\n")
                rps = wrk(base + path, args.seconds, args.connections, script)
                baseline = baseline or rps
                print(f"{label:40s} {rps:10.0f} {rps / baseline:7.2f}")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
