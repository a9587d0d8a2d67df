"""
TLS for the web endpoints: certificates, the context factory, ``ssl:`` endpoints.

- :func:`generate_self_signed` writes an ECDSA P-256 key (mode 0600) and a
  self-signed certificate whose SANs cover localhost, 127.0.0.1, ::1 and the
  host name.  The appliance calls it only for the default paths, on first run.
- :func:`load_material` reads a key and certificate (chain) and checks that
  they parse, match each other and are currently valid; every problem is a
  :class:`TLSConfigError` with a sentence a person can act on.
- :func:`context_factory` allows TLS 1.2 and 1.3 only, ECDHE with AEAD
  ciphers, and offers ``h2`` and ``http/1.1`` by ALPN (``http/1.1`` only when
  HTTP/2 is turned off).
- Twisted's own ``ssl:`` endpoint parser takes no ALPN protocols, so
  :func:`parse_ssl_endpoint` reads the ``ssl:`` description itself
  (``ssl:PORT[:interface=..][:backlog=..][:privateKey=..][:certKey=..]``) and
  :func:`ssl_endpoint` listens on TCP with the Site wrapped in
  :class:`TLSServerFactory` (a ``TLSMemoryBIOFactory`` that passes a
  per-peer refusal on, before any handshake).
- Any other stream endpoint (``systemd:``, ``tcp:``, ``unix:``) can carry
  HTTPS too: :func:`parse_https_endpoint` keeps its description, and
  :func:`ssl_endpoint` listens on it the same way.
- :class:`ReloadableContextFactory` serves every new handshake with the
  current certificate; :meth:`~ReloadableContextFactory.reload` replaces it
  (on SIGHUP) without touching established connections.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_CERT",
    "TLSConfigError",
    "TLSMaterial",
    "SSLEndpointSpec",
    "generate_self_signed",
    "load_material",
    "fingerprint",
    "context_factory",
    "ReloadableContextFactory",
    "parse_ssl_endpoint",
    "parse_https_endpoint",
    "ssl_endpoint",
    "socket_endpoint",
    "resolve_https",
]

DEFAULT_KEY = "certs/server.key"
DEFAULT_CERT = "certs/server.pem"

#: TLS 1.2 suites: forward secret key exchange, AEAD only.  TLS 1.3 suites are
#: all AEAD and keep OpenSSL's defaults.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TLSConfigError(Exception):
    """A key or certificate cannot be used; the message says what to do."""


@dataclass(frozen=True)
class TLSMaterial:
    """A matching private key and certificate (with any chain)."""

    key: Any
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key_path: str
    cert_path: str


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def generate_self_signed(key_path: str, cert_path: str, hostname: str | None = None,
                         days: int = 825) -> TLSMaterial:
    """
    Write a new key (mode 0600) and a self-signed certificate for this host,
    and return them.
    """
    host = hostname if hostname is not None else socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if host and host != "localhost":
        try:
            names.append(x509.DNSName(host))
        except ValueError:
            pass
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
              x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host or "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "entropy-appliance")])
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    for path in (key_path, cert_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # Created with 0600 from the start, so the key is never readable by others.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TLSMaterial(key, cert, (), key_path, cert_path)


def _read(path: str, what: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(
            f"{what} {path!r} does not exist; give an existing file with {option}, or "
            "leave both --tls-key and --tls-cert at their defaults to generate a "
            "self-signed certificate") from None
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None


def load_material(key_path: str, cert_path: str, now: datetime.datetime | None = None) -> TLSMaterial:
    """Load and check a PEM key and certificate chain; raises TLSConfigError."""
    key_pem = _read(key_path, "TLS key", "--tls-key")
    cert_pem = _read(cert_path, "TLS certificate", "--tls-cert")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSConfigError(
            f"TLS key {key_path!r} is encrypted; give an unencrypted PEM key") from None
    except Exception as e:  # cryptography raises several types
        raise TLSConfigError(
            f"TLS key {key_path!r} is not a PEM private key ({type(e).__name__}: {e})") from None
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except Exception as e:  # cryptography raises several types
        raise TLSConfigError(
            f"TLS certificate {cert_path!r} is not a PEM certificate ({type(e).__name__}: {e})"
        ) from None
    if not certs:
        raise TLSConfigError(f"TLS certificate {cert_path!r} holds no certificate")
    leaf = certs[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TLSConfigError(
            f"TLS key {key_path!r} does not match the certificate {cert_path!r}; "
            "give the key the certificate was issued for")
    t = now or _utcnow()
    if leaf.not_valid_after_utc < t:
        raise TLSConfigError(
            f"TLS certificate {cert_path!r} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; "
            "renew it (or delete both files under certs/ to generate a new self-signed one)")
    if leaf.not_valid_before_utc > t:
        raise TLSConfigError(
            f"TLS certificate {cert_path!r} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M}; check the clock")
    return TLSMaterial(key, leaf, tuple(certs[1:]), key_path, cert_path)


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of ``cert``, as colon-separated hex (for pinning)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def context_factory(material: TLSMaterial, h2: bool = True) -> CertificateOptions:
    """A server context: TLS 1.2+, AEAD ciphers, ALPN ``h2``/``http/1.1``."""
    protocols = [b"h2", b"http/1.1"] if h2 else [b"http/1.1"]
    return CertificateOptions(
        # pyOpenSSL takes cryptography objects directly (its own wrappers are deprecated).
        privateKey=material.key,
        certificate=material.certificate,  # type: ignore[arg-type]
        extraCertChain=list(material.chain),  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        acceptableProtocols=protocols,
    )


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableContextFactory:
    """
    A server TLS connection creator whose key and certificate can be
    replaced while it serves.

    Each new handshake takes the current :class:`CertificateOptions`;
    connections already established keep theirs, so a reload drops none.
    """

    def __init__(self, material: TLSMaterial, h2: bool = True) -> None:
        self._h2 = h2
        self.material = material
        self._options = context_factory(material, h2)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A connection for one handshake, with the current certificate and ALPN."""
        return self._options.serverConnectionForTLS(tlsProtocol)

    def getContext(self) -> SSL.Context:
        """The current context (for code that still asks for one)."""
        return self._options.getContext()

    def reload(self, now: datetime.datetime | None = None) -> TLSMaterial:
        """
        Read the key and certificate again from their paths and serve them
        from the next handshake on.  Raises :class:`TLSConfigError` and keeps
        the current pair when the new one is unusable.
        """
        material = load_material(self.material.key_path, self.material.cert_path, now)
        options = context_factory(material, self._h2)
        try:
            # Build the context now, so that a pair OpenSSL refuses fails here
            # rather than in the next client's handshake.
            options.getContext()
        except SSL.Error as e:
            raise TLSConfigError(
                f"OpenSSL refused the TLS key {material.key_path!r} with the certificate "
                f"{material.cert_path!r}: {e}") from None
        self._options = options
        self.material = material
        return material


