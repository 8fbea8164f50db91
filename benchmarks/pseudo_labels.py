"""CPU-proxy v1 few-label benchmark, second stage: fine-tuning on the labelled subset plus the most confident
pseudo-labels of the other training images, against fine-tuning on the labelled subset alone.

    python benchmarks/pseudo_labels.py                                  # seed 0, 10 %, the fine-tuned teacher
    python benchmarks/pseudo_labels.py --teacher propagation --shares 0.3 0.6
    python benchmarks/pseudo_labels.py --quick                          # smoke run (64 images/class, 1 epoch)

It reads the pretrained checkpoints of ``benchmarks/fewlabel.py`` (``<runs>/<method>_e<epochs>_s<seed>``, same
``--runs``), and for each seed and fraction:

1. the teacher labels every unlabelled training image: ``finetune`` — the shipped fine-tuning recipe
   (configs/fewlabel/finetune_cpu_proxy.yaml) on the labelled subset, whose classifier's softmax is the label and its
   maximum the confidence (its test top-1 is the ``finetune_top1`` column); ``propagation`` — label propagation over
   the pretrained features with ``wcl.PropagationEval``'s settings (configs/fewlabel/propagate_cpu_proxy.yaml),
   confidence ``1 - H(p) / log C``;
2. per class, the ``share`` × (unlabelled images / classes) most confident images predicted as that class join the
   labelled subset with their predicted class (class-balanced, so no class floods the others);
3. the student, fine-tuned from the pretrained checkpoint with the same recipe on that union, is evaluated on the
   test split (``pseudo_top1``). ``pseudo_label_accuracy`` (against the true classes, diagnostics only) says how
   many of the added labels are right.

Every finished row leaves ``<out>/<method>_f<fraction>_e<epochs>_s<seed>_<teacher>_<share>.json`` and is not run
again; the table reads them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import ConcatDataset, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fewlabel  # noqa: E402  (the evaluations' data and fine-tune recipe)
import quality  # noqa: E402  (the CPU-proxy protocol's data arguments)

REPO = quality.REPO


class Relabelled(Dataset):
    """``base[rows[i]]``'s image with the class ``labels[i]``."""

    def __init__(self, base: Dataset, rows: torch.Tensor, labels: torch.Tensor) -> None:
        self.base, self.rows, self.labels = base, rows.tolist(), labels.tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[object, int]:
        return self.base[self.rows[i]][0], self.labels[i]


def confident_rows(pred: torch.Tensor, conf: torch.Tensor, candidates: torch.Tensor, share: float,
                   num_classes: int) -> torch.Tensor:
    """Per class, the ``share`` × len(candidates) / C most confident ``candidates`` predicted as that class."""
    per_class = int(share * len(candidates)) // num_classes
    keep = []
    for c in range(num_classes):
        rows = candidates[pred[candidates] == c]
        keep.append(rows[conf[rows].argsort(descending=True)[:per_class]])
    return torch.cat(keep)


def finetune(ckpt: Path, data_kwargs: dict, seed: int, epochs: int, extra_train: Dataset | None = None):
    """The shipped recipe from ``ckpt`` on the labelled subset (plus ``extra_train``): (model, test top-1)."""
    from wcl import LabelledDataModule

    dm = LabelledDataModule(**data_kwargs, batch_size=fewlabel.finetune_batch_size(), train_augment="crop_flip")
    if extra_train is not None:
        names = dm.labelled_names()
        dm.train_base = ConcatDataset([dm.train_base, extra_train])
        dm.labelled_names = lambda: names  # the labelled subset stays the subset; the rest are pseudo-labels
    return fewlabel.finetune(ckpt, dm, seed, epochs, REPO / "runs" / "pseudo_labels")


@torch.no_grad()
def train_features(backbone: torch.nn.Module, dm) -> torch.Tensor:
    """N×D features of every training image, labelled or not (eval transform), in the split's order."""
    backbone.eval()
    batches = (dm.on_after_batch_transfer(batch, 0) for batch in dm.eval_loader("bank"))
    return torch.cat([backbone(batch["image"]).float() for batch in batches])


