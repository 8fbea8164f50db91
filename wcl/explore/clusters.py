"""The numbers of ``python -m wcl.explore``: every row's nearest rows, the weak-label clusters they make, their
purity and NMI against labels, faiss k-means with as many clusters, near-duplicate pairs."""

from __future__ import annotations

import numpy as np
import torch

# Cosine at and above which two images count as near-duplicates, measured on the bundled val images with a
# 6-epoch quickstart checkpoint (BENCHMARKS.md, "Using the encoder: `predict` and `explore`"): 99 % of images have
# no other image at >= 0.992 (backbone features are non-negative, so distinct images are already at 0.97 median),
# while a re-encoded, resized and shifted copy of an image sits at 0.986 median. 0.99 keeps false pairs to about
# 1 % of the images and finds the closer copies.
DUP_THRESHOLD = 0.99
# Exact search up to this many rows. Its cost grows with N²: on 2 CPU cores the exact (chunked torch) 10-NN table
# of 50,000 × 128 rows takes 8.7 s, of 1,281,167 rows about 1.9 h, the IVF one 5.7 min (BENCHMARKS.md,
# "Multi-crop: the cost of the KNN table"); at 100,000 rows exact is about half a minute.
EXACT_MAX = 100_000


def normalized(x: np.ndarray) -> np.ndarray:
    """N×D rows scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbors(x: np.ndarray, k: int, exact_max: int = EXACT_MAX, nprobe: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(N×k cosines, N×k row ids) of every row's k nearest other rows: exact up to ``exact_max`` rows, IVF beyond."""
    from wcl.neighbors import neighbors_of_rows

    backend = "torch" if x.shape[0] <= exact_max else "faiss_ivf"
    sim, idx = neighbors_of_rows(torch.from_numpy(x), k, backend, nprobe)
    return sim.numpy(), idx.numpy()


def components(nn: np.ndarray) -> np.ndarray:
    """Weak labels from each row's nearest neighbour: components of the undirected 1-NN graph, numbered by their
    smallest row (as :func:`wcl.graph.weak_labels` numbers them)."""
    from wcl.graph import components_scipy

    return components_scipy(torch.from_numpy(np.asarray(nn, dtype=np.int64))).numpy()


def _contingency(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    from scipy.sparse import coo_matrix

    return coo_matrix((np.ones(len(p)), (p, t)), shape=(p.max() + 1, t.max() + 1)).tocsr()


def purity(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of samples whose cluster's most frequent true class is their own."""
    c = _contingency(pred, true)
    return float(c.max(axis=1).sum() / len(pred))


def nmi(pred: np.ndarray, true: np.ndarray) -> float:
    """Normalized mutual information I(P;T) / ((H(P) + H(T)) / 2) (arithmetic normalisation; torchmetrics')."""
    from torchmetrics.functional.clustering import normalized_mutual_info_score

    pred, true = torch.from_numpy(np.asarray(pred)), torch.from_numpy(np.asarray(true))
    with torch.sparse.check_sparse_tensor_invariants(False):  # opted out explicitly: torchmetrics warns otherwise
        return float(normalized_mutual_info_score(pred, true, average_method="arithmetic"))


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """faiss k-means (spherical: cosine) with ``k`` clusters; the cluster of every row."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=256)
    km.train(x)
    return km.index.search(x, 1)[1].ravel()


def duplicates(sim: np.ndarray, idx: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (a < b, cosine) among the neighbour lists with cosine >= threshold, each pair once, best first."""
    rows, cols = np.nonzero(sim >= threshold)
    other = idx[rows, cols]
    lo, hi, s = np.minimum(rows, other), np.maximum(rows, other), sim[rows, cols]
    order = np.lexsort((-s, hi, lo))  # by pair, best cosine first
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    best = np.argsort(-s[first], kind="stable")
    return list(zip(lo[first][best].tolist(), hi[first][best].tolist(), s[first][best].tolist(), strict=True))
