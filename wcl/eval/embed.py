"""``Embedder``: backbone features of a checkpoint for ``python -m wcl predict`` (written by
:class:`~wcl.callbacks.EmbeddingWriter`)."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule
from torch import Tensor

from wcl.callbacks.predict import EmbeddingWriter
from wcl.eval.checkpoint import load_backbone
from wcl.models.layout import set_layout, to_layout


class Embedder(LightningModule):
    """The pretrained backbone of ``checkpoint`` (a ``wcl.WCL`` run, or a probe / fine-tune run) in eval mode;
    ``predict_step`` returns ``{"features": B×D, "index", "label"}`` of each batch of the data module's
    ``predict_dataloader`` (every split: ``train`` and ``val``/``test``).

    ``python -m wcl predict --config configs/embed/quickstart.yaml --model.checkpoint PATH``

    Args:
        checkpoint: ``.ckpt`` holding a backbone.
        output_dir: where the embeddings go (one folder per split); default ``<trainer.default_root_dir>/embeddings``.
        dtype: ``float16`` or ``float32`` rows in ``embeddings.npy``.
        normalize: L2-normalize the rows.
        num_classes: linked from the data module by the CLI; unused.
        overwrite: replace embeddings of another checkpoint, other images or another transform in ``output_dir``
            (without it, such a predict stops before it embeds anything and names both checkpoints).
    """

    def __init__(self, checkpoint: str, output_dir: str | None = None,
                 dtype: Literal["float16", "float32"] = "float16", normalize: bool = True,
                 num_classes: int | None = None, overwrite: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone, self.arch = load_backbone(checkpoint)
        self.backbone.eval().requires_grad_(False)

    def setup(self, stage: str) -> None:
        set_layout(self.backbone, self.device)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(to_layout(self.backbone, x))

    def configure_callbacks(self) -> list[Callback]:
        hp = self.hparams
        return [EmbeddingWriter(hp.output_dir, hp.dtype, hp.normalize, hp.checkpoint, hp.overwrite)]

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return {"features": self(batch["image"]), "index": batch["index"], "label": batch["label"]}
