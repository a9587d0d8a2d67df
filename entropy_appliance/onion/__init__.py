"""
The Tor onion service: the site and the raw stream at a persistent .onion.

- :mod:`~entropy_appliance.onion.key`: the ED25519-V3 key, tor's key file
  format, and the address the key names.
- :mod:`~entropy_appliance.onion.config`: the ports and client-authorization
  options, parsed into data.
- :mod:`~entropy_appliance.onion.tor`: reaching tor (a running one, or one
  we launch) and ``ADD_ONION``/``DEL_ONION``/``HS_DESC``.
- :mod:`~entropy_appliance.onion.machine`: the lifecycle, an I/O-free state
  machine (connect, add, publish, lose tor, back off, retry, stop).
- :mod:`~entropy_appliance.onion.service`: the Twisted service between the
  machine and tor, and the status.
"""

from entropy_appliance.onion.config import TARGETS, OnionPort, load_client_auth, parse_ports
from entropy_appliance.onion.key import (
    OnionKey,
    OnionKeyError,
    load_key,
    load_or_create_key,
    onion_address,
    parse_key,
)
from entropy_appliance.onion.service import OnionService
from entropy_appliance.onion.tor import ControlProtocol, LaunchedTor, SharedTor, TorConnector

__all__ = [
    "ControlProtocol",
    "LaunchedTor",
    "OnionKey",
    "OnionKeyError",
    "OnionPort",
    "OnionService",
    "SharedTor",
    "TARGETS",
    "TorConnector",
    "load_client_auth",
    "load_key",
    "load_or_create_key",
    "onion_address",
    "parse_key",
    "parse_ports",
]
