"""Weighted cosine kNN on frozen features (Wu et al. 2018, as in solo-learn / DINO): k = 200, t = 0.1.

Each of the k nearest training features votes for its label with weight exp(cos / t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """train_features (N, F), train_labels (N,), test_features (M, F) -> (predictions (M,), class scores (M, C)).

    Scores are the normalized vote weights (rows sum to 1). Runs on the features' device.
    """
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device)
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], batch_size):
        query = F.normalize(test_features[start : start + batch_size].float().to(bank.device), dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)
        weight = (similarity / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[index], weight)
        scores.append(votes / votes.sum(1, keepdim=True))
    scores = torch.cat(scores)
    return scores.argmax(1), scores


def knn_top1(train_features, train_labels, test_features, test_labels, num_classes, k=200, temperature=0.1) -> float:
    predictions, _ = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return (predictions.cpu() == test_labels.cpu()).float().mean().item()
