"""CPU-proxy v1 few-label benchmark: SimCLR, WCL and WCL with the known labels in its graph (merging components, or
as positives without merging), each evaluated with the same labelled subset (10 % and 1 % of the labels) by kNN, a
linear probe, fine-tuning and label propagation.

    python benchmarks/fewlabel.py                                   # 30 epochs, seed 0, 10 % and 1 %, all methods
    python benchmarks/fewlabel.py --seeds 1 --fractions 0.1         # a second seed where the first differs < 1 pt
    python benchmarks/fewlabel.py --quick                           # smoke run (1 epoch on 64 images/class)
    python benchmarks/fewlabel.py --report --seeds 0 1              # the finished runs only, with per-seed means

Protocol: configs/cpu_proxy (the first 1,000 images of each CIFAR-10 class, ResNet-18 width 16, batch 256, 30
epochs; the full test split for evaluation). The labelled subset is ``data.label_fraction`` drawn with the run's
seed from those 10,000 images — the same images in pretraining (``wcl_label_graph`` / ``wcl_label_pairs``: the
other images have label -1 there, ``configs/fewlabel/label_graph.yaml`` / ``label_pairs.yaml``) and in every
evaluation (checked against the pretraining run's ``labelled_subset.txt``):

* kNN top-1: ``wcl.KNNEval`` (k = 200, T = 0.1) with the labelled subset as the bank;
* linear top-1: ``wcl.LinearProbe`` (cached features, 50 epochs) trained on the subset;
* fine-tune top-1: ``wcl.FineTune`` (configs/fewlabel/finetune_cpu_proxy.yaml: SGD, backbone lr 0.01, classifier
  lr 0.1, crop + flip, 30 epochs) on the subset;
* propagation top-1: ``wcl.PropagationEval`` (configs/fewlabel/propagate_cpu_proxy.yaml): the subset's labels
  spread over the 50-NN graph of all 10,000 images, each test image classified by the vote of its 200 nearest
  training images' propagated labels.

SimCLR and WCL pretrain without labels, so one pretraining per seed serves every fraction; WCL with the labels
pretrains once per fraction. Every finished piece leaves a file (``<out>/<run>/pretrain.json``,
``<out>/results/<method>_f<fraction>_e<epochs>_s<seed>.json``) and is not run again (a result file without one of
the scores gets that score added); an interrupted pretraining
continues from its ``last.ckpt`` (its ``train_wall_s`` then counts the resumed part only, ``resumed: true``).
What an evaluation's trainers write (the probes' ``labelled_subset.txt``) goes to ``<out>/eval/<row>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the CPU-proxy protocol's data arguments and pretraining subprocess)

REPO = quality.REPO
FINETUNE = REPO / "configs" / "fewlabel" / "finetune_cpu_proxy.yaml"
PROPAGATE = REPO / "configs" / "fewlabel" / "propagate_cpu_proxy.yaml"
METHODS = {  # method → (quality.py method, extra `python -m wcl fit` arguments, {fraction} filled in)
    "simclr": ("simclr", []),
    "wcl": ("wcl", []),
    "wcl_label_graph": ("wcl", ["--config", "configs/fewlabel/label_graph.yaml",
                                "--data.label_fraction", "{fraction}"]),
    "wcl_label_pairs": ("wcl", ["--config", "configs/fewlabel/label_pairs.yaml",
                                "--data.label_fraction", "{fraction}"]),
}


def pretrain(method: str, fraction: float, epochs: int, seed: int, args: argparse.Namespace) -> Path:
    """The run's checkpoint, pretraining it first unless a finished one is there."""
    base, extra = METHODS[method]
    uses_labels = bool(extra)
    name = f"{method}{f'_f{fraction:g}' if uses_labels else ''}_e{epochs}_s{seed}{'_quick' if args.quick else ''}"
    run_dir = args.out / name
    done = run_dir / "pretrain.json"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if done.is_file() and ckpt.is_file():
        return ckpt
    if args.report:
        raise FileNotFoundError(name)
    extra = [a.format(fraction=fraction) for a in extra]  # quality.train passes --data.seed: the subset's seed
    wall, resumed = quality.train(base, epochs, seed, run_dir, args.quick, args.threads, extra)
    done.write_text(json.dumps({"method": method, "fraction": fraction if uses_labels else None, "epochs": epochs,
                                "seed": seed, "train_wall_s": round(wall, 1), "resumed": resumed, "extra": extra},
                               indent=1))
    return ckpt


