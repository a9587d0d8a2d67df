"""``--compat``, ``--api-keys``, ``--signing-key``: parsing, startup errors, the kept key file."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from entropy_appliance.app.options import parse_config
from entropy_appliance.web.compat import (
    ApiKeys,
    ApiKeysError,
    SigningKey,
    SigningKeyError,
    load_api_keys,
    load_or_create_signing_key,
    load_signing_key,
    parse_apis,
)


def test_parse_apis() -> None:
    assert parse_apis("anu,randomorg") == parse_apis("all") == {"anu", "randomorg"}
    assert parse_apis(" RandomOrg ") == {"randomorg"}
    assert parse_apis("none") == frozenset()
    for bad in ("", "anu,drand", "none,anu"):
        with pytest.raises(ValueError, match="anu, randomorg"):
            parse_apis(bad)


def test_the_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config([])
    assert config.compat.apis == {"anu", "randomorg"} and not config.compat.keys.checked
    assert parse_config(["--compat", "none"]).compat.apis == frozenset()
    assert parse_config([], {"ENTROPY_COMPAT": "anu"}).compat.apis == {"anu"}
    with pytest.raises(usage.UsageError, match="--compat"):
        parse_config(["--compat", "random.org"])
    keys = tmp_path / "keys"
    keys.write_text("# our clients\n\n  00000000-0000-0000-0000-000000000000  \nabc\n")
    config = parse_config(["--api-keys", str(keys)])
    assert config.compat.keys.keys == {"00000000-0000-0000-0000-000000000000", "abc"}
    with pytest.raises(usage.UsageError, match="--api-keys: cannot read .*missing"):
        parse_config(["--api-keys", str(tmp_path / "missing")])


@pytest.mark.parametrize("text,match", [
    ("", "holds no key"), ("# only a comment\n", "holds no key"),
    ("good\nhas space\n", "line 2"), ("k" * 129, "line 1"), ("clé\n", "not ASCII"),
])
def test_bad_key_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "keys"
    path.write_bytes(text.encode())
    with pytest.raises(ApiKeysError, match=match):
        load_api_keys(str(path))
    with pytest.raises(usage.UsageError, match="--api-keys"):
        parse_config(["--api-keys", str(path)])


def test_unreadable_key_file_is_a_startup_error(tmp_path: Path) -> None:
    # A directory cannot be read as a file, whoever runs the test (root reads any mode).
    with pytest.raises(usage.UsageError, match="--api-keys: cannot read .*Is a directory"):
        parse_config(["--api-keys", str(tmp_path)])


def test_api_keys_accept() -> None:
    assert ApiKeys().accepts("anything") and ApiKeys().accepts(None)
    keys = ApiKeys(frozenset({"a", "bb"}))
    assert keys.accepts("bb") and not keys.accepts("b") and not keys.accepts(None)


def test_the_signing_key_is_created_0600_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "signing.pem"
    key, created = load_or_create_signing_key(str(path))
    assert created and path.stat().st_mode & 0o777 == 0o600
    again, created = load_or_create_signing_key(str(path))
    assert not created and again.public_pem == key.public_pem
    signature = key.sign({"data": [1, 2]})
    assert again.verify({"data": [1, 2]}, signature)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(SigningKeyError, match="corrupt"):
        load_or_create_signing_key(str(path))
    assert path.read_bytes() == b"-----BEGIN PRIVATE KEY-----\ngarbage\n"
    with pytest.raises(usage.UsageError, match="--signing-key: .*corrupt"):
        parse_config(["--signing-key", str(path)])
    # With RANDOM.ORG's API off the key is not needed, so it is not read.
    parse_config(["--signing-key", str(path), "--compat", "anu"])


def test_a_non_rsa_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = tmp_path / "ed.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(SigningKeyError, match="not an RSA"):
        load_signing_key(str(path))


def test_the_secret_stays_out_of_repr() -> None:
    key = SigningKey.generate(2048)
    assert "PRIVATE" not in repr(key) and "2048" in repr(key)
