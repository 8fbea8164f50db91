"""Using the encoder: ``python -m wcl predict`` images/s, ``python -m wcl.explore`` seconds and peak memory, and
weak-label clusters against k-means.

    python benchmarks/explore.py --quick                                   # seconds: checks the script
    python benchmarks/explore.py --checkpoint runs/cpu_proxy/wcl_e10_s0/checkpoints/last.ckpt  # BENCHMARKS.md

Measures, each command in its own process (peak memory = its maximum resident set):

1. predict on the bundled data (6,000 images, both splits) with ``--checkpoint`` (default: a randomly initialised
   quickstart network; throughput does not depend on the weights), and the cosines behind explore's default
   near-duplicate threshold: each val image against a re-encoded, resized, shifted copy of itself, and against its
   nearest other image (pass a quickstart checkpoint for that);
2. explore at N = 50,000 (CIFAR-10 train embeddings of ``--checkpoint``, from ``--cifar10``) and on synthetic
   1,000,000 × 128 float16 embeddings (a mixture of 10,000 Gaussians on the sphere, no labels);
3. on CIFAR-10 test embeddings of ``--checkpoint``: number of weak-label clusters, purity and NMI, and those of
   faiss k-means with the same number of clusters.

``--quick`` shrinks everything (bundled data, a width-4 network, 2,000 synthetic rows).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from quality import log_files  # benchmarks/ is the script's folder, so on sys.path

from wcl.explore import DUP_THRESHOLD

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
_PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def measured(cmd: list[str]) -> tuple[str, float, float]:
    """(stdout, seconds, peak resident MB) of a command run in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, *cmd], cwd=ROOT, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_KB"))
    return proc.stdout, seconds, peak / 1024


def random_checkpoint(path: Path, width: int) -> Path:
    from wcl import WCL

    torch.manual_seed(0)
    model = WCL(backbone="resnet18", width=width, cifar_stem=True, proj_hidden_dim=512, weak_hidden_dim=512,
                num_classes=10)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def predict(config: str, ckpt: Path, out: Path, *data: str) -> tuple[str, float, float]:
    return measured(["-m", "wcl", "predict", "--config", config, "--model.checkpoint", str(ckpt),
                     "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false", *data])


def training_normalize(ckpt: Path, data_config: str | None) -> dict[str, list[float]]:
    """``augment.mean`` / ``std`` the checkpoint was trained with: from ``data_config`` if given, else from the
    ``config.yaml`` its fit saved (``<run>/lightning_logs/version_*/config.yaml``); {} for the data defaults."""
    import yaml

    if data_config is not None:
        augment = yaml.safe_load((ROOT / data_config).read_text())["init_args"].get("augment", {})
    else:
        saved = log_files(ckpt.resolve().parent.parent, "config.yaml")
        if not saved:
            return {}
        augment = (yaml.safe_load(saved[-1].read_text())["data"].get("init_args", {}).get("augment") or {})
    return {k: augment[k] for k in ("mean", "std") if k in augment}


def normalize_args(norm: dict[str, list[float]]) -> list[str]:
    return [a for k, v in norm.items() for a in (f"--data.augment.{k}", json.dumps(v))]


