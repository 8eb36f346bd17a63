"""The VI-SimSiam model: SimSiam (Chen & He, 2021) whose predictor side also outputs a concentration.

    x1, x2 --encoder--> f1, f2 --projector--> z1, z2 --predictor--> p1, p2
                                                 \\--kappa head--> kappa1, kappa2

    loss = 1/2 [NLL(sg z2 | p1, kappa1) + NLL(sg z1 | p2, kappa2)]       (VI-SimSiam)
    loss = 1/2 [-cos(p1, sg z2) - cos(p2, sg z1)]                         (distribution="none")

Both go through the same ``vissiam_kernels.vi_simsiam_loss`` call, so SimSiam and VI-SimSiam
compare like for like. Shapes: images (N, C, H, W); f (N, feature_dim); z, p (N, dim); kappa (N,).

The NLL's gradient to the mean direction is kappa / (1 + c) times SimSiam's (dNLL/dc = -kappa / (1 + c)),
so VI-SimSiam is SimSiam with a per-image weight that grows with the predicted concentration.
The NLL is used as it is, not per dimension: divided by d - 1 that weight starts near 0
(c ~ 0 at initialization, so kappa* ~ (d-1) c / (1-c) ~ 0) and training never leaves the start
(measured on digits, d = 256: c stayed ~0.01 for 100 epochs). Instead the learning-rate warmup
(``config``) absorbs the large first gradients, and the kappa head, whose gradient does scale
with d, gets its own learning-rate scale (``KappaHead.lr_scale``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import vissiam_kernels as vk

from .backbones import build_backbone

DISTRIBUTIONS = ("power_spherical", "vmf", "none")
KAPPA_INPUTS = ("projector", "backbone")
# How the head's output u becomes kappa (KappaHead): kappa_min + (d - 1) softplus(u) | kappa_min + softplus(u)
# | kappa_min + (d - 1) exp(u).
KAPPA_PARAMETRIZATIONS = ("scaled_softplus", "softplus", "scaled_exp")


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """SimSiam's projector: (Linear-BN-ReLU) x (num_layers - 1), then Linear and a BN without affine.

    ImageNet uses 3 layers, CIFAR 2 (SimSiam paper, Sec. 4 and App. D). The last BN has no affine
    parameters, so the bias of the last Linear is redundant and is left out.
    """
    if num_layers < 1:
        raise ValueError(f"projector needs at least one layer; got {num_layers}")
    layers, dim = [], in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    return nn.Sequential(*layers)


def prediction_mlp(dim: int, pred_dim: int) -> nn.Sequential:
    """SimSiam's bottleneck predictor dim -> pred_dim -> dim (2048 -> 512 -> 2048 by default)."""
    return nn.Sequential(
        nn.Linear(dim, pred_dim, bias=False),
        nn.BatchNorm1d(pred_dim),
        nn.ReLU(inplace=True),
        nn.Linear(pred_dim, dim),
    )


class KappaHead(nn.Module):
    """(N, in_dim) -> (N,) concentration: kappa = kappa_min + (d - 1) * softplus(u), u = MLP(x).

    The factor d - 1 is the scale of the NLL optimum kappa* ~ (d-1) c / (1-c): softplus(u) then
    estimates the odds c / (1 - c) of the cosine between the views, an O(1)-O(100) quantity for
    every d. At d = 2048, kappa spans kappa_min ... 2047 * softplus(u): 1e2 at u = -3, 1e4 at
    u = 4.9, 1e5 at u = 49; the last Linear's bias alone can put it anywhere in that range.
    The head runs in float32 or wider (autocast off): kappa ~ 1e4 in bfloat16 has three digits.

    ``lr_scale`` = 1 / (d - 1) is read by the optimizer (``optimization.param_groups``): the NLL's
    gradient to u is (d - 1) sigmoid(u) dNLL/dkappa, d - 1 times that of an O(1) output, so at the
    common learning rate one step would move u by O(d) and softplus(u) dies at 0 (measured on
    digits at d = 256: kappa stuck at kappa_min within the warmup). Scaling the head's learning
    rate by 1 / (d - 1) gives steps in u of O(lr), whatever d.

    Width (``hidden_dim``, default 32 at every d): the head maps z (N, d) to one number per image, so
    its hidden layer need not grow with d, but its cost does: Linear(d -> hidden) forward and backward
    for both views is 6 N d hidden flops, the one thing VI-SimSiam adds to SimSiam's step besides the
    loss (the fused NLL costs what the cosine does). Measured in bench/bench_train_step.py's digits-CNN
    step (N = 256, d = 2048; AMD EPYC (family 25, Zen 3), 2 vCPUs, 2 threads, 480-650 ms a step), the
    head's fwd+bwd and SGD update cost 37 ms at width 512, 10 ms at 64, 6.5 ms at 32: the paired step
    ratio VI-SimSiam / SimSiam was 1.05-1.15 at 512 (the predictor's width, taken by habit) and
    0.96-1.05 at 32, mean 1.00 (ResNet-18 CIFAR, N = 32: the head is 0.4% of the step at 512, 0.1% at 32).
    The main job (digits, d = 256, seeds 0-2) loses nothing measurable at 32: kNN top-1 0.980-0.998
    (512: 0.958-0.993), AUROC of kappa for kNN correctness 0.71-0.88 (64: 0.79-0.88; 512: 0.71-0.83),
    each AUROC +-0.1 (1-19 errors among 450 test images).
    Other parametrizations (``parametrization``, for the ablation in scripts/kappa_ablation.py):
    ``softplus``, kappa = kappa_min + softplus(u), the head as a plain positive output (no d - 1, so
    lr_scale = 1), and ``scaled_exp``, kappa = kappa_min + (d - 1) exp(u) (u is log-odds rather than
    softplus-odds; its gradient to u grows with kappa). ``lr_multiplier`` multiplies lr_scale.
    Each view goes through the head on its own (BN statistics per view, as in SimSiam's heads), and z
    is not detached: the NLL's gradient reaches the projector through kappa as well.
    """

    def __init__(self, in_dim: int, dim: int, hidden_dim: int, kappa_min: float = 1e-2,
                 parametrization: str = "scaled_softplus", lr_multiplier: float = 1.0):
        super().__init__()
        if parametrization not in KAPPA_PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {', '.join(KAPPA_PARAMETRIZATIONS)}; "
                             f"got {parametrization!r}")
        if not lr_multiplier > 0:
            raise ValueError(f"lr_multiplier must be > 0; got {lr_multiplier!r}")
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 1),
        )
        self.parametrization = parametrization
        self.scale = 1.0 if parametrization == "softplus" else float(dim - 1)
        self.kappa_min = float(kappa_min)
        self.lr_scale = lr_multiplier / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            u = self.mlp(x.to(torch.promote_types(x.dtype, torch.float32))).squeeze(-1)
            # exp(u) clamped at u = 30 (kappa ~ 1e13 d): a finite kappa for any input
            positive = u.clamp(max=30.0).exp() if self.parametrization == "scaled_exp" else F.softplus(u)
            return self.kappa_min + self.scale * positive


