"""Time and peak memory of the multi-crop KNN step (neighbour table of every sample, self excluded).

    python benchmarks/knn_table.py                       # the default cases below
    python benchmarks/knn_table.py --case 50000 512 faiss 10

Each case runs in a fresh subprocess so its peak resident memory (ru_maxrss, which includes the float16
feature bank) is its own. Synthetic unit-norm Gaussian features. For ImageNet scale the exact search is
timed on ``--queries`` query rows against the full database and extrapolated linearly to all rows (marked
"extrapolated"); the approximate IVF search is timed in full (index training included).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

CASES = [
    (50_000, 128, "faiss", 10), (50_000, 128, "torch", 10),
    (50_000, 512, "faiss", 10), (50_000, 512, "torch", 10), (50_000, 512, "faiss_ivf", 10),
    (1_281_167, 128, "faiss_ivf", 10), (1_281_167, 128, "faiss", 10), (1_281_167, 128, "torch", 10),
]


def run_case(n: int, d: int, backend: str, k: int, queries: int) -> dict:
    from wcl.callbacks.multicrop import FeatureBank, neighbor_table
    from wcl.neighbors import topk_cosine

    torch.manual_seed(0)
    bank = FeatureBank(d, capacity=n)
    for s in range(0, n, 65536):
        chunk = torch.randn(min(65536, n - s), d)
        bank.write(torch.arange(s, s + len(chunk)), chunk)
    extrapolated = backend != "faiss_ivf" and n > 200_000
    start = time.perf_counter()
    if not extrapolated:
        table = neighbor_table(*bank.rows(), torch.zeros(n, k, dtype=torch.int32), k, backend)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        assert table.shape == (n, k)
    else:
        # Exact search of `queries` rows against all n, then scale the time to n rows.
        import faiss
        import numpy as np

        x = bank.features.float().numpy()
        if backend == "faiss":
            index = faiss.IndexFlatIP(d)
            index.add(x)
            t = time.perf_counter()
            index.search(np.ascontiguousarray(x[:queries]), k + 1)
            seconds = (time.perf_counter() - t) * n / queries + (t - start)
        else:
            t = time.perf_counter()
            topk_cosine(bank.features[:queries], bank.features, k + 1, normalize=False)
            seconds = (time.perf_counter() - t) * n / queries
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "d": d, "backend": backend, "k": k, "seconds": seconds, "peak_mb": peak_mb,
            "extrapolated": extrapolated, "bank_mb": n * d * 2 / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", nargs=4, metavar=("N", "D", "BACKEND", "K"))
    p.add_argument("--queries", type=int, default=5_000)
    p.add_argument("--only", nargs="*", help="run only cases whose 'N D BACKEND' string contains one of these")
    args = p.parse_args()
    if args.case:
        n, d, backend, k = args.case
        print(json.dumps(run_case(int(n), int(d), backend, int(k), args.queries)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| N × D | backend | K | time (s) | peak RSS (MB) | fp16 bank (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    for n, d, backend, k in CASES:
        if args.only and not any(o in f"{n} {d} {backend}" for o in args.only):
            continue
        out = subprocess.run([sys.executable, __file__, "--case", str(n), str(d), backend, str(k),
                              "--queries", str(args.queries)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        note = f" (extrapolated from {args.queries:,} queries)" if r["extrapolated"] else ""
        print(f"| {n:,} × {d} | {backend} | {k} | {r['seconds']:.1f}{note} | {r['peak_mb']:.0f} "
              f"| {r['bank_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