def eval_data(quick: bool) -> dict:
    """The evaluations' data-module arguments: the protocol's dataset, root, sizes, workers and augmentations."""
    from wcl.data import Augmentations

    data = quality.data_args(quick)
    keys = ("dataset", "root", "train_per_class", "val_per_class", "eval_batch_size", "num_workers")
    return {**{k: data.get(k) for k in keys}, "augment": Augmentations(**data["augment"])}


def quiet(root: Path) -> dict:
    """Trainer options of the evaluations: no logger, progress bar, summary or checkpoint; files under ``root``."""
    return {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "auto",
            "devices": 1, "enable_checkpointing": False, "num_sanity_val_steps": 0, "default_root_dir": str(root)}


def finetune_batch_size() -> int:
    return yaml.safe_load(FINETUNE.read_text())["data"]["init_args"]["batch_size"]


def finetune(ckpt: Path, dm, seed: int, epochs: int, root: Path):
    """The shipped fine-tune recipe (:data:`FINETUNE`) from ``ckpt`` on ``dm``'s training images, seeded with
    ``seed``: (the fine-tuned model, its val top-1 after the last epoch)."""
    from lightning.pytorch import Trainer, seed_everything

    from wcl import FineTune

    seed_everything(seed, verbose=False)
    hp = {k: v for k, v in yaml.safe_load(FINETUNE.read_text())["model"]["init_args"].items() if k != "checkpoint"}
    model = FineTune(str(ckpt), num_classes=dm.num_classes, **hp)
    trainer = Trainer(**quiet(root), max_epochs=epochs, check_val_every_n_epoch=epochs)
    trainer.fit(model, dm)
    return model, float(trainer.callback_metrics["val/top1"])


def evaluate(ckpt: Path, fraction: float, seed: int, args: argparse.Namespace, root: Path,
             scores: tuple[str, ...]) -> dict[str, float]:
    """The ``scores`` of a checkpoint (kNN with the labelled bank, linear probe, fine-tuning, label propagation),
    all on the labelled subset of ``fraction``, ``seed``; what the evaluation's trainers write (the probes'
    ``labelled_subset.txt``) goes under ``root``."""
    from lightning.pytorch import Trainer, seed_everything

    from wcl import KNNEval, LabelledDataModule, LinearProbe, PropagationEval, WCLDataModule

    data = {**eval_data(args.quick), "label_fraction": fraction, "seed": seed}
    options = quiet(root)
    out: dict[str, float] = {}

    knn_dm = WCLDataModule(**data)
    subset_file = ckpt.parent / "labelled_subset.txt"
    if subset_file.is_file() and subset_file.read_text().split() != knn_dm.labelled_names():
        raise SystemExit(f"{subset_file} differs from the evaluation's labelled subset: the protocol is broken")
    out["labelled_images"] = len(knn_dm.labelled_names())
    if "knn_top1" in scores:
        knn = Trainer(**options).validate(KNNEval(str(ckpt), num_classes=10, k=200, temperature=0.1), knn_dm,
                                          verbose=False)
        out["knn_top1"] = float(knn[0]["val/knn_top1"])

    if "linear_top1" in scores:
        seed_everything(seed, verbose=False)
        probe_dm = LabelledDataModule(**data, batch_size=256, train_augment="none")
        probe = LinearProbe(str(ckpt), num_classes=10, mode="cached", lr=0.1, momentum=0.9, weight_decay=0.0)
        trainer = Trainer(**options, max_epochs=args.probe_epochs, check_val_every_n_epoch=args.probe_epochs)
        trainer.fit(probe, probe_dm)
        out["linear_top1"] = float(trainer.callback_metrics["val/top1"])

    if "finetune_top1" in scores:
        ft_dm = LabelledDataModule(**data, batch_size=finetune_batch_size(), train_augment="crop_flip")
        out["finetune_top1"] = finetune(ckpt, ft_dm, seed, args.finetune_epochs, root)[1]

    if "propagation_top1" in scores:
        prop = yaml.safe_load(PROPAGATE.read_text())["model"]["init_args"]
        prop_dm = WCLDataModule(**data, bank="masked")
        model = PropagationEval(str(ckpt), num_classes=10, **{k: v for k, v in prop.items() if k != "checkpoint"})
        result = Trainer(**options).validate(model, prop_dm, verbose=False)
        out["propagation_top1"] = float(result[0]["val/propagation_top1"])
    return out


