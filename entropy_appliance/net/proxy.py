"""
The PROXY protocol (v1 and v2) in front of any listener, for appliances
behind a load balancer such as HAProxy (``send-proxy-v2``).

A listener whose endpoint description starts with ``haproxy:`` (Twisted's
own prefix for it) expects each connection to begin with a PROXY header,
and from then on the connection is the client's the header names:

- :func:`split_proxy` strips the prefix; the rest is any server endpoint
  description (``tcp:``, ``ssl:``, ``systemd:``, ``unix:``);
- :class:`ProxyHeaderFactory` is the outermost factory of such a listener,
  outside TLS (the header comes before the ClientHello) and outside the
  per-peer limits: the factory it wraps is asked for a protocol only once
  the header is read, with the client's address, so the connection limits,
  the bandwidth account, the request rate and every log line count the real
  client, and a raw stream sends nothing before the header is in;
- :class:`TrustedProxies` (``--trusted-proxy CIDR``) decides whose header is
  believed.  A connection to a PROXY listener from any other address is
  closed as soon as it is accepted, before a byte is read: its header, true
  or forged, is never parsed, so it can claim no other client's budget.
  Unix-socket connections are trusted: the socket file's mode decides who
  may connect.

A header must arrive whole within the ``timeout`` (``--header-timeout``),
be at most 107 bytes (v1) or 16 + 65535 bytes (v2), and name TCP over IPv4
or IPv6 with a source address that parses; anything else closes the
connection.  A header with no address (v2 ``LOCAL``, as HAProxy sends with
its health checks, or v1 ``UNKNOWN``) is served as the proxy's own
connection, as the specification says.

The header is parsed by Twisted's own parsers
(``twisted.protocols.haproxy``); Twisted's wrapper around them
(``HAProxyWrappingFactory``) is not used, because it builds the wrapped
protocol when the connection is accepted, with the proxy's address (so the
per-peer limits would count the proxy) and lets a raw stream write before
the header is read; it has no deadline for the header, no notion of a
trusted proxy, and takes a header split in reads of under 16 bytes for an
invalid one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from entropy_appliance.net.body import SendLimitOfTransport

__all__ = [
    "PREFIX",
    "PROXY_OUTCOMES",
    "split_proxy",
    "TrustedProxies",
    "ProxyHeaderFactory",
    "ProxyHeaderProtocol",
]

_log = Logger()

#: The description prefix of a listener that expects PROXY headers.
PREFIX = "haproxy:"

_V1_MAX = 107
_V2_FIXED = 16
#: What became of connections to PROXY listeners, as counted in ``/v1/status`` and ``/metrics``:
#: served for the client a header named, served as the proxy's own (LOCAL, UNKNOWN), closed
#: because the peer is no trusted proxy, because the header is not valid, or because it was late.
PROXY_OUTCOMES = ("proxied", "local", "untrusted", "invalid-header", "header-timeout")

#: Addresses remembered for "refused once" logging, at most.
_LOGGED_MAX = 1024


def split_proxy(description: str) -> tuple[str, bool]:
    """``haproxy:tcp:8080`` -> ``("tcp:8080", True)``; any other description -> ``(it, False)``."""
    if description.startswith(PREFIX):
        return description[len(PREFIX):], True
    return description, False


class TrustedProxies:
    """The networks whose PROXY headers are believed (``--trusted-proxy``)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    @staticmethod
    def parse(text: str) -> str:
        """A CIDR (or a single address) in canonical form; raises ValueError with the reason."""
        try:
            return str(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"{text!r} is not an IP network ({e}); use e.g. 10.0.0.5/32 or "
                             "192.0.2.0/24 or 2001:db8::/64") from None

    def trusts(self, address: object) -> bool:
        """Whether a connection from ``address`` (a Twisted ``IAddress``) may send a PROXY header."""
        if isinstance(address, UNIXAddress):
            return True
        host = getattr(address, "host", None)
        if not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)


def _parse_header(header: bytes) -> tuple[IAddress | None, IAddress | None]:
    """
    (source, destination) of a whole header, None for both when it names no
    address (LOCAL, UNKNOWN, AF_UNSPEC); raises InvalidProxyHeader.
    """
    try:
        if header.startswith(V2Parser.PREFIX):
            info = V2Parser.parse(header)
        else:
            line = header.rstrip(b"\r\n")
            if line.split(b" ")[:2] == [b"PROXY", b"UNKNOWN"]:
                # Twisted's parser wants a space after UNKNOWN; the specification does not.
                return None, None
            info = V1Parser.parse(line)
    except (InvalidProxyHeader, ValueError, KeyError, UnicodeDecodeError):
        # Twisted's v1 parser lets a bad port escape as ValueError, and its v2
        # parser an unknown family/protocol pair as KeyError.
        raise InvalidProxyHeader() from None
    source, destination = info.source, info.destination
    if source is None:
        return None, None
    if isinstance(source, UNIXAddress):
        # A client of the proxy's own unix socket: counted as the proxy itself.
        return None, None
    if not isinstance(source, (IPv4Address, IPv6Address)) or source.type != "TCP":
        raise InvalidProxyHeader()
    out: list[IAddress] = []
    for a in (source, destination):
        if not isinstance(a, (IPv4Address, IPv6Address)):
            raise InvalidProxyHeader()
        try:
            ip = ipaddress.ip_address(a.host)
        except ValueError:
            raise InvalidProxyHeader() from None
        if (ip.version == 4) != isinstance(a, IPv4Address) or not 0 <= a.port <= 65535:
            raise InvalidProxyHeader()
        # The canonical text (2001:db8::7), as a socket's own address would read.
        out.append(type(a)("TCP", str(ip), a.port))
    return out[0], out[1]


