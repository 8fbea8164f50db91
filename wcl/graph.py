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


def label_constraints(nn_index: Tensor, labels: Tensor, merge: bool = True) -> tuple[Tensor, Tensor | None]:
    """Known labels applied to the 1-NN graph (this project's extension, not the paper's).

    A 1-NN edge between two labelled samples of different classes is dropped, and labelled samples of one class are
    linked (each to the class's first labelled sample: a star connects them like a clique would) unless ``merge`` is
    false. Unlabelled rows (label -1) keep their edge.

    Args:
        nn_index: LongTensor[B], each row's nearest other row.
        labels: LongTensor[B], the known class of each row, -1 where unknown.
        merge: link the labelled samples of one class; false drops the different-class edges only.

    Returns:
        ``(kept, link)``, LongTensor[B] each: ``kept[i]`` is ``nn_index[i]``, or ``i`` (a self-loop: no edge) where
        the edge is dropped; ``link[i]`` is the smallest row of ``i``'s known class (``i`` when unlabelled), or
        ``link`` is None without ``merge``. The constrained graph is the undirected graph {i — kept[i]} ∪
        {i — link[i]}.
    """
    b = nn_index.shape[0]
    rows = torch.arange(b, device=nn_index.device)
    known = labels >= 0
    other = labels[nn_index]
    kept = torch.where(known & (other >= 0) & (other != labels), rows, nn_index)
    if not merge:
        return kept, None
    same = (labels[:, None] == labels[None, :]) & known[None, :]  # B×B; a labelled row has a True at its own column
    link = torch.where(known, same.to(torch.uint8).argmax(dim=1), rows)  # argmax: the first True
    return kept, link


def components_scipy(nn_index: Tensor, link: Tensor | None = None) -> Tensor:
    """Component id of each node of the undirected graph {i — nn_index[i]} (∪ {i — link[i]}) with scipy.

    Components are numbered in the order of their smallest node (as scipy numbers them).
    """
    from scipy.sparse import coo_matrix  # imported here: scipy is only needed by this backend
    from scipy.sparse.csgraph import connected_components

    nn_np = nn_index.detach().cpu().numpy()
    b = nn_np.shape[0]
    rows, cols = np.arange(b), nn_np
    if link is not None:
        rows, cols = np.concatenate([rows, rows]), np.concatenate([cols, link.detach().cpu().numpy()])
    graph = coo_matrix((np.ones(rows.shape[0], dtype=np.int8), (rows, cols)), shape=(b, b))
    _, labels = connected_components(graph, directed=False)
    return torch.as_tensor(labels, dtype=torch.long, device=nn_index.device)


def components_torch(nn_index: Tensor, link: Tensor | None = None) -> Tensor:
    """Component id of each node of the functional graph {i → nn_index[i]} (∪ {i — link[i]}) on the tensor's
    device, without host synchronisation. Numbering matches :func:`components_scipy` (components ordered by their
    smallest node).

    Every node has exactly one out-edge (a self-loop counts), so each component holds exactly one cycle and every
    node's path reaches it within B steps. Pointer doubling over ceil(log2 B) rounds gives, for every node, a node on
    its cycle and the minimum node over 2^k steps; the minimum along the cycle names the component. A fixed number
    of rounds with static shapes means no host synchronisation.

    ``link`` (the class links of :func:`label_constraints`) then merges components: the B×B component adjacency it
    induces is closed transitively by ceil(log2 B) Boolean squarings — exact for any link pattern, static shapes,
    O(B³ log B) work (a few GFLOP at B = 1024), paid only by label graphs.
    """
    b = nn_index.shape[0]
    dev = nn_index.device
    jump = nn_index.clone()
    low = torch.minimum(torch.arange(b, device=dev), nn_index)  # min over nodes i, nn(i)
    for _ in range(max(1, math.ceil(math.log2(b)))):
        low = torch.minimum(low, low[jump])
        jump = jump[jump]
    # jump[i] is on i's cycle; low[jump[i]] is the minimum over >= B steps from it, i.e. over the whole cycle.
    root = low[jump]  # the same for the whole component
    if link is not None:
        root = _merge_through(root, link)
    return _number_by_smallest(root)


