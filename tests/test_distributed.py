"""Real multi-process tests (gloo, CPU): N ranks × B must behave exactly like 1 process × N·B."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import run_gloo
from wcl.distributed import gather, gather_varlen
from wcl.losses import NTXentLoss, WeakLabelLoss

ROOT = Path(__file__).resolve().parents[1]
WORLD, B, DIM, CROPS = 2, 6, 10, 2


class _Net(nn.Module):
    """A BN-free stand-in for backbone + heads (BN statistics are per-rank by design; see sync_batchnorm)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh())
        self.g, self.phi = nn.Linear(16, 8), nn.Linear(16, 8)

    def forward(self, x1, x2, xs):
        h1, h2, hs = self.body(x1), self.body(x2), self.body(xs)
        return self.g(h1), self.g(h2), self.phi(h1), self.phi(h2), self.g(hs), self.phi(hs)


def _data():
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(WORLD * B, DIM, generator=g, dtype=torch.float64)
    # View 2 is a perturbation of view 1, so the two views' weak-label partitions differ a little.
    x2 = x1 + 0.3 * torch.randn(WORLD * B, DIM, generator=g, dtype=torch.float64)
    small = x1[:, None] + 0.5 * torch.randn(WORLD * B, CROPS, DIM, generator=g, dtype=torch.float64)
    return x1, x2, small  # small: sample × crop × DIM


def _loss(net, x1, x2, small, weak_weight, crops, candidates_grad=True):
    b = x1.shape[0]
    xs = small.transpose(0, 1).reshape(-1, DIM)  # crop-major, as the module concatenates them
    z1, z2, v1, v2, zs, vs = net(x1, x2, xs)
    owner = torch.arange(b).repeat(CROPS) if crops else None
    zs, vs = (zs, vs) if crops else (None, None)
    nce = NTXentLoss(0.2, candidates_grad)(z1, z2, zs, owner)
    weak, l1, l2 = WeakLabelLoss(0.2, "scipy", candidates_grad)(v1, v2, vs, owner)
    return nce + weak_weight * weak, nce, weak, l1, l2


def _worker(rank: int, weak_weight: float, crops: bool, candidates_grad: bool = True) -> dict:
    net = DistributedDataParallel(_Net().double())
    x1, x2, small = _data()
    sl = slice(rank * B, (rank + 1) * B)
    loss, nce, weak, l1, l2 = _loss(net, x1[sl], x2[sl], small[sl], weak_weight, crops, candidates_grad)
    loss.backward()
    return {
        "loss": loss.item(), "nce": nce.item(), "weak": weak.item(), "labels": (l1.tolist(), l2.tolist()),
        "grads": {k: p.grad.clone() for k, p in net.module.named_parameters()},
    }


@pytest.mark.slow
@pytest.mark.parametrize("weak_weight,crops", [(0.0, False), (1.0, False), (1.0, True)])
def test_two_ranks_equal_one_rank_with_global_batch(weak_weight, crops):
    ranks = run_gloo(_worker, weak_weight, crops, world=WORLD)

    net = _Net().double()
    x1, x2, small = _data()
    loss, nce, weak, l1, l2 = _loss(net, x1, x2, small, weak_weight, crops)
    loss.backward()

    # Each rank averages over its own anchors; the mean over ranks is the global-batch loss.
    for key, ref in (("loss", loss), ("nce", nce), ("weak", weak)):
        assert sum(r[key] for r in ranks.values()) / WORLD == pytest.approx(ref.item(), abs=1e-10)
    # Every rank builds the graph of the global batch, identical to the single-process one.
    for r in ranks.values():
        assert r["labels"] == (l1.tolist(), l2.tolist())
    # After DDP averaging every rank holds the gradient of the global-batch loss.
    for name, p in net.named_parameters():
        for r in ranks.values():
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-5, atol=1e-10)
    # The per-rank losses differ (rank 1's anchors are other samples): masks really are offset by rank.
    assert ranks[0]["nce"] != pytest.approx(ranks[1]["nce"], abs=1e-9)


