"""
What can go wrong in a fetch, and the exit status each failure ends with.

Every failure the user sees is a :class:`FetchError`: one sentence, and the
status the command exits with.
"""

from __future__ import annotations

import socket
import ssl

__all__ = [
    "EXIT_FAILURE",
    "EXIT_SHORT",
    "EXIT_USAGE",
    "EXIT_VERIFY",
    "FetchError",
    "ShortRead",
    "VerificationError",
    "reason",
]

#: A network, protocol or server error.
EXIT_FAILURE = 1
#: Bad command line (argparse's own status).
EXIT_USAGE = 2
#: The server could not prove who it is: TLS identity, pin, or pollen challenge.
EXIT_VERIFY = 3
#: Fewer bytes arrived than were asked for.
EXIT_SHORT = 4


class FetchError(Exception):
    """A failure the user is told about in one sentence; carries the exit status."""

    exit_code = EXIT_FAILURE


class VerificationError(FetchError):
    """The server failed to prove its identity or to answer the challenge."""

    exit_code = EXIT_VERIFY


class ShortRead(FetchError):
    """The peer stopped before sending every byte asked for."""

    exit_code = EXIT_SHORT


def reason(e: BaseException) -> str:
    """Say why an I/O call failed, in words that fit after a colon."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})"
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e) or type(e).__name__