def _merge_through(root: Tensor, link: Tensor) -> Tensor:
    """Each node's smallest root reachable when the root of every node i is joined to the root of ``link[i]``."""
    b = root.shape[0]
    dtype = torch.float32 if root.device.type == "cpu" else torch.bfloat16  # sums of 0/1: "> 0" is exact
    reach = torch.eye(b, dtype=dtype, device=root.device)
    reach[root, root[link]] = 1
    reach[root[link], root] = 1
    for _ in range(max(1, math.ceil(math.log2(b)))):  # after k squarings: every path of length <= 2^k
        reach = (reach @ reach > 0).to(dtype)
    return (reach > 0).to(torch.uint8).argmax(dim=1)[root]  # the first (smallest) reachable root


def _number_by_smallest(key: Tensor) -> Tensor:
    """Ids 0..K-1 of the groups of equal ``key`` (LongTensor[B] in [0, B)), ordered by each group's smallest node."""
    b = key.shape[0]
    dev = key.device
    comp_min = torch.full((b,), b, dtype=torch.long, device=dev)
    comp_min.scatter_reduce_(0, key, torch.arange(b, device=dev), reduce="amin")
    smallest = comp_min[key]  # smallest node of each node's group
    is_first = torch.zeros(b, dtype=torch.long, device=dev)
    is_first.scatter_(0, smallest, 1)
    return (torch.cumsum(is_first, 0) - 1)[smallest]


def weak_labels(v: Tensor, backend: GraphBackend = "auto", chunk_size: int = 4096,
                known: Tensor | None = None, merge_known: bool = True) -> Tensor:
    """Weak labels of a batch: component id of each sample in its 1-NN graph.

    The graph links every sample to its nearest other sample by cosine similarity; edges are undirected. With
    ``known`` labels the graph is constrained first (:func:`label_constraints`; a batch without a labelled sample
    gives the plain graph's labels; ``merge_known=False`` drops the different-class edges only, leaving labelled samples
    of one class unlinked).

    Args:
        v: B×D embeddings (gathered over ranks for the global batch).
        backend: ``auto`` (torch on accelerators, scipy on CPU), ``scipy`` (host, ``connected_components``: a
            device→host copy of the graph for a CUDA tensor) or ``torch`` (on ``v``'s device, no host sync). All give
            identical labels.
        chunk_size: rows per similarity chunk.
        known: optional LongTensor[B], the known class of each sample (-1 where unknown).
        merge_known: link the labelled samples of one class (their components merge), or not.

    Returns:
        LongTensor[B] on ``v``'s device; components numbered in the order of their smallest member.
    """
    if backend == "auto":
        backend = "scipy" if v.device.type == "cpu" else "torch"
    if backend not in ("scipy", "torch"):
        raise ValueError(f"unknown graph backend {backend!r}; choose 'scipy', 'torch' or 'auto'")
    nn_index = nearest_neighbors(v.detach(), chunk_size)
    link = None
    if known is not None:
        nn_index, link = label_constraints(nn_index, known.to(nn_index.device), merge_known)
    return (components_scipy if backend == "scipy" else components_torch)(nn_index, link)


def weak_label_stats(labels: Tensor, true_labels: Tensor | None = None) -> dict[str, Tensor]:
    """Diagnostics of a weak-label partition.

    Returns ``num_components``, ``mean_component_size`` and, when every true label is known (>= 0),
    ``purity`` = fraction of weak-positive pairs (i≠j in one component) that share the true class. (With known
    labels in the graph, pass the dataset's true labels — ``batch["true_label"]`` — not the masked ones.)
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