def _official_step(net: nn.Module) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The official code's losses and gradient, written out after its ``network/wcl.py`` (not with wcl's loss
    functions): rank r scores [f1; f2] of its own samples against [f1; f2; other ranks' f1; f2] with the diagonal
    removed (cross-entropy), and its phi-features against the gathered batch, all of whose rows are constants (its
    ``concat_all_gather`` runs under ``no_grad``, so the own rows it puts back carry no gradient either), with masks
    of the 1-NN graph's components (scipy) and the diagonal removed; DDP averages the ranks' gradients.
    Returns each rank's total loss and the averaged gradient."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    t = 0.2
    x1, x2, small = _data()
    z1, z2, v1, v2, _, _ = net(x1, x2, small[:, 0])
    z1, z2, v1, v2 = (torch.nn.functional.normalize(x, dim=1) for x in (z1, z2, v1, v2))

    def mask_of(feats: torch.Tensor) -> torch.Tensor:
        dist = feats @ feats.T - 2 * torch.eye(len(feats), dtype=feats.dtype)
        y = dist.topk(1, dim=1).indices.flatten().numpy()
        x = np.arange(len(feats))
        graph = csr_matrix((np.ones(2 * len(x)), (np.concatenate([x, y]), np.concatenate([y, x]))),
                           shape=(len(x), len(x)))
        labels = torch.as_tensor(connected_components(graph, directed=False)[1])
        return (labels[:, None] == labels[None, :]).to(feats.dtype)

    def sup_contra(logits, mask, diagonal):  # noqa: ANN001
        mask, exp = mask * (1 - diagonal), torch.exp(logits) * (1 - diagonal)
        log_prob = logits - torch.log(exp.sum(1, keepdim=True))
        return (-(mask * log_prob).sum(1) / mask.sum(1)).mean()

    mask1, mask2 = mask_of(v1.detach()), mask_of(v2.detach())
    grads = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    losses = []
    for r in range(WORLD):
        own = slice(r * B, (r + 1) * B)
        keep = torch.ones(WORLD * B, dtype=torch.bool)
        keep[own] = False
        other1, other2 = z1.detach()[keep], z2.detach()[keep]
        f = torch.cat([z1[own], z2[own]])
        prob = f @ torch.cat([f, other1, other2]).T / t
        offdiag = ~torch.eye(prob.shape[0], prob.shape[1], dtype=torch.bool)
        logits = prob[offdiag].view(prob.shape[0], -1)
        target = torch.cat([torch.arange(B - 1, 2 * B - 1), torch.arange(0, B)])
        nce = torch.nn.functional.cross_entropy(logits, target)
        all1, all2 = v1.detach(), v2.detach()
        diagonal = torch.eye(WORLD * B, dtype=v1.dtype)[own]
        graph = (sup_contra(v1[own] @ all1.T / t, mask2[own], diagonal)
                 + sup_contra(v2[own] @ all2.T / t, mask1[own], diagonal)) / 2
        losses.append(float(nce + graph))
        names = [k for k, _ in net.named_parameters()]
        for k, g in zip(names, torch.autograd.grad(nce + graph, list(net.parameters()), retain_graph=True),
                        strict=True):
            grads[k] += g / WORLD
    return losses, grads


@pytest.mark.slow
def test_candidates_without_grad_equal_the_official_gradient():
    ranks = run_gloo(_worker, 1.0, False, False, world=WORLD)
    official_losses, reference = _official_step(_Net().double())
    for r, rank_out in ranks.items():  # the same loss values as the official formulas, rank by rank
        assert rank_out["loss"] == pytest.approx(official_losses[r], rel=1e-9)
    net = _Net().double()  # with gradient through every candidate: the single-process global-batch gradient
    x1, x2, small = _data()
    _loss(net, x1, x2, small, 1.0, False)[0].backward()
    for name, ref in reference.items():
        for r in ranks.values():
            torch.testing.assert_close(r["grads"][name], ref, rtol=1e-6, atol=1e-10)
    differs = max(float((reference[k] - p.grad).abs().max()) for k, p in net.named_parameters())
    assert differs > 1e-4  # on two ranks the two switches really give different gradients
    # On one process NT-Xent's gradient is unchanged (every candidate is this process's own), the weak term's is not:
    # official, its candidates are constants there too.
    x1, x2, small = _data()
    for term in (1, 2):  # nce, weak
        single = {grad: _Net().double() for grad in (True, False)}
        for grad, model in single.items():
            _loss(model, x1, x2, small, 1.0, False, candidates_grad=grad)[term].backward()
        official = dict(single[False].named_parameters())
        gaps = [float((p.grad - official[k].grad).abs().max()) for k, p in single[True].named_parameters()
                if p.grad is not None]  # the other head has no gradient from this term
        assert (max(gaps) < 1e-12) == (term == 1), (term, max(gaps))


def _gather_worker(rank: int) -> tuple[list, list]:
    x = torch.full((3, 2), float(rank + 1), requires_grad=True)
    y = gather(x, grad=True)
    weights = torch.arange(y.numel(), dtype=torch.float32).view_as(y) * (rank + 1)
    (y * weights).sum().backward()
    return y.detach().tolist(), x.grad.tolist()


@pytest.mark.slow
def test_gather_with_grad_sums_gradients_of_every_rank():
    res = run_gloo(_gather_worker, world=WORLD)
    gathered = [[1.0, 1.0]] * 3 + [[2.0, 2.0]] * 3
    base = torch.arange(12, dtype=torch.float32).view(6, 2)
    total = base * 1 + base * 2  # d/dy of rank 0's and rank 1's objectives, summed
    for rank in range(WORLD):
        assert res[rank][0] == gathered
        assert res[rank][1] == total[rank * 3 : (rank + 1) * 3].tolist()


def _varlen_worker(rank: int) -> list:
    uneven = gather_varlen(torch.full((rank * 2, 3), float(rank)))  # rank 0 gives no row, rank 1 two
    empty = gather_varlen(torch.zeros(0, 3))  # no rank gives a row
    return [uneven.tolist(), list(empty.shape)]


@pytest.mark.slow
def test_gather_varlen_keeps_rank_order_with_empty_parts():
    for uneven, empty_shape in run_gloo(_varlen_worker, world=WORLD).values():
        assert uneven == [[1.0, 1.0, 1.0]] * 2
        assert empty_shape == [0, 3]


def _ddp_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m wcl fit`` on the quickstart config with 2 CPU processes (gloo)."""
    return subprocess.run(
        [sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml", *extra,
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--data.batch_size", "16", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_cli_ddp_two_processes_exit_cleanly(tmp_path):
    """The multi-process command of docs/guide/distributed.md on CPU: both ranks start, train, tear down and exit 0."""
    proc = _ddp_cli(tmp_path, "--trainer.max_epochs", "1", "--data.train_per_class", "16", "--data.num_workers", "0",
                    "--model.knn_every_n_epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wcl: checkpoint:" in proc.stdout and "wcl: final val/knn_top1" in proc.stdout
    assert list(tmp_path.rglob("last.ckpt"))
    for noise in ("litlogger", "LeafSpec", "sync_dist", "not resumable", "Traceback"):  # no warning of ours, no ads
        assert noise not in proc.stderr, noise


@pytest.mark.slow
def test_cli_ddp_ranks_share_one_neighbour_table(tmp_path):
    """KNN multi-crop under 2-process DDP: both ranks' data workers use the same, fresh neighbour table."""
    dump = tmp_path / "tables"
    proc = _ddp_cli(
        tmp_path, "--config", "configs/multicrop.yaml", "--trainer.max_epochs", "2",
        "--trainer.limit_val_batches", "0", "--data.train_per_class", "8", "--data.num_workers", "1",
        "--trainer.callbacks+=tests.helpers.DumpNeighborTable", f"--trainer.callbacks.out_dir={dump}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    t0, t1 = torch.load(dump / "rank0_epoch1.pt"), torch.load(dump / "rank1_epoch1.pt")
    assert t0["epoch"] == t1["epoch"] == 0
    assert torch.equal(t0["table"], t1["table"])
    # 80 samples / (2 ranks × 16) = 2 batches per rank in epoch 1, each checked against that rank's table.
    assert [int((dump / f"rank{r}_checked.txt").read_text()) for r in (0, 1)] == [2, 2]


@pytest.mark.slow
def test_cli_ddp_whole_image_features_give_the_table_of_one_process(tmp_path):
    """``features: eval`` under 2-process DDP: each rank embeds its share of the images, and the table is the one a
    single process computes from the checkpoint's weights (BatchNorm statistics included)."""
    from tests.helpers import whole_image_table
    from wcl import WCL, WCLDataModule

    proc = _ddp_cli(
        tmp_path, "--config", "configs/multicrop.yaml", "--trainer.callbacks.features", "eval",
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--data.train_per_class", "8",
        "--data.num_workers", "0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("KnnMultiCrop"))
    dm = WCLDataModule(dataset="bundled", train_per_class=8, num_workers=0, in_memory=True, augment_on="device")
    dm.setup("fit")
    model = WCL.load_from_checkpoint(next(tmp_path.rglob("last.ckpt")), map_location="cpu")
    assert torch.equal(state["searched"], whole_image_table(model, dm, 5))


@pytest.mark.parametrize("text,backend", [
    # gloo (its tcp pair's texts; tests/test_launch.py kills a rank of a real 2-process run for the whole path)
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:38071", "gloo"),
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:589] Read error [10.1.0.7]:40211: Connection reset by peer",
     "gloo"),
    # NCCL (strings of libtorch_cuda.so's ProcessGroupNCCL, in the surroundings of a survivor's error)
    ("NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3691, remote process exited or there "
     "was a network error, NCCL version 2.27.3\nncclRemoteError: A call failed possibly due to a network error or a "
     "remote process exiting prematurely.\nLast error:\nsocketProgress: Connection closed by remote peer "
     "node-3<45822>", "nccl"),
    ("[Rank 5] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=8841, OpType=ALLGATHER, "
     "NumelIn=262144, NumelOut=8388608, Timeout(ms)=900000) ran for 900071 milliseconds before timing out.", "nccl"),
    ("NCCL communicator was aborted on rank 5.", "nccl"),
    # the TCP store of torchrun's elastic agent / rank 0 (strings of libtorch_cpu.so)
    ("Failed to recv, got 0 bytes. Connection was likely closed. Did the remote server shutdown or crash?", "store"),
    ("[c10d] recvValue failed on SocketImpl(fd=41, addr=[node-0]:52314): Remote peer closed the connection.",
     "store"),
    # not a lost rank
    ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB", None),
    ("NCCL error in: ProcessGroupNCCL.cpp:1970, invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version "
     "2.27.3\nncclInvalidUsage: This usually reflects invalid usage of NCCL library.", None),
])
def test_lost_peer_recognises_each_backends_text(text, backend):
    from wcl.distributed import lost_peer

    assert lost_peer(text) == backend
