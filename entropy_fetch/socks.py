"""
A SOCKS5 client (RFC 1928), CONNECT only, no authentication: enough for tor.

The host name goes to the proxy unresolved, which Tor needs for ``.onion``
names and which keeps DNS off the local network.  The stdlib has no SOCKS
client, and the one well-kept library (PySocks) would be a dependency for
forty lines of protocol.
"""

from __future__ import annotations

import socket
import struct

from entropy_fetch.errors import FetchError, reason

__all__ = ["socks5_connect"]

_SOCKS_ERRORS = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable (for an onion address: unknown or unpublished service)",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise FetchError(f"{what}: connection closed")
        buf += data
    return bytes(buf)


def socks5_connect(proxy: tuple[str, int], host: str, port: int, timeout: float) -> socket.socket:
    """
    Connect to ``host:port`` through a SOCKS5 proxy, with no authentication.

    The host name is sent to the proxy unresolved (address type 3).  Any
    failure is a :class:`FetchError` that names the proxy, and closes the
    socket.
    """
    what = f"SOCKS5 proxy {proxy[0]}:{proxy[1]}"
    try:
        sock = socket.create_connection(proxy, timeout=timeout)
    except OSError as e:
        raise FetchError(f"cannot connect to {what}: {reason(e)}") from None
    try:
        sock.sendall(b"\x05\x01\x00")
        ver, method = _recv_exact(sock, 2, what)
        if ver != 5 or method != 0:
            raise FetchError(f"{what} refused unauthenticated access")
        name = host.encode("idna")
        if len(name) > 255:
            raise FetchError(f"host name too long for SOCKS5: {host}")
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        ver, rep, _rsv, atyp = _recv_exact(sock, 4, what)
        if ver != 5:
            raise FetchError(f"{what} sent a reply that is not SOCKS5")
        if rep != 0:
            why = _SOCKS_ERRORS.get(rep, f"error {rep}")
            raise FetchError(f"{what} could not reach {host}:{port}: {why}")
        # The bound address that follows tells us nothing, but must be read off the stream.
        if atyp == 1:
            _recv_exact(sock, 4 + 2, what)
        elif atyp == 4:
            _recv_exact(sock, 16 + 2, what)
        elif atyp == 3:
            (length,) = _recv_exact(sock, 1, what)
            _recv_exact(sock, length + 2, what)
        else:
            raise FetchError(f"{what} sent an unknown address type {atyp}")
    except BaseException:
        sock.close()
        raise
    return sock
