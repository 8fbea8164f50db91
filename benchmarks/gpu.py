"""The GPU measurements of the benchmark and fast-path issues, as one script for a session that is lent a GPU.

    python benchmarks/gpu.py [--root ../shared/datasets/cifar10] [--workers 14] [--json]
    python benchmarks/gpu.py --quick          # smoke run on any machine (tiny network, 2 × 64 steps)

1. "epoch": one two-view CIFAR-10 epoch of WCL with ResNet-18 (width 64, CIFAR stem, channels_last, batch 512),
   through ``python -m wcl fit`` with ``configs/cifar10/wcl.yaml``: augmentation on CPU workers vs on the device
   (images kept on the device), fp32 vs bf16-mixed. Two epochs per setting; the second is reported (the first
   includes start-up and autotuning).
2. "resnet50": ResNet-50 at 224 px, forward + backward + SGD step on a fixed batch of 2 × 128, bf16 autocast,
   channels_last: images/s (the compute side of ImageNet training).
3. "short runs": WCL vs SimCLR for ``--short-epochs`` epochs on the device path with bf16, kNN top-1 at the end.

Without ``--root`` (no CIFAR-10 on the machine) the 50,000 training images are the bundled 5,000 JPEGs linked ten
times (the same decoding and compute per image), evaluated on the bundled validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from wcl.data.datasets import BUNDLED_ROOT


class EpochClock(Callback):
    """Prints ``wcl-epoch {"epoch", "seconds", "images"}`` after every training epoch (views counted)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._images += sum(len(v) for v in batch["views"]) + sum(len(v) for v in batch.get("small") or [])

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        info = {"epoch": trainer.current_epoch, "seconds": time.perf_counter() - self._start, "images": self._images}
        print("wcl-epoch " + json.dumps(info), flush=True)


def replicated_bundled(copies: int = 10) -> Path:
    """An ImageFolder tree whose train/ links every bundled training JPEG ``copies`` times; val/ links val/."""
    root = Path(tempfile.mkdtemp(prefix="wcl_bundled_x10_"))
    for split, n in (("train", copies), ("val", 1)):
        for cls in sorted((BUNDLED_ROOT / split).iterdir()):
            out = root / split / cls.name
            out.mkdir(parents=True)
            for img in sorted(cls.iterdir()):
                for c in range(n):
                    (out / f"{c}_{img.name}").symlink_to(img.resolve())
    return root


def fit(args: list[str], timeout: float) -> dict:
    """Runs ``python -m wcl fit`` and returns its per-epoch clock lines and final metrics."""
    cmd = [sys.executable, "-m", "wcl", "fit", *args, "--trainer.enable_progress_bar", "false",
           "--trainer.callbacks+=benchmarks.gpu.EpochClock"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    epochs = [json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("wcl-epoch ")]
    result: dict = {"epochs": epochs}
    knn = re.search(r"final val/knn_top1 = ([0-9.]+)", out.stdout)
    if knn:
        result["knn_top1"] = float(knn.group(1))
    return result


def resnet50_rate(steps: int, batch: int, quick: bool) -> float:
    from wcl import WCL

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = 64 if quick else 224
    model = WCL(backbone="resnet50", width=8 if quick else 64).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x1 = torch.randn(batch, 3, size, size, device=device)
    x2 = torch.randn(batch, 3, size, size, device=device)
    times = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            h1, h2 = model(x1), model(x2)
            loss = model.nce_loss(model.g(h1), model.g(h2)) + model.weak_loss(model.phi(h1), model.phi(h2))[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * batch / sorted(times[3:])[len(times[3:]) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="CIFAR-10 ImageFolder tree (train/, test/); default: bundled JPEGs × 10")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--short-epochs", type=int, default=15)
    p.add_argument("--budget-s", type=float, default=420, help="skip the short runs past this many seconds")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    start = time.perf_counter()
    if args.root:
        data = ["--data.dataset", "cifar10", "--data.root", args.root]
        tree = None
    else:
        tree = replicated_bundled(1 if args.quick else 10)
        data = ["--data.dataset", "imagefolder", "--data.root", str(tree)]
    base = ["--config", "configs/cifar10/wcl.yaml", *data, "--data.num_workers", str(args.workers),
            "--data.batch_size", str(args.batch_size), "--trainer.devices", "1", "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"]
    if args.quick:
        base += ["--model.width", "8", "--model.proj_hidden_dim", "64", "--model.weak_hidden_dim", "64",
                 "--data.train_per_class", "64", "--data.batch_size", "64", "--trainer.precision", "32"]
    timed = [*base, "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0", "--model.warmup_epochs", "0"]
    report: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__, "epoch": [], "short_runs": []}
    for precision in ("32", "bf16-mixed"):
        for path in (["--data.augment_on", "cpu"], ["--data.augment_on", "device", "--data.in_memory", "device"]):
            res = fit([*timed, *path, "--trainer.precision", precision], timeout=240)
            report["epoch"].append({"precision": precision, "augment_on": path[1], **res})
    report["resnet50_224_img_s"] = resnet50_rate(5 if args.quick else 20, 8 if args.quick else 128, args.quick)
    for name, weak in (("simclr", "0.0"), ("wcl", "1.0")):
        if time.perf_counter() - start > args.budget_s:
            break
        epochs = str(1 if args.quick else args.short_epochs)  # kNN once, after the last epoch
        res = fit([*base, "--trainer.max_epochs", epochs, "--data.augment_on", "device", "--data.in_memory", "device",
                   "--model.weak_weight", weak, "--model.warmup_epochs", "1", "--model.knn_every_n_epochs", epochs,
                   "--trainer.precision", "bf16-mixed"], timeout=300)
        report["short_runs"].append({"method": name, **res})
    report["wall_s"] = time.perf_counter() - start
    if tree is not None:
        shutil.rmtree(tree)
    if args.json:
        print(json.dumps(report))
        return
    print(f"device: {report['device']}, torch {report['torch']}")
    print("| precision | augment_on | epoch s (2nd) | img/s |")
    print("|---|---|---:|---:|")
    for r in report["epoch"]:
        if "error" in r or len(r.get("epochs", [])) < 2:
            print(f"| {r['precision']} | {r['augment_on']} | failed: {r.get('error', 'no epoch')[:80]} | |")
            continue
        e = r["epochs"][1]
        print(f"| {r['precision']} | {r['augment_on']} | {e['seconds']:.2f} | {e['images'] / e['seconds']:.0f} |")
    print(f"ResNet-50 224 px bf16: {report['resnet50_224_img_s']:.0f} img/s")
    for r in report["short_runs"]:
        print(f"{r['method']}: kNN top-1 {r.get('knn_top1')} ({r.get('error', 'ok')[:200]})")


if __name__ == "__main__":
    main()
