"""The errors the CLI reports in one line, without a traceback."""


class ConfigError(ValueError):
    """A configuration, a path or a file that cannot run (the CLI prints the message and exits with status 2)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops, and no checkpoint of that state is written (the CLI
    prints the message and exits with status 1)."""