@dataclass(frozen=True)
class SSLEndpointSpec:
    """
    A parsed HTTPS endpoint: an ``ssl:`` description, or (``wrapped`` set)
    any other stream endpoint description to speak TLS on.
    """

    port: int
    interface: str = ""
    backlog: int = 50
    private_key: str | None = None
    cert_key: str | None = None
    wrapped: str | None = None

    def describe(self) -> str:
        """A short name for logs: ``port 8443`` or the wrapped description."""
        return self.wrapped if self.wrapped is not None else f"port {self.port}"


def _split(description: str) -> list[str]:
    """Split on colons that are not escaped by a backslash (Twisted's quoting)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def parse_ssl_endpoint(description: str) -> SSLEndpointSpec:
    """Parse ``ssl:PORT[:key=value...]``; raises ValueError with the reason."""
    parts = _split(description)
    if parts[0] != "ssl":
        raise ValueError("an HTTPS endpoint must start with ssl:")
    kwargs: dict[str, str] = {}
    positional: list[str] = []
    for part in parts[1:]:
        if "=" in part:
            k, v = part.split("=", 1)
            kwargs[k] = v
        else:
            positional.append(part)
    if positional:
        kwargs.setdefault("port", positional[0])
    known = {"port", "interface", "backlog", "privateKey", "certKey"}
    unknown = sorted(set(kwargs) - known)
    if unknown or len(positional) > 1:
        raise ValueError(f"unsupported ssl: argument(s) {', '.join(unknown) or positional[1]}; "
                         "use port, interface, backlog, privateKey, certKey")
    try:
        port = int(kwargs.get("port", ""))
        backlog = int(kwargs.get("backlog", "50"))
    except ValueError:
        raise ValueError("port and backlog must be integers") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not between 0 and 65535")
    key, cert = kwargs.get("privateKey"), kwargs.get("certKey")
    if cert is not None and key is None:
        # As in Twisted: certKey alone is ambiguous; privateKey may hold both.
        raise ValueError("certKey= needs privateKey= as well")
    if key is not None and cert is None:
        cert = key
    return SSLEndpointSpec(port, kwargs.get("interface", ""), backlog, key, cert)


def parse_https_endpoint(description: str) -> SSLEndpointSpec:
    """
    Parse an HTTPS endpoint: ``ssl:...`` (see :func:`parse_ssl_endpoint`) or
    any other server endpoint description (``systemd:domain=INET:name=https``,
    ``tcp:8443``, ``unix:...``), on which TLS is spoken with the
    ``--tls-key``/``--tls-cert`` pair.  The latter is only split here; the
    caller checks it with ``serverFromString``.  Raises ValueError.
    """
    if _split(description)[0] == "ssl":
        return parse_ssl_endpoint(description)
    if ":" not in description:
        raise ValueError("an HTTPS endpoint looks like ssl:PORT or TYPE:ARGS (e.g. systemd:...)")
    return SSLEndpointSpec(0, wrapped=description)


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    Server-side TLS over a factory that may refuse a connection (the
    per-peer limits return no protocol): the refusal closes the socket
    before any handshake, as it does on plain TCP.  Twisted's own wrapper
    would go on with no protocol inside it, a traceback per event.
    """

    def buildProtocol(self, addr: Any) -> Any:
        """The TLS protocol around the wrapped factory's, or None if it refuses."""
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


