"""Auto-detection of a hardware source, on a fake root directory."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from entropy_appliance.source.detection import (
    Detected,
    detect,
    detect_all,
    hwrng_driver,
    main,
    probe,
    probe_all,
)
from entropy_appliance.source.sources import SourceSpec


def fake_root(tmp_path: Path, devices: list[str], rng_current: str | None = None) -> Path:
    """``dev/`` with empty files for ``devices``; ``rng_current`` as the kernel would write it."""
    (tmp_path / "dev").mkdir()
    for d in devices:
        (tmp_path / "dev" / d).write_bytes(b"")
    if rng_current is not None:
        sysdir = tmp_path / "sys/class/misc/hw_random"
        sysdir.mkdir(parents=True)
        (sysdir / "rng_current").write_text(rng_current + "\n")
    return tmp_path


def unopenable(root: Path, name: str) -> None:
    """A device node that cannot be read, even by root: a link to nothing."""
    (root / "dev" / name).symlink_to(root / "dev" / "gone")


def test_quantis_comes_first(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["qrandom0", "hwrng", "chaoskey0"], "virtio_rng.0")
    assert detect(root=root) == SourceSpec("quantis", f"{root}/dev/qrandom0")


def test_the_first_readable_quantis_card(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["qrandom2", "qrandom1"])
    assert detect(root=root) == SourceSpec("quantis", f"{root}/dev/qrandom1")
    unopenable(root, "qrandom0")
    (root / "dev" / "qrandom1").unlink()
    assert detect(root=root) == SourceSpec("quantis", f"{root}/dev/qrandom2")


def test_hwrng_with_a_current_driver(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["hwrng", "chaoskey0"], "tpm-rng-0")
    found = probe(root)
    assert found == Detected(SourceSpec("hwrng", f"{root}/dev/hwrng"), "tpm-rng-0")
    assert found.describe() == f"{root}/dev/hwrng (hwrng, driver tpm-rng-0)"


@pytest.mark.parametrize("rng_current", ["none", "", None])
def test_hwrng_without_a_driver_is_passed_over(tmp_path: Path, rng_current: str | None) -> None:
    root = fake_root(tmp_path, ["hwrng", "chaoskey0"], rng_current)
    assert hwrng_driver(root) is None
    assert detect(root=root) == SourceSpec("chaoskey", f"{root}/dev/chaoskey0")


def test_an_unreadable_hwrng_is_passed_over(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["chaoskey1"], "virtio_rng.0")
    unopenable(root, "hwrng")
    assert detect(root=root) == SourceSpec("chaoskey", f"{root}/dev/chaoskey1")


def test_falls_back_to_the_kernel(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["random", "urandom"], "none")
    unopenable(root, "chaoskey0")
    assert detect(root=root) == SourceSpec("kernel")
    assert probe(root).describe() == "kernel"


def test_the_command_prints_what_auto_picks(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["chaoskey0"])
    out = io.StringIO()
    assert main(["--root", str(root)], stdout=out) == 0
    assert out.getvalue() == f"{root}/dev/chaoskey0 (chaoskey)\n"
    (root / "dev" / "chaoskey0").unlink()
    out = io.StringIO()
    assert main(["--root", str(root)], stdout=out) == 0
    assert out.getvalue() == "kernel\n"


def test_auto_uses_every_device_found_and_the_kernel(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["qrandom1", "qrandom0", "hwrng", "chaoskey0", "chaoskey1"], "tpm-rng-0")
    unopenable(root, "chaoskey2")
    dev = f"{root}/dev"
    assert detect_all(root) == [
        SourceSpec("quantis", f"{dev}/qrandom0"), SourceSpec("quantis", f"{dev}/qrandom1"),
        SourceSpec("hwrng", f"{dev}/hwrng"),
        SourceSpec("chaoskey", f"{dev}/chaoskey0"), SourceSpec("chaoskey", f"{dev}/chaoskey1"),
        SourceSpec("kernel"),
    ]
    assert probe_all(root)[2].driver == "tpm-rng-0"
    # The first is what the single-device rules pick.
    assert detect_all(root)[0] == detect(root)


def test_auto_with_no_hardware_is_the_kernel_alone(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ["hwrng", "random"], "none")
    assert detect_all(root) == [SourceSpec("kernel")]