def _header_length(buffer: bytes) -> int | None:
    """
    The length of the header at the start of ``buffer``: None while more
    bytes are needed to tell; raises InvalidProxyHeader when it is not one.
    """
    v2 = V2Parser.PREFIX
    if buffer[:len(v2)] == v2[:len(buffer)]:
        if len(buffer) < _V2_FIXED:
            return None
        if buffer[12] & 0xF0 != 0x20:
            raise InvalidProxyHeader()
        return _V2_FIXED + int.from_bytes(buffer[14:16], "big")
    v1 = V1Parser.PROXYSTR + b" "
    if buffer[:len(v1)] != v1[:len(buffer)]:
        raise InvalidProxyHeader()
    end = buffer.find(b"\r\n")
    if end < 0:
        if len(buffer) >= _V1_MAX:
            raise InvalidProxyHeader()
        return None
    if end + 2 > _V1_MAX:
        raise InvalidProxyHeader()
    return end + 2


class ProxyHeaderProtocol(SendLimitOfTransport, ProtocolWrapper):
    """
    One connection from a trusted proxy: reads the PROXY header, then
    builds the wrapped factory's protocol for the client the header names
    and acts as its transport, reporting that client from ``getPeer`` (and
    the address it reached from ``getHost``).
    """

    factory: ProxyHeaderFactory
    transport: Any

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        # The wrapped protocol exists only once the header is read.
        super().__init__(factory, None)  # type: ignore[arg-type]
        #: What arrived of the header; None once the connection is refused.
        self._buffer: bytes | None = b""
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self._deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        """Take the connection; the wrapped protocol waits for the header."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        timeout = self.factory.timeout
        if timeout:
            self._deadline = self.factory.clock.callLater(timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        self.factory.refused("header-timeout", self.transport.getPeer())
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Read the header, then hand every byte on."""
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._buffer is None:
            return  # refused: the connection is closing
        self._buffer += data
        try:
            length = _header_length(self._buffer)
            if length is None or len(self._buffer) < length:
                return
            header, rest = self._buffer[:length], self._buffer[length:]
            source, destination = _parse_header(header)
        except InvalidProxyHeader:
            self._refuse("invalid-header")
            return
        self._buffer = b""
        self._cancel_deadline()
        self._peer, self._host = source, destination
        client = self.getPeer()
        wrapped = self.factory.wrappedFactory.buildProtocol(client)
        if wrapped is None:
            # Refused by what it wraps (a per-peer limit): closed before a byte is written.
            self._buffer = None
            self.transport.loseConnection()
            return
        self.factory.accepted(source is not None)
        self.wrappedProtocol = wrapped
        wrapped.makeConnection(self)
        if rest and self.wrappedProtocol is not None and self.connected:
            wrapped.dataReceived(rest)

    def _refuse(self, why: str) -> None:
        self._buffer = None
        self._cancel_deadline()
        self.factory.refused(why, self.transport.getPeer())
        self.transport.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def getPeer(self) -> IAddress:
        """The client the proxy reported; the proxy itself for a header without one."""
        return self._peer if self._peer is not None else self.transport.getPeer()

    def getHost(self) -> IAddress:
        """The address the client reached, as the proxy reported it."""
        return self._host if self._host is not None else self.transport.getHost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Forget the connection; tell the wrapped protocol, if it was built."""
        self._cancel_deadline()
        self.factory.unregisterProtocol(self)
        wrapped: Any = self.wrappedProtocol
        self.wrappedProtocol = None  # type: ignore[assignment]
        if wrapped is not None:
            wrapped.connectionLost(reason)


class ProxyHeaderFactory(WrappingFactory):
    """
    The outermost factory of a PROXY listener: refuses (closes at once) a
    connection from an address that :class:`TrustedProxies` does not trust,
    and gives every other one a :class:`ProxyHeaderProtocol`.  ``counts``
    holds how many connections went each way, for ``/v1/status``.
    """

    protocol = ProxyHeaderProtocol
    noisy = False

    def __init__(self, wrappedFactory: Any, trusted: TrustedProxies, clock: IReactorTime,
                 timeout: float = 15.0, counts: dict[str, int] | None = None) -> None:
        super().__init__(wrappedFactory)
        self.trusted = trusted
        self.clock = clock
        self.timeout = timeout
        self.counts = counts if counts is not None else {}
        self._logged: set[tuple[str, str]] = set()

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol | None:  # type: ignore[override]
        """A header reader for a trusted proxy; None (closed at once) for anyone else."""
        if not self.trusted.trusts(addr):
            self.refused("untrusted", addr)
            return None
        return ProxyHeaderProtocol(self)

    def accepted(self, proxied: bool) -> None:
        """Count a connection served after its header (``proxied``: it named a client)."""
        key = "proxied" if proxied else "local"
        self.counts[key] = self.counts.get(key, 0) + 1

    def refused(self, why: str, addr: object) -> None:
        """Count a refused connection; log the first one per address and reason."""
        self.counts[why] = self.counts.get(why, 0) + 1
        host = str(getattr(addr, "host", addr))
        if (why, host) in self._logged:
            return
        if len(self._logged) >= _LOGGED_MAX:
            self._logged.clear()
        self._logged.add((why, host))
        reasons = {
            "untrusted": "it is not a trusted proxy (--trusted-proxy); its connections to PROXY "
                         "listeners are closed unread",
            "invalid-header": "it sent no valid PROXY header",
            "header-timeout": "its PROXY header did not arrive in time",
        }
        _log.warn("closed a connection from {host}: {reason} (logged once per address)",
                  host=host, reason=reasons.get(why, why))

    def logPrefix(self) -> str:
        """The wrapped factory's log prefix, marked as behind a proxy."""
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        return f"{inner() if inner else type(self.wrappedFactory).__name__} (PROXY)"

