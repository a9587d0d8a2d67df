"""
A stand-in hardware RNG: writes samples into a FIFO, in a mode that a test
switches at run time.

Usage::

    python tests/fifo_writer.py FIFO CONTROL [--pipe-size BYTES]

CONTROL is a text file holding one mode; it is re-read at least every
0.1 s, so a test switches modes by rewriting it (atomically: write a temp
file, then ``os.replace``).  Modes:

- ``fast``: ``os.urandom`` as fast as the reader takes it;
- ``rate:N``: random bytes paced at about N bytes per second, in small writes;
- ``stuck``: one constant byte value, forever (the RCT's fault);
- ``biased``: random-looking bytes of which about 3 in 4 are ``0x00``, with
  no run of 31 equal bytes, so that the Adaptive Proportion Test fails it
  (its cutoff is 325 of 512 at 1 bit per sample) and the Repetition Count
  Test (cutoff 31) never does;
- ``exit``: close the FIFO and exit 0 (the reader then sees end of file).

The FIFO is opened with a blocking open, which waits for a reader, as a
device's driver would.  Then the pipe buffer is shrunk to ``--pipe-size``
(one page by default; 0 keeps the kernel's 64 KiB): a device holds little
output of its own, and a large FIFO buffer would keep up to 64 KiB of
samples from a previous mode that a reader would see after the switch.
Writes are non-blocking and waited for in slices of at most 0.1 s, so a
mode switch takes effect even while nobody reads; a chunk half-written at
a switch is dropped.  A reader that goes away (``BrokenPipeError``) ends the
writer quietly with status 0.  Standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import select
import sys
import threading
import time

__all__ = ["biased_bytes", "stuck_bytes", "read_mode", "MODES"]

MODES = ("fast", "rate:N", "stuck", "biased", "exit")

#: How often the control file is re-read, at the latest.
POLL = 0.1
FAST_CHUNK = 64 * 1024
#: Writes are this small when paced, so the rate is smooth.
RATE_CHUNK = 256
#: The probability that a ``biased`` byte is 0x00, before run breaking.
BIAS = 0.75
#: ``biased`` output never holds a run this long (one below the RCT cutoff
#: of 31 at 1 bit per sample and alpha 2**-30).
MAX_RUN = 30

_BIAS_TABLE = bytes(0 if v < round(BIAS * 256) else v for v in range(256))
_LONG_ZERO_RUN = re.compile(b"(\x00{%d})\x00" % (MAX_RUN - 1))


def biased_bytes(n: int) -> bytes:
    """
    ``n`` bytes, about ``BIAS`` of them 0x00 and the rest spread over the
    top quarter of byte values, with no run of ``MAX_RUN`` or more zeros.

    Every call starts with a nonzero byte, so runs never join across calls.
    """
    raw = os.urandom(n).translate(_BIAS_TABLE)
    broken = _LONG_ZERO_RUN.sub(b"\\1\xff", raw)
    return b"\xff" + broken[1:] if broken else broken


def stuck_bytes(n: int) -> bytes:
    """``n`` copies of one byte value: a stuck-at fault."""
    return b"\xa5" * n


def read_mode(control: str, previous: str) -> str:
    """The mode in ``control``; ``previous`` if the file is missing or unknown."""
    try:
        with open(control, encoding="ascii") as f:
            mode = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return previous
    if mode in ("fast", "stuck", "biased", "exit"):
        return mode
    if mode.startswith("rate:"):
        try:
            if int(mode[5:]) > 0:
                return mode
        except ValueError:
            pass
    return previous


def _watch_for_exit(control: str, opened: threading.Event) -> None:
    """While the main thread waits in open(), honour ``exit`` on its own."""
    while not opened.wait(POLL):
        if read_mode(control, "") == "exit":
            os._exit(0)


def _chunk(mode: str) -> bytes:
    if mode == "fast":
        return os.urandom(FAST_CHUNK)
    if mode == "stuck":
        return stuck_bytes(RATE_CHUNK * 16)
    if mode == "biased":
        return biased_bytes(RATE_CHUNK * 16)
    return os.urandom(RATE_CHUNK)


def _write_all(fd: int, data: bytes, control: str, mode: str) -> str:
    """
    Write ``data``, re-reading the mode at least every ``POLL`` seconds;
    return the mode, which may have changed (the rest of ``data`` is dropped).
    """
    view = memoryview(data)
    checked = time.monotonic()
    while view:
        now = time.monotonic()
        if now - checked >= POLL:
            checked = now
            new = read_mode(control, mode)
            if new != mode:
                return new
        _, writable, _ = select.select([], [fd], [], POLL)
        if not writable:
            continue
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[n:]
    return read_mode(control, mode) if time.monotonic() - checked >= POLL else mode


def run(fifo: str, control: str, pipe_size: int) -> int:
    """Write into ``fifo`` as ``control`` says until ``exit`` or the reader leaves."""
    mode = read_mode(control, "fast")
    if mode == "exit":
        return 0
    opened = threading.Event()
    threading.Thread(target=_watch_for_exit, args=(control, opened), daemon=True).start()
    fd = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)  # blocks until a reader opens it
    opened.set()
    try:
        if pipe_size and hasattr(fcntl, "F_SETPIPE_SZ"):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, pipe_size)
        os.set_blocking(fd, False)
        next_at = time.monotonic()
        while True:
            mode = read_mode(control, mode)
            if mode == "exit":
                return 0
            if mode.startswith("rate:"):
                # Paced: one small write per slot; sleep in slices so a
                # switch is seen on time.
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(min(delay, POLL))
                    continue
                next_at = max(next_at, time.monotonic() - 1.0) + RATE_CHUNK / int(mode[5:])
            mode = _write_all(fd, _chunk(mode), control, mode)
    except BrokenPipeError:
        return 0
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fifo")
    parser.add_argument("control", help="file holding the mode: " + ", ".join(MODES))
    parser.add_argument("--pipe-size", type=int, default=4096,
                        help="pipe buffer in bytes (0: the kernel's default)")
    ns = parser.parse_args(argv)
    try:
        return run(ns.fifo, ns.control, ns.pipe_size)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
