"""Frozen features and kappa for a data set: what kNN, the linear probe and the uncertainty analysis read."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


@torch.no_grad()
def extract(model, dataset, batch_size: int = 512, device="cpu", workers: int = 0):
    """-> (features (N, feature_dim) float32 CPU, kappa (N,) float32 CPU or None, labels (N,) int64).

    ``model`` is an unwrapped ``VISimSiam``; it runs in eval mode (batch-norm running statistics,
    so each image's kappa does not depend on the rest of its batch) and is put back as it was.
    """
    was_training = model.training
    model.eval()
    features, kappas, labels = [], [], []
    dtype = next(model.parameters()).dtype
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    try:
        for images, targets in loader:
            f, kappa = model.embed(images.to(device, dtype, non_blocking=True))
            features.append(f.float().cpu())
            labels.append(targets)
            if kappa is not None:
                kappas.append(kappa.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(features), (torch.cat(kappas) if kappas else None), torch.cat(labels)
