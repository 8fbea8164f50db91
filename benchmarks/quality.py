"""CPU-proxy v1 quality benchmark: kNN and linear-probe top-1 of each method after pretraining.

    python benchmarks/quality.py --epochs 30 --seeds 0 1            # SimCLR, WCL, WCL + multi-crop, lightly
    python benchmarks/quality.py --epochs 10 --seeds 0 1 2 --methods simclr wcl
    python benchmarks/quality.py --quick --json                      # smoke run (1 epoch on 64 images/class)
    python benchmarks/quality.py --epochs 10 --seeds 0 --methods wcl wcl_vit_tiny  # ViT-Tiny/4 beside ResNet-18

Protocol (configs/cpu_proxy): the first 1,000 images of each CIFAR-10 class (sorted file names) for pretraining,
the full test split for evaluation; ResNet-18 width 16 (CIFAR stem), batch 256, the same augmentations for every
method (``wcl_vit_tiny``: a timm ViT-Tiny at 32 px, patch 4, AdamW; configs/cpu_proxy/vit_tiny.yaml). Each run
is its own process (``python -m wcl fit …`` or ``benchmarks/lightly_simclr.py``), then the checkpoint is evaluated
here with the same code for every method:

* kNN top-1: weighted kNN (k = 200, T = 0.1, cosine) of backbone features of the test images against the
  training subset (eval transform) — ``wcl.KNNEval``;
* linear top-1: ``wcl.LinearProbe`` in cached mode (features extracted once, SGD + cosine, 50 epochs), top-1 on
  the test split after the last epoch.

A finished run leaves ``<out>/<method>_e<epochs>_s<seed>/result.json`` and is not run again, so the grid can
be split over several invocations (``--threads 1`` in two shells uses the 2 cores better than one run with 2
threads); a run interrupted before its result.json (a killed process, a machine shut down) continues from its
``last.ckpt`` when the command is run again; ``--report`` re-prints the table of the finished runs without starting
the missing ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wcl, in the driver as in its `python -m wcl` subprocesses (cwd=REPO)
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"  # this project's copy; --root for another
METHODS = {
    "simclr": ["--config", "configs/cpu_proxy/wcl.yaml", "--config", "configs/simclr.yaml"],
    "wcl": ["--config", "configs/cpu_proxy/wcl.yaml"],
    "wcl_multicrop": ["--config", "configs/cpu_proxy/wcl.yaml", "--config", "configs/multicrop.yaml"],
    "wcl_selfcrops": ["--config", "configs/cpu_proxy/wcl.yaml", "--config", "configs/selfcrops.yaml"],
    "wcl_vit_tiny": ["--config", "configs/cpu_proxy/wcl.yaml", "--config", "configs/cpu_proxy/vit_tiny.yaml"],
    "lightly_simclr": None,  # benchmarks/lightly_simclr.py
}
DATA_CONFIG = REPO / "configs" / "cpu_proxy" / "data.yaml"
ROOT = str(CIFAR10)


def use_root(root: str) -> None:
    """Reads CIFAR-10 from ``root`` (an ImageFolder tree with train/ and test/) from now on; a root without test/
    stops the benchmark with one line."""
    global ROOT
    ROOT = str(Path(root).resolve())
    if not (Path(ROOT) / "test").is_dir():
        raise SystemExit(f"CIFAR-10 not found under {root} (ImageFolder train/ and test/).")


def data_args(quick: bool) -> dict:
    """init_args of the protocol's data module (the same file the training configs use), at ``ROOT``."""
    args = {**yaml.safe_load(DATA_CONFIG.read_text())["init_args"], "root": ROOT}
    if quick:
        args.update(train_per_class=64, val_per_class=50)
    return args


