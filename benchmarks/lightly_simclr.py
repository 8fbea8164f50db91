"""lightly's SimCLR on the CPU-proxy v1 protocol: the reference point for ``wcl``'s numbers.

    pip install -e ".[bench]"
    python benchmarks/lightly_simclr.py --epochs 30 --seed 0 --out runs/cpu_proxy/lightly_s0

Everything that defines lightly's SimCLR comes from lightly (``SimCLRTransform`` on PIL images in the loader
workers, ``SimCLRProjectionHead``, ``NTXentLoss``) with the settings of its CIFAR-10 example (SGD lr 0.06,
momentum 0.9, weight decay 5e-4, cosine over epochs); the backbone, batch, augmentation strengths, temperature and
training subset are the protocol's, shared with ``configs/cpu_proxy``. The checkpoint written at the end holds
``backbone.*`` weights and the architecture, so ``wcl``'s evaluation code reads it like a ``wcl.WCL`` one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision.datasets as tvd
from lightning.pytorch import LightningModule, Trainer, seed_everything
from quality import data_args
from torch import Tensor
from torch.utils.data import DataLoader

from wcl.data import Augmentations
from wcl.data.subsets import first_per_class
from wcl.models import build_resnet
from wcl.models.layout import set_layout, to_layout

# CPU-proxy v1: data, batch and augmentation come from configs/cpu_proxy/data.yaml, as for the wcl runs.
PROTOCOL = data_args(quick=False)
ROOT, PER_CLASS, BATCH = PROTOCOL["root"], PROTOCOL["train_per_class"], PROTOCOL["batch_size"]
AUG = Augmentations(**PROTOCOL["augment"])


class LightlySimCLR(LightningModule):
    """Backbone (``wcl``'s ResNet, in wcl's memory format: channels_last on CUDA) + lightly's SimCLR head and loss."""

    def __init__(self, backbone: str = "resnet18", width: int = 16, cifar_stem: bool = True,
                 temperature: float = 0.2, lr: float = 0.06, max_epochs: int = 30) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.save_hyperparameters()  # backbone/width/cifar_stem: what wcl.eval.checkpoint.load_backbone reads
        self.backbone = build_resnet(backbone, width, cifar_stem)
        self.head = SimCLRProjectionHead(self.backbone.out_dim, 512, 128)
        self.criterion = NTXentLoss(temperature=temperature)

    def setup(self, stage: str) -> None:
        set_layout(self.backbone, self.device)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(to_layout(self.backbone, x)))

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        (x1, x2), _ = batch
        loss = self.criterion(self(x1), self(x2))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's union type
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.hparams.max_epochs)]


def train_loader(root: str = ROOT, per_class: int = PER_CLASS, batch_size: int = BATCH, workers: int = 2,
                 seed: int = 0) -> DataLoader:
    """The protocol's training subset with lightly's two-view transform at the protocol's strengths."""
    from lightly.transforms import SimCLRTransform

    train = Path(root) / "train"
    if not train.is_dir():
        raise SystemExit(f"CIFAR-10 not found at {train}: pass --root (an ImageFolder tree with train/ and test/).")
    transform = SimCLRTransform(input_size=AUG.crop_size, cj_prob=AUG.jitter_prob, cj_strength=AUG.jitter_strength,
                                min_scale=AUG.crop_scale[0], random_gray_scale=AUG.grayscale_prob,
                                gaussian_blur=AUG.blur_prob, hf_prob=AUG.hflip_prob,
                                normalize={"mean": list(AUG.mean), "std": list(AUG.std)})
    ds = first_per_class(tvd.ImageFolder(str(train), transform=transform), per_class)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/cpu_proxy/lightly")
    p.add_argument("--root", default=ROOT)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--per-class", type=int, default=PER_CLASS, help="training images per class (first in order)")
    args = p.parse_args()
    seed_everything(args.seed)
    model = LightlySimCLR(max_epochs=args.epochs)
    trainer = Trainer(accelerator="auto", devices=1, max_epochs=args.epochs, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=args.out)
    trainer.fit(model, train_loader(args.root, args.per_class, workers=args.workers, seed=args.seed))
    out = Path(args.out) / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(out)
    print(f"checkpoint {out}")


if __name__ == "__main__":
    main()
