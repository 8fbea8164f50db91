"""K nearest neighbours of every row of a feature matrix (self excluded): exact faiss, approximate faiss IVF, or
chunked matmul with torch on any device. Used by the KNN multi-crop (``wcl.callbacks.KnnMultiCrop``).

Memory: the exact faiss search makes a float32 copy of the features (ImageNet, ResNet-50: 10.5 GB); the ``torch``
backend keeps them in their dtype on its device (one copy, made once) and converts one block at a time.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

KnnBackend = Literal["faiss", "faiss_ivf", "torch"]


def _drop_self(idx: Tensor, k: int) -> Tensor:
    """N×(k+1) neighbour ids including (usually) each row itself → N×k without it."""
    rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
    is_self = idx == rows
    # Rows where self is missing (duplicates outrank it) drop their last column instead.
    no_self = ~is_self.any(dim=1)
    is_self[no_self, -1] = True
    return idx[~is_self].view(idx.shape[0], k)


def _knn_faiss(x: np.ndarray, k: int, approximate: bool, nprobe: int) -> np.ndarray:
    import faiss  # imported here: faiss is only needed by this backend

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
    (memory ≈ chunk × db_chunk floats). ``x`` is copied to ``device`` once, in its own dtype (float16 banks stay
    float16); each block is normalized in float32 when it is used. The queries are the first ``num_queries`` rows
    (default: all; fewer lets ``benchmarks/knn_table.py`` time ImageNet scale), the database is every row."""
    n = x.shape[0]
    nq = n if num_queries is None else num_queries
    x = x.to(device)

    def block(start: int, size: int) -> Tensor:
        return F.normalize(x[start : start + size].float(), dim=1)

    # A database that fits one block is converted once instead of once per query chunk.
    whole = block(0, n) if n <= db_chunk else None
    out = torch.empty(nq, k + 1, dtype=torch.long, device=device)
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
        out[qs : qs + chunk] = best_i
    return out.cpu()


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
                         "Lower the k of wcl.callbacks.KnnMultiCrop.")
    if backend == "torch":
        idx = _knn_torch(features, k, torch.device(device), chunk)
    elif backend in ("faiss", "faiss_ivf"):
        x = F.normalize(features.float(), dim=1).cpu().numpy()
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
