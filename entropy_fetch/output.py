"""
Where the bytes go: the text encoder, stdout or a file that appears only
when complete, and the progress line on stderr.

The progress line is a dozen lines of our own rather than a dependency: the
client installs with nothing beyond the appliance's own requirements, which
matters on hosts that seed themselves at boot.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from collections.abc import Callable
from typing import IO

__all__ = ["FORMATS", "Encoder", "Output", "Progress"]

#: Output encodings; hex and base64 are one line with a final newline.
FORMATS = ("binary", "hex", "base64")


class Encoder:
    """Streams bytes out as binary, hex, or base64 (one line, newline-terminated)."""

    def __init__(self, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self._carry = b""

    def encode(self, data: bytes) -> bytes:
        """Encode one chunk; base64 holds back up to two bytes for the next."""
        if self.fmt == "binary":
            return data
        if self.fmt == "hex":
            return data.hex().encode("ascii")
        data = self._carry + data
        cut = len(data) - len(data) % 3
        self._carry = data[cut:]
        return base64.b64encode(data[:cut])

    def finish(self) -> bytes:
        """The tail: base64 padding and the final newline of text formats."""
        if self.fmt == "binary":
            return b""
        tail = base64.b64encode(self._carry) if self.fmt == "base64" else b""
        self._carry = b""
        return tail + b"\n"


class Output:
    """
    Where the bytes go.  For a file: a temporary file beside it (mode 0600,
    as ``mkstemp`` makes it), renamed into place by :meth:`commit`;
    :meth:`abort` removes it, so a failed run never leaves a short file.
    """

    def __init__(self, path: str | None, stdout: IO[bytes]) -> None:
        self.path = path
        self._tmp: str | None = None
        if path is None:
            self._f: IO[bytes] = stdout
        else:
            full = os.path.abspath(path)
            # Same directory, so that the final rename cannot cross file systems.
            fd, self._tmp = tempfile.mkstemp(
                dir=os.path.dirname(full), prefix=f".{os.path.basename(full)}.", suffix=".part")
            self._f = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """Write some output."""
        if data:
            self._f.write(data)

    def commit(self) -> None:
        """Everything arrived: flush, and move the file into place."""
        self._f.flush()
        if self._tmp is not None and self.path is not None:
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self.path)
            self._tmp = None

    def abort(self) -> None:
        """Something failed: leave no partial file."""
        if self._tmp is not None:
            self._f.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None
        else:
            try:
                self._f.flush()
            except OSError:
                pass


class Progress:
    """A one-line progress report on stderr, redrawn at most a few times a second."""

    def __init__(self, total: int, stream: IO[str], enabled: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self._stream = stream
        self.enabled = enabled
        self._clock = clock
        self._start = clock()
        self._last = -1.0
        self.done = 0

    def update(self, n: int) -> None:
        """Count ``n`` more bytes."""
        self.done += n
        if self.enabled:
            now = self._clock()
            if now - self._last >= 0.2:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / elapsed / 1e6
        self._stream.write(f"\r{self.done}/{self.total} bytes {pct:5.1f}% {rate:8.2f} MB/s")
        self._stream.flush()

    def close(self) -> None:
        """Draw the final figure and end the line."""
        if self.enabled:
            self._draw(self._clock())
            self._stream.write("\n")
            self._stream.flush()
