"""Atomic checkpoints, the training state they hold, and stop-on-signal.

A checkpoint is written to a temporary file in the run directory, fsynced, then renamed over
``checkpoint.pt`` (``os.replace`` is atomic on POSIX): a kill at any instant leaves complete files,
never a torn one.

It holds everything the next step depends on: model, optimizer (momentum buffers), scheduler,
grad scaler, the RNG states (torch CPU and CUDA, numpy, Python), the epoch and the number of
batches of that epoch already done. The data order and augmentations are functions of
(seed, epoch, index) (see ``data``), so with these a resumed run continues bitwise.

Several are kept (``save_rotating``): ``checkpoint.pt`` the newest, ``checkpoint.1.pt`` the one before
it, and so on, each with a record ``<name>.sha256`` ("<size> <sha256>") written once its file is
complete. ``newest_valid`` takes the newest one whose record matches (a file without a record, from a
run of an older version or a stop between the rename and the record, is accepted if it loads), and
says which it passed over and why.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import UNREADABLE_FILE_ERRORS, ConfigError

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


RECORD_SUFFIX = ".sha256"


def rotated_name(index: int) -> str:
    """checkpoint.pt (index 0, the newest), checkpoint.1.pt, checkpoint.2.pt, ..."""
    return CHECKPOINT_NAME if index == 0 else f"checkpoint.{index}.pt"


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def file_record(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"{Path(path).stat().st_size} {digest.hexdigest()}"


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_rotating(state: dict, run_dir: Path, keep: int) -> None:
    """Writes ``state`` as the newest checkpoint of ``run_dir`` and keeps the ``keep - 1`` before it.

    Order, so that a stop at any instant leaves at least one complete, verifiable checkpoint: the new
    file is written and fsynced under a temporary name; the older files move down one place with
    their records (the oldest beyond ``keep`` is removed); the new file is renamed into place; its
    record is written last."""
    run_dir = Path(run_dir)
    newest = run_dir / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{CHECKPOINT_NAME}.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        record = file_record(Path(tmp))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    index = keep - 1
    while (run_dir / rotated_name(index + 1)).exists():  # older than keep (a smaller --keep-checkpoints)
        index += 1
    for i in range(index, keep - 1, -1):
        for path in (run_dir / rotated_name(i), record_path(run_dir / rotated_name(i))):
            path.unlink(missing_ok=True)
    for i in range(keep - 1, 0, -1):
        older, newer = run_dir / rotated_name(i), run_dir / rotated_name(i - 1)
        if newer.exists():
            record_path(older).unlink(missing_ok=True)
            os.replace(newer, older)
            if record_path(newer).exists():
                os.replace(record_path(newer), record_path(older))
    record_path(newest).unlink(missing_ok=True)  # keep == 1: the record of the file being replaced
    os.replace(tmp, newest)
    _fsync_dir(run_dir)
    _write_text_atomic(record_path(newest), record + "\n")
    _fsync_dir(run_dir)


def verify(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint (its record matches, or without a record, it loads),
    else why not."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    record = record_path(path)
    if record.is_file():
        expected = record.read_text().strip()
        actual = file_record(path)
        if actual != expected:
            size, _ = expected.split(" ", 1) if " " in expected else (expected, "")
            return (f"size or checksum differs from its record ({path.stat().st_size} bytes, recorded {size})"
                    if actual.split(" ")[0] != size else "checksum differs from its record")
        return None
    try:
        load(path)
    except ConfigError as error:
        return str(error)
    return None


def newest_valid(run_dir: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """The newest checkpoint of ``run_dir`` that verifies, and the (path, reason) of newer ones that did
    not; a ConfigError if none does."""
    run_dir = Path(run_dir)
    candidates = [run_dir / CHECKPOINT_NAME]
    index = 1
    while (run_dir / rotated_name(index)).exists():
        candidates.append(run_dir / rotated_name(index))
        index += 1
    passed_over = []
    for path in candidates:
        if not path.exists():
            continue
        reason = verify(path)
        if reason is None:
            return path, passed_over
        passed_over.append((path, reason))
    if not passed_over:
        raise ConfigError(f"no checkpoint in {run_dir}")
    raise ConfigError(
        f"no checkpoint in {run_dir} verifies: " + "; ".join(f"{p.name}: {why}" for p, why in passed_over)
    )


def load(path: Path, map_location="cpu") -> dict:
    """The training state saved at ``path``; a ConfigError (one line for the CLI) if the file cannot be
    read as one: truncated, damaged, or not a checkpoint of this package."""
    # weights_only=False: the state holds numpy / Python RNG tuples; only load checkpoints you wrote.
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except UNREADABLE_FILE_ERRORS as error:
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
