"""Nearest-neighbour search by cosine similarity, in one place: exact faiss, approximate faiss IVF, chunked matmul
with torch on any device, the merge of per-shard top-k lists and the weighted kNN vote.

Called by the KNN multi-crop's neighbour table (``wcl.callbacks.KnnMultiCrop``), the online and offline kNN
(``wcl.callbacks.OnlineKnn``, ``wcl.KNNEval``, both through :class:`ShardedKnn`) and the embedding explorer
(``python -m wcl.explore``). This module imports nothing of wcl but ``wcl.distributed`` (``ShardedKnn``'s gather).

Memory: the faiss backends make a float32 copy of the features (ImageNet, ResNet-50: 10.5 GB); the ``torch``
backend keeps them in their dtype on its device (one copy, made once) and converts one block at a time.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wcl.distributed import gather_nograd, gather_varlen, world_size

KnnBackend = Literal["faiss", "faiss_ivf", "torch"]


def _drop_self(idx: Tensor, k: int) -> Tensor:
    """N×(k+1) neighbour ids including (usually) each row itself → N×k without it."""
    return _drop_self_with(idx, None, k)[0]


def _drop_self_with(idx: Tensor, sim: Tensor | None, k: int) -> tuple[Tensor, Tensor | None]:
    rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
    is_self = idx == rows
    # Rows where self is missing (duplicates outrank it) drop their last column instead.
    no_self = ~is_self.any(dim=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    return idx[keep].view(idx.shape[0], k), None if sim is None else sim[keep].view(idx.shape[0], k)


def faiss_index(database: np.ndarray, approximate: bool = False, nprobe: int = 16):
    """A faiss inner-product index holding ``database`` (N×D float32, C-contiguous): exact ``IndexFlatIP`` or,
    with ``approximate``, ``IndexIVFFlat`` with 4·√N lists of which ``nprobe`` are searched."""
    import faiss  # imported here: faiss is only needed by these backends

    n, d = database.shape
    if approximate:
        nlist = max(1, int(4 * math.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        # 64 points per list trains k-means well enough (faiss advises 39-256) at a quarter of the cost.
        index.train(database[rng.choice(n, size=min(n, 64 * nlist), replace=False)])
        index.nprobe = nprobe
    else:
        index = faiss.IndexFlatIP(d)
    index.add(database)
    return index


def _knn_faiss(x: np.ndarray, k: int, approximate: bool, nprobe: int) -> np.ndarray:
    _, idx = faiss_index(x, approximate, nprobe).search(x, k + 1)
    return idx


@torch.no_grad()
def _topk_torch(queries: Tensor, database: Tensor, k: int, device: torch.device, chunk: int,
                db_chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Exact cosine top-k by chunked matmul: ``chunk`` queries × ``db_chunk`` database rows at a time (memory ≈
    chunk × db_chunk floats). Each block is normalized in float32 when it is used; the database is copied to
    ``device`` once in its own dtype (float16 banks stay float16). Returns (Q×k similarities, Q×k ids) on ``device``."""
    n, nq = database.shape[0], queries.shape[0]
    database = database.to(device)
    same = queries is database

    def block(x: Tensor, start: int, size: int) -> Tensor:
        return F.normalize(x[start : start + size].to(device).float(), dim=1)

    # A database that fits one block is converted once instead of once per query chunk.
    whole = block(database, 0, n) if n <= db_chunk else None
    out_s = torch.empty(nq, k, device=device)
    out_i = torch.empty(nq, k, dtype=torch.long, device=device)
    for qs in range(0, nq, chunk):
        q = block(database if same else queries, qs, min(chunk, nq - qs))
        best_s = best_i = None
        for ds in range(0, n, db_chunk):
            db = whole if whole is not None else block(database, ds, db_chunk)
            top = (q @ db.T).topk(min(k, db.shape[0]), dim=1)
            s, i = top.values, top.indices + ds
            if best_s is not None:
                s, i = merge_topk(torch.cat([best_s, s], 1), torch.cat([best_i, i], 1), k)
            best_s, best_i = s, i
        out_s[qs : qs + chunk], out_i[qs : qs + chunk] = best_s, best_i
    return out_s, out_i


@torch.no_grad()
def _knn_torch(x: Tensor, k: int, device: torch.device, chunk: int, db_chunk: int = 65536,
               num_queries: int | None = None) -> Tensor:
    """Top-(k+1) ids (self included) of the first ``num_queries`` rows (default: all; fewer lets
    ``benchmarks/knn_table.py`` time ImageNet scale) among every row of ``x``, on the CPU."""
    x = x.to(device)
    queries = x if num_queries is None else x[:num_queries]
    return _topk_torch(queries, x, k + 1, device, chunk, db_chunk)[1].cpu()


