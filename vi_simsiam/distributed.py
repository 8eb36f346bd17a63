"""One script for one process and for ``torchrun``: process group, device, synced batch norm.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the process group is
nccl on GPUs and gloo on CPU. ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so on CPU the
batch norms are replaced by ``CPUSyncBatchNorm``, which reduces the statistics with a
differentiable all-reduce: the forward and the gradients
are those of one batch norm over the global batch, as with SyncBatchNorm on GPUs.
(``torch.distributed.nn.functional.all_reduce`` would do, but is deprecated; the few lines of
``_AllReduceSum`` are the same thing.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Pick the device and, under torchrun, join the process group (nccl on CUDA, gloo on CPU)."""
    from .data import ConfigError

    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", store=_attempt_store(world_size), rank=rank, world_size=world_size
        )
    return Context(rank, world_size, local_rank, dev)


def _attempt_store(world_size: int) -> dist.Store | None:
    """The store of this torchrun attempt: the agent's store, its keys prefixed by the restart count.

    torchrun's agent keeps one TCP store server for all the restarts of a job, and the ``env://``
    rendezvous hands it to the workers without a per-attempt prefix. After a restart the new
    workers then read the previous attempt's process-group keys (the dead workers' addresses):
    gloo's connectFullMesh fails with "Connection refused" or waits forever. Prefixing the keys
    with ``TORCHELASTIC_RESTART_COUNT`` gives each attempt a clean namespace. ``None`` (plain
    ``env://``) outside torchrun's agent store.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False
    )
    return dist.PrefixStore(f"vi_simsiam/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, ctx: Context):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank if ``flag`` is true on any: ranks get a signal at different steps."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch for gloo/CPU; any input (N, C, *) as ``nn.SyncBatchNorm``.

    Two all-reduces (sum, then the sum of squared deviations) rather than one of (sum, sum of
    squares): the one-pass variance cancels badly in float32 when |mean| >> std.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.size(1)], dtype=input.dtype, device=input.device)
        total = all_reduce(torch.cat([input.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centered = input - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims)) / n
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm*d -> a synced batch norm (torch's on GPUs, ``CPUSyncBatchNorm`` on CPU)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        # Reuse the Parameter and buffer objects (as torch's convert does), so an optimizer or a
        # state dict made before the conversion still refers to the live tensors.
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        if module.track_running_stats:
            synced.running_mean, synced.running_var = module.running_mean, module.running_var
            synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module
