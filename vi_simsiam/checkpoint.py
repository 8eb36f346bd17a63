"""Atomic checkpoints, the training state they hold, and stop-on-signal.

A checkpoint is written to a temporary file in the run directory, fsynced, then renamed over
``checkpoint.pt`` (``os.replace`` is atomic on POSIX): a kill at any instant leaves either the
previous checkpoint or the new one, never a torn file.

It holds everything the next step depends on: model, optimizer (momentum buffers), scheduler,
grad scaler, the RNG states (torch CPU and CUDA, numpy, Python), the epoch and the number of
batches of that epoch already done. The data order and augmentations are functions of
(seed, epoch, index) (see ``data``), so with these a resumed run continues bitwise.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import tempfile
from pathlib import Path

import numpy as np
import torch

from .data import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"


def rng_states() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save_atomic(state: dict, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is: fsync the directory too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path, map_location="cpu") -> dict:
    """The training state saved at ``path``; a ConfigError (one line for the CLI) if the file cannot be
    read as one: truncated, damaged, or not a checkpoint of this package."""
    # weights_only=False: the state holds numpy / Python RNG tuples; only load checkpoints you wrote.
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        raise ConfigError(f"{path} is damaged or truncated and cannot be loaded ({type(error).__name__}: {error})") from error
    missing = [key for key in ("model", "step") if not isinstance(state, dict) or key not in state]
    if missing:
        raise ConfigError(f"{path} is not a vi_simsiam checkpoint (no {', '.join(missing)})")
    return state


class StopOnSignal:
    """Turns SIGTERM / SIGINT into a flag the training loop polls between steps.

    The loop then writes a checkpoint and exits with 128 + signal number (what a shell reports
    for a killed process); a second signal while stopping falls back to the default behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handler(self, signum, _frame):
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False

    @property
    def requested(self) -> bool:
        return self.signum is not None
