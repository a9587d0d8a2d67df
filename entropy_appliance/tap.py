"""
``twistd entropy``: the options and the service tree.

This is the only module that reads configuration.  :class:`Options`
validates every value in ``postOptions`` and raises ``UsageError`` with a
sentence a person can act on; :func:`makeService` then builds the services
from explicit keyword arguments.  The service tree is ordered so that a stop
closes the listeners first and the entropy pipeline last.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.python import usage

from entropy_appliance.pool import ReseedPolicy
from entropy_appliance.sources import DEFAULT_MIN_ENTROPY, SourceSpec, detect, open_source, parse_source

__all__ = ["Options", "makeService"]

MIB = 1024 * 1024


def _parse_size(text: str) -> int:
    """Parse ``123``, ``64K``, ``64M``, ``1G`` (binary units) into bytes."""
    units = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "KIB": 1024, "MIB": MIB, "GIB": 1024 * MIB}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    if unit not in units or not num.isdigit():
        raise ValueError(f"{text!r} is not a size (e.g. 65536, 64K, 64M, 1G)")
    return int(num) * units[unit]


def _check_endpoint(option: str, description: str) -> None:
    """Parse a server endpoint string now, so a typo fails at startup."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)
    except Exception as e:  # the parsers raise a variety of types
        raise usage.UsageError(
            f"--{option} {description!r} is not a valid server endpoint ({e}); "
            "use e.g. tcp:9000, tcp:9000:interface=127.0.0.1, unix:/run/entropy.sock, "
            "systemd:domain=INET:index=0, or none"
        ) from None


class Options(usage.Options):
    """Command-line options for ``twistd entropy``."""

    synopsis = "[options]"
    longdesc = (
        "Serve health-tested CTR_DRBG randomness over a raw TCP stream, HTTP(S) "
        "and, optionally, a Tor onion service."
    )

    optParameters: list[list[Any]] = [
        ["source", None, "auto",
         "Entropy source: auto (probe /dev/qrandom*, /dev/hwrng, /dev/chaoskey*, "
         "else the kernel), kernel, or device:PATH."],
        ["reseed-interval", None, "1.0", "Reseed the DRBG at least every SECONDS."],
        ["reseed-bytes", None, "64M", "Reseed the DRBG after this many output bytes (K/M/G suffixes)."],
        ["reseed-bits", None, "384", "Bits of entropy input per reseed (at least 256)."],
        ["min-entropy", None, None,
         "Claimed min-entropy per 8-bit sample, 0 < H <= 8 (default by source kind: "
         "kernel 8, quantis 7, hwrng/chaoskey/device 1)."],
        ["health-alpha", None, "2**-30",
         "False-positive rate of each health test, as a number or 2**-N."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["stream"] = []

    def opt_stream(self, endpoint: str) -> None:
        """Raw TCP byte stream endpoint (repeatable; default tcp:9000; 'none' disables)."""
        self["stream"].append(endpoint)

    def postOptions(self) -> None:
        """Validate every option; resolve the source."""
        self["stream"] = self._endpoints("stream", self["stream"], ["tcp:9000"])
        self._source()
        self._reseed()

    def _endpoints(self, name: str, given: list[str], default: list[str]) -> list[str]:
        values = given or default
        if "none" in values:
            if len(values) > 1:
                raise usage.UsageError(f"--{name} none cannot be combined with other endpoints")
            return []
        for v in values:
            _check_endpoint(name, v)
        return values

    def _source(self) -> None:
        try:
            spec = parse_source(self["source"])
        except ValueError as e:
            raise usage.UsageError(f"--source: {e}") from None
        self["source_detected"] = spec.kind == "auto"
        if spec.kind == "auto":
            spec = detect()
        self["source_spec"] = spec
        h = self["min-entropy"]
        if h is None:
            self["min-entropy"] = DEFAULT_MIN_ENTROPY[spec.kind]
        else:
            try:
                value = float(h)
            except ValueError:
                value = math.nan
            if not 0 < value <= 8:
                raise usage.UsageError(f"--min-entropy {h!r}: must be a number with 0 < H <= 8")
            self["min-entropy"] = value

    def _reseed(self) -> None:
        try:
            interval = float(self["reseed-interval"])
        except ValueError:
            interval = math.nan
        if not (0 < interval <= 86400):
            raise usage.UsageError(
                f"--reseed-interval {self['reseed-interval']!r}: must be seconds, 0 < S <= 86400")
        try:
            max_bytes = _parse_size(self["reseed-bytes"])
        except ValueError as e:
            raise usage.UsageError(f"--reseed-bytes: {e}") from None
        if not 1 <= max_bytes <= 2 ** 40:
            raise usage.UsageError("--reseed-bytes: must be between 1 and 1T")
        try:
            bits = int(self["reseed-bits"])
        except ValueError:
            bits = -1
        if not 256 <= bits <= 65536:
            raise usage.UsageError(
                f"--reseed-bits {self['reseed-bits']!r}: must be an integer, 256 <= N <= 65536")
        alpha_text = str(self["health-alpha"]).replace(" ", "")
        try:
            if alpha_text.startswith("2**"):
                alpha = 2.0 ** float(alpha_text[3:])
            else:
                alpha = float(alpha_text)
        except ValueError:
            alpha = math.nan
        if not (2.0 ** -64 <= alpha <= 2.0 ** -10):
            raise usage.UsageError(
                f"--health-alpha {self['health-alpha']!r}: must be between 2**-64 and 2**-10")
        self["policy"] = ReseedPolicy(interval=interval, max_bytes=max_bytes, bits=bits)
        self["alpha"] = alpha


def makeService(options: Options) -> IService:
    """Build the service tree from validated options."""
    from twisted.internet import reactor

    from entropy_appliance.core import build_core
    from entropy_appliance.stream import StreamFactory

    spec: SourceSpec = options["source_spec"]
    top = MultiService()
    core = build_core(
        reactor,
        open_source(spec),
        min_entropy=options["min-entropy"],
        policy=options["policy"],
        alpha=options["alpha"],
        detected=options["source_detected"],
    )
    core.setServiceParent(top)
    pool = core.pool

    stream_factory = StreamFactory(pool)
    for endpoint in options["stream"]:
        strports.service(endpoint, stream_factory).setServiceParent(top)

    return top
