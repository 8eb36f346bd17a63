"""Pretraining (SimSiam's ``main_simsiam.py``): one process on CPU / one GPU, or N under torchrun.

    run(cfg, resume)  ->  summary dict; the run directory holds
        config.json       the resolved configuration
        checkpoint.pt     the latest training state (atomic; every epoch and on SIGTERM/SIGINT)
        metrics.jsonl     every logged record; metrics.csv one row per epoch; tb/ TensorBoard
        eval.json         the headline numbers on the held-out split (kNN, linear probe, kappa analysis)
        knn.json, linear.json, test_predictions.csv, uncertainty.json, report.md, figures/
                          written by ``evaluation`` (also available as separate commands)

Exactness: on CPU with ``deterministic`` and a fixed thread count, a run killed at any point and
resumed with ``--resume auto`` ends bitwise equal to an uninterrupted one (tested with SIGKILL).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import config as config_lib
from . import distributed
from .errors import ConfigError
from .final_evaluation import evaluate, record_skipped_images, summary_text
from .run_dir import check_writable, create_run_dir, find_checkpoint, new_run_dir
from .runlog import RunLogger
from .trainer import Trainer


def run(cfg: config_lib.Config, resume: str | None = None, overrides: dict | None = None) -> dict:
    """Pretrain (and evaluate) with ``cfg``; ``resume`` = None | "auto" | a checkpoint or run directory.

    ``overrides`` are the settings given explicitly on the command line: on resume they are checked
    against the saved config (see ``config.merge_for_resume``).
    """
    started = time.time()
    ctx = distributed.setup(cfg.device)
    try:
        # Rank 0 decides the run directory (a timestamped name differs between processes)
        # and every rank gets the same answer or the same error.
        try:
            decision = None
            if ctx.is_main:
                path = find_checkpoint(resume, cfg) if resume else None
                if path is not None:
                    saved = config_lib.load(path.parent / "config.json")
                    cfg_resumed = config_lib.merge_for_resume(saved, overrides or {})
                    check_writable(path.parent)
                    decision = ("resume", str(path), cfg_resumed.to_dict())
                else:
                    if resume:  # "auto" in an empty --output-dir: the command line's config, as without --resume
                        cfg = config_lib.resolve(cfg.preset, **(overrides or {}))
                        print(f"--resume auto: nothing to resume in {cfg.output_dir}; starting a new run there",
                              flush=True)
                    decision = ("new", str(new_run_dir(cfg)), cfg.to_dict())
        except ConfigError as error:
            decision = ("error", str(error), None)
        decision = distributed.broadcast_object(decision, ctx)
        if decision[0] == "error":
            raise ConfigError(decision[1])
        kind, where, values = decision
        cfg = config_lib.Config(**values)
        resume_from = Path(where) if kind == "resume" else None
        run_dir = Path(where).parent if kind == "resume" else Path(where)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        trainer = Trainer(cfg, ctx, run_dir, resume_from)  # validates the data before anything is written
        created = None
        if ctx.is_main and kind == "new":
            try:
                create_run_dir(run_dir)
            except ConfigError as error:
                created = str(error)
        created = distributed.broadcast_object(created, ctx)
        if created is not None:
            raise ConfigError(created)
        if ctx.is_main:
            if kind == "new":
                config_lib.save(cfg, run_dir / "config.json")
                trainer.write_checkpoint()  # step 0: a run killed in its first epoch can be resumed too
            print(
                f"{'resuming' if resume_from else 'starting'} {cfg.preset} ({cfg.distribution}) in {run_dir} "
                f"at epoch {trainer.epoch}, step {trainer.step}; {ctx.world_size} process(es) on {ctx.device}",
                flush=True,
            )
        skipped = record_skipped_images(trainer, run_dir) if ctx.is_main else 0
        logger = RunLogger(run_dir, enabled=ctx.is_main, purge_step=trainer.step if resume_from else None)
        try:
            with ckpt.StopOnSignal() as stopper:
                trainer.train(logger, stopper)
            if stopper.requested:
                if ctx.is_main:
                    print(
                        f"stopped by signal {stopper.signum} at epoch {trainer.epoch}, step {trainer.step}; "
                        f"checkpoint saved; continue with: --resume auto --output-dir {run_dir}",
                        file=sys.stderr,
                        flush=True,
                    )
                raise SystemExit(128 + stopper.signum)
            result = {"run_dir": str(run_dir), "epoch": trainer.epoch, "step": trainer.step, "skipped_images": skipped}
            if cfg.evaluate and ctx.is_main:
                result.update(evaluate(trainer))
                logger.log(
                    "eval",
                    trainer.step,
                    **{k: v for k, v in result.items() if k != "step" and isinstance(v, (int, float))},
                )
                seconds = time.time() - started
                result["seconds"] = seconds
                print(summary_text(cfg, result, seconds, run_dir), flush=True)
            return result
        finally:
            logger.close()
    finally:
        distributed.teardown()
