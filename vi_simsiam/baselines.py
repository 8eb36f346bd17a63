"""Uncertainty scores that need no kappa head: what kappa must beat to be worth its head.

Every score is a certainty (higher = more certain, as kappa), computed for a batch of inputs in
[0, 1] before normalization, so each statistic of the analysis is computed the same way for kappa
and for them:

- ``neighbour_similarity``: the mean cosine similarity of the input's backbone feature to its
  ``NEIGHBOURS`` = 20 nearest training features (an input far from all training images is unusual);
  measured on the main job's run before this analysis existed, it predicted kNN correctness better
  than kappa (AUROC 0.90 against 0.83);
- ``view_agreement``: SimSiam's own agreement between two augmented views,
  1/2 [cos(p1, z2) + cos(p2, z1)], averaged over a few view pairs: the cosine c whose odds
  c / (1 - c) the kappa head is trained to predict (kappa* ~ (d - 1) c / (1 - c)), here measured
  instead of predicted;
- ``knn_margin``: the weighted kNN classifier's vote share of its first class minus that of its
  second (``knn.knn_predict``, the run's k and temperature): how contested the prediction is.

A SimSiam run (no kappa head) gets these three; a VI-SimSiam run gets kappa as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .knn import knn_predict

NEIGHBOURS = 20
BASELINES = ("neighbour_similarity", "view_agreement", "knn_margin")


def neighbour_similarity(features: torch.Tensor, bank: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """features (N, F), bank (M, F) training features -> (N,) mean cosine to the k nearest of the bank."""
    query, bank = F.normalize(features.float(), dim=1), F.normalize(bank.float(), dim=1)
    return (query @ bank.T).topk(min(k, bank.shape[0]), dim=1).values.mean(1)


def knn_margin(class_scores: torch.Tensor) -> torch.Tensor:
    """(N, C) vote shares (rows sum to 1) -> (N,) largest share minus the second largest (1 = unanimous)."""
    if class_scores.shape[1] < 2:
        return torch.ones(class_scores.shape[0])
    top = class_scores.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@torch.no_grad()
def view_agreement(model, views1: torch.Tensor, views2: torch.Tensor) -> torch.Tensor:
    """Normalized views (N, C, H, W) of the same inputs -> (N,) 1/2 [cos(p1, z2) + cos(p2, z1)] (eval mode)."""
    z1, z2 = model.projector(model.encoder(views1)), model.projector(model.encoder(views2))
    p1, p2 = model.predictor(z1), model.predictor(z2)
    return 0.5 * (F.cosine_similarity(p1, z2, dim=1) + F.cosine_similarity(p2, z1, dim=1)).float()


class Scorer:
    """``scorer(images)`` -> {score name: (N,) float64 CPU}: kappa (if the model has a head) and ``BASELINES``.

    images: (N, C, H, W) in [0, 1] before normalization. ``augment(images, seed)`` is the training
    augmentation on such a batch (``uncertainty_probes.augmentation_at(kind, size, 1.0)``); the
    view pairs use seeds 0 .. view_pairs-1 for every batch, so two sets of inputs are compared
    under the same draws of augmentation.
    """

    def __init__(self, model, normalize, train_features, train_labels, num_classes: int, knn_k: int,
                 knn_temperature: float, augment, device, view_pairs: int = 4, batch_size: int = 512):
        self.model, self.normalize, self.augment = model, normalize, augment
        self.train_features, self.train_labels = train_features.to(device), train_labels
        self.num_classes, self.knn_k, self.knn_temperature = num_classes, knn_k, knn_temperature
        self.device, self.view_pairs, self.batch_size = device, view_pairs, batch_size
        self.dtype = next(model.parameters()).dtype
        self.has_kappa = model.kappa_head is not None

    @property
    def names(self) -> tuple[str, ...]:
        return (("kappa",) if self.has_kappa else ()) + BASELINES

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(images).to(self.device, self.dtype)

    @torch.no_grad()
    def _batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, kappa = self.model.embed(self._input(images))
        _, votes = knn_predict(self.train_features, self.train_labels, features, self.num_classes,
                               self.knn_k, self.knn_temperature)
        scores = {
            "neighbour_similarity": neighbour_similarity(features, self.train_features),
            "knn_margin": knn_margin(votes),
            "view_agreement": sum(
                view_agreement(self.model, self._input(self.augment(images, 2 * pair)),
                               self._input(self.augment(images, 2 * pair + 1)))
                for pair in range(self.view_pairs)
            ) / self.view_pairs,
        }
        if kappa is not None:
            scores["kappa"] = kappa
        return {name: value.double().cpu() for name, value in scores.items()}

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            parts = [self._batch(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        finally:
            self.model.train(was_training)
        return {name: torch.cat([part[name] for part in parts]) for name in self.names}
