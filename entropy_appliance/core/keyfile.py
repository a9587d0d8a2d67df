"""
Secret key files kept the one way: read with a bounded size, created with
mode 0600 on first start, and never replaced, not even when corrupt (a key
that is lost takes with it what it names: an onion address, the signatures
third parties have verified).

Pure file handling, no Twisted: the onion key (:mod:`entropy_appliance.onion.key`)
and the signing key of the compatible APIs
(:mod:`entropy_appliance.web.compat.signing`) both keep their files here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

__all__ = ["KeyFileError", "read_key_file", "create_key_file", "load_or_create"]

K = TypeVar("K")


class KeyFileError(Exception):
    """A key file cannot be read or written; the message names the file and why."""


def read_key_file(path: str, what: str, limit: int = 65536) -> bytes:
    """The first ``limit`` bytes of the key file at ``path`` (``what`` names it in errors)."""
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror}") from None


def create_key_file(path: str, data: bytes, what: str) -> bool:
    """
    Write ``data`` to a new file at ``path``, mode 0600, creating its
    directory (mode 0700) if needed.  Returns False, writing nothing, if a
    file is already there (made meanwhile by a concurrent first start): the
    caller reads that one instead.
    """
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as e:
        raise KeyFileError(f"cannot create directory {parent} for the {what}: {e.strerror}") from None
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if the name exists, so a concurrent first start cannot
        # overwrite a key that another process has just written.
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as e:
        raise KeyFileError(f"cannot write {what} {path}: {e.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return True


def load_or_create(path: str, what: str, load: Callable[[str], K],
                   generate: Callable[[], tuple[K, bytes]]) -> tuple[K, bool]:
    """
    ``(key, created)``: the key at ``path`` read by ``load``, or, when no
    file is there, a new one from ``generate`` (the key and the bytes of its
    file) written with :func:`create_key_file`.  A file that appears
    meanwhile (a concurrent first start) is read instead; an existing file
    is never replaced, even a corrupt one (``load`` raises then).
    """
    if os.path.lexists(path):
        return load(path), False
    key, data = generate()
    if not create_key_file(path, data, what):
        return load(path), False
    return key, True
