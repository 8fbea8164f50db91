"""Weak labels: connected components of the 1-nearest-neighbour graph of a batch of embeddings."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GraphBackend = Literal["scipy", "torch", "auto"]


@torch.no_grad()
def nearest_neighbors(v: Tensor, chunk_size: int = 4096) -> Tensor:
    """Index of each row's nearest other row by cosine similarity.

    Args:
        v: B×D embeddings (B >= 2), any float dtype; compared in float32.
        chunk_size: rows scored at once (memory is chunk_size×B floats).

    Returns:
        LongTensor[B] on ``v``'s device. Ties go to the lowest index, so the result is deterministic.
    """
    b = v.shape[0]
    if b < 2:
        raise ValueError(
            f"the 1-nearest-neighbour graph needs at least 2 samples in the (global) batch, got {b}; "
            "increase data.batch_size"
        )
    with torch.autocast(device_type=v.device.type, enabled=False):
        x = F.normalize(v.float(), dim=1)
        out = torch.empty(b, dtype=torch.long, device=v.device)
        for start in range(0, b, chunk_size):
            stop = min(start + chunk_size, b)
            sim = x[start:stop] @ x.T
            rows = torch.arange(stop - start, device=v.device)
            sim[rows, rows + start] = float("-inf")
            # argmax returns the first maximal index: ties are broken towards the lowest index.
            out[start:stop] = sim.argmax(dim=1)
    return out


def components_scipy(nn_index: Tensor) -> Tensor:
    """Component id of each node of the undirected graph {i — nn_index[i]} with scipy.

    Components are numbered in the order of their smallest node (as scipy numbers them).
    """
    from scipy.sparse import coo_matrix  # imported here: scipy is only needed by this backend
    from scipy.sparse.csgraph import connected_components

    nn_np = nn_index.detach().cpu().numpy()
    b = nn_np.shape[0]
    graph = coo_matrix((np.ones(b, dtype=np.int8), (np.arange(b), nn_np)), shape=(b, b))
    _, labels = connected_components(graph, directed=False)
    return torch.as_tensor(labels, dtype=torch.long, device=nn_index.device)


def components_torch(nn_index: Tensor) -> Tensor:
    """Component id of each node of the functional graph {i → nn_index[i]}, on the tensor's device.

    Every node has exactly one out-edge, so each component holds exactly one cycle and every node's path
    reaches it within B steps. Pointer doubling over ceil(log2 B) rounds gives, for every node, a node on its
    cycle and the minimum node over 2^k steps; the minimum along the cycle names the component. A fixed
    number of rounds with static shapes means no host synchronisation. Numbering matches
    :func:`components_scipy` (components ordered by their smallest node).
    """
    b = nn_index.shape[0]
    dev = nn_index.device
    jump = nn_index.clone()
    low = torch.minimum(torch.arange(b, device=dev), nn_index)  # min over nodes i, nn(i)
    for _ in range(max(1, math.ceil(math.log2(b)))):
        low = torch.minimum(low, low[jump])
        jump = jump[jump]
    # jump[i] is on i's cycle; low[jump[i]] is the minimum over >= B steps from it, i.e. over the whole cycle.
    cycle_min = low[jump]
    # The cycle minimum is the same for the whole component; number components by their smallest member.
    comp_min = torch.full((b,), b, dtype=torch.long, device=dev)
    comp_min.scatter_reduce_(0, cycle_min, torch.arange(b, device=dev), reduce="amin")
    smallest = comp_min[cycle_min]  # smallest node of each node's component
    is_first = torch.zeros(b, dtype=torch.long, device=dev)
    is_first.scatter_(0, smallest, 1)
    return (torch.cumsum(is_first, 0) - 1)[smallest]


def weak_labels(v: Tensor, backend: GraphBackend = "scipy", chunk_size: int = 4096) -> Tensor:
    """Weak labels of a batch: component id of each sample in its 1-NN graph.

    The graph links every sample to its nearest other sample by cosine similarity; edges are undirected.

    Args:
        v: B×D embeddings (gathered over ranks for the global batch).
        backend: ``scipy`` (host, ``connected_components``), ``torch`` (on ``v``'s device, no host sync), or
            ``auto`` (torch on accelerators, scipy on CPU). Both give identical labels.
        chunk_size: rows per similarity chunk.

    Returns:
        LongTensor[B] on ``v``'s device; components numbered in the order of their smallest member.
    """
    if backend == "auto":
        backend = "scipy" if v.device.type == "cpu" else "torch"
    nn_index = nearest_neighbors(v.detach(), chunk_size)
    if backend == "scipy":
        return components_scipy(nn_index)
    if backend == "torch":
        return components_torch(nn_index)
    raise ValueError(f"unknown graph backend {backend!r}; choose 'scipy', 'torch' or 'auto'")


def weak_label_stats(labels: Tensor, true_labels: Tensor | None = None) -> dict[str, Tensor]:
    """Diagnostics of a weak-label partition.

    Returns ``num_components``, ``mean_component_size`` and, when every true label is known (>= 0),
    ``purity`` = fraction of weak-positive pairs (i≠j in one component) that share the true class.
    """
    b = labels.shape[0]
    sizes = torch.bincount(labels)
    num = (sizes > 0).sum()
    stats = {"num_components": num.float(), "mean_component_size": b / num.float()}
    if true_labels is not None and bool((true_labels >= 0).all()):
        same_comp = labels[:, None] == labels[None, :]
        same_class = true_labels[:, None] == true_labels[None, :]
        off_diag = ~torch.eye(b, dtype=torch.bool, device=labels.device)
        pairs = (same_comp & off_diag).sum()
        stats["purity"] = (same_comp & same_class & off_diag).sum().float() / pairs.clamp(min=1).float()
    return stats
