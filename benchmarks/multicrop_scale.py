"""The multi-crop at scale: the neighbour table of the sharded bank, the per-step bank writes, and the formula for
ImageNet / ResNet-50.

    python benchmarks/multicrop_scale.py                           # everything below, on the CPU, gloo
    python benchmarks/multicrop_scale.py --table 200000 --dim 128 --world 1 2
    python benchmarks/multicrop_scale.py --writes --batch 256 --dim 512 --world 2
    python benchmarks/multicrop_scale.py --formula                  # the figures only (computed, not measured)

``--table N``: synthetic unit features (float16) of N samples split over W gloo ranks as the sampler splits an
epoch; each rank times ``wcl.callbacks.multicrop.neighbor_table`` (K = 10) and reports its peak resident memory
(ru_maxrss: the process, bank share and search included). The ranks' tables are checked equal.
``--writes``: the per-step cost of writing a step's features into the bank, today's path (one
``FeatureBank.write`` on the training device) against the path before it (every rank gathers every rank's B×D
features and rank 0 writes them, by index, into an N×D bank in host memory: an all-gather and a blocking copy).
``--formula``: FLOP per rank, bytes moved and seconds at a stated throughput for ImageNet (N = 1,281,167,
D = 2048, K = 10) on 8 and 32 GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

N_IMAGENET, D_RESNET50, K = 1_281_167, 2048, 10


def _init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _write_share(bank, d: int, n: int, mine: torch.Tensor) -> None:  # noqa: ANN001
    """Writes the unit float16 features of the samples ``mine`` into ``bank``: 64 clusters, each sample's feature a
    function of its index alone (made 65,536 indices at a time), so any split of the samples agrees."""
    centers = torch.randn(64, d, generator=torch.Generator().manual_seed(0))
    owned = torch.zeros(n, dtype=torch.bool)
    owned[mine] = True
    for start in range(0, n, 65536):
        rows = torch.arange(start, min(n, start + 65536))
        noise = torch.randn(len(rows), d, generator=torch.Generator().manual_seed(1 + start))
        keep = owned[rows]
        feats = torch.nn.functional.normalize(centers[rows[keep] % 64] + 0.5 * noise[keep], dim=1)
        bank.write(rows[keep], feats)


def table_rank(rank: int, world: int, port: int, n: int, d: int) -> dict:
    from wcl.callbacks.multicrop import FeatureBank, neighbor_table
    from wcl.distributed import destroy_process_group

    if world > 1:
        _init(rank, world, port)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    mine = order[rank::world]
    bank = FeatureBank(d, capacity=len(mine))
    _write_share(bank, d, n, mine)
    start = time.perf_counter()
    table = neighbor_table(*bank.rows(), torch.arange(n, dtype=torch.int32)[:, None].repeat(1, K), K)
    seconds = time.perf_counter() - start
    destroy_process_group()
    return {"rank": rank, "seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "checksum": int((table.long() * torch.arange(1, n + 1)[:, None]).sum() % (2**61 - 1))}


def writes_rank(rank: int, world: int, port: int, n: int, d: int, batch: int, steps: int) -> dict:
    from wcl.callbacks.multicrop import FeatureBank
    from wcl.distributed import destroy_process_group, gather_nograd

    if world > 1:
        _init(rank, world, port)
    feats = torch.randn(batch, d)
    index = torch.arange(rank * batch, (rank + 1) * batch)
    bank = FeatureBank(d, capacity=steps * batch)
    start = time.perf_counter()
    for _ in range(steps):
        bank.write(index, feats)
    after = (time.perf_counter() - start) / steps
    host = torch.zeros(n, d, dtype=torch.float16) if rank == 0 else None
    start = time.perf_counter()
    for _ in range(steps):  # the rank-0 bank, for comparison: gather every rank's rows into rank 0's host bank
        all_feats, all_index = gather_nograd(feats), gather_nograd(index)
        if host is not None:
            host[all_index.cpu()] = torch.nn.functional.normalize(all_feats.float(), dim=1).cpu().half()
    before = (time.perf_counter() - start) / steps
    destroy_process_group()
    return {"rank": rank, "after_ms": 1e3 * after, "before_ms": 1e3 * before}


def _spawn(fn: str, world: int, *args: int) -> list[dict]:
    """``fn`` of this file in ``world`` fresh processes (each its own peak memory), joined in one gloo group."""
    port = 29500 + os.getpid() % 1000
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", fn, str(r), str(world), str(port),
                               *map(str, args)], stdout=subprocess.PIPE, text=True) for r in range(world)]
    out = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank of {fn} failed")
    return out


def formula(gpus: int, tflops: float, link_gbs: float, n: int = N_IMAGENET, d: int = D_RESNET50, k: int = K,
            batch: int = 128) -> dict:
    """The table's cost per rank on ``gpus`` ranks: every rank scores all N queries against its N/W rows
    (2·N·(N/W)·D FLOP), receives every query once (N·D·2 bytes, float16) and every rank's top-(K+1) list of every
    query (W·N·(K+1)·12 bytes: float32 similarity and int64 id); the per-step bank write is B·D·2 bytes on the
    device (the rank-0 bank it is compared with: an all-gather of W·B·D·2 bytes to every rank and a host copy
    of them on rank 0)."""
    flop = 2 * n * (n / gpus) * d
    received = n * d * 2 + gpus * n * (k + 1) * 12
    return {"gpus": gpus, "tflop_per_rank": flop / 1e12, "compute_s": flop / (tflops * 1e12),
            "gb_received_per_rank": received / 1e9, "transfer_s": received / (link_gbs * 1e9),
            "bank_mb_per_rank": n / gpus * d * 2 / 1e6, "write_kb_per_step": batch * d * 2 / 1e3,
            "gather_mb_per_step_before": gpus * batch * d * 2 / 1e6}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        fn, args = sys.argv[2], [int(a) for a in sys.argv[3:]]
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // args[1]))
        print(json.dumps(globals()[fn](*args)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=int, nargs="*", help="N of the table cases (default 200,000 and 400,000)")
    p.add_argument("--writes", action="store_true")
    p.add_argument("--formula", action="store_true")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--world", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--tflops", type=float, default=400.0, help="sustained float16 matmul TFLOP/s of one GPU")
    p.add_argument("--link", type=float, default=25.0, help="GB/s each rank receives at (inter-node)")
    args = p.parse_args()
    everything = args.table is None and not args.writes and not args.formula
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    if args.table is not None or everything:
        print("| N × D | ranks | seconds (slowest rank) | peak RSS per rank (MB) | tables equal |")
        print("|---|---:|---:|---:|---|")
        for n in args.table or [200_000, 400_000]:
            sums = set()
            for world in args.world:
                out = _spawn("table_rank", world, n, args.dim)
                sums |= {r["checksum"] for r in out}
                print(f"| {n:,} × {args.dim} | {world} | {max(r['seconds'] for r in out):.1f} "
                      f"| {max(r['peak_mb'] for r in out):.0f} | {len(sums) == 1} |", flush=True)
    if args.writes or everything:
        print(f"\nBank writes per step, B = {args.batch} per rank, D = {args.dim}, {args.steps} steps:\n")
        print("| ranks | after: FeatureBank.write (ms) | before: gather + host copy on rank 0 (ms) |")
        print("|---:|---:|---:|")
        for world in args.world:
            out = _spawn("writes_rank", world, 50_000, args.dim, args.batch, args.steps)
            print(f"| {world} | {max(r['after_ms'] for r in out):.3f} | {max(r['before_ms'] for r in out):.3f} |",
                  flush=True)
    if args.formula or everything:
        print(f"\nImageNet / ResNet-50 (N = {N_IMAGENET:,}, D = {D_RESNET50}, K = {K}, B = 128 per GPU), at "
              f"{args.tflops:.0f} TFLOP/s and {args.link:.0f} GB/s per rank (computed, not measured):\n")
        print("| GPUs | TFLOP per rank | compute (s) | GB received per rank | transfer (s) | bank per rank (MB) "
              "| write per step (KB) | gathered per step before (MB) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for gpus in (8, 32):
            f = formula(gpus, args.tflops, args.link)
            print(f"| {gpus} | {f['tflop_per_rank']:.0f} | {f['compute_s']:.2f} | {f['gb_received_per_rank']:.1f} "
                  f"| {f['transfer_s']:.2f} | {f['bank_mb_per_rank']:.0f} | {f['write_kb_per_step']:.0f} "
                  f"| {f['gather_mb_per_step_before']:.1f} |")


if __name__ == "__main__":
    main()
