"""Entropy sources and the pull producer that reads them off the reactor thread."""
