"""entropy-appliance: a network entropy appliance on Twisted."""

__version__ = "0.1.0"
