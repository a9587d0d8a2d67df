"""
``entropy-fetch``: a blocking command-line client that fetches random bytes
from an entropy appliance (or any pollen server), over http(s), the raw
tcp:// stream, or SOCKS5 to an onion service, and can seed the kernel.

It imports nothing of ``entropy_appliance``: the server and the client share
a distribution, not code.
"""

from entropy_fetch.cli import main
from entropy_fetch.errors import EXIT_FAILURE, EXIT_SHORT, EXIT_USAGE, EXIT_VERIFY, FetchError
from entropy_fetch.version import __version__

__all__ = ["EXIT_FAILURE", "EXIT_SHORT", "EXIT_USAGE", "EXIT_VERIFY", "FetchError", "__version__", "main"]
