"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from wcl.distributed import gather_nograd


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


class KNNAccumulator:
    """Collects bank and query features over validation batches and scores weighted kNN at the end.

    Under DDP the features of every rank are gathered and de-duplicated by dataset index (distributed
    samplers pad with repeated samples), so every rank computes the same accuracy over the whole split.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._store: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {"bank": [], "query": []}

    def add(self, split: str, index: Tensor, feats: Tensor, labels: Tensor) -> None:
        """split: ``bank`` or ``query``; index, labels: LongTensor[B]; feats: B×D."""
        self._store[split].append((index, feats.detach().float(), labels))

    def ready(self) -> bool:
        return bool(self._store["bank"]) and bool(self._store["query"])

    def gathered(self, split: str) -> tuple[Tensor, Tensor]:
        """(N×D features, LongTensor[N] labels) of a whole split, one row per dataset index, ordered by index."""
        idx, feats, labels = (torch.cat(t) for t in zip(*self._store[split], strict=True))
        idx, feats, labels = gather_nograd(idx), gather_nograd(feats), gather_nograd(labels)
        n = int(idx.max()) + 1
        out_f = feats.new_zeros(n, feats.shape[1])
        out_y = labels.new_full((n,), -1)
        out_f[idx], out_y[idx] = feats, labels
        seen = torch.zeros(n, dtype=torch.bool, device=idx.device)
        seen[idx] = True
        return out_f[seen], out_y[seen]

    def accuracy(self, num_classes: int, k: int = 200, temperature: float = 0.1) -> dict[str, Tensor]:
        """``top1`` (and ``top5`` when there are at least 5 classes) of the queries against the bank."""
        bank, bank_y = self.gathered("bank")
        query, query_y = self.gathered("query")
        keep = bank_y >= 0
        scores = knn_predict(query, bank[keep], bank_y[keep], num_classes, k, temperature)
        out = {"top1": (scores.argmax(1) == query_y).float().mean()}
        if num_classes >= 5:
            out["top5"] = (scores.topk(5, dim=1).indices == query_y[:, None]).any(1).float().mean()
        return out


class KNNEval(LightningModule):
    """Offline weighted-kNN evaluation of a checkpoint's backbone: ``python -m wcl validate --config
    configs/knn/<data>.yaml --model.checkpoint PATH``. Uses ``WCLDataModule``'s validation loaders
    (0 = bank: train split with the eval transform, 1 = val split) and logs ``val/knn_top1``, ``val/knn_top5``.

    Args:
        checkpoint: ``.ckpt`` of a wcl run. num_classes: linked from the data module.
        k, temperature: neighbours and vote temperature.
    """

    def __init__(self, checkpoint: str, num_classes: int | None = None, k: int = 200,
                 temperature: float = 0.1) -> None:
        super().__init__()
        from wcl.eval.checkpoint import load_backbone

        self.save_hyperparameters()
        self.backbone, _ = load_backbone(checkpoint)
        self._acc = KNNAccumulator()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        feats = self.backbone(batch["image"])
        self._acc.add("bank" if dataloader_idx == 0 else "query", batch["index"], feats, batch["label"])

    def on_validation_epoch_end(self) -> None:
        if self._acc.ready():
            acc = self._acc.accuracy(self.hparams.num_classes, self.hparams.k, self.hparams.temperature)
            for name, value in acc.items():
                self.log(f"val/knn_{name}", value, add_dataloader_idx=False)
        self._acc.reset()
