"""The training loop: model, optimizer and data of one process (of one or of N under torchrun), the
checkpointed state, the divergence watch, and the epochs with their logging and stop points."""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from . import config as config_lib
from . import distributed
from .augmentations import build_transforms
from .builder import build_model
from .data import GlobalBatchSampler, TwoViewDataset, build_datasets, worker_init
from .errors import TrainingDiverged
from .optimization import lr_lambdas, param_groups, resolve_amp
from .runlog import RunLogger


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
