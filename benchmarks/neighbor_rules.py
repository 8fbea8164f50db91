"""Which neighbours each label-free crop rule would keep, and how often they share the sample's class, read off a
pretrained checkpoint without training.

    python benchmarks/neighbor_rules.py --ckpt runs/cpu_proxy/wcl_e30_s0/checkpoints/last.ckpt \
        --out runs/neighbor_rules.json

Data: the CPU-proxy pretraining images (configs/cpu_proxy/data.yaml; ``--root`` for another CIFAR-10 copy). Two
kinds of backbone features of every image:

* ``view``: two augmented views (the training augmentation, BatchNorm in training mode, batches of the training
  size), as the training step computes ``h``; view 1 is what ``KnnMultiCrop(features="view")`` searches;
* ``eval``: the whole image (evaluation transform, BatchNorm in eval mode), what ``features="eval"`` searches.

Rules over the K nearest neighbours (``--k``, self excluded): ``all``; ``reciprocal``; ``nearest``; ``two_views``
(j is among i's K in the tables of both views); ``floor c`` (the similarity of i and j is at least c times the
similarity of i's own two views). For each: ``share``, the fraction of the N×K entries that stay a neighbour (the
others would be the sample itself), and ``purity``, the fraction of those that share the sample's true class (the
labels are read here as a diagnostic only; no rule reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the CPU-proxy protocol's data arguments)

FLOORS = (1.0, 1.1)


def rule_stats(view1: torch.Tensor, view2: torch.Tensor, whole: torch.Tensor, labels: torch.Tensor, k: int,
               floors: tuple[float, ...] = FLOORS) -> dict[str, dict[str, float]]:
    """Share and purity of the neighbours each rule keeps (see the module docstring).

    Args:
        view1, view2: N×D unit features of two augmented views of each image; whole: N×D unit features of the
            whole images; labels: N true classes.
    """
    from wcl.data.crops import restrict_neighbors
    from wcl.neighbors import neighbors_of_rows

    sim1, t1 = neighbors_of_rows(view1, k)
    t2 = neighbors_of_rows(view2, k)[1]
    own = torch.arange(len(t1))[:, None]
    kept = {
        "view all": t1,
        "view reciprocal": restrict_neighbors(t1, "reciprocal"),
        "view nearest": t1[:, :1],
        "view two_views": torch.where((t1[..., None] == t2[:, None, :]).any(2), t1, own),
    }
    views = (view1 * view2).sum(1, keepdim=True)
    for c in floors:
        kept[f"view floor {c:g}"] = torch.where(sim1 >= c * views, t1, own)
    t_eval = neighbors_of_rows(whole, k)[1]
    kept |= {"eval all": t_eval, "eval nearest": t_eval[:, :1]}
    out = {}
    for name, table in kept.items():
        neighbour = table != own
        same = labels[table] == labels[:, None]
        out[name] = {"share": float(neighbour.float().mean()),
                     "purity": float(same[neighbour].float().mean()) if neighbour.any() else float("nan")}
    return out


@torch.no_grad()
def features(ckpt: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(view 1, view 2, whole image) unit features and the labels of the pretraining images a training epoch
    draws (``drop_last`` leaves out the last partial batch)."""
    from wcl import WCL, WCLDataModule
    from wcl.data import Augmentations

    args = quality.data_args(quick=False) | {"num_workers": 0}
    args["augment"] = Augmentations(**args["augment"])
    dm = WCLDataModule(**args)
    dm.setup("fit")
    model = WCL.load_from_checkpoint(ckpt, map_location="cpu").eval()
    n = len(dm.source.pretrain)
    whole = torch.zeros(n, model.backbone.out_dim)
    for batch in dm.eval_loader("pretrain"):
        batch = dm.on_after_batch_transfer(batch, 0)
        whole[batch["index"]] = F.normalize(model(batch["image"]), dim=1)
    model.train()
    index, v1, v2 = [], [], []
    for batch in dm.train_dataloader():
        batch = dm.on_after_batch_transfer(batch, 0)
        index.append(batch["index"])
        v1.append(F.normalize(model(batch["views"][0]), dim=1))
        v2.append(F.normalize(model(batch["views"][1]), dim=1))
    seen = torch.cat(index)
    return torch.cat(v1), torch.cat(v2), whole[seen], dm.source.labels("pretrain")[seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, nargs="+", required=True, help="pretraining checkpoints (WCL)")
    parser.add_argument("--k", type=int, default=5, help="neighbours per sample (KnnMultiCrop k)")
    parser.add_argument("--root", default=quality.ROOT, help="CIFAR-10 ImageFolder root (train/, test/)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    args = parser.parse_args()
    quality.use_root(args.root)
    torch.set_num_threads(args.threads)
    rows = []
    for ckpt in args.ckpt:
        stats = rule_stats(*features(ckpt), k=args.k)
        for rule, s in stats.items():
            rows.append({"ckpt": str(ckpt), "rule": rule, **s})
            print(f"{ckpt}  {rule:<18} share {s['share']:.3f}  purity {s['purity']:.3f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
