"""Supervised evaluation on a pretrained backbone: ``LinearProbe`` (frozen) and ``FineTune`` (whole network).

Both log ``val/top1`` and ``val/top5`` (torchmetrics) and train with SGD + Nesterov momentum and a per-step
cosine schedule. Batches come from ``wcl.data.LabelledDataModule``: ``{"image", "index", "label"}``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from wcl.callbacks.checkpoint import ResumesWhereItStopped
from wcl.constraints import Momentum, NonNegativeFloat, NonNegativeInt, PositiveFloat, check_constraints
from wcl.errors import ConfigError
from wcl.eval.checkpoint import load_backbone
from wcl.models.layout import set_layout, to_layout
from wcl.optim import global_batch_size, param_groups, scaled_lr, warmup_cosine_schedule


class _SupervisedEval(ResumesWhereItStopped, LightningModule):
    """Backbone from ``checkpoint`` + a linear classifier; metrics and optimisation shared by both protocols."""

    def __init__(self, checkpoint: str, num_classes: int | None, lr: float, momentum: float, weight_decay: float,
                 backbone: str | None) -> None:
        super().__init__()
        if num_classes is None:
            raise ConfigError("model.num_classes is unset; use a data module that defines it (the CLI links it) "
                              "or set --model.num_classes.")
        check_constraints(type(self).__init__, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay},
                          "model.")
        self.backbone, self.arch = load_backbone(checkpoint, backbone)
        self.classifier = nn.Linear(self.backbone.out_dim, num_classes)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.best_top1 = 0.0

    def setup(self, stage: str) -> None:
        set_layout(self.backbone, self.device)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(to_layout(self.backbone, x))

    def logits(self, batch: dict[str, Any]) -> Tensor:
        return self.classifier(self.features(batch["image"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self.logits(batch)
        loss = F.cross_entropy(logits, batch["label"])
        # validate_args=False: the argument checks would read the labels back on the host at every step
        acc = multiclass_accuracy(logits, batch["label"], logits.shape[1], average="micro", validate_args=False)
        self.log_dict({"train/loss": loss, "train/top1": acc}, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.logits(batch)
        self.val_top1.update(logits, batch["label"])
        self.val_top5.update(logits, batch["label"])
        self.log("val/top1", self.val_top1, prog_bar=True, batch_size=len(logits))
        self.log("val/top5", self.val_top5, batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and "val/top1" in self.trainer.callback_metrics:
            self.best_top1 = max(self.best_top1, float(self.trainer.callback_metrics["val/top1"]))
            self.log("val/best_top1", self.best_top1, sync_dist=True)

    def configure_callbacks(self) -> list[Callback]:
        """The labelled subset's record (semi-supervised protocols), and a linear probe's cached features."""
        from wcl.callbacks.labelled import CachedFeatures, LabelledSubsetFile, ProbeFirst

        hp = self.hparams
        cached = getattr(hp, "mode", None) == "cached"
        probe = [ProbeFirst(hp.probe_epochs, hp.probe_lr)] if getattr(hp, "probe_epochs", 0) else []
        return [LabelledSubsetFile(), *([CachedFeatures()] if cached else []), *probe]

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def learning_rate(self) -> float:
        return self.hparams.lr

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.SGD(self.param_groups(), lr=self.learning_rate(), momentum=hp.momentum,
                              nesterov=hp.momentum > 0, weight_decay=hp.weight_decay)
        sched = warmup_cosine_schedule(opt, self.trainer, 0.0)
        self._schedule_steps = sched["scheduler"].total_steps
        return {"optimizer": opt, "lr_scheduler": sched}


class LinearProbe(_SupervisedEval):
    """Linear classification on frozen backbone features (BatchNorm in eval mode).

    Args:
        checkpoint: ``.ckpt`` of a ``wcl.WCL`` run.
        num_classes: linked from the data module by the CLI.
        mode: ``cached`` — features of the train and val images (eval transform) are extracted once and the
            classifier trains on them (fast; the default for small data); ``augment`` — the paper protocol:
            every step sees a random-resized-crop + flip of each image (set ``data.train_augment: crop_flip``).
        lr: learning rate of the classifier (SGD with Nesterov momentum, cosine schedule per step).
        momentum: SGD momentum (Nesterov when > 0).
        weight_decay: weight decay of the classifier.
        lr_scaling: ``linear`` makes ``lr`` the rate per 256 images of the global batch (the official WCL protocol:
            0.2 per 256, i.e. 3.2 at 4096); ``none`` uses it as given.
        backbone: if set, the checkpoint must hold this backbone (a guard against wrong paths).
    """

    def __init__(self, checkpoint: str, num_classes: int | None = None,
                 mode: Literal["cached", "augment"] = "cached", lr: PositiveFloat = 0.1, momentum: Momentum = 0.9,
                 weight_decay: NonNegativeFloat = 0.0, lr_scaling: Literal["none", "linear"] = "none",
                 backbone: str | None = None) -> None:
        super().__init__(checkpoint, num_classes, lr, momentum, weight_decay, backbone)
        self.save_hyperparameters()
        self.hparams["arch"] = self.arch  # lets wcl.export read this run's checkpoints too
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen: BN statistics stay those of pretraining, no dropout / drop-path (ViTs)
        return self

    def logits(self, batch: dict[str, Any]) -> Tensor:
        if "features" in batch:
            return self.classifier(batch["features"])
        with torch.no_grad():
            feats = self.features(batch["image"])
        return self.classifier(feats)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.classifier.parameters())}]

    def learning_rate(self) -> float:
        if self.hparams.lr_scaling == "none":
            return self.hparams.lr
        return scaled_lr(self.hparams.lr, global_batch_size(self.trainer), "linear")


class FineTune(_SupervisedEval):
    """The whole network fine-tuned from the pretrained backbone, on the labelled subset of the data module
    (``data.label_fraction`` or ``data.subset_file``).

    Args:
        checkpoint: ``.ckpt`` of a ``wcl.WCL`` run.
        num_classes: linked from the data module by the CLI.
        lr: learning rate of the backbone (SGD with Nesterov momentum, cosine schedule per step).
        classifier_lr: learning rate of the new linear layer.
        momentum: SGD momentum (Nesterov when > 0).
        weight_decay: weight decay of the backbone's and the classifier's weights; as in pretraining, never of
            biases, normalisation parameters or the tokens a backbone declares (a ViT's ``cls_token``,
            ``pos_embed``).
        backbone: if set, the checkpoint must hold this backbone.
        probe_epochs: before fine-tuning, train the classifier this many epochs as a linear probe on the frozen
            backbone's features (:class:`wcl.callbacks.labelled.ProbeFirst`; 0: a random classifier).
        probe_lr: learning rate of that probe.
    """

    def __init__(self, checkpoint: str, num_classes: int | None = None, lr: PositiveFloat = 0.01,
                 classifier_lr: PositiveFloat = 0.1, momentum: Momentum = 0.9, weight_decay: NonNegativeFloat = 0.0,
                 backbone: str | None = None, probe_epochs: NonNegativeInt = 0, probe_lr: PositiveFloat = 0.1) -> None:
        check_constraints(FineTune.__init__, {"classifier_lr": classifier_lr, "probe_epochs": probe_epochs,
                                              "probe_lr": probe_lr}, "model.")
        super().__init__(checkpoint, num_classes, lr, momentum, weight_decay, backbone)
        self.save_hyperparameters()
        self.hparams["arch"] = self.arch

    def param_groups(self) -> list[dict]:
        wd = self.hparams.weight_decay
        groups = param_groups({"backbone": self.backbone}, wd) + [
            {**group, "lr": self.hparams.classifier_lr} for group in param_groups({"classifier": self.classifier}, wd)]
        return [group for group in groups if group["params"]]
