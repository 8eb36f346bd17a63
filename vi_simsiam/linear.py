"""Linear probe on frozen, cached backbone features (SimSiam's ``main_lincls`` without the augmentation).

Features are standardized with the training set's mean and std (what SimSiam's BN-without-affine
before the classifier does), then one ``nn.Linear`` is trained with SGD + momentum, cosine lr and
cross-entropy. Cached features make it seconds on digits/CIFAR; the augmented ImageNet protocol
(90 epochs of crops through the frozen network) is not implemented here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float | None = None,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict:
    """train (N, F) / (N,), test (M, F) / (M,) -> {"top1", "predictions" (M,), "probabilities" (M, C)}.

    ``lr`` defaults to 0.1 x batch_size / 256 (standardized features make it scale-free).
    """
    device = train_features.device
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_test = (train_features - mean) / std, (test_features.to(device) - mean) / std
    y_train = train_labels.to(device)
    generator = torch.Generator().manual_seed(seed)
    classifier = torch.nn.Linear(x_train.shape[1], num_classes).to(device)
    with torch.no_grad():  # seeded init so the probe is reproducible whatever the global RNG did
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * 0.01)
        classifier.bias.zero_()
    lr = 0.1 * batch_size / 256 if lr is None else lr
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        probabilities = classifier(x_test).softmax(1).cpu()
    predictions = probabilities.argmax(1)
    return {
        "top1": (predictions == test_labels.cpu()).double().mean().item(),
        "predictions": predictions,
        "probabilities": probabilities,
    }
