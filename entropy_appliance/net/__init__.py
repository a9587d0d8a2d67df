"""Network adapters: the raw stream, per-connection limits and TLS."""
