"""Backbones: images (N, C, H, W) -> features (N, feature_dim).

- ``resnet18_cifar``: torchvision's ResNet-18 with the CIFAR stem SimSiam uses for 32x32 data
  (3x3 conv, stride 1, no max-pool), because the ImageNet stem would shrink 32x32 to 8x8 at once.
- ``resnet50``: torchvision's ResNet-50 for ImageNet-style data (zero-init of the last BN in each
  residual block, as in SimSiam's builder).
- ``digits_cnn``: a small all-conv net for the embedded 8x8 digits, sized so that the whole
  main job (pretraining + evaluation) fits a few minutes on two CPU cores.

Every backbone ends in global average pooling, no classifier; ``feature_dim`` is an attribute.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) -> (N, width * 4): three 3x3 conv-BN-ReLU stages, one stride-2, then global pool.

    The stride-2 stage halves 8x8 to 4x4 once: a second halving would leave 2x2, too coarse for
    strokes. BN in every stage keeps it trainable with SimSiam's SGD recipe.
    """

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()

        def stage(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *stage(in_channels, width, 1),
            *stage(width, 2 * width, 1),
            *stage(2 * width, 4 * width, 2),
            *stage(4 * width, 4 * width, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)


def _strip_classifier(net: nn.Module) -> nn.Module:
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def resnet18_cifar(in_channels: int = 3) -> nn.Module:
    """(N, 3, 32, 32) -> (N, 512)."""
    net = models.resnet18(zero_init_residual=True)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return _strip_classifier(net)


def resnet50(in_channels: int = 3) -> nn.Module:
    """(N, 3, 224, 224) -> (N, 2048)."""
    net = models.resnet50(zero_init_residual=True)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return _strip_classifier(net)


def resnet18(in_channels: int = 3) -> nn.Module:
    """(N, 3, 224, 224) -> (N, 512): the ImageNet-stem ResNet-18, for small image-folder runs."""
    net = models.resnet18(zero_init_residual=True)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return _strip_classifier(net)


BACKBONES = {
    "digits_cnn": lambda in_channels: DigitsCNN(in_channels),
    "resnet18_cifar": resnet18_cifar,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build_backbone(name: str, in_channels: int = 3) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels)
