"""How much ``model.candidates_grad`` changes the gradient: wcl's default (every rank's loss reaches every rank's
embeddings — the gradient of the global-batch loss) against the official code's (other ranks' embeddings are
constants in NT-Xent; in the weak-label loss every candidate is a constant, the rank's own too), for W ranks sharing
one global batch.

    python benchmarks/candidates_grad.py [--root ../shared/datasets/cifar10] [--batch 256] [--ranks 1 2 4 8]

The CPU-proxy model (configs/cpu_proxy/wcl.yaml, its initial weights) and one global batch of real CIFAR-10 views
(the protocol's augmentation). W ranks are emulated in one process: rank r's samples go through the network as
their own batch (BatchNorm statistics per rank, as under DDP), rank r's loss scores its anchors against the
candidates of all ranks — with gradient through every candidate, or (official) through rank r's own in NT-Xent and
through none in the weak-label term — and the gradients are averaged over ranks, as DDP does. Printed: the norm of
each gradient and their cosine, for the NT-Xent and the weak-label term separately. On one rank the NT-Xent
gradients are identical by construction; the weak-label ones are not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wcl import WCL  # noqa: E402
from wcl.data.augment import Augmentations  # noqa: E402
from wcl.data.batched import BatchedViews  # noqa: E402
from wcl.data.datasets import build_splits  # noqa: E402
from wcl.data.samples import RawImage  # noqa: E402
from wcl.data.sampling import sample_keys  # noqa: E402
from wcl.graph import weak_labels  # noqa: E402
from wcl.losses import nt_xent_loss, weak_label_loss  # noqa: E402


def gradients(model: WCL, x1: torch.Tensor, x2: torch.Tensor, ranks: int, official: bool) -> dict[str, torch.Tensor]:
    """Flattened parameter gradient of each loss term, averaged over ``ranks`` emulated ranks."""
    b = x1.shape[0] // ranks
    h1 = torch.cat([model(x1[r * b:(r + 1) * b]) for r in range(ranks)])
    h2 = torch.cat([model(x2[r * b:(r + 1) * b]) for r in range(ranks)])
    z1, z2, v1, v2 = model.g(h1), model.g(h2), model.phi(h1), model.phi(h2)
    labels1, labels2 = weak_labels(v1.detach()), weak_labels(v2.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    out = {"nce": torch.zeros(sum(p.numel() for p in params)), "weak": torch.zeros(sum(p.numel() for p in params))}
    for r in range(ranks):
        own = torch.zeros(x1.shape[0], 1, dtype=torch.bool)
        own[r * b:(r + 1) * b] = True

        def cand(t: torch.Tensor, own: torch.Tensor = own) -> torch.Tensor:
            return torch.where(own, t, t.detach()) if official else t

        def weak_cand(t: torch.Tensor) -> torch.Tensor:
            return t.detach() if official else t

        sl = slice(r * b, (r + 1) * b)
        terms = {"nce": nt_xent_loss(z1[sl], z2[sl], model.hparams.temperature, z1_all=cand(z1), z2_all=cand(z2),
                                     offset=r * b),
                 "weak": weak_label_loss(v1[sl], v2[sl], model.hparams.weak_temperature, v1_all=weak_cand(v1),
                                         v2_all=weak_cand(v2), offset=r * b, labels1=labels1, labels2=labels2)}
        for name, loss in terms.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            out[name] += torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                    for g, p in zip(grads, params, strict=True)]) / ranks
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(REPO.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    args = p.parse_args()
    recipe = yaml.safe_load((REPO / "configs" / "cpu_proxy" / "wcl.yaml").read_text())["model"]["init_args"]
    data = yaml.safe_load((REPO / "configs" / "cpu_proxy" / "data.yaml").read_text())["init_args"]
    torch.manual_seed(0)
    model = WCL(**{**recipe, "knn_every_n_epochs": 0, "channels_last": False}).train()
    train = build_splits("cifar10", args.root).pretrain
    step = len(train) // args.batch
    raw = torch.stack([RawImage()(train[i * step][0]) for i in range(args.batch)])
    views = BatchedViews(Augmentations(**data["augment"]))
    rows = torch.arange(args.batch)
    x1, x2 = views(raw, rows, sample_keys(rows, 0, 0, 0)), views(raw, rows, sample_keys(rows, 0, 0, 1))
    print(f"CPU-proxy model at initialisation, global batch {args.batch} of CIFAR-10 views\n")
    print("| ranks | term | norm, every rank's loss (wcl) | norm, official | ratio | cosine |")
    print("|---:|---|---:|---:|---:|---:|")
    for ranks in args.ranks:
        full = gradients(model, x1, x2, ranks, official=False)
        official = gradients(model, x1, x2, ranks, official=True)
        for term in ("nce", "weak"):
            a, b = full[term], official[term]
            cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            print(f"| {ranks} | {term} | {a.norm():.4f} | {b.norm():.4f} | {a.norm() / b.norm():.2f} | {cos:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
