"""Few labels through the graph: the known labels spread over the k-NN graph of every training image's embedding
(label propagation, Zhou et al., 2004, with the graph of Iscen et al., 2019), then each query is classified by a
weighted kNN vote of the training images' propagated label distributions.

``python -m wcl validate --config configs/fewlabel/propagate_cpu_proxy.yaml --config configs/fewlabel/10pct.yaml
--model.checkpoint PATH`` logs ``val/propagation_top1``; the labelled subset is the data module's
(``data.label_fraction`` or ``data.subset_file``), every other training image is unlabelled.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from wcl.callbacks.knn import OnlineKnn
from wcl.constraints import OpenUnitInterval, PositiveFloat, PositiveInt, check_constraints
from wcl.distributed import gather_varlen
from wcl.errors import ConfigError
from wcl.eval.checkpoint import load_backbone
from wcl.eval.knn import FrozenBackboneEval
from wcl.neighbors import ShardedKnn, neighbors_of_rows, topk_cosine


def affinity(features: Tensor, k: int = 20, gamma: float = 3.0) -> Tensor:
    """The normalised affinity of the k-NN graph: ``S = D^-1/2 W D^-1/2`` with ``W = A + Aᵀ``, ``A_ij =
    max(cos(x_i, x_j), 0)^gamma`` for j among i's k nearest other rows (0 elsewhere).

    Args:
        features: N×D (normalized here).
        k: neighbours per row (< N).
        gamma: the power that sharpens the similarities.

    Returns:
        Sparse (COO) N×N float32 on ``features``' device.
    """
    n = features.shape[0]
    sim, idx = neighbors_of_rows(features.float(), k, "torch", device=features.device)
    sim, idx = sim.to(features.device), idx.to(features.device)
    rows = torch.arange(n, device=features.device).repeat_interleave(k)
    weights = sim.clamp(min=0).pow(gamma).flatten()
    w = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, idx.flatten()]), torch.cat([idx.flatten(), rows])]),
                                torch.cat([weights, weights]), (n, n), check_invariants=False).coalesce()
    degree = torch.zeros(n, device=features.device).index_add_(0, w.indices()[0], w.values())
    scale = degree.clamp(min=1e-12).rsqrt()
    i, j = w.indices()
    return torch.sparse_coo_tensor(w.indices(), w.values() * scale[i] * scale[j], (n, n), check_invariants=False)


def propagate(s: Tensor, labels: Tensor, num_classes: int, alpha: float = 0.9, iters: int = 20) -> Tensor:
    """Label propagation: ``Z = (I - alpha·S)^-1 Y`` by conjugate gradients (``I - alpha·S`` is symmetric
    positive definite for ``0 <= alpha < 1``), with ``Y`` the one-hot known labels, each class's column divided by its
    number of known samples (so no class outweighs another by its share of the labels).

    Args:
        s: N×N symmetric normalised affinity (:func:`affinity`; sparse or dense).
        labels: LongTensor[N], the known class of each row, -1 where unknown.
        num_classes: C.
        alpha: how far labels spread (0: not at all; towards 1: along the whole graph).
        iters: conjugate-gradient iterations.

    Returns:
        N×C float32 scores (a row's argmax is its propagated class; all zero where no label reaches it).
    """
    known = labels >= 0
    y = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    y[known, labels[known]] = 1.0
    y = y / y.sum(0, keepdim=True).clamp(min=1)

    def apply(z: Tensor) -> Tensor:
        return z - alpha * (s @ z)

    z = torch.zeros_like(y)
    r = y - apply(z)
    p, rs = r.clone(), (r * r).sum(0)
    for _ in range(iters):
        ap = apply(p)
        step = rs / (p * ap).sum(0).clamp(min=1e-30)
        z = z + step * p
        r = r - step * ap
        rs_next = (r * r).sum(0)
        p = r + (rs_next / rs.clamp(min=1e-30)) * p
        rs = rs_next
    return z


def label_distribution(z: Tensor) -> tuple[Tensor, Tensor]:
    """Propagated scores N×C → (N×C class distribution, Tensor[N] confidence ``1 - H(p) / log C``; Iscen et al.'s
    weight: 1 for a one-hot row, 0 for a uniform one or a row no label reached)."""
    p = z.clamp(min=0)
    total = p.sum(1, keepdim=True)
    p = torch.where(total > 0, p / total.clamp(min=1e-30), torch.full_like(p, 1 / p.shape[1]))
    entropy = -(p * p.clamp(min=1e-30).log()).sum(1)
    return p, 1 - entropy / math.log(p.shape[1])


class PropagatedKnn(ShardedKnn):
    """The kNN vote of :class:`~wcl.neighbors.ShardedKnn` with a bank whose unlabelled samples carry the label
    distribution propagated from the known ones. The whole bank (every rank's share) is gathered on every rank for
    the propagation: N×D features, for the few-label protocols' subsets (CIFAR: 50,000 × 512). Its bank keeps the
    unlabelled samples (labels -1): the propagation spreads the known labels to them."""

    drops_unlabelled = False

    def __init__(self, k: int, temperature: float, graph_k: int, gamma: float, alpha: float, iters: int) -> None:
        super().__init__(k, temperature)
        self.graph_k, self.gamma, self.alpha, self.iters = graph_k, gamma, alpha, iters

    def scores(self, queries: Tensor, num_classes: int) -> Tensor:
        dev = queries.device
        bank, labels, ids = (gather_varlen(torch.cat(t).to(dev)) for t in zip(*self._bank, strict=True))
        order = torch.argsort(ids)  # dataset order: the graph of one process, however the ranks split the bank
        bank, labels = bank[order], labels[order]
        if not bool((labels >= 0).any()):
            raise ConfigError("label propagation needs known labels among the training images, and there are none; "
                              "set --data.label_fraction (or --data.subset_file).")
        dist, _ = label_distribution(propagate(affinity(bank, self.graph_k, self.gamma), labels, num_classes,
                                               self.alpha, self.iters))
        sim, rows = topk_cosine(queries, bank, min(self.k, bank.shape[0]), normalize=False, chunk=self.chunk_size)
        return torch.einsum("qk,qkc->qc", (sim / self.temperature).exp(), dist[rows])


class LabelPropagation(OnlineKnn):
    """``OnlineKnn`` with :class:`PropagatedKnn` as its scorer: logs ``val/propagation_top1`` (and ``top5``)."""

    metric = "propagation"

    def __init__(self, k: int, temperature: float, graph_k: int, gamma: float, alpha: float, iters: int) -> None:
        super().__init__(k, temperature)
        self.scorer = PropagatedKnn(k, temperature, graph_k, gamma, alpha, iters)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        dm = trainer.datamodule
        if not getattr(dm, "label_subset", False):
            raise ConfigError("label propagation spreads a subset of the labels over the other training images, and "
                              "no subset is set; add --data.label_fraction (or --data.subset_file), e.g. --config "
                              "configs/fewlabel/10pct.yaml.")
        if getattr(dm, "bank", "masked") != "masked":
            raise ConfigError(f"label propagation needs every training image in its graph, the unknown labels "
                              f"masked: set --data.bank masked (got {dm.bank}).")


class PropagationEval(FrozenBackboneEval):
    """Few-label evaluation of a checkpoint's backbone by label propagation: ``python -m wcl validate --config
    configs/fewlabel/propagate_cpu_proxy.yaml --model.checkpoint PATH``. The data module's training images are the
    graph (its known labels the sources, ``data.label_fraction`` / ``data.subset_file``), its val split the queries.

    Args:
        checkpoint: ``.ckpt`` of a wcl run.
        num_classes: linked from the data module by the CLI.
        graph_k: neighbours per image in the graph.
        gamma: similarity power of the graph's edge weights.
        alpha: how far the labels spread, in (0, 1) (towards 1: along the whole graph).
        iters: conjugate-gradient iterations of the propagation.
        k: training images that vote for each query.
        temperature: vote temperature (each votes with ``exp(cos / temperature)`` × its label distribution).
    """

    def __init__(self, checkpoint: str, num_classes: int | None = None, graph_k: PositiveInt = 20,
                 gamma: PositiveFloat = 3.0, alpha: OpenUnitInterval = 0.9, iters: PositiveInt = 20,
                 k: PositiveInt = 200, temperature: PositiveFloat = 0.1) -> None:
        super().__init__()
        check_constraints(PropagationEval.__init__, locals(), "model.")
        self.save_hyperparameters()
        self.backbone, _ = load_backbone(checkpoint)

    def configure_callbacks(self) -> list[Callback]:
        hp = self.hparams
        return [LabelPropagation(hp.k, hp.temperature, hp.graph_k, hp.gamma, hp.alpha, hp.iters)]
