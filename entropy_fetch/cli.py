"""
``entropy-fetch``: the command line, from arguments to exit status.

Usage::

    entropy-fetch [--bytes N] [--format binary|hex|base64] [-o FILE] URL

What it promises: the output is exactly N bytes (before text encoding) or
the exit status is not zero.  ``-o FILE`` is replaced only when complete,
and ``--seed-kernel`` mixes nothing unless every byte arrived.

Why blocking stdlib (``http.client``, ``ssl``, ``socket``) and not Twisted:
a command-line fetch is one sequential download that then exits.  The
stdlib needs no event loop, starts fast at boot, and makes every length
check an explicit line of code.  The reactor would add nothing here.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from entropy_fetch.connect import make_connector
from entropy_fetch.errors import EXIT_FAILURE, EXIT_USAGE, FetchError, ShortRead, reason
from entropy_fetch.fetch import REQUEST_MAX, fetch_http, fetch_tcp
from entropy_fetch.output import FORMATS, Encoder, Output, Progress
from entropy_fetch.pollen import fetch_pollen
from entropy_fetch.seed import SEED_MAX, IoctlFunc, seed_kernel
from entropy_fetch.target import Target, parse_hostport, parse_target
from entropy_fetch.tls import TlsConfig, parse_fingerprint
from entropy_fetch.version import __version__

__all__ = ["BYTES_MAX", "main", "parse_size"]

#: Largest N accepted at all.
BYTES_MAX = 2 ** 40

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4,
          "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4}


def parse_size(text: str) -> int:
    """Parse a byte count with an optional binary suffix (``64K``, ``16M``, ``1G``); raise ValueError."""
    # The appliance has the same parser; the client keeps its own so that it imports nothing of the server.
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num):]
    if unit not in _UNITS or not num.isdigit():
        raise ValueError(f"{text!r} is not a size (e.g. 65536, 64K, 16M, 1G)")
    return int(num) * _UNITS[unit]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that prints to a given stream, so that main() can be run in-process."""

    def __init__(self, stream: IO[str], **kw: Any) -> None:
        super().__init__(**kw)
        self._stream = stream

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            self._stream.write(message)


def _parser(stream: IO[str]) -> argparse.ArgumentParser:
    p = _Parser(
        stream,
        prog="entropy-fetch",
        description="Fetch random bytes from an entropy appliance (http, https, the raw tcp "
                    "stream, or an onion service through SOCKS5), or seed the kernel from it.",
        epilog="Exit status: 0 success, 1 network or server error, 2 usage, "
               "3 the server failed verification (TLS or pollen), 4 short read.",
    )
    p.add_argument("url", metavar="URL",
                   help="http(s)://host[:port], tcp://host[:port] (raw stream, default port 9000), "
                        "or a pollen server URL with --pollen")
    p.add_argument("-b", "--bytes", default="64", metavar="N",
                   help="how many random bytes (K/M/G suffixes; default 64)")
    p.add_argument("-f", "--format", default="binary", choices=list(FORMATS),
                   help="output encoding (default binary; hex and base64 end with a newline)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE (mode 0600, replaced only when complete) instead of stdout")
    p.add_argument("--cacert", metavar="FILE", help="trust only this PEM CA bundle for https")
    p.add_argument("--fingerprint", metavar="SHA256",
                   help="pin the server certificate's SHA-256 (hex, colons allowed); "
                        "alone, it replaces CA checks")
    p.add_argument("--socks", metavar="HOST:PORT",
                   help="connect through this SOCKS5 proxy (e.g. tor at 127.0.0.1:9050); "
                        "the proxy resolves the host name; needed for .onion")
    p.add_argument("--pollen", action="store_true",
                   help="speak the pollinate challenge/response (POST to URL) instead of /v1/random")
    p.add_argument("--seed-kernel", action="store_true",
                   help="mix the bytes into the kernel pool (write to /dev/urandom) instead of "
                        "printing them")
    p.add_argument("--credit", nargs="?", const="auto", metavar="BITS",
                   help="with --seed-kernel, as root: use RNDADDENTROPY and credit BITS "
                        "(default min(8*N, 256))")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="network timeout per operation (default 30)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # For tests: where --seed-kernel writes, and the HTTP request size.
    p.add_argument("--device", default="/dev/urandom", help=argparse.SUPPRESS)
    p.add_argument("--request-size", default=str(REQUEST_MAX), help=argparse.SUPPRESS)
    return p


_T = TypeVar("_T")


def _parse_option(p: argparse.ArgumentParser, option: str, parse: Callable[[str], _T], text: str) -> _T:
    """``parse(text)``, or a usage error (exit 2) that names the option."""
    try:
        return parse(text)
    except ValueError as e:
        p.error(f"{option}: {e}")


@dataclass(frozen=True)
class _Plan:
    """The command line, checked: everything a run needs."""

    target: Target
    n: int
    socks: tuple[str, int] | None
    tls: TlsConfig
    credit: int | None
    request_max: int