def search(queries: Tensor, database: Tensor, k: int, backend: KnnBackend = "faiss", nprobe: int = 16,
           device: torch.device | str = "cpu", chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """The ``k`` most cosine-similar database rows of every query.

    Args:
        queries: Q×D; database: N×D (any float dtype; normalized here). ``k`` is clamped to N.
        backend: ``faiss`` (exact, ``IndexFlatIP``), ``faiss_ivf`` (approximate IVF, for N beyond a few million;
            ``nprobe`` lists searched) or ``torch`` (exact chunked matmul on ``device``, e.g. the GPU).

    Returns:
        (Q×k float32 similarities, Q×k LongTensor database ids), best first, on the CPU.
    """
    k = min(k, database.shape[0])
    if backend == "torch":
        s, i = _topk_torch(queries, database, k, torch.device(device), chunk)
        return s.cpu(), i.cpu()
    if backend not in ("faiss", "faiss_ivf"):
        raise ValueError(f"unknown KNN backend {backend!r}; choose 'faiss', 'faiss_ivf' or 'torch'")
    db = F.normalize(database.float(), dim=1).cpu().numpy()
    q = db if queries is database else F.normalize(queries.float(), dim=1).cpu().numpy()
    s, i = faiss_index(db, backend == "faiss_ivf", nprobe).search(q, k)
    return torch.from_numpy(s), torch.from_numpy(i).long()


def knn_table(features: Tensor, k: int, backend: KnnBackend = "faiss", nprobe: int = 16,
              device: torch.device | str = "cpu", chunk: int = 2048) -> Tensor:
    """K nearest neighbours of every row by inner product of L2-normalized features, self excluded.

    Args:
        features: N×D (float16/float32; normalized here).
        k: neighbours per sample (< N).
        backend, nprobe, device, chunk: see :func:`search`.

    Returns:
        LongTensor N×k on the CPU.
    """
    return neighbors_of_rows(features, k, backend, nprobe, device, chunk)[1]


def neighbors_of_rows(features: Tensor, k: int, backend: KnnBackend = "faiss", nprobe: int = 16,
                      device: torch.device | str = "cpu", chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """(N×k similarities, N×k ids) of every row's k nearest other rows (see :func:`knn_table`)."""
    n = features.shape[0]
    if not 0 < k < n:
        raise ValueError(f"the K-NN search needs 0 < K < dataset size; got K={k} for {n} samples. "
                         "Lower K (e.g. the k of wcl.callbacks.KnnMultiCrop).")
    sim, idx = search(features, features, k + 1, backend, nprobe, device, chunk)
    idx, sim = _drop_self_with(idx, sim, k)
    return sim, idx


def merge_topk(sim: Tensor, payload: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of Q×M candidate similarities and what goes with them (ids, labels): (Q×k, Q×k).

    Candidates of several shards concatenated along dim 1 merge into the top-k of the union."""
    best = sim.topk(min(k, sim.shape[1]), dim=1)
    return best.values, payload.gather(1, best.indices)


def knn_vote(sim: Tensor, labels: Tensor, num_classes: int, temperature: float = 0.1) -> Tensor:
    """Weighted kNN vote (Wu et al., 2018): each neighbour adds ``exp(cos / temperature)`` to its class.

    Args:
        sim: Q×k similarities; labels: Q×k LongTensor classes (-1 = no neighbour, no vote).

    Returns:
        Q×num_classes float32 scores.
    """
    weights = torch.where(labels >= 0, (sim / temperature).exp(), torch.zeros_like(sim))
    votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
    return votes.scatter_add_(1, labels.clamp(min=0), weights)


@torch.no_grad()
def knn_predict(queries: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk_size: int = 1024) -> Tensor:
    """Class scores of each query from its k most similar bank entries (one process, the whole bank).

    Args:
        queries: Q×D features; bank: N×D features; bank_labels: LongTensor[N] in [0, num_classes).
        k: neighbours (clamped to N).

    Returns:
        Q×num_classes float32 scores (argmax = prediction).
    """
    scorer = ShardedKnn(k, temperature, chunk_size)
    scorer.add_bank(bank, bank_labels)
    return scorer.scores(F.normalize(queries.float(), dim=1), num_classes)


class ShardedKnn:
    """Weighted kNN with the bank split over ranks: each rank keeps only its share of the bank (the samples its
    loader gave it), scores every query against that share, and the per-rank top-k lists are merged
    (:func:`merge_topk`), so the result equals one process holding the whole bank.

    Peak memory per rank: the bank share (N/W × D float32), one chunk of similarities (chunk × N/W float32) and the
    gathered top-k candidates (W × chunk × k similarities and labels) — for ImageNet on 8 GPUs with ResNet-50
    (N = 1.28 M, D = 2048, chunk 1024, k 200): 1.3 GB + 0.65 GB + 20 MB, instead of the whole 10.5 GB bank on
    every rank.
    """

    def __init__(self, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> None:
        if k < 1 or temperature <= 0:
            raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.k, self.temperature, self.chunk_size = k, temperature, chunk_size
        self.reset()

    def reset(self) -> None:
        self._bank: list[tuple[Tensor, Tensor]] = []
        self._queries: list[tuple[Tensor, Tensor, Tensor]] = []

    def add_bank(self, feats: Tensor, labels: Tensor) -> None:
        """This rank's bank samples: feats B×D, labels LongTensor[B] (-1 = unlabelled, ignored)."""
        keep = labels >= 0
        self._bank.append((F.normalize(feats.detach().float(), dim=1)[keep], labels[keep]))

    def add_queries(self, index: Tensor, feats: Tensor, labels: Tensor) -> None:
        """Queries of this rank (index: dataset index, used to drop the repeats of padded distributed samplers)."""
        self._queries.append((index, feats.detach().float(), labels))

    @property
    def has_queries(self) -> bool:
        return bool(self._queries)

    def scores(self, queries: Tensor, num_classes: int) -> Tensor:
        """Q×C vote scores of normalized queries (the same on every rank; every rank must call this)."""
        dev = queries.device
        if self._bank:
            bank, labels = (torch.cat(t).to(dev) for t in zip(*self._bank, strict=True))
        else:
            bank, labels = queries.new_zeros(0, queries.shape[1]), torch.zeros(0, dtype=torch.long, device=dev)
        total = int(gather_nograd(torch.tensor([bank.shape[0]], device=dev)).sum())
        k = min(self.k, total)
        out = []
        for start in range(0, queries.shape[0], self.chunk_size):
            q = queries[start:start + self.chunk_size]
            sim = torch.full((q.shape[0], k), -float("inf"), device=dev)
            lab = torch.full((q.shape[0], k), -1, dtype=torch.long, device=dev)
            if bank.shape[0] > 0:
                top = (q @ bank.T).topk(min(k, bank.shape[0]), dim=1)
                sim[:, : top.values.shape[1]], lab[:, : top.values.shape[1]] = top.values, labels[top.indices]
            if world_size() > 1:  # merge every rank's top-k: rank-major W·q rows → q × (W·k) candidates
                sim = gather_nograd(sim).view(world_size(), -1, k).transpose(0, 1).flatten(1)
                lab = gather_nograd(lab).view(world_size(), -1, k).transpose(0, 1).flatten(1)
                sim, lab = merge_topk(sim, lab, k)
            out.append(knn_vote(sim, lab, num_classes, self.temperature))
        return torch.cat(out) if out else torch.zeros(0, num_classes, device=dev)

    def accuracy(self, num_classes: int) -> dict[str, Tensor]:
        """``top1`` (and ``top5`` with at least 5 classes) of every rank's queries, each dataset index once."""
        index, feats, labels = (torch.cat(t) for t in zip(*self._queries, strict=True))
        index, feats, labels = gather_varlen(index), gather_varlen(feats), gather_varlen(labels)
        order = torch.argsort(index, stable=True)
        index, feats, labels = index[order], feats[order], labels[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        feats, labels = F.normalize(feats[first], dim=1), labels[first]
        scores = self.scores(feats, num_classes)
        out = {"top1": (scores.argmax(1) == labels).float().mean()}
        if num_classes >= 5:
            out["top5"] = (scores.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean()
        return out


def neighbor_purity(table: Tensor, labels: Tensor, mask: Tensor | None = None) -> float | None:
    """Fraction of neighbour entries whose true class equals the sample's (labels -1 = unknown, skipped); with
    ``mask`` (bool N×K), of the entries it marks only. None when no entry counts."""
    known = (labels >= 0)[:, None] & (labels[table] >= 0)
    if mask is not None:
        known &= mask
    if not bool(known.any()):
        return None
    same = labels[table] == labels[:, None]
    return float(same[known].float().mean())
