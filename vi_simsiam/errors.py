"""The errors the CLI reports in one line, without a traceback."""

import pickle


class ConfigError(ValueError):
    """A configuration, a path or a file that cannot run (the CLI prints the message and exits with status 2)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops, and no checkpoint of that state is written (the CLI
    prints the message and exits with status 1)."""


# What torch.load raises for a file that is truncated, damaged or not what it should be (a zip reader
# RuntimeError, a pickle error, EOF, an OS error): the one list the readers of run files catch.
UNREADABLE_FILE_ERRORS = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError)
