"""k-nearest-neighbour classification on frozen CLS features (DINO protocol: cosine similarity,
votes weighted by exp(similarity / T))."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from open_tips.eval.metrics import topk_accuracy


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Class scores [N_test, C]."""
    train = F.normalize(train_features.float(), dim=-1)
    test = F.normalize(test_features.float(), dim=-1)
    similarity = test @ train.T
    k = min(k, train.shape[0])
    top_sim, top_index = similarity.topk(k, dim=1)
    weights = (top_sim / temperature).exp()
    scores = torch.zeros(test.shape[0], num_classes)
    scores.scatter_add_(1, train_labels[top_index].long(), weights)
    return scores


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> dict[str, float]:
    scores = knn_classify(train_features, train_labels, test_features, num_classes, k, temperature)
    return topk_accuracy(scores, test_labels.long())
