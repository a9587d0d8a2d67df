"""Source parsing and device reads (auto-detection: test_detection.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entropy_appliance.source.sources import (
    DeviceSource,
    KernelSource,
    SourceError,
    SourceSpec,
    open_source,
    parse_source,
)


def test_parse_source(tmp_path: Path) -> None:
    f = tmp_path / "qrandom3"
    f.write_bytes(b"x")
    assert parse_source("kernel") == SourceSpec("kernel")
    assert parse_source(f"device:{f}") == SourceSpec("quantis", str(f))
    with pytest.raises(ValueError, match="auto, kernel or device:PATH"):
        parse_source("usb")
    with pytest.raises(ValueError, match="needs a path"):
        parse_source("device:")
    with pytest.raises(ValueError, match="No such file"):
        parse_source(f"device:{tmp_path}/missing")
    with pytest.raises(ValueError, match="not a character device"):
        parse_source(f"device:{tmp_path}")


def test_device_reads_what_there_is_and_eof_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    blob = os.urandom(3000)
    f.write_bytes(blob)
    src = open_source(SourceSpec("device", str(f)))
    assert isinstance(src, DeviceSource)
    assert src.read(2000) == blob[:2000]
    assert src.read(2000) == blob[2000:]
    with pytest.raises(SourceError, match="end of file"):
        src.read(2000)
    src.close()


def test_slow_device_read_returns_without_filling_the_request(tmp_path: Path) -> None:
    # A slow device has a few bytes now: they are handed on at once rather
    # than held until a large request is full.
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    src = DeviceSource(str(fifo))
    keeper = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY)
    try:
        os.write(writer, b"\x01" * 100)
        assert len(src.read(1 << 20)) == 100
    finally:
        os.close(writer)
        os.close(keeper)
        src.close()


def test_vanished_device_is_an_error(tmp_path: Path) -> None:
    src = DeviceSource(str(tmp_path / "gone"))
    with pytest.raises(SourceError, match="cannot open"):
        src.read(16)


def test_fifo_without_writer_is_eof_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match="end of file"):
        DeviceSource(str(fifo)).read(16)


def test_kernel_source() -> None:
    assert len(KernelSource().read(64)) == 64
