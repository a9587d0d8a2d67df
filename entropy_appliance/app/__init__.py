"""The composition: options, the service tree per role, workers, signals and systemd."""
