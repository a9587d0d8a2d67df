"""
The onion options: virtual ports and their targets, the client
authorization directory, and the usage errors ``twistd entropy`` gives for
bad onion options.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.python import usage

from entropy_appliance.onion.config import OnionPort, load_client_auth, parse_ports

PORTS = [OnionPort(80, "http"), OnionPort(9000, "stream")]


def test_parse_ports() -> None:
    assert parse_ports("80:http,9000:stream") == PORTS
    assert parse_ports(" 443:http ") == [OnionPort(443, "http")]
    for bad in ("", "80", "80:ftp", "0:http", "70000:http", "80:http,80:stream", "x:http"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def _x25519_b32() -> str:
    pub = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b32encode(pub).decode().rstrip("=")


def test_client_auth_dir(tmp_path: Any) -> None:
    a, b = _x25519_b32(), _x25519_b32()
    (tmp_path / "alice.auth").write_text(f"descriptor:x25519:{a}\n")
    (tmp_path / "bob.auth").write_text(f"descriptor:x25519:{b.lower()}")
    (tmp_path / "README").write_text("not a key")
    assert load_client_auth(str(tmp_path)) == [a, b]
    (tmp_path / "carol.auth").write_text("descriptor:x25519:AAAA")
    with pytest.raises(ValueError, match="carol.auth"):
        load_client_auth(str(tmp_path))


def test_client_auth_empty_dir_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="no .auth files"):
        load_client_auth(str(tmp_path))


# --- options ------------------------------------------------------------------


def _options(args: list[str]) -> Any:
    from entropy_appliance.tap import Options

    o = Options()
    o.parseOptions(["--source", "kernel", *args])
    return o


def test_options_default_off() -> None:
    assert _options([]).config.onion is None


def test_options_missing_tor_binary_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(usage.UsageError, match="apt install tor"):
        _options(["--onion", "--tor-binary", str(tmp_path / "no-tor"),
                  "--onion-key", str(tmp_path / "k")])


def test_options_corrupt_key_is_a_clear_error(tmp_path: Any) -> None:
    (tmp_path / "k").write_bytes(b"not a key")
    with pytest.raises(usage.UsageError, match="corrupt"):
        _options(["--onion", "--tor-control", "unix:/run/tor/control", "--onion-key", str(tmp_path / "k")])
    assert (tmp_path / "k").read_bytes() == b"not a key"


def test_options_bad_values(tmp_path: Any) -> None:
    key = ["--onion-key", str(tmp_path / "k"), "--tor-control", "unix:/x"]
    with pytest.raises(usage.UsageError, match="--onion-ports"):
        _options(["--onion", "--onion-ports", "80:gopher", *key])
    with pytest.raises(usage.UsageError, match="--tor-control"):
        _options(["--onion", "--onion-key", str(tmp_path / "k"), "--tor-control", "carrier-pigeon:9"])
    with pytest.raises(usage.UsageError, match="--onion-client-auth"):
        _options(["--onion", "--onion-client-auth", str(tmp_path), *key])


def test_options_valid(tmp_path: Any) -> None:
    (tmp_path / "pw").write_text("secret\n")
    o = _options(["--onion", "--onion-ports", "80:http", "--tor-control", "tcp:127.0.0.1:9051",
                  "--tor-password-file", str(tmp_path / "pw"), "--onion-key", str(tmp_path / "k")])
    onion = o.config.onion
    assert onion.ports == (OnionPort(80, "http"),)
    assert onion.tor_control == "tcp:127.0.0.1:9051"
    assert onion.tor_password == "secret"
    assert "secret" not in repr(onion)
    assert not (tmp_path / "k").exists()  # created by makeService, not by parsing