def synthetic(folder: Path, n: int, dim: int = 128, centres: int = 10_000) -> Path:
    """n rows around ``centres`` random unit vectors (float16, normalized), with an index.csv without paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float16)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        rows = c[rng.integers(0, centres, m)] + 0.05 * rng.normal(size=(m, dim)).astype(np.float32)
        x[s:s + m] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.save(folder / "embeddings.npy", x)
    with open(folder / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "label"])
        w.writerows([i, "", ""] for i in range(n))
    return folder


def explore(folder: Path, *extra: str) -> dict:
    _, seconds, peak = measured(["-m", "wcl.explore", str(folder), *extra])
    summary = json.loads((folder / "explore.json").read_text())
    return {"rows": summary["rows"], "wall_s": round(seconds, 1), "explore_s": summary["seconds"],
            "peak_mb": round(peak), **{k: summary[k] for k in ("clusters", "search", "purity", "nmi",
                                                               "kmeans_purity", "kmeans_nmi") if k in summary}}


@torch.no_grad()
def duplicate_threshold(ckpt: Path, per_class: int | None, norm: dict[str, list[float]]) -> dict:
    """Cosines on the bundled data: each val image against a near-duplicate copy of itself (JPEG quality 60 after
    a 36-px resize and a 1-px shifted 32-px crop) and against its nearest *other* image among train + val."""
    import io

    from PIL import Image

    from wcl.data.augment import Augmentations, eval_transform
    from wcl.data.datasets import build_splits
    from wcl.data.subsets import first_per_class
    from wcl.eval.checkpoint import load_backbone

    backbone, _ = load_backbone(ckpt)
    backbone.eval()
    tf = eval_transform(Augmentations(**norm))
    splits = build_splits("bundled")
    val, train = splits.val, splits.bank
    if per_class:
        val, train = first_per_class(val, per_class), first_per_class(train, per_class)

    def copy(img: Image.Image) -> Image.Image:
        big = img.resize((36, 36), Image.BICUBIC).crop((3, 3, 35, 35))
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=60)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    def embed(images: list) -> torch.Tensor:
        out = [backbone(torch.stack([tf(i) for i in images[s:s + 500]])) for s in range(0, len(images), 500)]
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    v_img = [val[i][0] for i in range(len(val))]
    v, c = embed(v_img), embed([copy(i) for i in v_img])
    t = embed([train[i][0] for i in range(len(train))])
    same = (v * c).sum(1)
    everyone = torch.cat([v, t])
    sim = v @ everyone.T
    sim[torch.arange(len(v)), torch.arange(len(v))] = -2  # not itself
    nearest_other = sim.max(1).values
    q = lambda x, p: round(float(torch.quantile(x, p)), 4)  # noqa: E731
    return {"images": len(v), "copy_cosine_p1": q(same, 0.01), "copy_cosine_p5": q(same, 0.05),
            "copy_cosine_median": q(same, 0.5), "nearest_other_p50": q(nearest_other, 0.5),
            "nearest_other_p99": q(nearest_other, 0.99), "nearest_other_p999": q(nearest_other, 0.999),
            "nearest_other_max": round(float(nearest_other.max()), 4),
            "default": DUP_THRESHOLD,
            # threshold -> (share of the copies found, share of val images paired with another image)
            "found_and_false": {t: (round(float((same >= t).float().mean()), 4),
                                    round(float((nearest_other >= t).float().mean()), 4))
                                for t in sorted({0.9, 0.95, 0.97, 0.98, 0.99, DUP_THRESHOLD})}}


def rate(stdout: str, split: str) -> float:
    line = next(line for line in stdout.splitlines() if line.startswith(f"wcl: {split}:"))
    return float(line.split(": ")[2].split()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--checkpoint", help="a wcl checkpoint (default: random quickstart weights; steps 2-3 need one)")
    p.add_argument("--cifar10", default=str(CIFAR10), help="CIFAR-10 as an ImageFolder tree")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--data-config", default=None,
                   help="the data config --checkpoint was trained with: its augment.mean/std normalise every predict "
                        "(default: those of the config.yaml its fit saved)")
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="wcl_explore_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"quick": args.quick}
    ckpt = Path(args.checkpoint) if args.checkpoint else random_checkpoint(work / "random.ckpt",
                                                                           4 if args.quick else 16)
    small = ["--data.train_per_class", "20", "--data.val_per_class", "10"] if args.quick else []
    norm = training_normalize(ckpt, args.data_config) if args.checkpoint else {}
    results["normalize"] = norm or "the data module's defaults"

    stdout, seconds, peak = predict("configs/embed/quickstart.yaml", ckpt, work / "bundled", *small,
                                    *normalize_args(norm))
    results["predict_bundled"] = {"train_images_per_s": rate(stdout, "train"), "val_images_per_s": rate(stdout, "val"),
                                  "wall_s": round(seconds, 1), "peak_mb": round(peak)}
    print("predict, bundled:", results["predict_bundled"], flush=True)
    results["duplicate_threshold"] = duplicate_threshold(ckpt, 10 if args.quick else None, norm)
    print("near-duplicate cosines, bundled:", results["duplicate_threshold"], flush=True)

    if args.quick:
        results["explore_bundled_val"] = explore(work / "bundled" / "embeddings" / "val")
        results["explore_synthetic"] = explore(synthetic(work / "synthetic", 2000, centres=100), "--no-pictures")
    else:
        if not Path(args.cifar10, "train").is_dir():
            sys.exit(f"CIFAR-10 ImageFolder not found at {args.cifar10}")
        if not args.checkpoint:
            sys.exit("the CIFAR-10 steps need --checkpoint (e.g. a CPU-proxy run's last.ckpt)")
        # every training image (50,000), the protocol's transform; the training loader's in-memory copy is not used
        stdout, seconds, peak = predict("configs/embed/cpu_proxy.yaml", ckpt, work / "cifar10", "--data.root",
                                        args.cifar10, "--data.train_per_class", "null", "--data.in_memory", "false",
                                        "--data.eval_batch_size", "1000", *normalize_args(norm))
        results["predict_cifar10"] = {"train_images_per_s": rate(stdout, "train"), "wall_s": round(seconds, 1),
                                      "peak_mb": round(peak)}
        print("predict, CIFAR-10:", results["predict_cifar10"], flush=True)
        results["explore_cifar10_train"] = explore(work / "cifar10" / "embeddings" / "train")
        print("explore, CIFAR-10 train:", results["explore_cifar10_train"], flush=True)
        results["explore_cifar10_test"] = explore(work / "cifar10" / "embeddings" / "test")
        print("explore, CIFAR-10 test:", results["explore_cifar10_test"], flush=True)
        results["explore_synthetic"] = explore(synthetic(work / "synthetic", 1_000_000))
    print("explore, synthetic:", results["explore_synthetic"], flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(f"(files in {work})")


if __name__ == "__main__":
    main()
