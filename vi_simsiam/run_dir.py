"""Where a run lives: a new run's directory (never one that holds something), and the checkpoint
that ``--resume`` names (the newest one that verifies, saying which it passed over and why)."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from . import checkpoint as ckpt
from . import config as config_lib
from .errors import ConfigError

RUNS_ROOT = Path("runs")


def check_writable(run_dir: Path) -> None:
    """Fail early, without creating anything, if ``run_dir`` could not be created and written."""
    ancestor = run_dir.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"output directory {run_dir} is not writable: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {run_dir} is not writable: no write permission on {ancestor}")


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"output directory {run_dir} is not writable: {error.strerror or error}") from error


def new_run_dir(cfg: config_lib.Config) -> Path:
    """The directory for a new run (not created yet); never one that already holds something."""
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir).expanduser()
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--output-dir {run_dir} exists and is not a directory")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            hint = (
                " (it holds a checkpoint: pass --resume auto to continue it)"
                if (run_dir / ckpt.CHECKPOINT_NAME).exists()
                else ""
            )
            raise ConfigError(
                f"--output-dir {run_dir} is not empty{hint}; choose a new directory "
                "(an existing run is never overwritten)"
            )
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = RUNS_ROOT / f"{cfg.preset}-{cfg.distribution}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = RUNS_ROOT / f"{cfg.preset}-{cfg.distribution}-{stamp}-{suffix}"
    check_writable(run_dir)
    return run_dir


def find_checkpoint(resume: str, cfg: config_lib.Config) -> Path | None:
    """The checkpoint ``--resume`` names: "auto" (in --output-dir, else the newest run of the preset) or a path.

    None for "auto" with an --output-dir that does not exist yet or is empty: a new run starts there.
    That makes one command both start a run and continue it, which is what a restarting launcher
    (``torchrun --max-restarts``, a preemptible job's retry) needs; a directory that holds files but
    no checkpoint is still refused, so nothing is overwritten.
    """
    if resume == "auto":
        if cfg.output_dir:
            run_dir = Path(cfg.output_dir).expanduser()
            if not any(run_dir.glob("checkpoint*.pt")):
                if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
                    return None
                raise ConfigError(
                    f"--resume auto: no {ckpt.CHECKPOINT_NAME} in {cfg.output_dir}, which is not empty; "
                    "nothing to resume (drop --resume and choose a new --output-dir to start a new run)"
                )
            return newest_valid_checkpoint(run_dir)
        candidates = sorted(
            RUNS_ROOT.glob(f"{cfg.preset}-{cfg.distribution}-*/{ckpt.CHECKPOINT_NAME}"), key=lambda p: p.stat().st_mtime
        )
        if not candidates:
            raise ConfigError(
                f"--resume auto: no run of preset {cfg.preset!r} ({cfg.distribution}) with a checkpoint "
                f"under {RUNS_ROOT}/; nothing to resume (drop --resume, or pass --output-dir RUN_DIR)"
            )
        return newest_valid_checkpoint(candidates[-1].parent)
    path = Path(resume).expanduser()
    if path.is_dir():
        return newest_valid_checkpoint(path)
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no checkpoint at {path}")
    reason = ckpt.verify(path)
    if reason is not None:
        raise ConfigError(f"--resume {resume}: {reason}")
    return path


def newest_valid_checkpoint(run_dir: Path) -> Path:
    """ckpt.newest_valid, saying on stderr which newer checkpoints it passed over and why."""
    path, passed_over = ckpt.newest_valid(run_dir)
    for skipped, reason in passed_over:
        print(f"vi-simsiam: skipping {skipped}: {reason}", file=sys.stderr, flush=True)
    return path