def _plan(p: argparse.ArgumentParser, a: argparse.Namespace) -> _Plan:
    try:
        target = parse_target(a.url)
    except ValueError as e:
        p.error(str(e))
    n = _parse_option(p, "--bytes", parse_size, a.bytes)
    if not 1 <= n <= BYTES_MAX:
        p.error("--bytes must be between 1 and 1T")
    socks = _parse_option(p, "--socks", parse_hostport, a.socks) if a.socks else None
    if socks is None and target.is_onion:
        p.error(f"{target.host} is an onion address: give --socks HOST:PORT "
                "(tor's SOCKS port, usually 127.0.0.1:9050)")
    fingerprint = None
    if a.fingerprint:
        fingerprint = _parse_option(p, "--fingerprint", parse_fingerprint, a.fingerprint)
    if (a.cacert or fingerprint) and target.scheme != "https":
        p.error("--cacert and --fingerprint need an https:// URL")
    if a.pollen and target.scheme == "tcp":
        p.error("--pollen needs an http:// or https:// URL")
    credit = None
    if a.credit is not None:
        if not a.seed_kernel:
            p.error("--credit needs --seed-kernel")
        if a.credit == "auto":
            credit = min(8 * n, 256)
        elif a.credit.isdigit() and int(a.credit) <= 8 * n:
            credit = int(a.credit)
        else:
            p.error(f"--credit {a.credit!r}: must be a whole number of bits, at most 8*N")
    if a.seed_kernel:
        if a.output:
            p.error("--seed-kernel and -o exclude each other: seed material should not be kept")
        if a.format != "binary":
            p.error("--format applies to output, and --seed-kernel writes none")
        if n > SEED_MAX:
            p.error("--seed-kernel takes at most 1M bytes: the kernel pool holds 256 bits")
    request_max = _parse_option(p, "--request-size", parse_size, a.request_size)
    if not a.timeout > 0:
        p.error("--timeout must be more than 0 seconds")
    return _Plan(target, n, socks, TlsConfig(a.cacert, fingerprint), credit, max(1, request_max))


def main(argv: Sequence[str] | None = None, *, stdout: IO[bytes] | None = None,
         stderr: IO[str] | None = None, ioctl: IoctlFunc = fcntl.ioctl,
         geteuid: Callable[[], int] = os.geteuid) -> int:
    """
    Run ``entropy-fetch``; returns the exit status.

    ``ioctl`` and ``geteuid`` stand in for the kernel's, so that ``--credit``
    can be run without root and without crediting the host's pool.
    """
    err = stderr if stderr is not None else sys.stderr
    out_stream = stdout if stdout is not None else sys.stdout.buffer
    p = _parser(err)
    try:
        a = p.parse_args(argv)
        plan = _plan(p, a)
    except SystemExit as e:  # argparse reports usage errors this way
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if plan.credit is not None and geteuid() != 0:
        err.write("entropy-fetch: error: --credit (RNDADDENTROPY) needs root\n")
        return EXIT_USAGE

    connector = make_connector(plan.target, plan.socks, a.timeout, plan.tls)
    chunks: Iterator[bytes]
    if a.pollen:
        chunks = fetch_pollen(connector, plan.n, plan.target, a.timeout)
    elif plan.target.scheme == "tcp":
        chunks = fetch_tcp(connector, plan.n, plan.target)
    else:
        chunks = fetch_http(connector, plan.n, plan.target, a.timeout, plan.request_max)

    progress = Progress(plan.n, err, enabled=not a.quiet and err.isatty())
    if a.seed_kernel:
        return _run_seed(chunks, plan, a.device, progress, err, ioctl)
    return _run_output(chunks, plan, a.output, a.format, out_stream, progress, err)


def _run_output(chunks: Iterator[bytes], plan: _Plan, path: str | None, fmt: str,
                out_stream: IO[bytes], progress: Progress, err: IO[str]) -> int:
    try:
        output = Output(path, out_stream)
    except OSError as e:
        err.write(f"entropy-fetch: error: -o {path}: {reason(e)}\n")
        return EXIT_FAILURE
    encoder = Encoder(fmt)
    try:
        for data in chunks:
            output.write(encoder.encode(data))
            progress.update(len(data))
        output.write(encoder.finish())
        if progress.done != plan.n:
            raise ShortRead(f"got {progress.done} of {plan.n} bytes")
        output.commit()
    except FetchError as e:
        output.abort()
        progress.close()
        err.write(f"entropy-fetch: error: {e}\n")
        if path is None:
            err.write("entropy-fetch: the output on stdout is incomplete\n")
        return e.exit_code
    except BrokenPipeError:
        output.abort()
        err.write("entropy-fetch: error: the output was closed before every byte was written\n")
        return EXIT_FAILURE
    except OSError as e:
        output.abort()
        err.write(f"entropy-fetch: error: {reason(e)}\n")
        return EXIT_FAILURE
    progress.close()
    return 0


def _run_seed(chunks: Iterator[bytes], plan: _Plan, device: str, progress: Progress,
              err: IO[str], ioctl: IoctlFunc) -> int:
    # Collect everything first, so that a failed fetch mixes and credits nothing.
    buf = bytearray()
    try:
        for data in chunks:
            buf += data
            progress.update(len(data))
        if len(buf) != plan.n:
            raise ShortRead(f"got {len(buf)} of {plan.n} bytes")
    except FetchError as e:
        progress.close()
        err.write(f"entropy-fetch: error: {e}; the kernel pool was not touched\n")
        return e.exit_code
    progress.close()
    try:
        seed_kernel(bytes(buf), device, plan.credit, ioctl)
    except OSError as e:
        err.write(f"entropy-fetch: error: seeding the kernel through {device}: {reason(e)}\n")
        return EXIT_FAILURE
    finally:
        # Seed material should not outlive its use in this process's memory.
        buf[:] = bytes(len(buf))
    how = f"credited {plan.credit} bits" if plan.credit is not None else "not credited"
    err.write(f"entropy-fetch: mixed {plan.n} bytes into the kernel pool via {device} ({how})\n")
    return 0
