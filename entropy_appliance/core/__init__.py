"""The pure core: health tests, the CTR_DRBG and the seed pool; no reactor, no I/O."""
