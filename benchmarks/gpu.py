"""GPU speed of a two-view CIFAR-10 WCL epoch, against the compute ceiling measured in the same run — one call.

    python benchmarks/gpu.py [--out DIR] [--root CIFAR10_TREE] [--epochs 3] [--skip cpu_path ...]
    python benchmarks/gpu.py --quick            # a smoke run on any machine (tiny network, 2 epochs of 2,048 images)
    python benchmarks/gpu.py --quality-epochs 50 --root data/cifar10 --skip augment ceiling device simclr cpu_path

Every figure is printed as one line ``wcl-bench {json}`` the moment it is measured and appended to
``DIR/gpu.jsonl`` (default ``runs/gpu_bench``), so a run cut short keeps what it measured. In this order:

1. ``card``: the device, torch and lightning versions.
2. ``augment``: ``wcl.data.batched.BatchedViews`` alone — both views of 512 uint8 images at 32 px in one call,
   milliseconds per view (median of 50 calls, device-synchronized).
3. ``ceiling``: the WCL step of ``configs/cifar10/wcl.yaml`` (ResNet-18 width 64, CIFAR stem, batch 512: two
   forwards of B, both heads, both losses, the recipe's LARS step, bf16 autocast, channels_last) on random tensors
   already on the device, no data and no Lightning; eager and with the backbone compiled; WCL and SimCLR mode.
   Seconds per epoch = median step × 97 steps (50,000 // 512).
4. ``device_path``: ``python -m wcl fit`` of that config (``augment_on: device``, ``in_memory: device``, compile
   on CUDA by default), WCL and SimCLR mode: seconds of every epoch after the first (which compiles), images/s and
   the ratio ceiling / epoch (1.0 = no time lost outside the step).
5. ``cpu_path``: the same with ``augment_on: cpu`` (torchvision in ``--workers`` data-loader workers).
6. ``quality`` (``--quality-epochs N``): the config for N epochs in WCL and in SimCLR mode (the same code and seed;
   ``--quality-modes`` picks), online kNN top-1 every ``--quality-knn-every`` epochs (default 10) and after the last.

Without ``--root`` the 50,000 training images are the 5,000 bundled JPEGs linked ten times (the same decoding and
compute per image as CIFAR-10); ``--root`` points at a real CIFAR-10 ImageFolder tree. Needs, beyond torch,
torchvision and lightning: jsonargparse with docstring-parser and typeshed-client (``python -m wcl``); scipy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # wcl from this checkout, installed or not


class EpochClock(Callback):
    """Prints ``wcl-epoch {"epoch", "seconds", "images"}`` after every training epoch (every view counted)."""

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


class Report:
    """Prints each figure as a JSON line and appends it to ``out/gpu.jsonl`` at once."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.rows = out / "gpu.jsonl", []

    def __call__(self, **row: object) -> dict:
        self.rows.append(row)
        line = json.dumps(row)
        print("wcl-bench " + line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
        return row


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup: int, repeat: int) -> float:  # noqa: ANN001
    """Median seconds of ``fn()`` after ``warmup`` calls, synchronized around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_augment(report: Report, device: str, batch: int) -> None:
    from wcl.data.augment import Augmentations
    from wcl.data.batched import BatchedViews
    from wcl.data.sampling import sample_keys

    views = BatchedViews(Augmentations(crop_size=32, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)))
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    rows = torch.arange(2 * batch, device=device) % batch
    step = iter(range(10**9))
    seconds = timed(lambda: views(images, rows, sample_keys(rows, 0, next(step))), 5, 50)
    report(name="augment", batch=batch, ms_per_view=1000 * seconds / 2, images_per_second=2 * batch / seconds)


def model_args(weak: bool, quick: bool) -> dict:
    """The model of configs/cifar10/wcl.yaml (read from the file), eager; ``quick`` shrinks it."""
    import yaml

    args = yaml.safe_load((REPO / "configs" / "cifar10" / "model.yaml").read_text())["init_args"]
    args.update(compile_backbone=False, knn_every_n_epochs=0, num_classes=10, weak_weight=1.0 if weak else 0.0)
    if quick:
        args.update(width=8, proj_hidden_dim=64, weak_hidden_dim=64)
    return args


def bench_ceiling(report: Report, device: str, batch: int, quick: bool, compiled: bool, weak: bool,
                  steps: int) -> float:
    """Seconds per epoch of the bare WCL step (the math of ``WCL.training_step``) on device-resident tensors."""
    import torch.nn.functional as F

    from wcl import WCL
    from wcl.optim import build_optimizer, param_groups, scaled_lr

    torch.manual_seed(0)
    model = WCL(**model_args(weak, quick)).to(device)
    if compiled:
        model.backbone.compile(dynamic=False)
    hp = model.hparams
    heads = {"g": model.g} if model.phi is None else {"g": model.g, "phi": model.phi}
    groups = param_groups({"backbone": model.backbone, **heads}, hp.weight_decay)
    groups.append({"params": list(model.classifier.parameters()), "weight_decay": 0.0, "lars_exclude": True})
    opt = build_optimizer(hp.optimizer, groups, scaled_lr(hp.base_lr, batch, hp.lr_scaling), hp.momentum,
                          hp.weight_decay, hp.lars_eta, hp.lars_clip)
    x1, x2 = (torch.randn(batch, 3, 32, 32, device=device) for _ in range(2))
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            h1, h2 = model(x1), model(x2)
            loss = model.nce_loss(model.g(h1), model.g(h2))
            if model.phi is not None:
                loss = loss + model.weak_loss(model.phi(h1), model.phi(h2))[0]
            loss = loss + F.cross_entropy(model.classifier(h1.detach()), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()  # compiles, when compiled
    sync()
    first = time.perf_counter() - start
    seconds = timed(step, 5, 10 if quick else 40)
    row = report(name="ceiling", mode="wcl" if weak else "simclr", compiled=compiled, step_ms=1000 * seconds,
                 epoch_seconds=seconds * steps, images_per_second=2 * batch / seconds,
                 first_step_seconds=first)
    return float(row["epoch_seconds"])


def replicated_bundled(copies: int) -> Path:
    """An ImageFolder tree whose train/ links every bundled training JPEG ``copies`` times; val/ links val/."""
    from wcl.data.datasets import BUNDLED_ROOT

    root = Path(tempfile.mkdtemp(prefix="wcl_bundled_x10_"))
    for split, n in (("train", copies), ("val", 1)):
        for cls in sorted((BUNDLED_ROOT / split).iterdir()):
            out = root / split / cls.name
            out.mkdir(parents=True)
            for img in sorted(cls.iterdir()):
                for c in range(n):
                    (out / f"{c}_{img.name}").symlink_to(img.resolve())
    return root


def fit(report: Report, name: str, args: list[str], timeout: float, ceiling: float | None, **meta: object) -> None:
    """Runs ``python -m wcl fit`` and reports every epoch after the first as it ends."""
    cmd = [sys.executable, "-m", "wcl", "fit", *args, "--trainer.enable_progress_bar", "false",
           "--trainer.callbacks+=benchmarks.gpu.EpochClock"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    start, lines = time.perf_counter(), []
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("wcl-epoch "):
                e = json.loads(line.split(" ", 1)[1])
                row = {"name": name, **meta, "epoch": e["epoch"], "epoch_seconds": e["seconds"],
                       "images_per_second": e["images"] / e["seconds"]}
                if ceiling is not None:
                    row["ceiling_over_epoch"] = ceiling / e["seconds"]
                report(**row, first_epoch=e["epoch"] == 0)
            elif line.startswith("epoch ") and " done in " in line and "val/knn_top1 " in line:
                knn = line.split("val/knn_top1 ")[1].split(",")[0]  # "(from epoch e)": not measured this epoch
                if "(from epoch" not in knn:
                    report(name=name, **meta, epoch=int(line.split()[1].split("/")[0]), knn_top1=float(knn.split()[0]))
            elif line.startswith("wcl: final val/knn_top1"):
                report(name=name, **meta, knn_top1=float(line.split("=")[1]),
                       wall_seconds=time.perf_counter() - start)
            if time.perf_counter() - start > timeout:
                proc.kill()
                report(name=name, **meta, error=f"stopped after {timeout:.0f} s")
                return
    finally:
        proc.wait()
    if proc.returncode != 0:
        report(name=name, **meta, error="".join(lines[-15:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/gpu_bench"))
    p.add_argument("--root", help="CIFAR-10 ImageFolder tree (train/, test/); default: bundled JPEGs x 10")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed fit (the first compiles)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--skip", nargs="*", default=[], choices=["augment", "ceiling", "device", "simclr", "cpu_path"])
    p.add_argument("--quality-epochs", type=int, default=0, help="also runs of N epochs with the online kNN")
    p.add_argument("--quality-modes", nargs="*", default=["wcl", "simclr"], choices=["wcl", "simclr"])
    p.add_argument("--quality-knn-every", type=int, default=10, help="online kNN every n epochs of a quality run")
    p.add_argument("--timeout", type=float, default=150, help="seconds per timed fit")
    p.add_argument("--quick", action="store_true", help="smoke run on any machine")
    args = p.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "wcl_inductor"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = Report(args.out)
    import lightning

    batch = 64 if args.quick else args.batch_size
    report(name="card", device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
           lightning=lightning.__version__, batch=batch, quick=args.quick)
    if "augment" not in args.skip:
        bench_augment(report, device, batch)
    ceilings: dict[tuple[bool, bool], float] = {}
    compiled = device == "cuda"  # what `compile_backbone: auto` does in the fits below
    steps = (2560 if args.quick else 50_000) // batch
    if "ceiling" not in args.skip:
        for weak in (True, False):
            for comp in sorted({False, compiled}):
                ceilings[weak, comp] = bench_ceiling(report, device, batch, args.quick, comp, weak, steps)
    tree = None
    if args.root:
        data = ["--data.root", args.root]
    else:
        tree = replicated_bundled(1 if args.quick else 10)
        data = ["--data.dataset", "imagefolder", "--data.root", str(tree)]
    base = ["--config", "configs/cifar10/wcl.yaml", *data, "--data.batch_size", str(batch),
            "--data.num_workers", str(args.workers), "--trainer.devices", "1", "--trainer.enable_checkpointing",
            "false", "--trainer.default_root_dir", str(args.out / "fit"), "--model.warmup_epochs", "0"]
    if args.quick:
        base += ["--model.width", "8", "--model.proj_hidden_dim", "64", "--model.weak_hidden_dim", "64",
                 "--data.train_per_class", "256", "--trainer.precision", "32"]
    timed_fit = [*base, "--trainer.max_epochs", str(args.epochs), "--trainer.limit_val_batches", "0",
                 "--model.knn_every_n_epochs", "0"]
    runs = []
    if "device" not in args.skip:
        runs.append(("device_path", "wcl", ["--data.augment_on", "device", "--data.in_memory", "device"]))
    if "simclr" not in args.skip:
        runs.append(("device_path", "simclr", ["--data.augment_on", "device", "--data.in_memory", "device",
                                               "--config", "configs/simclr.yaml"]))
    if "cpu_path" not in args.skip:
        runs.append(("cpu_path", "wcl", ["--data.augment_on", "cpu", "--data.in_memory", "false"]))
    for name, mode, extra in runs:
        fit(report, name, [*timed_fit, *extra], args.timeout, ceilings.get((mode == "wcl", compiled)), mode=mode)
    for mode in args.quality_modes if args.quality_epochs else []:
        n, every = str(args.quality_epochs), str(min(args.quality_knn_every, args.quality_epochs))
        overlay = ["--config", "configs/simclr.yaml"] if mode == "simclr" else []
        fit(report, "quality", [*base, *overlay, "--trainer.max_epochs", n, "--model.knn_every_n_epochs", every,
                                "--model.warmup_epochs", "10", "--trainer.default_root_dir",
                                str(args.out / f"quality_{mode}")], 10**6, ceilings.get((mode == "wcl", compiled)),
            mode=mode, epochs=args.quality_epochs)
    if tree is not None:
        import shutil

        shutil.rmtree(tree)
    print(f"wcl-bench done: {len(report.rows)} rows in {report.path}", flush=True)


if __name__ == "__main__":
    main()
