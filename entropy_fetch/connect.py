"""
Opening one connection to the target: direct or through SOCKS5, then TLS
for https; and an ``http.client`` connection that uses it.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable

from entropy_fetch.errors import FetchError, reason
from entropy_fetch.socks import socks5_connect
from entropy_fetch.target import Target
from entropy_fetch.tls import TlsConfig, tls_wrap

__all__ = ["Connector", "HttpConnection", "make_connector"]

#: Opens one connection, ready for bytes (TLS already done), or raises FetchError.
Connector = Callable[[], socket.socket]


def make_connector(target: Target, socks: tuple[str, int] | None, timeout: float,
                   tls: TlsConfig) -> Connector:
    """
    A function that opens one connection to ``target``: direct or through
    SOCKS5, then TLS for https.
    """

    def connect() -> socket.socket:
        if socks is not None:
            sock = socks5_connect(socks, target.host, target.port, timeout)
        else:
            try:
                sock = socket.create_connection((target.host, target.port), timeout=timeout)
            except OSError as e:
                raise FetchError(f"cannot connect to {target.authority}: {reason(e)}") from None
        sock.settimeout(timeout)
        if target.scheme == "https":
            return tls_wrap(sock, target.host, tls)
        return sock

    return connect


class HttpConnection(http.client.HTTPConnection):
    """
    An HTTPConnection whose sockets come from a :data:`Connector`, so that
    SOCKS5 and our TLS checks apply to HTTP as they do to the raw stream.
    """

    def __init__(self, target: Target, connector: Connector, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._connector = connector

    def connect(self) -> None:
        """Open the socket through the connector (http.client calls this lazily)."""
        self.sock = self._connector()
