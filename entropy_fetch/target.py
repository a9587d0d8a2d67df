"""Where to fetch from: the URL (``http``, ``https``, ``tcp``) and ``host:port`` proxy addresses."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORTS", "Target", "parse_hostport", "parse_target"]

DEFAULT_PORTS = {"http": 80, "https": 443, "tcp": 9000}


@dataclass(frozen=True)
class Target:
    """A parsed URL: scheme (http, https, tcp), host, port and path."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        """``host:port`` for messages, with IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_onion(self) -> bool:
        """True for a Tor onion-service host name."""
        return self.host.lower().rstrip(".").endswith(".onion")


def parse_target(url: str) -> Target:
    """Parse ``http(s)://host[:port][/path]`` or ``tcp://host[:port]``; raise ValueError."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r}: the URL must start with http://, https:// or tcp://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host name")
    if scheme == "tcp" and parts.path not in ("", "/"):
        raise ValueError(f"{url!r}: a tcp:// URL has no path")
    return Target(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], parts.path or "/")


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port``; raise ValueError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)
