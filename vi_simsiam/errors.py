"""The error a user's mistake raises: the CLI prints its message on one line and exits with status 2."""


class ConfigError(ValueError):
    """A configuration, a path or a file that cannot run (the CLI prints the message and exits with status 2)."""