def run_one(method: str, fraction: float, epochs: int, seed: int, args: argparse.Namespace) -> dict | None:
    """One (method, fraction, seed) row: read its result file, or pretrain (if needed) and evaluate; a result file
    without a score of :data:`SCORES` gets that score added (the others are not recomputed)."""
    results = args.out / "results"
    name = f"{method}_f{fraction:g}_e{epochs}_s{seed}{'_quick' if args.quick else ''}"
    result_file = results / f"{name}.json"
    old = json.loads(result_file.read_text()) if result_file.is_file() and not args.rerun else {}
    missing = tuple(k for k in SCORES if k not in old)
    if args.report or (old and not missing):
        return old or None
    try:
        ckpt = pretrain(method, fraction, epochs, seed, args)
    except FileNotFoundError:
        return None
    start = time.perf_counter()
    scores = evaluate(ckpt, fraction, seed, args, args.out / "eval" / name, missing)
    result = {"method": method, "fraction": fraction, "epochs": epochs, "seed": seed, **old, **scores,
              "eval_wall_s": round(time.perf_counter() - start, 1) + old.get("eval_wall_s", 0.0),
              "pretrain": json.loads((ckpt.parents[1] / "pretrain.json").read_text())}
    results.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    return result


SCORES = ("knn_top1", "linear_top1", "finetune_top1", "propagation_top1")  # the table's columns, in order


def print_table(results: list[dict]) -> None:
    print("| method | labels | seed | kNN top-1 % (labelled bank) | linear top-1 % | fine-tune top-1 % "
          "| propagation top-1 % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(results, key=lambda r: (-r["fraction"], r["seed"], list(METHODS).index(r["method"]))):
        print(f"| {r['method']} | {100 * r['fraction']:g} % ({r['labelled_images']}) | {r['seed']} | "
              + " | ".join(f"{100 * r[k]:.1f}" if k in r else "–" for k in SCORES) + " |")
    rows: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        rows.setdefault((r["method"], r["fraction"]), []).append(r)
    for (method, fraction), runs in rows.items():
        if len(runs) > 1:  # each seed labels its own subset: the mean is over subsets as well as over trainings
            means = [sum(r[k] for r in runs) / len(runs) if all(k in r for r in runs) else None for k in SCORES]
            print(f"| {method} | {100 * fraction:g} % | mean of {len(runs)} | "
                  + " | ".join("–" if m is None else f"{100 * m:.2f}" for m in means) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.01])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--probe-epochs", type=int, default=50)
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each training run and of evaluation")
    p.add_argument("--out", type=Path, default=Path("runs/fewlabel"))
    p.add_argument("--root", default=str(quality.CIFAR10), help="CIFAR-10 ImageFolder tree (train/, test/)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 64 images/class, 50 test/class")
    p.add_argument("--rerun", action="store_true", help="ignore finished evaluations' result files")
    p.add_argument("--report", action="store_true", help="print the finished runs only; train nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    quality.use_root(args.root)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.seeds, args.probe_epochs, args.finetune_epochs = 1, args.seeds[:1], 2, 1
    runs = [run_one(m, f, args.epochs, s, args) for s in args.seeds for f in args.fractions for m in args.methods]
    results = [r for r in runs if r is not None]
    if args.json:
        print(json.dumps({"protocol": "cpu-proxy-v1-fewlabel", "quick": args.quick, "runs": results}))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