class Output(NamedTuple):
    """What one training forward returns: p*, z*: (N, dim); kappa*: (N,) or None; f1: (N, feature_dim)."""

    p1: torch.Tensor
    p2: torch.Tensor
    z1: torch.Tensor
    z2: torch.Tensor
    kappa1: torch.Tensor | None
    kappa2: torch.Tensor | None
    f1: torch.Tensor


class VISimSiam(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        dim: int = 2048,
        pred_dim: int = 512,
        proj_hidden_dim: int = 2048,
        proj_layers: int = 3,
        distribution: str = "power_spherical",
        kl_weight: float = 0.0,
        kappa_input: str = "projector",
        kappa_hidden_dim: int = 32,
        kappa_min: float = 1e-2,
        kappa_param: str = "scaled_softplus",
        kappa_lr_scale: float = 1.0,
    ):
        super().__init__()
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
        if kappa_input not in KAPPA_INPUTS:
            raise ValueError(f"kappa_input must be one of {', '.join(KAPPA_INPUTS)}; got {kappa_input!r}")
        if distribution == "none" and kl_weight:
            raise ValueError("kl_weight needs a distribution; distribution='none' is plain SimSiam")
        self.distribution, self.kl_weight, self.kappa_input, self.dim = distribution, kl_weight, kappa_input, dim
        self.encoder = backbone
        self.projector = projection_mlp(backbone.feature_dim, proj_hidden_dim, dim, proj_layers)
        self.predictor = prediction_mlp(dim, pred_dim)
        self.kappa_head = None
        if distribution != "none":
            in_dim = dim if kappa_input == "projector" else backbone.feature_dim
            self.kappa_head = KappaHead(in_dim, dim, kappa_hidden_dim, kappa_min, kappa_param, kappa_lr_scale)

    def _kappa(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor | None:
        if self.kappa_head is None:
            return None
        return self.kappa_head(z if self.kappa_input == "projector" else f)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> Output:
        f1, f2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(f1), self.projector(f2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return Output(p1, p2, z1, z2, self._kappa(f1, z1), self._kappa(f2, z2), f1)

    def loss(self, out: Output) -> torch.Tensor:
        """Scalar float32 loss; z is detached inside the kernel call (the stop-gradient)."""
        return vk.vi_simsiam_loss(
            out.p1,
            out.p2,
            out.z1,
            out.z2,
            out.kappa1,
            out.kappa2,
            distribution=self.distribution,
            kl_weight=self.kl_weight,
        )

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Evaluation: images (N, C, H, W) -> backbone features (N, feature_dim), kappa (N,) or None."""
        f = self.encoder(x)
        return f, self._kappa(f, self.projector(f))


def build_model(cfg) -> VISimSiam:
    """The model described by a resolved config (see ``vi_simsiam.config``)."""
    return VISimSiam(
        build_backbone(cfg.backbone, cfg.in_channels),
        dim=cfg.dim,
        pred_dim=cfg.pred_dim,
        proj_hidden_dim=cfg.proj_hidden_dim,
        proj_layers=cfg.proj_layers,
        distribution=cfg.distribution,
        kl_weight=cfg.kl_weight,
        kappa_input=cfg.kappa_input,
        kappa_hidden_dim=cfg.kappa_hidden_dim,
        kappa_min=cfg.kappa_min,
        kappa_param=cfg.kappa_param,
        kappa_lr_scale=cfg.kappa_lr_scale,
    )
