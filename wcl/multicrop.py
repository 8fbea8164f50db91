"""KNN-based low-resolution multi-crop: the neighbour table shared between the model and the data workers.

During epoch e the model keeps the L2-normalized backbone feature ``h`` of each sample's first view, by dataset
index (no extra forward pass). At the end of epoch e it finds every sample's K nearest neighbours (self
excluded) and writes them into :class:`NeighborTable`, whose tensors live in shared memory: the data-loading
workers, persistent or not, read the new table when epoch e+1 starts, and each low-resolution crop of sample i
is cut from an image drawn uniformly from i's K neighbours.

Memory: the feature bank is N×D float16 on rank 0's host memory (ImageNet, ResNet-50: 1.28 M × 2048 × 2 B =
5.2 GB; CIFAR-10, ResNet-18: 50 k × 512 × 2 B = 51 MB); the exact faiss search also makes a float32 copy
(10.5 GB for ImageNet), the ``torch`` backend searches in chunks without one. The table is N×K int64.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

KnnBackend = Literal["faiss", "faiss_ivf", "torch"]


class NeighborTable:
    """``table[i]`` = the K neighbours of sample i computed at the end of epoch ``epoch`` (-1: none yet).

    Both tensors are in shared memory and are updated in place, so data-loader workers (forked or spawned,
    persistent or not) always read the current table.
    """

    def __init__(self, num_samples: int, k: int) -> None:
        self.table = torch.zeros(num_samples, k, dtype=torch.long).share_memory_()
        self._epoch = torch.full((1,), -1, dtype=torch.long).share_memory_()

    @property
    def k(self) -> int:
        return self.table.shape[1]

    @property
    def epoch(self) -> int:
        """Epoch whose features produced the table, -1 before the first update."""
        return int(self._epoch[0])

    def update(self, neighbors: Tensor, epoch: int) -> None:
        if neighbors.shape != self.table.shape:
            raise ValueError(f"neighbour table shape {tuple(neighbors.shape)} != {tuple(self.table.shape)}")
        self.table.copy_(neighbors)
        self._epoch.fill_(epoch)

    def state_dict(self) -> dict[str, Tensor | int]:
        return {"table": self.table.clone(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        self.update(torch.as_tensor(state["table"]), int(state["epoch"]))


def _drop_self(idx: Tensor, k: int) -> Tensor:
    """N×(k+1) neighbour ids including (usually) each row itself → N×k without it."""
    rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
    is_self = idx == rows
    # Rows where self is missing (duplicates outrank it) drop their last column instead.
    no_self = ~is_self.any(dim=1)
    is_self[no_self, -1] = True
    return idx[~is_self].view(idx.shape[0], k)


def _knn_faiss(x: np.ndarray, k: int, approximate: bool, nprobe: int) -> np.ndarray:
    n, d = x.shape
    if approximate:
        nlist = max(1, int(4 * math.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        # 64 points per list trains k-means well enough (faiss advises 39-256) at a quarter of the cost.
        train = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = nprobe
    else:
        index = faiss.IndexFlatIP(d)
    index.add(x)
    _, idx = index.search(x, k + 1)
    return idx


@torch.no_grad()
def _knn_torch(x: Tensor, k: int, device: torch.device, chunk: int, db_chunk: int = 65536,
               num_queries: int | None = None) -> Tensor:
    """Exact cosine top-(k+1) by chunked matmul: ``chunk`` queries × ``db_chunk`` database rows at a time
    (memory ≈ chunk × db_chunk floats). ``x`` may stay float16 on the host; chunks are converted. The queries
    are the first ``num_queries`` rows (default: all), the database is every row."""
    n = x.shape[0]
    nq = n if num_queries is None else num_queries

    def block(start: int, size: int) -> Tensor:
        return F.normalize(x[start : start + size].to(device, torch.float32), dim=1)

    # A database that fits one block is converted once instead of once per query chunk.
    whole = block(0, n) if n <= db_chunk else None
    out = torch.empty(nq, k + 1, dtype=torch.long)
    for qs in range(0, nq, chunk):
        q = block(qs, min(chunk, nq - qs))
        best_s = best_i = None
        for ds in range(0, n, db_chunk):
            db = whole if whole is not None else block(ds, db_chunk)
            top = (q @ db.T).topk(min(k + 1, db.shape[0]), dim=1)
            s, i = top.values, top.indices + ds
            if best_s is not None:
                s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                top = s.topk(k + 1, dim=1)
                s, i = top.values, i.gather(1, top.indices)
            best_s, best_i = s, i
        out[qs : qs + chunk] = best_i.cpu()
    return out


def knn_table(features: Tensor, k: int, backend: KnnBackend = "faiss", nprobe: int = 16,
              device: torch.device | str = "cpu", chunk: int = 2048) -> Tensor:
    """K nearest neighbours of every row by inner product of L2-normalized features, self excluded.

    Args:
        features: N×D (float16/float32; normalized here).
        k: neighbours per sample (< N).
        backend: ``faiss`` (exact, IndexFlatIP), ``faiss_ivf`` (approximate IVF, for N beyond a few million;
            ``nprobe`` lists searched), or ``torch`` (exact chunked matmul on ``device``, e.g. the GPU).

    Returns:
        LongTensor N×k on the CPU.
    """
    n = features.shape[0]
    if not 0 < k < n:
        raise ValueError(f"KNN multi-crop needs 0 < K < dataset size; got K={k} for {n} samples. "
                         "Lower data.neighbors_k.")
    if backend == "torch":
        idx = _knn_torch(features, k, torch.device(device), chunk)
    elif backend in ("faiss", "faiss_ivf"):
        x = F.normalize(features.float(), dim=1).numpy()
        idx = torch.from_numpy(_knn_faiss(x, k, backend == "faiss_ivf", nprobe)).long()
    else:
        raise ValueError(f"unknown KNN backend {backend!r}; choose 'faiss', 'faiss_ivf' or 'torch'")
    return _drop_self(idx, k)


def neighbor_purity(table: Tensor, labels: Tensor) -> float | None:
    """Fraction of neighbour entries whose true class equals the sample's (labels -1 = unknown, skipped)."""
    known = labels >= 0
    if not bool(known.any()):
        return None
    nb = labels[table[known]]
    return float((nb == labels[known][:, None]).float().mean())


class FeatureBank:
    """N×D float16 host store of each sample's latest primary feature, written by dataset index.

    A sample not drawn in an epoch (``drop_last``) keeps its feature from the last epoch that drew it.
    """

    def __init__(self, num_samples: int, dim: int) -> None:
        self.features = torch.zeros(num_samples, dim, dtype=torch.float16)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)

    def write(self, index: Tensor, feats: Tensor) -> None:
        """index: LongTensor[B]; feats: B×D (any device/dtype; stored normalized, float16, on the host)."""
        idx = index.cpu()
        self.features[idx] = F.normalize(feats.detach().float(), dim=1).cpu().half()
        self.seen[idx] = True

    def neighbors(self, k: int, backend: KnnBackend = "faiss", nprobe: int = 16,
                  device: torch.device | str = "cpu") -> tuple[Tensor, float]:
        """(N×k neighbour table, seconds). Searches among samples seen so far; a never-seen sample gets
        itself as its K neighbours (its crops then come from its own image)."""
        start = time.perf_counter()
        seen = self.seen.nonzero().squeeze(1)
        table = torch.arange(len(self.seen))[:, None].repeat(1, k)
        if len(seen) > k:
            table[seen] = seen[knn_table(self.features[seen], k, backend, nprobe, device)]
        return table, time.perf_counter() - start
