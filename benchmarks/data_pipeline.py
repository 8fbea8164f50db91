"""Data-pipeline throughput of the two augmentation paths, and training throughput with each.

    python benchmarks/data_pipeline.py [--workers 2] [--batches 20]

"pipeline": images/s (two views counted) delivered by the training DataLoader plus, for ``augment_on: device``,
the kornia views built on the batch's device (here the CPU) — no model. Sizes: 32 px (bundled CIFAR-10 JPEGs)
and 96 px (the same images decoded at 96 px). "in memory" decodes the dataset once first. "training" runs one
epoch of the quickstart config (ResNet-18 width 16, batch 256) and reports the fit summary's images/s.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import torch

from wcl import WCLDataModule
from wcl.data import Augmentations


def pipeline_rate(size: int, augment_on: str, in_memory: bool, workers: int, batches: int) -> float:
    dm = WCLDataModule(batch_size=256, num_workers=workers, persistent_workers=False, augment_on=augment_on,
                       in_memory=in_memory, decode_size=size if size != 32 else None,
                       augment=Augmentations(crop_size=size, blur_prob=0.5 if size >= 96 else 0.0))
    loader = dm.train_dataloader()
    it = iter(loader)
    dm.on_after_batch_transfer(next(it), 0)  # warm-up (workers started, kornia built)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        batch = dm.on_after_batch_transfer(next(it), 0)
        n += sum(len(v) for v in batch["views"])
    return n / (time.perf_counter() - start)


def training_rate(augment_on: str, in_memory: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
         "--trainer.default_root_dir", "runs/bench_pipeline", "--trainer.logger.init_args.save_dir",
         "runs/bench_pipeline", "--data.augment_on", augment_on, "--data.in_memory", str(in_memory).lower()],
        capture_output=True, text=True, check=True)
    return float(re.search(r"training throughput (\d+) images/s", out.stdout).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=15)
    p.add_argument("--no-training", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers\n")
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