def train(method: str, epochs: int, seed: int, run_dir: Path, quick: bool, threads: int,
          extra: list[str], resume: bool = True) -> tuple[float, bool]:
    """Pretrain one model in a subprocess: its wall time in seconds, and whether it continued an interrupted run
    (a wcl run whose ``last.ckpt`` is there resumes with ``--ckpt_path last``; the time is then this part's only)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run_dir = run_dir.resolve()  # the subprocess runs in REPO, the caller maybe elsewhere
    resumed = resume and method != "lightly_simclr" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    if method == "lightly_simclr":
        cmd = [sys.executable, "benchmarks/lightly_simclr.py", "--epochs", str(epochs), "--seed", str(seed),
               "--out", str(run_dir)] + (["--per-class", "64"] if quick else [])
    else:
        cmd = [sys.executable, "-m", "wcl", "fit", *METHODS[method], "--seed_everything", str(seed),
               "--data.seed", str(seed), "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar",
               "false", "--trainer.default_root_dir", str(run_dir), "--data.root", ROOT, *extra,
               *(["--ckpt_path", "last"] if resumed else ["--overwrite", "true"])]
        if quick:
            cmd += ["--data.train_per_class", "64", "--data.val_per_class", "50"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return time.perf_counter() - start, resumed


def evaluate(ckpt: Path, quick: bool, probe_epochs: int) -> dict[str, float]:
    """kNN and cached linear-probe top-1 of a checkpoint's backbone on the protocol's test split."""
    from lightning.pytorch import Trainer, seed_everything

    from wcl import KNNEval, LabelledDataModule, LinearProbe, WCLDataModule
    from wcl.data import Augmentations

    args = data_args(quick)
    aug = Augmentations(**args.pop("augment"))
    common = {k: args[k] for k in ("dataset", "root", "train_per_class", "eval_batch_size", "num_workers")}
    common["val_per_class"] = args.get("val_per_class")
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "auto",
             "devices": 1}

    knn_dm = WCLDataModule(**common, augment=aug)
    knn = Trainer(**quiet).validate(KNNEval(str(ckpt), num_classes=10, k=200, temperature=0.1), knn_dm,
                                    verbose=False)
    probe_dm = LabelledDataModule(**common, batch_size=256, augment=aug, train_augment="none")
    seed_everything(0, verbose=False)  # the probe's initialisation and shuffling: re-evaluation gives the same top-1
    probe = LinearProbe(str(ckpt), num_classes=10, mode="cached", lr=0.1, momentum=0.9, weight_decay=0.0)
    trainer = Trainer(**quiet, max_epochs=probe_epochs, check_val_every_n_epoch=probe_epochs,
                      enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(probe, probe_dm)
    return {"knn_top1": float(knn[0]["val/knn_top1"]), "linear_top1": float(trainer.callback_metrics["val/top1"])}


def log_files(run_dir: Path, name: str) -> list[Path]:
    """``<run_dir>/lightning_logs/version_N/<name>`` of every fit of a run folder (a resume adds a version), oldest
    first."""
    return sorted(run_dir.glob(f"lightning_logs/version_*/{name}"), key=lambda f: int(f.parent.name[len("version_"):]))


def training_log(run_dir: Path) -> dict:
    """Per-epoch online kNN and weak-label purity of a wcl run (from its CSV logs), and its last images/s.

    A resumed run logs into a new ``version_N``: the versions are read in order, a later one's epochs replacing
    an earlier one's."""
    files = log_files(run_dir, "metrics.csv")
    if not files:
        return {}
    purity: dict[int, list[float]] = {}
    knn: dict[int, float] = {}
    ips = None
    for file in files:
        this_purity: dict[int, list[float]] = {}
        with file.open() as f:
            for row in csv.DictReader(f):
                epoch = int(row["epoch"]) + 1 if row.get("epoch") else None
                if row.get("weak_labels/purity"):
                    this_purity.setdefault(epoch, []).append(float(row["weak_labels/purity"]))
                if row.get("val/knn_top1"):
                    knn[epoch] = float(row["val/knn_top1"])
                if row.get("train/images_per_second"):
                    ips = float(row["train/images_per_second"])
        purity.update(this_purity)
    return {"purity_by_epoch": {e: statistics.fmean(v) for e, v in sorted(purity.items())},
            "online_knn_by_epoch": knn, "images_per_second": ips}


def run_one(method: str, epochs: int, seed: int, args: argparse.Namespace) -> dict | None:
    """Train and evaluate one run, or read its result.json; ``None`` for a missing run under ``--report``."""
    run_dir = args.out / f"{method}_e{epochs}_s{seed}{'_quick' if args.quick else ''}"
    result_file = run_dir / "result.json"
    if result_file.is_file() and (args.report or not args.rerun):
        return json.loads(result_file.read_text())
    if args.report:
        return None
    extra = [] if method == "lightly_simclr" else args.extra  # --extra is for `python -m wcl fit` only
    wall, resumed = train(method, epochs, seed, run_dir, args.quick, args.threads, extra, resume=not args.rerun)
    result = {"method": method, "epochs": epochs, "seed": seed, "extra": extra, "train_wall_s": round(wall, 1),
              "resumed": resumed,
              **evaluate(run_dir / "checkpoints" / "last.ckpt", args.quick, args.probe_epochs),
              **training_log(run_dir)}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def summary(results: list[dict]) -> list[dict]:
    """Mean and spread (max − min) over seeds per (method, epochs)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["epochs"]), []).append(r)
    rows = []
    for (method, epochs), rs in groups.items():
        row = {"method": method, "epochs": epochs, "seeds": [r["seed"] for r in rs]}
        for key in ("knn_top1", "linear_top1"):
            vals = [r[key] for r in rs]
            row[key] = {"mean": statistics.fmean(vals), "spread": max(vals) - min(vals), "values": vals}
        ips = [r["images_per_second"] for r in rs if r.get("images_per_second")]
        row["images_per_second"] = statistics.fmean(ips) if ips else None
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    def fmt(s: dict) -> str:
        vals = " / ".join(f"{100 * v:.1f}" for v in s["values"])
        return f"{100 * s['mean']:.1f} ± {50 * s['spread']:.1f} ({vals})"

    print("| method | epochs | seeds | kNN top-1 % | linear top-1 % | train images/s |")
    print("|---|---:|---|---|---|---:|")
    for r in rows:
        seeds = ",".join(map(str, r["seeds"]))
        ips = "–" if r.get("images_per_second") is None else f"{r['images_per_second']:.0f}"
        print(f"| {r['method']} | {r['epochs']} | {seeds} | {fmt(r['knn_top1'])} | {fmt(r['linear_top1'])} | {ips} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    p.add_argument("--epochs", type=int, nargs="+", default=[30])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--probe-epochs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each training run and of evaluation")
    p.add_argument("--out", type=Path, default=Path("runs/cpu_proxy"))
    p.add_argument("--root", default=str(CIFAR10), help="CIFAR-10 ImageFolder tree (train/, test/)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 64 images/class, 50 test/class")
    p.add_argument("--rerun", action="store_true",
                   help="ignore finished runs' result.json and train them again from the start")
    p.add_argument("--report", action="store_true", help="print the finished runs only; train nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further `python -m wcl fit` arguments for the wcl methods (ablations)")
    args = p.parse_args()
    use_root(args.root)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.seeds, args.probe_epochs = [1], args.seeds[:1], 2
    runs = [run_one(m, e, s, args) for e in args.epochs for s in args.seeds for m in args.methods]
    results = [r for r in runs if r is not None]
    rows = summary(results)
    if args.json:
        print(json.dumps({"protocol": "cpu-proxy-v1", "quick": args.quick, "summary": rows, "runs": results}))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
