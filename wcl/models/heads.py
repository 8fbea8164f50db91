"""Projection heads: stacks of Linear–BN–ReLU ending in a Linear layer."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP ``in_dim → hidden_dim (× num_layers-1, each Linear–BN–ReLU) → out_dim``: B×in_dim → B×out_dim."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2) -> None:
        if num_layers < 1:
            raise ValueError(f"a projection head needs num_layers >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)
