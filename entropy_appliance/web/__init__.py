"""The web surface: one Klein app served by one Site on every HTTP(S) endpoint."""

from entropy_appliance.web.app import EntropySite, EntropyWeb

__all__ = ["EntropyWeb", "EntropySite"]
