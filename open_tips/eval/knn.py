"""k-nearest-neighbour classification on frozen CLS features, DINO protocol: cosine similarity to the
training set, the k most similar vote for their label with weight exp(similarity / T), T = 0.07."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from open_tips.eval.metrics import topk_accuracy


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores [N_test, C]: the sum of exp(cos / T) over each test item's k nearest training items,
    per label. Test items go ``chunk`` at a time, so a large training set is never held as a full
    similarity matrix."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} training features but {train_labels.shape[0]} labels")
    train = F.normalize(train_features.float(), dim=-1)
    labels = train_labels.long().to(train.device)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        test = F.normalize(test_features[start : start + chunk].float().to(train.device), dim=-1)
        top_sim, top_index = (test @ train.T).topk(k, dim=1)
        votes = torch.zeros(test.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_index], (top_sim / temperature).exp())
        scores.append(votes.cpu())
    return torch.cat(scores)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> dict:
    """top-1 / top-5 accuracy of the weighted kNN vote (k capped at the training set size); the settings
    used go under ``settings``."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    result: dict = topk_accuracy(scores, test_labels.long())
    result["settings"] = {"k": min(k, train_features.shape[0]), "temperature": temperature}
    return result
