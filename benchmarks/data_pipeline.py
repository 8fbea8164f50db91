"""Data-path throughput on this machine: the batched augmentation alone (against kornia's), the training loaders
of each path, and training throughput with each.

    python benchmarks/data_pipeline.py [--workers 2] [--batches 15] [--no-training]

"augment": milliseconds per view of ``wcl.data.batched.BatchedViews`` on the default device (both views of a
batch of 256 uint8 images at 32 px in one call, SimCLR's CIFAR augmentation), next to the kornia pipeline the
device path used before (RandomResizedCrop + flip + ColorJitter + RandomGrayscale, one view per call; needs
``pip install kornia``, it is skipped otherwise). Median of 20 calls after 3.
"pipeline": images/s (two views counted) the training loader delivers, views included — no model. Sizes: 32 px
(bundled CIFAR-10 JPEGs) and 96 px (the same images decoded at 96 px). "training": one epoch of the quickstart
config (ResNet-18 width 16, batch 256) with each path; the fit summary's images/s.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

import torch

from wcl import WCLDataModule
from wcl.data import Augmentations
from wcl.data.batched import BatchedViews
from wcl.data.sampling import sample_keys


def _median_ms(fn, warmup: int = 3, repeat: int = 20) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def augment_ms(batch: int) -> dict[str, float | None]:
    """Per-view milliseconds of the batched augmentation and of a kornia pipeline (the reference)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    aug = Augmentations()
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    rows = torch.arange(2 * batch, device=device) % batch
    views = BatchedViews(aug)
    ours = _median_ms(lambda: views(images, rows, sample_keys(rows, 0, 0))) / 2
    try:
        import kornia.augmentation as K
    except ImportError:
        return {"batched": ours, "kornia": None}
    s = aug.jitter_strength
    pipeline = K.AugmentationSequential(
        K.RandomResizedCrop((32, 32), scale=aug.crop_scale, ratio=aug.crop_ratio, resample="BICUBIC"),
        K.RandomHorizontalFlip(p=aug.hflip_prob), K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=aug.jitter_prob),
        K.RandomGrayscale(p=aug.grayscale_prob)).to(device)
    kornia = _median_ms(lambda: pipeline(images.float() / 255))
    return {"batched": ours, "kornia": kornia}


def pipeline_rate(size: int, augment_on: str, in_memory: bool, workers: int, batches: int) -> float:
    dm = WCLDataModule(batch_size=256, num_workers=workers, persistent_workers=False, augment_on=augment_on,
                       in_memory=in_memory, decode_size=size if size != 32 else None,
                       augment=Augmentations(crop_size=size, blur_prob=0.5 if size >= 96 else 0.0))
    it = iter(dm.train_dataloader())
    dm.on_after_batch_transfer(next(it), 0)  # warm-up (workers started)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        batch = dm.on_after_batch_transfer(next(it), 0)
        n += sum(len(v) for v in batch["views"])
    return n / (time.perf_counter() - start)


def training_rate(augment_on: str, in_memory: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
         "--trainer.default_root_dir", "runs/bench_pipeline", "--overwrite", "true", "--data.augment_on", augment_on,
         "--data.in_memory", str(in_memory).lower()],
        capture_output=True, text=True, check=True)
    return float(re.search(r"training throughput (\d+) images/s", out.stdout).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=15)
    p.add_argument("--no-training", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers\n")
    ms = augment_ms(256)
    kornia = f"{ms['kornia']:.1f}" if ms["kornia"] is not None else "not installed"
    print(f"| augmentation, batch 256 at 32 px | batched (wcl) | kornia |\n|---|---:|---:|\n"
          f"| ms per view | {ms['batched']:.1f} | {kornia} |\n", flush=True)
    print("| size | path | in memory | pipeline images/s | training images/s |")
    print("|---:|---|---|---:|---:|")
    for size in (32, 96):
        for augment_on in ("cpu", "device"):
            for in_memory in (False, True):
                rate = pipeline_rate(size, augment_on, in_memory, args.workers, args.batches)
                train = "" if size != 32 or args.no_training else f"{training_rate(augment_on, in_memory):.0f}"
                print(f"| {size} | {augment_on} | {in_memory} | {rate:.0f} | {train} |", flush=True)


if __name__ == "__main__":
    main()