@implementer(IStreamServerEndpoint)
class _TLSOverEndpoint:
    """Listens on a plain stream endpoint, speaking TLS (server side) on it."""

    def __init__(self, inner: IStreamServerEndpoint, creator: Any) -> None:
        self._inner = inner
        self._creator = creator

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen with ``protocolFactory`` behind TLS."""
        return self._inner.listen(TLSServerFactory(self._creator, False, protocolFactory))


def socket_endpoint(reactor: Any, spec: SSLEndpointSpec) -> IStreamServerEndpoint:
    """The plain endpoint that ``spec`` listens on; TLS is spoken by :class:`TLSServerFactory` on it."""
    if spec.wrapped is not None:
        return serverFromString(reactor, spec.wrapped)
    return TCP4ServerEndpoint(reactor, spec.port, backlog=spec.backlog, interface=spec.interface)


def ssl_endpoint(reactor: Any, spec: SSLEndpointSpec, factory: Any) -> IStreamServerEndpoint:
    """
    The listening endpoint for ``spec``, serving TLS with ``factory`` (a
    :class:`CertificateOptions` or :class:`ReloadableContextFactory`).
    """
    return _TLSOverEndpoint(socket_endpoint(reactor, spec), factory)


def resolve_https(specs: list[SSLEndpointSpec], key_path: str, cert_path: str,
                  hostname: str | None = None) -> list[tuple[SSLEndpointSpec, TLSMaterial, bool]]:
    """
    Pair each ``ssl:`` endpoint with its checked key and certificate.

    An endpoint naming no files uses ``key_path``/``cert_path``; when those
    are the defaults and neither file exists yet, a self-signed pair is
    generated there (the third item of the pair is then True).  Raises
    :class:`TLSConfigError`.
    """
    out: list[tuple[SSLEndpointSpec, TLSMaterial, bool]] = []
    shared: tuple[TLSMaterial, bool] | None = None
    for spec in specs:
        if spec.private_key is not None and spec.cert_key is not None:
            out.append((spec, load_material(spec.private_key, spec.cert_key), False))
            continue
        if shared is None:
            defaults = key_path == DEFAULT_KEY and cert_path == DEFAULT_CERT
            missing = not os.path.exists(key_path) and not os.path.exists(cert_path)
            if defaults and missing:
                generate_self_signed(key_path, cert_path, hostname)
                shared = (load_material(key_path, cert_path), True)
            else:
                shared = (load_material(key_path, cert_path), False)
        out.append((spec, shared[0], shared[1]))
    return out
