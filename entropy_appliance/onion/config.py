"""
The onion service's options as data: which virtual ports forward to which
target, and which clients may connect.

:func:`parse_ports` turns ``80:http,9000:stream`` into :class:`OnionPort`
values; :func:`load_client_auth` reads a directory of tor
``authorized_clients`` files.  Both raise ``ValueError`` with a sentence a
person can act on, which the options turn into a usage error.  Pure: no
Twisted, no tor.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

__all__ = ["OnionPort", "TARGETS", "load_client_auth", "parse_ports"]

#: The names a virtual port can forward to.
TARGETS = ("http", "stream")


@dataclass(frozen=True)
class OnionPort:
    """One virtual port of the onion service and the target it forwards to."""

    virtual: int
    target: str


def parse_ports(text: str) -> list[OnionPort]:
    """Parse ``80:http,9000:stream``; ``ValueError`` with a readable message."""
    ports: list[OnionPort] = []
    seen: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        number, sep, target = item.partition(":")
        if not sep or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise ValueError(f"{item!r} is not PORT:TARGET with 1 <= PORT <= 65535")
        if target not in TARGETS:
            raise ValueError(f"{item!r}: target must be one of {', '.join(TARGETS)}")
        if int(number) in seen:
            raise ValueError(f"virtual port {number} is mapped twice")
        seen.add(int(number))
        ports.append(OnionPort(int(number), target))
    if not ports:
        raise ValueError("no ports given (e.g. 80:http,9000:stream)")
    return ports


def load_client_auth(directory: str) -> list[str]:
    """
    The base32 x25519 public keys of every ``*.auth`` file in ``directory``.

    The files are tor's ``authorized_clients`` format, one line
    ``descriptor:x25519:<base32 public key>``.  An empty directory is an
    error: publishing without authorization by accident is the one mistake
    this option exists to prevent.
    """
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".auth"))
    except OSError as e:
        raise ValueError(f"cannot list {directory}: {e.strerror}") from None
    if not names:
        raise ValueError(f"{directory} has no .auth files; refusing to publish without client authorization")
    keys: list[str] = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="ascii") as f:
                line = f.read(1024).strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        parts = line.split(":")
        if len(parts) != 3 or parts[0] != "descriptor" or parts[1] != "x25519":
            raise ValueError(f"{path}: expected one line descriptor:x25519:<base32 public key>")
        b32 = parts[2].upper()
        try:
            raw = base64.b32decode(b32 + "=" * (-len(b32) % 8))
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"{path}: the x25519 public key must be 32 bytes in base32")
        keys.append(base64.b32encode(raw).decode("ascii").rstrip("="))
    return keys

