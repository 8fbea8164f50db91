"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores of each query from its k most similar bank entries.

    Each neighbour votes for its class with weight ``exp(cos / temperature)``.

    Args:
        queries: Q×D features; bank: N×D features; bank_labels: LongTensor[N] in [0, num_classes).
        k: neighbours (clamped to N).

    Returns:
        Q×num_classes float32 scores (argmax = prediction).
    """
    k = min(k, bank.shape[0])
    bank_n = F.normalize(bank.float(), dim=1)
    scores = []
    for start in range(0, queries.shape[0], chunk_size):
        q = F.normalize(queries[start : start + chunk_size].float(), dim=1)
        sim, idx = (q @ bank_n.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)
