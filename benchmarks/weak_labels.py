"""Weak-label cost per training step versus global batch, for both graph backends, and the gather cost.

    python benchmarks/weak_labels.py [--dim 128] [--batches 256 1024 4096 16384] [--repeats 5] [--device cpu]

Prints a Markdown table (median of ``--repeats`` runs after one warm-up). "nn" is the chunked 1-NN search,
"components" the connected-components step; "total" is what ``weak_labels`` costs once (a training step calls
it twice, once per view). The gather row times an all_gather (gloo, 2 local processes) of a B×dim float32
tensor with its backward all_reduce, as ``gather(grad=True)`` does for each of the 4 projections per step.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wcl.graph import components_scipy, components_torch, nearest_neighbors


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _gather_worker(rank: int, port: int, batch: int, dim: int, repeats: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    from wcl.distributed import gather

    x = torch.randn(batch // 2, dim, requires_grad=True)

    def step():
        gather(x, grad=True).sum().backward()

    t = _median_time(step, torch.device("cpu"), repeats)
    if rank == 0:
        out["t"] = t
    dist.destroy_process_group()


def gather_time(batch: int, dim: int, repeats: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_gather_worker, args=(port, batch, dim, repeats, out), nprocs=2, join=True)
        return out["t"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-gather", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; dim {args.dim}; torch {torch.__version__}\n")
    print("| global batch | nn (ms) | components scipy (ms) | components torch (ms) | total scipy (ms) "
          "| total torch (ms) | gather 2 ranks (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for b in args.batches:
        v = torch.randn(b, args.dim, device=device)
        nn_idx = nearest_neighbors(v)
        t_nn = _median_time(lambda v=v: nearest_neighbors(v), device, args.repeats)
        t_sp = _median_time(lambda n=nn_idx: components_scipy(n), device, args.repeats)
        t_th = _median_time(lambda n=nn_idx: components_torch(n), device, args.repeats)
        assert torch.equal(components_scipy(nn_idx), components_torch(nn_idx))
        t_g = float("nan") if args.no_gather else gather_time(b, args.dim, args.repeats)
        print(f"| {b} | {t_nn * 1e3:.2f} | {t_sp * 1e3:.2f} | {t_th * 1e3:.2f} | {(t_nn + t_sp) * 1e3:.2f} "
              f"| {(t_nn + t_th) * 1e3:.2f} | {t_g * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
