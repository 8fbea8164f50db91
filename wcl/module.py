"""``WCL``: the LightningModule that composes backbone, heads, losses, optimizer and online evaluation."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from wcl.distributed import gather_nograd, is_distributed
from wcl.errors import ConfigError, NonFiniteLossError
from wcl.eval.knn import KNNAccumulator
from wcl.graph import GraphBackend, weak_label_stats
from wcl.losses import NTXentLoss, WeakLabelLoss
from wcl.models import ProjectionHead, build_resnet
from wcl.models.backbones import ResNetName
from wcl.multicrop import FeatureBank, KnnBackend, NeighborTable, neighbor_purity
from wcl.optim import LRScaling, OptimizerName, build_optimizer, param_groups, scaled_lr, warmup_cosine


class WCL(LightningModule):
    """Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021).

    ``loss = NT-Xent(g(h1), g(h2)) + weak_weight · swapped weak-label loss(phi(h1), phi(h2))`` over the global
    batch, with ``h = backbone(x)``. ``weak_weight: 0`` is SimCLR from the same code.

    Args:
        backbone: ResNet depth. width: base width (64 standard, 16 for CPU runs). cifar_stem: 3×3 stride-1
            first convolution and no max-pool, for 32-px images.
        proj_hidden_dim, proj_out_dim, proj_layers: the NT-Xent head ``g``.
        weak_hidden_dim, weak_out_dim, weak_layers: the weak-label head ``phi``.
        temperature: τ of NT-Xent. weak_temperature: τ of the weak-label loss.
        weak_weight: weight of the weak-label term. weak_warmup_epochs: ramp that weight linearly from 0 over
            this many epochs (0 = full weight from the start).
        graph_backend: where connected components are found: ``scipy``, ``torch`` or ``auto`` (torch on
            accelerators, scipy on CPU).
        optimizer: ``lars``, ``sgd`` or ``adamw``. base_lr, lr_scaling: lr = base_lr·B/256 (``linear``),
            base_lr·√B (``sqrt``) or base_lr (``none``), B = global batch. momentum, weight_decay: as usual
            (biases and normalisation parameters get no decay and no LARS adaptation).
        warmup_epochs: linear warm-up, then cosine decay (per step) to ``min_lr_factor``·lr.
        num_classes: classes of the online linear classifier (linked from the data module by the CLI);
            None disables online evaluation that needs labels.
        online_lr: lr of the online linear classifier (trained on detached features, never touches the
            backbone).
        knn_k, knn_temperature, knn_every_n_epochs: online weighted kNN on backbone features
            (0 disables it); it also runs at the last epoch.
        neighbor_backend, neighbor_nprobe: how the KNN multi-crop's neighbour table is searched at each epoch
            end (``faiss`` exact, ``faiss_ivf`` approximate with ``nprobe`` lists, ``torch`` chunked matmul on
            the training device); used only when the data module has ``num_small_crops > 0`` with
            ``small_crop_source: neighbors``.
        channels_last: run the backbone in channels-last memory format.
        compile_backbone: compile the backbone with ``torch.compile`` (in place, so checkpoint keys do not
            change); ``compile_mode`` is its ``mode`` (``default``, ``reduce-overhead``, ``max-autotune``). The
            first steps are slow while it compiles; worth it for long accelerator runs.
        check_finite: stop with a clear error when a loss term is NaN/inf.
    """

    def __init__(
        self,
        backbone: ResNetName = "resnet50",
        width: int = 64,
        cifar_stem: bool = False,
        proj_hidden_dim: int = 2048,
        proj_out_dim: int = 128,
        proj_layers: int = 2,
        weak_hidden_dim: int = 2048,
        weak_out_dim: int = 128,
        weak_layers: int = 2,
        temperature: float = 0.1,
        weak_temperature: float = 0.1,
        weak_weight: float = 1.0,
        weak_warmup_epochs: float = 0.0,
        graph_backend: GraphBackend = "auto",
        optimizer: OptimizerName = "lars",
        base_lr: float = 0.075,
        lr_scaling: LRScaling = "sqrt",
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        warmup_epochs: float = 10.0,
        min_lr_factor: float = 0.0,
        num_classes: int | None = None,
        online_lr: float = 0.1,
        knn_k: int = 200,
        knn_temperature: float = 0.1,
        knn_every_n_epochs: int = 1,
        neighbor_backend: KnnBackend = "faiss",
        neighbor_nprobe: int = 16,
        channels_last: bool = True,
        compile_backbone: bool = False,
        compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if weak_weight < 0:
            raise ConfigError(f"model.weak_weight must be >= 0, got {weak_weight}")
        self.save_hyperparameters()
        self.backbone = build_resnet(backbone, width, cifar_stem)
        feat_dim = self.backbone.out_dim
        self.g = ProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim, proj_layers)
        # SimCLR mode (weak_weight 0) has no phi: an unused head would also leave DDP gradient buckets unreduced.
        self.phi = ProjectionHead(feat_dim, weak_hidden_dim, weak_out_dim, weak_layers) if weak_weight > 0 else None
        self.nce_loss = NTXentLoss(temperature)
        self.weak_loss = WeakLabelLoss(weak_temperature, graph_backend)
        self.classifier = nn.Linear(feat_dim, num_classes) if num_classes else None
        self.online_top1 = MulticlassAccuracy(num_classes, average="micro") if num_classes else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if compile_backbone:
            self.backbone.compile(mode=compile_mode)
        self._knn = KNNAccumulator()
        self._table: NeighborTable | None = None  # the data module's shared neighbour table, if any
        self._bank: FeatureBank | None = None  # primary features of the epoch (rank 0 only)
        self._train_labels: Tensor | None = None  # true labels by dataset index, for neighbour purity
        # Training throughput (images of every view and crop, all ranks; data loading included, validation not).
        self.train_images, self.train_seconds = 0, 0.0
        self.best_knn_top1: float | None = None
        self._last_tick = 0.0

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        """Backbone features: B×3×H×W → B×D."""
        return self.backbone(x.contiguous(memory_format=self.memory_format))

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on this rank (the schedules and warm-ups are given in epochs)."""
        if self.trainer.train_dataloader is None:
            self.trainer.fit_loop.setup_data()
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            raise ConfigError("the training loader has no length, so epoch-based schedules are undefined; "
                              "use a map-style dataset.")
        return max(1, int(batches) // self.trainer.accumulate_grad_batches)

    def current_weak_weight(self) -> float:
        """``weak_weight`` after the linear warm-up of ``weak_warmup_epochs``."""
        w, ramp = self.hparams.weak_weight, self.hparams.weak_warmup_epochs
        if ramp <= 0 or self._trainer is None:
            return w
        return w * min(1.0, self.global_step / self.steps_per_epoch() / ramp)

    # ---------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        self._table = getattr(dm, "neighbor_table", None)
        if self._table is not None:
            self._train_labels = dm.train_labels()
            if self.trainer.is_global_zero:
                self._bank = FeatureBank(len(self._table.table), self.backbone.out_dim)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x1, x2 = batch["views"][:2]
        bsz = x1.shape[0]
        h1, h2 = self(x1), self(x2)
        small = batch.get("small") or []
        zs = vs = owner = None
        if small:
            hs = self(torch.cat(small))
            zs, vs = self.g(hs), (self.phi(hs) if self.phi is not None else None)
            owner = torch.arange(bsz, device=hs.device).repeat(len(small))
        loss_nce = self.nce_loss(self.g(h1), self.g(h2), zs, owner)
        weak_w = self.current_weak_weight()
        logs = {"train/loss_nce": loss_nce}
        if self.phi is not None:
            loss_weak, _, labels2 = self.weak_loss(self.phi(h1), self.phi(h2), vs, owner)
            logs["train/loss_weak"] = loss_weak
            train_loss = loss_nce + weak_w * loss_weak
        else:  # SimCLR mode: phi, its graph and its loss would not change the backbone, so they are skipped.
            labels2, train_loss = None, loss_nce
        loss = train_loss
        if self._table is not None:
            feats, index = gather_nograd(h1.detach()), gather_nograd(batch["index"])
            if self._bank is not None:
                self._bank.write(index, feats)

        true = batch.get("label")
        if self.classifier is not None and true is not None:
            known = true >= 0
            if bool(known.any()):
                online = F.cross_entropy(self.classifier(h1.detach()[known]), true[known])
                loss = loss + online
                logs["train/online_linear_loss"] = online
        self._check_finite(logs)

        if labels2 is not None:
            true_all = gather_nograd(true) if true is not None else None
            for name, value in weak_label_stats(labels2, true_all).items():
                logs[f"weak_labels/{name}"] = value
        logs["train/loss"] = train_loss
        logs["train/weak_weight"] = torch.tensor(float(weak_w))
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=bsz, prog_bar=False)
        self.log("loss", logs["train/loss"], prog_bar=True, logger=False, batch_size=bsz)
        return loss

    def on_train_epoch_start(self) -> None:
        self._last_tick = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        if self.train_seconds > 0:
            self.log("train/images_per_second", self.train_images / self.train_seconds)
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(dm, "skip_corrupt", False):
            self.log("data/skipped_images", float(dm.skipped.get()), reduce_fx="sum", sync_dist=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self._last_tick
        self._last_tick = now
        views = len(batch["views"]) + len(batch.get("small") or [])
        self.train_images += views * len(batch["index"]) * self.trainer.world_size
        # The table is built after the epoch's last batch, before validation and before any checkpoint of this
        # epoch is written (checkpoint callbacks run ahead of on_train_epoch_end), so checkpoints carry it.
        if self._table is not None and batch_idx + 1 == self.trainer.num_training_batches:
            self._update_neighbor_table()

    def _update_neighbor_table(self) -> None:
        hp = self.hparams
        result = None
        if self._bank is not None:
            device = self.device if hp.neighbor_backend == "torch" else "cpu"
            result = self._bank.neighbors(self._table.k, hp.neighbor_backend, hp.neighbor_nprobe, device)
        # Rank 0 searches; every rank gets the same table for its own data workers.
        table, seconds = self.trainer.strategy.broadcast(result, src=0)
        self._table.update(table, self.current_epoch)
        # Logged per epoch (on_step logging would drop them unless the step hits log_every_n_steps).
        self.log("multicrop/knn_seconds", seconds, on_step=False, on_epoch=True, rank_zero_only=True)
        purity = neighbor_purity(table, self._train_labels) if self._train_labels is not None else None
        if purity is not None:
            self.log("multicrop/neighbor_purity", purity, on_step=False, on_epoch=True, rank_zero_only=True)

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        if not self.hparams.check_finite:
            return
        finite = torch.stack([torch.isfinite(v).all() for v in terms.values()]).to(torch.int32)
        if is_distributed():
            # Every rank must stop together, or the others would wait forever in the next collective.
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite.all()):
            bad = [name for name, ok in zip(terms, finite.tolist(), strict=True) if not ok]
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step} (epoch {self.current_epoch}) in {', '.join(bad)} "
                f"(values: {values}). Lower model.base_lr, use a longer model.warmup_epochs, or check the input "
                "data; the last checkpoint is intact."
            )

    # ---------------------------------------------------------------- online evaluation
    def _knn_epoch(self) -> bool:
        n = self.hparams.knn_every_n_epochs
        if n <= 0 or self.hparams.num_classes is None or self.trainer.sanity_checking:
            return False
        last = self.trainer.max_epochs is not None and self.current_epoch + 1 == self.trainer.max_epochs
        return (self.current_epoch + 1) % n == 0 or last

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loader 0 = kNN bank (train split), loader 1 = val split (see ``WCLDataModule``)."""
        knn = self._knn_epoch()
        if dataloader_idx == 0 and not knn:
            return
        feats = self(batch["image"])
        if dataloader_idx == 1 and self.classifier is not None:
            self.online_top1.update(self.classifier(feats), batch["label"])
            self.log("val/online_linear_top1", self.online_top1, on_epoch=True, add_dataloader_idx=False,
                     batch_size=feats.shape[0])
        if knn:
            self._knn.add("bank" if dataloader_idx == 0 else "query", batch["index"], feats, batch["label"])

    def on_validation_epoch_end(self) -> None:
        if self._knn_epoch() and self._knn.ready():
            acc = self._knn.accuracy(self.hparams.num_classes, self.hparams.knn_k, self.hparams.knn_temperature)
            self.log("val/knn_top1", acc["top1"], add_dataloader_idx=False)
            self.best_knn_top1 = max(self.best_knn_top1 or 0.0, float(acc["top1"]))
        self._knn.reset()

    # ---------------------------------------------------------------- optimisation
    def global_batch_size(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        per_device = getattr(dm, "batch_size", None)
        if per_device is None:
            raise ConfigError("WCL needs a data module with a batch_size attribute to scale the learning rate.")
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = scaled_lr(hp.base_lr, self.global_batch_size(), hp.lr_scaling)
        heads = {"g": self.g} if self.phi is None else {"g": self.g, "phi": self.phi}
        groups = param_groups({"backbone": self.backbone, **heads}, hp.weight_decay)
        if self.classifier is not None:
            groups.append({"params": list(self.classifier.parameters()), "weight_decay": 0.0,
                           "lars_exclude": True, "lr": hp.online_lr})
        opt = build_optimizer(hp.optimizer, groups, lr, hp.momentum, hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(hp.warmup_epochs * self.steps_per_epoch())
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, warmup, total, hp.min_lr_factor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
