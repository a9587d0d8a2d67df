"""The ``twistd entropy`` plugin: a ServiceMaker pointing at entropy_appliance.tap."""

from twisted.application.service import ServiceMaker

entropy = ServiceMaker(
    "entropy-appliance",
    "entropy_appliance.tap",
    "A network entropy appliance: health-tested source, CTR_DRBG, HTTP(S), raw TCP stream and onion service.",
    "entropy",
)
