"""The client's version, read from the installed distribution's metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "USER_AGENT", "__version__"]

#: The distribution that ships ``entropy_fetch`` (with the appliance).
DISTRIBUTION = "entropy-appliance"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

#: Sent with every HTTP request, so that server logs can tell the client apart.
USER_AGENT = f"entropy-fetch/{__version__}"
