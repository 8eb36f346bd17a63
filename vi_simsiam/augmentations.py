"""Two-view augmentations (SimSiam's ``loader.py``), one set per resolution.

Every transform draws its randomness from torch's global CPU generator only, so that
``data.TwoViewDataset`` can make each sample's views a pure function of (seed, epoch, index):
that is what makes resume exact at any step and lets 1 and N processes see the same views.

- ``imagenet`` (224 px): SimSiam's ImageNet set (MoCo v2): crop 0.2-1, colour jitter 0.4/0.4/0.4/0.1
  with p 0.8, grayscale p 0.2, Gaussian blur sigma 0.1-2 with p 0.5, horizontal flip.
- ``cifar`` (32 px): the same without blur, as in SimSiam's CIFAR experiments.
- ``digits`` (8x8, one channel, values in [0, 1]): ``DigitsAugmentation`` below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class DigitsAugmentation:
    """(1, 8, 8) in [0, 1] -> (1, 8, 8): random affine (zoom, rotation, shift), noise, erasing, contrast.

    Colour jitter, flips and heavy crops make no sense for 8x8 grayscale digits (a flipped 2 is
    not a 2; a crop of 30% of an 8x8 image is a few pixels). What changes a digit's pixels but not
    its class is its placement and stroke: so the views differ by a small affine warp, additive
    noise and a small erased patch. All of it is written as tensor ops on the 8x8 image because
    torchvision's per-transform overhead (~50 us) costs more than the network at this size.
    """

    def __init__(
        self,
        zoom: tuple[float, float] = (0.8, 1.25),
        degrees: float = 15.0,
        shift: float = 1.0,
        noise_std: float = 0.15,
        noise_p: float = 0.5,
        erase_p: float = 0.25,
        contrast: tuple[float, float] = (0.6, 1.4),
    ):
        self.zoom, self.degrees, self.shift = zoom, degrees, shift
        self.noise_std, self.noise_p, self.erase_p, self.contrast = noise_std, noise_p, erase_p, contrast

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        c, h, w = image.shape
        u = torch.rand(9)
        log_lo, log_hi = math.log(self.zoom[0]), math.log(self.zoom[1])
        zoom = math.exp(log_lo + (log_hi - log_lo) * u[0].item())
        angle = math.radians(self.degrees * (2 * u[1].item() - 1))
        # affine_grid maps output to input coordinates in [-1, 1]: one pixel is 2 / size.
        tx, ty = (2 * u[2].item() - 1) * self.shift * 2 / w, (2 * u[3].item() - 1) * self.shift * 2 / h
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[[cos, -sin, tx], [sin, cos, ty]]], dtype=image.dtype)
        grid = F.affine_grid(theta, (1, c, h, w), align_corners=False)
        out = F.grid_sample(image[None], grid, align_corners=False, padding_mode="zeros")[0]
        out = out * (self.contrast[0] + (self.contrast[1] - self.contrast[0]) * u[4].item())
        if u[5].item() < self.noise_p:
            out = out + self.noise_std * torch.randn_like(out)
        if u[6].item() < self.erase_p:
            size = 2 + int(u[7].item() * 2)  # a 2x2 or 3x3 patch: about one stroke segment
            top, left = divmod(int(u[8].item() * (h - size + 1) * (w - size + 1)), w - size + 1)
            out[:, top : top + size, left : left + size] = 0
        return out


def _identity(image):
    return image


def eval_parts(kind: str, image_size: int):
    """(prepare, normalize) of the evaluation transform: prepare gives a float tensor in [0, 1] at
    the evaluation size, normalize finishes it. The uncertainty analysis corrupts images in between.
    """
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if kind == "digits":
        return _identity, _identity
    if kind == "cifar":
        return v2.Compose(to_float), v2.Normalize(CIFAR_MEAN, CIFAR_STD)
    if kind == "imagenet":
        resize = [v2.Resize(int(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
        return v2.Compose([*resize, *to_float]), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    raise ValueError(f"unknown augmentation set {kind!r}")


def cifar_transforms():
    return v2.Compose(
        [
            v2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )


def imagenet_transforms(size: int = 224):
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            # SimSiam blurs with PIL radius sigma; a kernel of ~10% of the image covers sigma <= 2 at 224.
            v2.RandomApply([v2.GaussianBlur(kernel_size=2 * (size // 20) + 1, sigma=(0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_transforms(kind: str, train: bool, image_size: int):
    """The per-sample transform for ``kind`` in {"digits", "cifar", "imagenet"}: two-view augmentation or eval."""
    if not train:
        prepare, normalize = eval_parts(kind, image_size)
        return v2.Compose([prepare, normalize]) if kind != "digits" else _identity
    if kind == "digits":
        return DigitsAugmentation()
    if kind == "cifar":
        return cifar_transforms()
    if kind == "imagenet":
        return imagenet_transforms(image_size)
    raise ValueError(f"unknown augmentation set {kind!r}")
