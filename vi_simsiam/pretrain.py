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

import contextlib
import math
import os
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from . import config as config_lib
from . import distributed
from .augmentations import build_transforms
from .builder import VISimSiam, build_model
from .data import GlobalBatchSampler, TwoViewDataset, build_datasets, worker_init
from .errors import ConfigError, TrainingDiverged
from .runlog import RunLogger

RUNS_ROOT = Path("runs")


# ---------------------------------------------------------------------------- run directory
def _check_writable(run_dir: Path) -> None:
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
    _check_writable(run_dir)
    return run_dir


def find_checkpoint(resume: str, cfg: config_lib.Config) -> Path:
    """The checkpoint ``--resume`` names: "auto" (in --output-dir, else the newest run of the preset) or a path."""
    if resume == "auto":
        if cfg.output_dir:
            run_dir = Path(cfg.output_dir).expanduser()
            if not any(run_dir.glob("checkpoint*.pt")):
                raise ConfigError(
                    f"--resume auto: no {ckpt.CHECKPOINT_NAME} in {cfg.output_dir}; nothing to resume "
                    "(drop --resume to start a new run)"
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


# ---------------------------------------------------------------------------- optimization
def param_groups(model: VISimSiam, cfg: config_lib.Config) -> list[dict]:
    """encoder + projector | predictor (fixed lr after warmup with fix_pred_lr, as SimSiam) | kappa head.

    The kappa head's lr is multiplied by its ``lr_scale`` (1 / (d - 1): see ``builder.KappaHead``).
    """
    lr = cfg.lr * cfg.batch_size / 256
    groups = [
        {"name": "encoder", "params": [*model.encoder.parameters(), *model.projector.parameters()], "lr": lr},
        {"name": "predictor", "params": list(model.predictor.parameters()), "lr": lr},
    ]
    if model.kappa_head is not None:
        groups.append(
            {"name": "kappa_head", "params": list(model.kappa_head.parameters()), "lr": lr * model.kappa_head.lr_scale}
        )
    return groups


def lr_lambdas(cfg: config_lib.Config, steps_per_epoch: int, groups: list[dict]):
    """Per-group multipliers of the step index: linear warmup, then cosine to 0 (or constant)."""
    # A run shorter than the warmup (a smoke test) warms up over the whole run.
    total, warmup = cfg.epochs * steps_per_epoch, min(cfg.warmup_epochs, cfg.epochs) * steps_per_epoch

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    def constant(step: int) -> float:
        return (step + 1) / warmup if step < warmup else 1.0

    return [constant if (g["name"] == "predictor" and cfg.fix_pred_lr) else cosine for g in groups]


def resolve_amp(cfg: config_lib.Config, device: torch.device) -> torch.dtype | None:
    if cfg.dtype != "float32":
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if cfg.amp == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(f"--amp {cfg.amp} needs a CUDA device (on CPU pass --amp none)")
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16


# ---------------------------------------------------------------------------- statistics
@torch.no_grad()
def batch_statistics(out) -> dict[str, torch.Tensor]:
    """Tensors (no host sync): kappa mean/min/max and the collapse monitor std(normalize(z)) * sqrt(d).

    The monitor is ~1 for well-spread outputs and 0 at collapse (SimSiam, Sec. 4.1 / solo-learn).
    """
    z = torch.nn.functional.normalize(out.z1.float(), dim=1)
    stats = {"z_std": z.std(dim=0).mean() * math.sqrt(z.shape[1])}
    if out.kappa1 is not None:
        kappa = torch.cat([out.kappa1, out.kappa2]).float()
        stats.update(kappa_mean=kappa.mean(), kappa_min=kappa.min(), kappa_max=kappa.max())
    return stats


# ---------------------------------------------------------------------------- the run
class Trainer:
    def __init__(self, cfg: config_lib.Config, ctx: distributed.Context, run_dir: Path, resume_from: Path | None):
        self.cfg, self.ctx, self.run_dir = cfg, ctx, run_dir
        self.pretrain_set, self.eval_train_set, self.eval_test_set = build_datasets(cfg)
        self.sampler = GlobalBatchSampler(len(self.pretrain_set), cfg.batch_size, ctx.world_size, ctx.rank, cfg.seed)
        transform = build_transforms(cfg.augmentation, train=True, image_size=cfg.image_size)
        self.loader = DataLoader(
            TwoViewDataset(self.pretrain_set, transform, cfg.seed),
            batch_sampler=self.sampler,
            num_workers=cfg.workers,
            pin_memory=ctx.device.type == "cuda",
            persistent_workers=cfg.workers > 0,
            worker_init_fn=worker_init if cfg.workers > 0 else None,
        )
        self.steps_per_epoch = len(self.pretrain_set) // cfg.batch_size

        torch.manual_seed(cfg.seed)
        self.dtype = getattr(torch, cfg.dtype)
        self.model = build_model(cfg).to(ctx.device, self.dtype)
        if ctx.distributed:
            self.model = distributed.convert_sync_batchnorm(self.model, ctx.device)
        self.amp_dtype = resolve_amp(cfg, ctx.device)
        groups = param_groups(self.model, cfg)
        self.optimizer = torch.optim.SGD(
            groups, lr=groups[0]["lr"], momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambdas(cfg, self.steps_per_epoch, groups)
        )
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        if resume_from is not None:
            self._load(resume_from)
        # The first step whose loss was not finite (-1: none), kept on the device so that watching it
        # costs no synchronization; read where the run would log or save (check_finite).
        self.first_bad_step = torch.tensor(-1, device=ctx.device)
        self.saved_at = (self.epoch, self.step)  # where the checkpoint on disk stands
        self.net = self.model
        if ctx.distributed:
            with warnings.catch_warnings():
                # broadcast_buffers is deprecated in recent torch, but its replacement is missing in older
                # ones; with synced batch norm every rank's buffers are equal, so none need broadcasting.
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.nn.parallel.DistributedDataParallel(
                    self.model,
                    device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                    broadcast_buffers=False,
                )

    # -- state
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_states(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "config": self.cfg.to_dict(),
        }

    def _load(self, path: Path) -> None:
        state = ckpt.load(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_states(state["rng"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]

    def save(self) -> None:
        """Writes the checkpoint after check_finite (a diverged state is never saved); every process
        calls it together."""
        self.check_finite()
        self.write_checkpoint()

    def write_checkpoint(self) -> None:
        """The checkpoint file, without the check (the main process alone may call it: step 0)."""
        if self.ctx.is_main:
            ckpt.save_rotating(self.state(), self.run_dir, self.cfg.keep_checkpoints)
        self.saved_at = (self.epoch, self.step)

    def watch_finite(self, loss: torch.Tensor) -> None:
        """Records self.step (just taken) if its loss is NaN or infinite and no earlier step was."""
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, self.step), self.first_bad_step)

    def check_finite(self) -> None:
        """Raises TrainingDiverged (on every process together) if a step's loss was not finite."""
        first = int(self.first_bad_step.item())
        if not distributed.any_rank(first >= 0, self.ctx):
            return
        where = "on another process" if first < 0 else (
            f"at epoch {(first - 1) // self.steps_per_epoch + 1}, step {first} "
            f"(batch {(first - 1) % self.steps_per_epoch + 1} of {self.steps_per_epoch})"
        )
        saved_epoch, saved_step = self.saved_at
        raise TrainingDiverged(
            f"the loss became NaN or infinite {where}; training stopped and no checkpoint was written after it: "
            f"{self.run_dir / ckpt.CHECKPOINT_NAME} holds the last good state (epoch {saved_epoch}, step "
            f"{saved_step}). Start a new run with a lower --lr or a longer --warmup-epochs"
        )

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    # -- training
    def train_step(self, x1: torch.Tensor, x2: torch.Tensor):
        autocast = (
            torch.autocast(self.ctx.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        with autocast:
            out = self.net(x1, x2)
        loss = self.loss_or_nan(out)  # float32 whatever the autocast dtype (the kernels accumulate in fp32)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), out

    def loss_or_nan(self, out) -> torch.Tensor:
        """model.loss(out); where the model's outputs are no longer finite (the CPU loss refuses a NaN
        kappa with a ValueError) a NaN on the same graph instead, so that the step goes on as on every
        other process and check_finite stops the run at its next check."""
        try:
            return self.model.loss(out)
        except ValueError:
            if all(torch.isfinite(t).all() for t in out if t is not None):
                raise
            return sum(t.float().sum() for t in out if t is not None) * float("nan")

    def train(self, logger: RunLogger, stopper: ckpt.StopOnSignal) -> None:
        from tqdm import tqdm

        cfg, ctx = self.cfg, self.ctx
        total = cfg.epochs * self.steps_per_epoch
        bar = tqdm(
            total=total,
            initial=self.step,
            disable=None if ctx.is_main else True,
            dynamic_ncols=True,
            desc=f"{cfg.preset} {cfg.distribution}",
            file=sys.stderr,
        )
        print_every = max(1, cfg.epochs // 10)
        self.net.train()
        while not self.finished:
            start_batch = self.batch_in_epoch
            self.sampler.set_epoch(self.epoch, start_batch)
            sums, count, started = {}, 0, time.time()
            for x1, x2 in self.loader:
                x1 = x1.to(ctx.device, self.dtype, non_blocking=True)
                x2 = x2.to(ctx.device, self.dtype, non_blocking=True)
                loss, out = self.train_step(x1, x2)
                self.step += 1
                self.batch_in_epoch += 1
                self.watch_finite(loss)
                stats = {"loss": loss, **batch_statistics(out)}
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                    self.check_finite()
                    values = {key: value.item() for key, value in stats.items()}
                    values["lr"] = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
                    if ctx.is_main:
                        logger.log("step", self.step, **values)
                if distributed.any_rank(stopper.requested, ctx):
                    self.save()
                    return
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and (
                    self.batch_in_epoch < self.steps_per_epoch  # the epoch's end saves anyway
                ):
                    self.save()
            epoch_values = {
                "epoch": self.epoch + 1,
                "seconds": round(time.time() - started, 3),
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            if count:  # a run stopped right after an epoch's last batch resumes into an empty remainder
                means = distributed.all_reduce_mean(torch.stack([v / count for v in sums.values()]).float(), ctx)
                epoch_values.update(zip(sums, means.tolist()))
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.save()
            if ctx.is_main:
                logger.log("epoch", self.step, **epoch_values)
                # Without a terminal tqdm stays silent: print a line every tenth of the run instead.
                if bar.disable and (self.epoch % print_every == 0 or self.finished):
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in epoch_values.items() if k not in ("epoch", "seconds"))
                    print(f"epoch {self.epoch}/{cfg.epochs}: {shown}", flush=True)
        bar.close()


def evaluate(trainer: Trainer) -> dict:
    """kNN, linear probe and (VI-SimSiam) the uncertainty analysis on the held-out split.

    Writes eval.json (the headline numbers) and what ``evaluation.evaluate_all`` writes (knn.json,
    linear.json, test_predictions.csv, and for VI-SimSiam uncertainty.json, report.md, figures/).
    """
    import json

    from .evaluation import Run, evaluate_all

    run = Run(
        trainer.cfg,
        trainer.model,
        trainer.run_dir,
        trainer.eval_train_set,
        trainer.eval_test_set,
        trainer.ctx.device,
        trainer.step,
    )
    result = evaluate_all(run)
    result["epoch"] = trainer.epoch
    (trainer.run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


SKIPPED_IMAGES_NAME = "skipped_images.txt"


def record_skipped_images(trainer: Trainer, run_dir: Path) -> int:
    """The unreadable image files left out of the data sets (image folders), one "path<TAB>reason" a
    line in the run directory, and a line on stdout; their count."""
    skipped = [entry for data in (trainer.pretrain_set, trainer.eval_test_set) for entry in getattr(data, "skipped", [])]
    if skipped:
        (run_dir / SKIPPED_IMAGES_NAME).write_text("".join(f"{path}\t{reason}\n" for path, reason in skipped))
        print(f"skipped {len(skipped)} unreadable image file(s); listed in {run_dir / SKIPPED_IMAGES_NAME}", flush=True)
    return len(skipped)


def summary_text(cfg: config_lib.Config, result: dict, seconds: float, run_dir: Path) -> str:
    name = "SimSiam" if cfg.distribution == "none" else f"VI-SimSiam ({cfg.distribution})"
    lines = [
        f"{name} on {cfg.dataset}: {cfg.epochs} epochs, {seconds:.0f} s wall time "
        f"({torch.get_num_threads()} CPU threads)",
        f"  kNN top-1 (k={result['knn_k']}, t={result['knn_temperature']}) on {result['num_test']} held-out images: "
        f"{result['knn_top1']:.4f}; linear probe: {result['linear_top1']:.4f}",
    ]
    if "kappa" in result:
        k = result["kappa"]
        lines += [
            f"  kappa on held-out images: median {k['median']:.4g}, range [{k['min']:.4g}, {k['max']:.4g}] "
            f"(d = {cfg.dim})",
            f"  kappa -> kNN correctness: AUROC {result['auroc_knn']:.3f}; accuracy in the lowest / highest kappa "
            f"decile {result['bottom_decile_knn']:.3f} / {result['top_decile_knn']:.3f}",
            "  mean kappa, strongest corruption / clean: "
            + ", ".join(f"{n} {r:.2f}" for n, r in result["corruption_ratio"].items()),
            f"  report: {run_dir / 'report.md'}",
        ]
    if result.get("skipped_images"):
        lines.append(f"  unreadable image files skipped: {result['skipped_images']} "
                     f"(listed in {run_dir / SKIPPED_IMAGES_NAME})")
    lines.append(f"  run directory: {run_dir}")
    return "\n".join(lines)


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
                if resume:
                    path = find_checkpoint(resume, cfg)
                    saved = config_lib.load(path.parent / "config.json")
                    cfg_resumed = config_lib.merge_for_resume(saved, overrides or {})
                    _check_writable(path.parent)
                    decision = ("resume", str(path), cfg_resumed.to_dict())
                else:
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
