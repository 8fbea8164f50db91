"""``WCL``: backbone, the two heads, the two losses, the optimizer — and the training step that composes them."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from wcl import optim
from wcl.callbacks import FiniteLossGuard, LabelledSubsetFile, OnlineKnn
from wcl.callbacks.checkpoint import ResumesWhereItStopped
from wcl.callbacks.monitor import is_logging_step
from wcl.constraints import (
    ClassCount,
    ClosedUnitInterval,
    Momentum,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    check_constraints,
)
from wcl.distributed import gather_nograd
from wcl.errors import ConfigError
from wcl.graph import GraphBackend, weak_label_stats
from wcl.losses import CropWeighting, NTXentLoss, WeakLabelLoss
from wcl.models import ProjectionHead, build_backbone
from wcl.models.compile import compile_backbone, run_backbone
from wcl.models.layout import set_layout, to_layout
from wcl.optim import LRScaling, OptimizerName


class WCL(ResumesWhereItStopped, LightningModule):
    """Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021); class defaults, a --config overrides them.

    ``loss = NT-Xent(g(h1), g(h2)) + weak_weight · swapped weak-label loss(phi(h1), phi(h2))`` over the global
    batch, with ``h = backbone(x)``. ``weak_weight: 0`` is SimCLR from the same code (and builds no ``phi``).
    ``--print_config`` after a ``--config`` shows the values a run will use (the quickstart: ResNet-18, width 16).

    Args:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` (wcl's ResNets), ``torchvision:<name>`` (a model of
            torchvision.models.list_models(), classifier removed) or ``timm:<name>`` (pip install "wcl[timm]").
        width: base width of wcl's ResNets (64 standard, 16 for CPU runs); other backbones need the default 64.
        cifar_stem: 3×3 stride-1 first convolution and no max-pool, for 32-px images (wcl's ResNets only).
        backbone_args: keyword arguments of the torchvision / timm constructor, e.g. ``{img_size: 32, patch_size:
            4}`` for a ViT on 32-px images (timm ViTs get ``dynamic_img_size: true`` unless set, for multi-crop).
        proj_hidden_dim: hidden width of the NT-Xent head ``g``.
        proj_out_dim: output width of ``g`` (the space NT-Xent compares in).
        proj_layers: linear layers of ``g``.
        weak_hidden_dim: hidden width of the weak-label head ``phi``.
        weak_out_dim: output width of ``phi`` (the space the 1-NN graph and the weak-label loss use).
        weak_layers: linear layers of ``phi`` (official code: 3).
        temperature: τ of NT-Xent.
        weak_temperature: τ of the weak-label loss.
        weak_weight: weight of the weak-label term (0: SimCLR, and no ``phi`` is built).
        weak_warmup_epochs: ramp ``weak_weight`` linearly from 0 over this many epochs (0: full weight at once).
        graph_backend: where connected components are found: ``scipy``, ``torch`` or ``auto`` (torch on accelerators).
        label_graph: the known labels (``data.label_fraction`` / ``data.subset_file``, -1 elsewhere) constrain the
            weak-label graph: labelled samples of one class are linked, a 1-NN edge between labelled samples of
            different classes is dropped (:func:`wcl.graph.label_constraints`; an extension of the paper's method).
        label_merge: with ``label_graph``, true links the labelled samples of one class in the graph; false keeps the
            1-NN graph's components (different-class edges still dropped) and makes the labelled samples of one
            class positives of each other in the weak-label loss only.
        candidates_grad: true: the gradient flows through anchors and every candidate of every rank. false: the
            official code's — other ranks' embeddings are constants in NT-Xent, and every candidate is in the
            weak-label loss (this rank's own too), whose gradient then flows through its anchors only.
        crop_losses: which losses the low-resolution crops enter as extra anchors: ``both``, ``nce``, ``weak``, or
            ``auto``: crops cut from the sample's own image enter both, crops cut from a neighbour the weak one only.
        crop_weighting: ``anchor`` (each anchor weighs the same) or ``term`` (full-size and crop anchors: half each).
        optimizer: ``lars``, ``sgd`` or ``adamw``.
        base_lr: learning rate before ``lr_scaling``.
        lr_scaling: lr = base_lr·B/256 (``linear``), base_lr·√B (``sqrt``) or base_lr (``none``); B: global batch.
        momentum: SGD / LARS momentum (AdamW ignores it).
        weight_decay: weight decay (not of biases and normalisation parameters with ``exclude_bias_norm``).
        lars_eta: LARS trust coefficient η (:class:`wcl.optim.LARS`).
        lars_clip: LARC's clip mode: a layer's LARS factor is ``min(trust / lr, 1)`` (solo-learn's ``clip_lr``).
        exclude_bias_norm: biases, normalisation parameters and the tokens a backbone declares (a ViT's
            ``cls_token``, ``pos_embed``) get no weight decay and no LARS adaptation.
        warmup_epochs: linear warm-up of the lr over this many epochs, then cosine decay per step.
        min_lr_factor: the cosine decays to this fraction of the lr.
        num_classes: classes of the online linear classifier (linked from the data module; None: no classifier).
        online_lr: lr of the online linear classifier (trained on detached features, never touches the backbone).
        knn_k: neighbours of the online weighted kNN (``wcl.callbacks.OnlineKnn``).
        knn_temperature: vote temperature of the online kNN.
        knn_every_n_epochs: run the online kNN every n epochs and after the last one (0 turns it off).
        channels_last: channels-last memory format for a convolutional backbone on CUDA (``wcl.models.layout``).
        compile_backbone: ``torch.compile`` the backbone in place (same checkpoint keys); ``auto``: on CUDA only.
        compile_mode: ``torch.compile``'s ``mode``.
        check_finite: stop with a clear error when a loss term is NaN/inf (``wcl.callbacks.FiniteLossGuard``).
    """

    def __init__(  # grouped by concern: architecture, losses, optimisation, online evaluation, runtime
        self, backbone: str = "resnet50", width: PositiveInt = 64, cifar_stem: bool = False,
        backbone_args: dict[str, Any] | None = None,
        proj_hidden_dim: PositiveInt = 2048, proj_out_dim: PositiveInt = 128, proj_layers: PositiveInt = 2,
        weak_hidden_dim: PositiveInt = 2048, weak_out_dim: PositiveInt = 128, weak_layers: PositiveInt = 2,
        temperature: PositiveFloat = 0.1, weak_temperature: PositiveFloat = 0.1,
        weak_weight: NonNegativeFloat = 1.0, weak_warmup_epochs: NonNegativeFloat = 0.0,
        graph_backend: GraphBackend = "auto", label_graph: bool = False, label_merge: bool = True,
        candidates_grad: bool = True, crop_losses: Literal["both", "nce", "weak", "auto"] = "both",
        crop_weighting: CropWeighting = "anchor",
        optimizer: OptimizerName = "lars", base_lr: PositiveFloat = 0.075, lr_scaling: LRScaling = "sqrt",
        momentum: Momentum = 0.9, weight_decay: NonNegativeFloat = 1e-6, lars_eta: PositiveFloat = 0.001,
        lars_clip: bool = False, exclude_bias_norm: bool = True, warmup_epochs: NonNegativeFloat = 10.0,
        min_lr_factor: ClosedUnitInterval = 0.0,
        num_classes: ClassCount | None = None, online_lr: PositiveFloat = 0.1,
        knn_k: PositiveInt = 200, knn_temperature: PositiveFloat = 0.1, knn_every_n_epochs: NonNegativeInt = 1,
        channels_last: bool = True, compile_backbone: bool | Literal["auto"] = "auto",
        compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default", check_finite: bool = True,
    ) -> None:
        super().__init__()
        check_constraints(WCL.__init__, locals(), "model.")
        if weak_weight == 0 and crop_losses == "weak":
            raise ConfigError("model.crop_losses: weak needs the weak-label term, but model.weak_weight is 0 "
                              "(SimCLR mode); set --model.crop_losses nce to give the crops to NT-Xent.")
        if label_graph and weak_weight == 0:
            raise ConfigError("model.label_graph puts the known labels into the weak-label graph, but model.weak_weight"
                              " is 0 (SimCLR mode, no graph); set a weak_weight > 0 or label_graph: false.")
        if not label_merge and not label_graph:
            raise ConfigError("model.label_merge: false changes how the known labels enter the weak-label graph, but "
                              "model.label_graph is false; set --model.label_graph true (or leave label_merge true).")
        self.save_hyperparameters()
        self.backbone = build_backbone(backbone, width, cifar_stem, backbone_args)
        feat_dim = self.backbone.out_dim
        self.g = ProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim, proj_layers)
        # SimCLR mode (weak_weight 0) has no phi: an unused head would also leave DDP gradient buckets unreduced.
        self.phi = ProjectionHead(feat_dim, weak_hidden_dim, weak_out_dim, weak_layers) if weak_weight > 0 else None
        self.nce_loss = NTXentLoss(temperature, candidates_grad, crop_weighting)
        self.weak_loss = WeakLabelLoss(weak_temperature, graph_backend, candidates_grad, crop_weighting,
                                       label_merge) if self.phi is not None else None
        self.classifier = nn.Linear(feat_dim, num_classes) if num_classes else None
        self.online_top1 = MulticlassAccuracy(num_classes, average="micro") if num_classes else None

    def forward(self, x: Tensor) -> Tensor:
        """Backbone features: B×3×H×W → B×D."""
        return run_backbone(self.backbone, to_layout(self.backbone, x, self.hparams.channels_last))

    def setup(self, stage: str) -> None:
        set_layout(self.backbone, self.device, self.hparams.channels_last)  # self.device: the strategy's device
        mode = self.hparams.compile_backbone
        if stage == "fit" and (mode is True or (mode == "auto" and self.device.type == "cuda")):
            compile_backbone(self.backbone, self.hparams.compile_mode)  # static shapes, padded evaluation batches

    def configure_callbacks(self) -> list[Callback]:
        """The callbacks this model's arguments configure: the online kNN and the non-finite-loss guard."""
        hp = self.hparams
        callbacks: list[Callback] = [FiniteLossGuard()] if hp.check_finite else []
        callbacks.append(LabelledSubsetFile(required_by="model.label_graph" if hp.label_graph else None))
        if hp.knn_every_n_epochs > 0:
            callbacks.append(OnlineKnn(hp.knn_k, hp.knn_temperature, hp.knn_every_n_epochs))
        return callbacks

    def schedule_is_constant(self) -> bool:
        return self.hparams.min_lr_factor == 1.0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """batch: ``{"views": [x1, x2] (B×3×S×S), "index", "label"}`` (+ ``"small"``: crops; ``"true_label"``:
        every image's class where ``"label"`` is -1 for the unknown ones) → the loss, and for
        the callbacks ``h1`` (detached B×D), ``index`` and the loss ``terms``."""
        x1, x2 = batch["views"]
        h1, h2 = self(x1), self(x2)
        crops = batch.get("small") or []  # one backbone pass for all crops; owner: each crop's sample in the batch
        small = self(torch.cat(crops)) if crops else None
        owner = torch.arange(len(x1), device=x1.device).repeat(len(crops)) if crops else None
        hp = self.hparams
        nce_crops = (self.g(small), owner) if small is not None and hp.crop_losses != "weak" else (None, None)
        auto = small is not None and hp.crop_losses == "auto"  # crops are ordered crop j of all samples, then j + 1
        own = (batch["crop_source"] == batch["index"][:, None]).T.reshape(-1) if auto else None
        terms = {"loss_nce": self.nce_loss(self.g(h1), self.g(h2), *nce_crops, own)}
        loss = terms["loss_nce"]
        if self.phi is not None:
            weak_crops = (self.phi(small), owner) if small is not None and hp.crop_losses != "nce" else (None, None)
            known = batch["label"] if hp.label_graph else None
            terms["loss_weak"], _, labels2 = self.weak_loss(self.phi(h1), self.phi(h2), *weak_crops, known)
            loss = loss + self.current_weak_weight() * terms["loss_weak"]
        if self.classifier is not None:  # online linear probe on detached features; unlabelled samples ignored
            target = batch["label"]
            ce = F.cross_entropy(self.classifier(h1.detach()), target, ignore_index=-1, reduction="sum")
            terms["online_linear_loss"] = ce / (target >= 0).sum().clamp(min=1)
        self.log_dict({f"train/{k}": v for k, v in terms.items()} | {"train/loss": loss}, batch_size=len(x1))
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(x1))
        if self.phi is not None and (self._trainer is None or is_logging_step(self.trainer, self.global_step)):
            # read back, so only at logging steps; purity needs every image's class (true_label where labels are hidden)
            stats = weak_label_stats(labels2, gather_nograd(batch.get("true_label", batch["label"])))
            self.log_dict({f"weak_labels/{k}": v for k, v in stats.items()}, batch_size=len(x1))
            self.log("train/weak_weight", self.current_weak_weight(), batch_size=len(x1))
        total = loss + terms.get("online_linear_loss", 0.0)
        return {"loss": total, "h1": h1.detach(), "index": batch["index"], "terms": terms}

    def current_weak_weight(self) -> float:
        """``weak_weight`` after the linear warm-up of ``weak_warmup_epochs``."""
        w, ramp = self.hparams.weak_weight, self.hparams.weak_warmup_epochs
        if ramp <= 0 or self._trainer is None:
            return w
        return w * min(1.0, self.global_step / optim.steps_per_epoch(self.trainer) / ramp)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Val batches ``{"image", "index", "label"}``: online linear accuracy; features for the online kNN."""
        feats = self(batch["image"])
        if self.classifier is not None:
            self.online_top1.update(self.classifier(feats), batch["label"])
            self.log("val/online_linear_top1", self.online_top1, batch_size=feats.shape[0])
        return {"features": feats, "index": batch["index"], "label": batch["label"]}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = optim.scaled_lr(hp.base_lr, optim.global_batch_size(self.trainer), hp.lr_scaling)
        heads = {"g": self.g} if self.phi is None else {"g": self.g, "phi": self.phi}
        groups = optim.param_groups({"backbone": self.backbone, **heads}, hp.weight_decay, hp.exclude_bias_norm)
        if self.classifier is not None:
            groups.append({"params": list(self.classifier.parameters()), "weight_decay": 0.0,
                           "lars_exclude": True, "lr": hp.online_lr})
        opt = optim.build_optimizer(hp.optimizer, groups, lr, hp.momentum, hp.weight_decay, hp.lars_eta, hp.lars_clip)
        sched = optim.warmup_cosine_schedule(opt, self.trainer, hp.warmup_epochs, hp.min_lr_factor)
        self._schedule_steps = sched["scheduler"].total_steps  # the length the cosine spans
        return {"optimizer": opt, "lr_scheduler": sched}
