"""
Whom to trust over https: a CA bundle, the system store, or a pinned
SHA-256 certificate fingerprint; and the handshake that checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import ssl
from dataclasses import dataclass

from entropy_fetch.errors import FetchError, VerificationError, reason

__all__ = ["TlsConfig", "parse_fingerprint", "tls_wrap"]


@dataclass(frozen=True)
class TlsConfig:
    """
    How to trust the server.

    ``cacert``: a PEM bundle the chain must end in (else the system store).
    ``fingerprint``: the SHA-256 of the server certificate's DER; when it is
    given without ``cacert`` the pin alone decides, and no CA is consulted.
    """

    cacert: str | None = None
    fingerprint: bytes | None = None


def parse_fingerprint(text: str) -> bytes:
    """Parse a SHA-256 fingerprint: 64 hex digits, colons and case ignored; raise ValueError."""
    t = text.strip().replace(":", "").lower()
    if t.startswith("sha256"):
        t = t[len("sha256"):].lstrip("=/")
    try:
        digest = bytes.fromhex(t)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return digest


def tls_wrap(sock: socket.socket, host: str, config: TlsConfig) -> ssl.SSLSocket:
    """
    Run the TLS handshake on ``sock`` and check the server's identity.

    The name check is service-identity's (RFC 6125), against the URL's host
    name or IP address; the pin is compared in constant time.  On any
    failure the socket is closed.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # service-identity checks the name below
    ctx.set_alpn_protocols(["http/1.1"])
    pin_only = config.fingerprint is not None and config.cacert is None
    if pin_only:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if config.cacert is not None:
            try:
                ctx.load_verify_locations(cafile=config.cacert)
            except (OSError, ssl.SSLError) as e:
                raise FetchError(f"--cacert {config.cacert}: cannot load it ({reason(e)})") from None
        else:
            ctx.load_default_certs()
    try:
        tls = ctx.wrap_socket(sock, server_hostname=None if _is_ip(host) else host)
    except ssl.SSLCertVerificationError as e:
        sock.close()
        source = f"--cacert {config.cacert}" if config.cacert else "the system's trusted CAs"
        raise VerificationError(
            f"TLS: the certificate of {host} is not trusted by {source} ({e.verify_message})"
        ) from None
    except ssl.SSLError as e:
        sock.close()
        raise FetchError(f"TLS handshake with {host} failed: {reason(e)}") from None
    der = tls.getpeercert(binary_form=True)
    try:
        if der is None:
            raise VerificationError(f"TLS: {host} sent no certificate")
        if config.fingerprint is not None:
            got = hashlib.sha256(der).digest()
            if not hmac.compare_digest(got, config.fingerprint):
                raise VerificationError(
                    f"TLS: the certificate of {host} has SHA-256 fingerprint "
                    f"{_colons(got)}, not the pinned {_colons(config.fingerprint)}"
                )
        if not pin_only:
            _check_identity(der, host)
    except BaseException:
        tls.close()
        raise
    return tls


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_identity(der: bytes, host: str) -> None:
    # Imported here: a plain http or tcp fetch at boot need not load them.
    from cryptography import x509
    from service_identity import VerificationError as IdentityError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    cert = x509.load_der_x509_certificate(der)
    try:
        if _is_ip(host):
            verify_certificate_ip_address(cert, host)
        else:
            verify_certificate_hostname(cert, host)
    except IdentityError as e:
        raise VerificationError(f"TLS: the certificate is not valid for {host} ({e})") from None
    except Exception as e:  # CertificateError and friends: no usable SAN at all
        raise VerificationError(f"TLS: cannot check the certificate for {host} ({e})") from None


def _colons(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)
