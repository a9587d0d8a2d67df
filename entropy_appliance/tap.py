"""
``twistd entropy``: the names the plugin asks for.

:class:`~entropy_appliance.app.options.Options` parses and validates into a
``Config``; :func:`makeService` hands that ``Config`` to
:func:`entropy_appliance.app.build.makeService`, the composition root.
"""

from __future__ import annotations

from twisted.application.service import IService

from entropy_appliance.app import build
from entropy_appliance.app.options import Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """The service tree for the validated options (twistd's entry point)."""
    return build.makeService(options.config)
