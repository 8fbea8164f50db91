"""``KNNEval``, the offline weighted-kNN evaluation of a checkpoint. The search, the merge of the ranks' top-k
lists and the vote are in :mod:`wcl.neighbors` (``ShardedKnn`` and ``knn_predict`` are re-exported here)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule
from torch import Tensor, nn

from wcl.callbacks.knn import OnlineKnn
from wcl.constraints import PositiveFloat, PositiveInt, check_constraints
from wcl.eval.checkpoint import load_backbone
from wcl.neighbors import ShardedKnn, knn_predict

__all__ = ["FrozenBackboneEval", "KNNEval", "ShardedKnn", "knn_predict"]


class FrozenBackboneEval(LightningModule):
    """A checkpoint's backbone, not trained, whose val features the evaluation callback of ``configure_callbacks``
    reads: batches ``{"image", "index", "label"}`` → ``{"features": B×D, "index", "label"}``."""

    backbone: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"features": self(batch["image"]), "index": batch["index"], "label": batch["label"]}


class KNNEval(FrozenBackboneEval):
    """Offline weighted-kNN evaluation of a checkpoint's backbone: ``python -m wcl validate --config
    configs/knn/<data>.yaml --model.checkpoint PATH``. The queries are the data module's val split, the bank its
    train split (eval transform); logs ``val/knn_top1`` and ``val/knn_top5``.

    Args:
        checkpoint: ``.ckpt`` of a wcl run.
        num_classes: linked from the data module by the CLI.
        k: neighbours that vote.
        temperature: vote temperature (each neighbour votes with ``exp(cos / temperature)``).
    """

    def __init__(self, checkpoint: str, num_classes: int | None = None, k: PositiveInt = 200,
                 temperature: PositiveFloat = 0.1) -> None:
        super().__init__()
        check_constraints(KNNEval.__init__, locals(), "model.")
        self.save_hyperparameters()
        self.backbone, _ = load_backbone(checkpoint)

    def configure_callbacks(self) -> list[Callback]:
        return [OnlineKnn(self.hparams.k, self.hparams.temperature)]
