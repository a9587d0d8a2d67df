"""
The onion key: tor's file format both ways, the address a key names, and a
key file that is created private and never replaced.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_appliance.onion.key import (
    OnionKey,
    OnionKeyError,
    load_key,
    load_or_create_key,
    onion_address,
    parse_key,
)

# A key that tor 0.4.9 generated (ADD_ONION NEW:ED25519-V3) and the ServiceID
# it reported for it.
TOR_KEY = ("ED25519-V3:qHmghiJezPiCBdYiGQPkKOpR484FN1zsK006kq4vLW8yOu0+2fcODlSXGiD"
           "Tz3qM4SEjROPEz5LpROUXnUvw+A==")
TOR_SERVICE_ID = "gt7xxg5hh4rucst6nrecxjipwhmxkqydz54clsxoxlx3sfihl5pperad"



def test_tor_generated_key_names_the_address_tor_reported() -> None:
    key = parse_key(TOR_KEY.encode())
    assert key.service_id == TOR_SERVICE_ID
    assert key.address == TOR_SERVICE_ID + ".onion"
    assert key.control_blob() == TOR_KEY
    assert TOR_KEY not in repr(key)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_public_key_matches_cryptography(seed: bytes) -> None:
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    expected = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert OnionKey(bytes(h)).public_key == expected


def test_address_format() -> None:
    address = onion_address(bytes(32))
    assert len(address) == 56 and address.endswith("d")  # version 3 in the last character
    assert OnionKey.generate().service_id != OnionKey.generate().service_id


def test_key_created_0600_then_reused(tmp_path: Any) -> None:
    path = str(tmp_path / "certs" / "onion_ed25519.key")
    key, created = load_or_create_key(path)
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as f:
        data = f.read()
    # tor's own hs_ed25519_secret_key format
    assert data.startswith(b"== ed25519v1-secret: type0 ==\0\0\0") and len(data) == 96
    again, created_again = load_or_create_key(path)
    assert not created_again
    assert again.address == key.address
    assert [n for n in os.listdir(tmp_path / "certs")] == ["onion_ed25519.key"]


def test_corrupt_key_is_an_error_and_is_kept(tmp_path: Any) -> None:
    path = tmp_path / "k"
    good = OnionKey.generate().file_bytes()
    for bad in (b"", b"garbage", good[:-1], good[:32] + b"\xff" * 64, b"ED25519-V3:!!!"):
        path.write_bytes(bad)
        with pytest.raises(OnionKeyError, match="corrupt"):
            load_or_create_key(str(path))
        assert path.read_bytes() == bad


def test_text_key_format_accepted(tmp_path: Any) -> None:
    path = tmp_path / "k"
    path.write_text("PrivateKey=" + TOR_KEY + "\n")
    assert load_key(str(path)).service_id == TOR_SERVICE_ID



def test_tor_file_format_both_ways() -> None:
    key = parse_key(TOR_KEY.encode())
    data = key.file_bytes()
    assert data[:32] == b"== ed25519v1-secret: type0 ==\0\0\0"
    assert parse_key(data) == key
    assert parse_key(data).service_id == TOR_SERVICE_ID
