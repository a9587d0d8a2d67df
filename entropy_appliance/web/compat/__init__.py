"""
Drop-in APIs of public randomness services, each under its own prefix:

- :mod:`~entropy_appliance.web.compat.anu`: ANU QRNG (``/API/jsonI.php``, ``/anu/``);
- :mod:`~entropy_appliance.web.compat.randomorg`: RANDOM.ORG's JSON-RPC
  release 4 (``/json-rpc/4/...``);
- :mod:`~entropy_appliance.web.compat.keys`: ``--compat``, ``--api-keys``
  and the per-peer budgets they report;
- :mod:`~entropy_appliance.web.compat.signing`: the key of the signed methods;
- :mod:`~entropy_appliance.web.compat.distributions`: unbiased values;
- :mod:`~entropy_appliance.web.compat.host`: what they draw on, and their JSON answers.
"""

from entropy_appliance.web.compat.anu import AnuWeb
from entropy_appliance.web.compat.keys import (
    APIS,
    ApiKeys,
    ApiKeysError,
    CompatConfig,
    PeerBudget,
    load_api_keys,
    parse_apis,
)
from entropy_appliance.web.compat.randomorg import RandomOrgWeb
from entropy_appliance.web.compat.signing import (
    SigningKey,
    SigningKeyError,
    load_or_create_signing_key,
    load_signing_key,
)

__all__ = [
    "APIS",
    "AnuWeb",
    "ApiKeys",
    "ApiKeysError",
    "CompatConfig",
    "PeerBudget",
    "RandomOrgWeb",
    "SigningKey",
    "SigningKeyError",
    "load_api_keys",
    "load_or_create_signing_key",
    "load_signing_key",
    "parse_apis",
]
