"""TLS material: generation, loading errors, fingerprints, the context, ssl: parsing, tap wiring."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.python import usage

from entropy_appliance.net import tls
from entropy_appliance.tap import Options


def test_generated_certificate_covers_local_names_and_key_is_private(tmp_path: Path) -> None:
    key, cert = str(tmp_path / "c" / "k.pem"), str(tmp_path / "c" / "c.pem")
    tls.generate_self_signed(key, cert, hostname="appliance.example")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    m = tls.load_material(key, cert)
    san = m.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "appliance.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    fp = tls.fingerprint(m.certificate)
    assert len(fp.split(":")) == 32


def test_load_errors_are_clear(tmp_path: Path) -> None:
    key, cert = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    with pytest.raises(tls.TLSConfigError, match="does not exist"):
        tls.load_material(key, cert)
    tls.generate_self_signed(key, cert)
    other_key, other_cert = str(tmp_path / "k2.pem"), str(tmp_path / "c2.pem")
    tls.generate_self_signed(other_key, other_cert)
    with pytest.raises(tls.TLSConfigError, match="does not match"):
        tls.load_material(other_key, cert)
    Path(tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(tls.TLSConfigError, match="not a PEM private key"):
        tls.load_material(str(tmp_path / "junk.pem"), cert)
    with pytest.raises(tls.TLSConfigError, match="not a PEM certificate"):
        tls.load_material(key, str(tmp_path / "junk.pem"))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5000)
    with pytest.raises(tls.TLSConfigError, match="expired"):
        tls.load_material(key, cert, now=later)


def test_context_allows_only_tls12_up_and_offers_alpn(tmp_path: Path) -> None:
    key, cert = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    m = tls.generate_self_signed(key, cert)
    factory = tls.context_factory(tls.load_material(key, cert))
    assert factory._acceptableProtocols == [b"h2", b"http/1.1"]
    factory.getContext()
    assert factory._options & SSL.OP_NO_TLSv1 and factory._options & SSL.OP_NO_TLSv1_1
    assert tls.context_factory(m, h2=False)._acceptableProtocols == [b"http/1.1"]


def test_parse_ssl_endpoint() -> None:
    s = tls.parse_ssl_endpoint("ssl:8443")
    assert (s.port, s.interface, s.private_key) == (8443, "", None)
    s = tls.parse_ssl_endpoint("ssl:port=443:interface=\\:\\:1:privateKey=/k:certKey=/c")
    assert (s.port, s.interface, s.private_key, s.cert_key) == (443, "::1", "/k", "/c")
    for bad in ["ssl:", "ssl:abc", "ssl:99999", "ssl:443:foo=1", "ssl:443:certKey=/c", "tcp:80"]:
        with pytest.raises(ValueError):
            tls.parse_ssl_endpoint(bad)


def test_tap_generates_default_certificate_on_first_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from entropy_appliance.app.build import makeService

    monkeypatch.chdir(tmp_path)
    o = Options()
    o.parseOptions(["--source", "kernel", "--stream", "none", "--http", "tcp:0", "--https", "ssl:0"])
    assert not (tmp_path / "certs").exists()  # parsing writes nothing
    makeService(o.config, MemoryReactorClock())
    assert (tmp_path / "certs" / "server.key").exists() and (tmp_path / "certs" / "server.pem").exists()
    pem = (tmp_path / "certs" / "server.pem").read_bytes()
    o = Options()
    o.parseOptions(["--source", "kernel", "--stream", "none", "--https", "ssl:0"])
    makeService(o.config, MemoryReactorClock())
    assert (tmp_path / "certs" / "server.pem").read_bytes() == pem  # kept, not generated again
    assert o.config.http == ("tcp:8080",) and o.config.max_bytes == 1024**3


@pytest.mark.parametrize("args,message", [
    (["--tls-key", "/nonexistent/k.pem", "--tls-cert", "/nonexistent/c.pem"], "does not exist"),
    (["--https", "ssl:notaport"], "--https"),
    (["--https", "none", "--https", "ssl:1"], "cannot be combined"),
    (["--http", "bogus:1"], "--http"),
    (["--max-bytes", "lots"], "--max-bytes"),
    (["--max-bytes", "0"], "--max-bytes"),
])
def test_tap_rejects_bad_web_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(["--source", "kernel", "--stream", "none", *args])


def test_tap_none_disables_web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    o = Options()
    o.parseOptions(["--source", "kernel", "--stream", "none", "--http", "none", "--https", "none"])
    assert o.config.http == () and o.config.https == ()
    assert not (tmp_path / "certs").exists()


def _handshake(options: object, alpn: list[bytes]) -> tuple[bytes, object]:
    """A TLS handshake in memory with ``options``: (ALPN protocol, the server's public key)."""
    server = SSL.Connection(options.getContext(), None)  # type: ignore[attr-defined]
    # Twisted's ALPN callback asks the TLS protocol for its factory's own list;
    # a plain wrapped factory has none, so the context's list decides.
    server.set_app_data(SimpleNamespace(factory=SimpleNamespace(wrappedFactory=object())))
    server.set_accept_state()
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.set_alpn_protos(alpn)
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        for a, b in ((client, server), (server, client)):
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    cert = client.get_peer_certificate()
    assert cert is not None
    return client.get_alpn_proto_negotiated(), cert.to_cryptography().public_key()


def test_generated_pair_is_ecdsa_p256_and_handshakes(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key, cert = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    m = tls.generate_self_signed(key, cert, hostname="localhost")
    public = tls.load_material(key, cert).certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    protocol, served = _handshake(tls.context_factory(m), [b"h2", b"http/1.1"])
    assert protocol == b"h2" and served == public


def test_user_supplied_rsa_pair_still_serves(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(1)
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .sign(private, hashes.SHA256()))
    key, cert = tmp_path / "rsa.key", tmp_path / "rsa.pem"
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    m = tls.load_material(str(key), str(cert))
    protocol, served = _handshake(tls.context_factory(m), [b"http/1.1"])
    assert protocol == b"http/1.1" and isinstance(served, rsa.RSAPublicKey)