def run_one(fraction: float, seed: int, teacher: str, share: float, args: argparse.Namespace) -> dict:
    from wcl import LabelledDataModule
    from wcl.data.datasets import targets_of
    from wcl.eval.checkpoint import load_backbone
    from wcl.eval.propagate import affinity, label_distribution, propagate

    name = f"{args.method}_f{fraction:g}_e{args.epochs}_s{seed}_{teacher}_{share:g}{'_quick' if args.quick else ''}"
    out = args.out / f"{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    run = f"{args.method}_e{args.epochs}_s{seed}{'_quick' if args.quick else ''}"
    ckpt = args.runs / run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} does not exist; pretrain it first: python benchmarks/fewlabel.py --methods "
                         f"{args.method} --seeds {seed} --epochs {args.epochs} --out {args.runs}"
                         + (" --quick" if args.quick else ""))
    start = time.perf_counter()
    data_kwargs = {**fewlabel.eval_data(args.quick), "label_fraction": fraction, "seed": seed}
    dm = LabelledDataModule(**data_kwargs)
    train = dm.source.split("bank")
    truth = torch.tensor(targets_of(train))
    known = torch.zeros(len(train), dtype=torch.bool)
    known[dm.train_base.indices] = True
    result: dict = {"method": args.method, "fraction": fraction, "epochs": args.epochs, "seed": seed,
                    "teacher": teacher, "share": share, "labelled_images": int(known.sum())}

    if teacher == "finetune":
        model, result["finetune_top1"] = finetune(ckpt, data_kwargs, seed, args.finetune_epochs)
        feats = train_features(model.backbone, dm)
        prob = F.softmax(model.classifier(feats), dim=1)
        conf, pred = prob.max(dim=1)
    else:
        prop = yaml.safe_load(fewlabel.PROPAGATE.read_text())["model"]["init_args"]
        backbone, _ = load_backbone(ckpt)
        feats = train_features(backbone, dm)
        scores = propagate(affinity(feats, prop["graph_k"], prop["gamma"]), torch.where(known, truth, -1),
                           dm.num_classes, prop["alpha"], prop.get("iters", 20))
        prob, conf = label_distribution(scores)
        pred = prob.argmax(dim=1)
    rows = confident_rows(pred, conf, (~known).nonzero().squeeze(1), share, dm.num_classes)
    result["pseudo_labels"] = len(rows)
    result["pseudo_label_accuracy"] = float((pred[rows] == truth[rows]).float().mean())
    _, result["pseudo_top1"] = finetune(ckpt, data_kwargs, seed, args.finetune_epochs,
                                        Relabelled(train, rows, pred[rows]))
    result["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="wcl", help="the pretraining of benchmarks/fewlabel.py to start from")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--teacher", choices=["finetune", "propagation"], default="finetune")
    p.add_argument("--shares", type=float, nargs="+", default=[0.3],
                   help="fraction of the unlabelled images that get a pseudo-label")
    p.add_argument("--epochs", type=int, default=30, help="pretraining epochs of the checkpoint")
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=Path, default=Path("runs/fewlabel"), help="benchmarks/fewlabel.py's --out")
    p.add_argument("--out", type=Path, default=Path("runs/pseudo_labels"))
    p.add_argument("--root", default=str(quality.CIFAR10), help="CIFAR-10 ImageFolder tree (train/, test/)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 images/class, 1 pretraining epoch")
    args = p.parse_args()
    quality.use_root(args.root)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.finetune_epochs = 1, 1
    rows = [run_one(f, s, args.teacher, share, args) for s in args.seeds for f in args.fractions
            for share in args.shares]
    print("| labels | seed | teacher | share | pseudo-labels (right %) | fine-tune top-1 % | with pseudo-labels % |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        ft = f"{100 * r['finetune_top1']:.2f}" if "finetune_top1" in r else "–"
        print(f"| {100 * r['fraction']:g} % ({r['labelled_images']}) | {r['seed']} | {r['teacher']} "
              f"| {r['share']:g} | {r['pseudo_labels']} ({100 * r['pseudo_label_accuracy']:.1f}) | {ft} "
              f"| {100 * r['pseudo_top1']:.2f} |")


if __name__ == "__main__":
    main()
