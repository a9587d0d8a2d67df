"""
The real clients of the public randomness services against ``twistd``.

- ``quantumrandom`` (PyPI, ANU QRNG's client): its base URL is the module
  constant ``quantumrandom.URL``, set here as a user would; then
  ``get_data``, ``uint16``, ``hex`` and ``randint`` are called unchanged.
- ``rdoclient`` (PyPI, RANDOM.ORG's own client): its endpoint is written
  into ``_send_request_core``, so a user points it elsewhere by giving the
  module a ``requests`` whose ``post`` goes to the appliance (the one line
  of README's "Moving from ANU or RANDOM.ORG"); then ``generate_integers``,
  ``generate_UUIDs``, ``generate_blobs``, a signed call and
  ``verify_signature`` are called unchanged.

rdoclient keeps one client per API key for the life of the process, and
a serialized client starts a daemon thread that waits for requests until
the process ends; each test uses keys of its own and forgets its clients.
"""

from __future__ import annotations

import json
import os
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest
import quantumrandom
import requests
from cryptography.hazmat.primitives import serialization
from rdoclient import rdoclient

from tests.twistd_helpers import Appliance, start_appliance

pytestmark = pytest.mark.e2e

ARGS = ("--source", "kernel", "--https", "none", "--stream", "none", "--peer-rate", "0")


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("compat"), *ARGS)
    try:
        yield app
    finally:
        app.stop()


def point_rdoclient_at(url: str) -> Any:
    """The one line a user adds: rdoclient's module-level ``requests``, posting to ``url``."""
    return types.SimpleNamespace(post=lambda _endpoint, **kw: requests.post(url, **kw))


@pytest.fixture
def rdo(appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[rdoclient.RandomOrgClient]]:
    monkeypatch.setattr(rdoclient, "requests",
                        point_rdoclient_at(appliance.url("http", "/json-rpc/4/invoke")))
    instances = rdoclient.RandomOrgClient._RandomOrgClient__key_indexed_instances  # type: ignore[attr-defined]
    before = set(instances)
    yield rdoclient.RandomOrgClient
    for key in set(instances) - before:
        del instances[key]


def test_quantumrandom_works_unchanged(appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantumrandom, "URL", appliance.url("http", "/API/jsonI.php"))
    data = quantumrandom.get_data("uint16", 1024)
    assert len(data) == 1024 and all(0 <= v <= 65535 for v in data) and len(set(data)) > 900
    array = quantumrandom.uint16(100)
    assert isinstance(array, numpy.ndarray) and array.dtype == numpy.uint16 and array.shape == (100,)
    text = quantumrandom.hex(8, 4)
    assert len(text) == 64 and int(text, 16) >= 0
    assert len(quantumrandom.binary(10, 3)) == 30
    rolls = [quantumrandom.randint(1, 6) for _ in range(20)]
    assert all(1 <= r <= 6 for r in rolls) and len(set(rolls)) > 1
    # Past ANU's limit the client refuses before asking; the appliance refuses in ANU's shape.
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(appliance.url("http", "/API/jsonI.php?length=1025&type=uint8"))
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["success"] is False


def test_rdoclient_basic_methods_work_unchanged(rdo: Any) -> None:
    client = rdo("11111111-1111-1111-1111-111111111111", serialized=False)
    dice = client.generate_integers(100, 1, 6)
    assert len(dice) == 100 and set(dice) <= set(range(1, 7)) and len(set(dice)) > 1
    distinct = client.generate_integers(10, 1, 10, replacement=False)
    assert sorted(distinct) == list(range(1, 11))
    uuids = client.generate_UUIDs(5)
    assert len({u.hex for u in uuids}) == 5 and all(u.version == 4 for u in uuids)
    blobs = client.generate_blobs(3, 128)
    assert len(blobs) == 3 and all(len(b) == 24 for b in blobs)  # 16 bytes in base64
    fractions = client.generate_decimal_fractions(10, 4)
    assert all(0 <= f < 1 for f in fractions)
    assert client.get_requests_left() == client.get_bits_left() == 2 ** 31 - 1


def test_rdoclient_signed_call_and_verify_signature(rdo: Any, appliance: Appliance) -> None:
    client = rdo("22222222-2222-2222-2222-222222222222")  # serialized, as by default
    signed = client.generate_signed_integers(5, 1, 100, user_data={"raffle": "spring"})
    assert len(signed["data"]) == 5 and all(1 <= v <= 100 for v in signed["data"])
    assert signed["random"]["userData"] == {"raffle": "spring"}
    assert client.verify_signature(signed["random"], signed["signature"]) is True
    forged = {**signed["random"], "data": [1, 2, 3, 4, 5]}
    assert client.verify_signature(forged, signed["signature"]) is False
    assert client._serialized_thread.daemon  # it ends with the process
    # The key was made on first start, mode 0600, and its public half is published.
    key_path = Path(appliance.cwd) / "certs" / "signing_rsa.pem"
    assert key_path.stat().st_mode & 0o777 == 0o600
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    published = requests.get(appliance.url("http", "/json-rpc/4/public-key.pem"), timeout=10).content
    assert published == private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_rdoclient_errors_are_its_own_exceptions(rdo: Any) -> None:
    client = rdo("33333333-3333-3333-3333-333333333333", serialized=False)
    with pytest.raises(ValueError, match="Error 300"):
        client.generate_integers(5, 10, 1)
    with pytest.raises(ValueError, match="Error 202"):
        client.generate_integers(10001, 1, 6)


def test_api_keys_are_checked(tmp_path: Path, rdo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("# the raffle's key\n44444444-4444-4444-4444-444444444444\n")
    os.chmod(keys, 0o600)
    app = start_appliance(tmp_path, *ARGS, "--api-keys", str(keys))
    try:
        monkeypatch.setattr(rdoclient, "requests",
                            point_rdoclient_at(app.url("http", "/json-rpc/4/invoke")))
        good = rdo("44444444-4444-4444-4444-444444444444", serialized=False)
        assert len(good.generate_integers(3, 1, 6)) == 3
        bad = rdo("55555555-5555-5555-5555-555555555555", serialized=False)
        with pytest.raises(rdoclient.RandomOrgKeyNonExistentError):
            bad.generate_integers(3, 1, 6)
        url = app.url("http", "/anu/?length=4&type=uint8")
        ok = urllib.request.urlopen(urllib.request.Request(
            url, headers={"x-api-key": "44444444-4444-4444-4444-444444444444"}), timeout=10)
        assert len(json.loads(ok.read())["data"]) == 4
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=10)
        assert caught.value.code == 403
    finally:
        app.stop()


def test_a_missing_key_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="api-keys"):
        start_appliance(tmp_path, *ARGS, "--api-keys", str(tmp_path / "missing"), timeout=15)


def test_an_oversized_body_is_413(appliance: Appliance) -> None:
    body = b"[" + b"1," * 40000 + b"1]"  # 80 KB, over the default --max-body of 64K
    resp = requests.post(appliance.url("http", "/json-rpc/4/invoke"), data=body, timeout=10,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.headers["Content-Type"] == "application/problem+json"
