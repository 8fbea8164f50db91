"""CPU: is channels-last worth it? Forward + backward + SGD step of the ResNet trunk in both memory formats.

    python benchmarks/memory_format.py [--widths 16 64] [--sizes 32 96] [--batch 64] [--steps 10] [--rounds 3]
    python benchmarks/memory_format.py --quick

What ``wcl.models.layout`` rests on: on CPU the backbone runs contiguous, because channels-last there takes
oneDNN's NHWC kernels, one of which corrupts memory at widths below 8 — so this script measures only widths
>= 16, where both formats run. The two formats alternate ``--rounds`` times per setting; reported: the median
step time over all rounds (after one warm-up step each) and contiguous / channels-last (> 1: channels-last faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wcl.models import build_resnet

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def step_times(width: int, size: int, batch: int, steps: int, fmt: torch.memory_format) -> list[float]:
    """Seconds of each of ``steps`` training steps of a CIFAR-stem ResNet-18 at ``width`` on ``batch`` images."""
    torch.manual_seed(0)
    model = build_resnet("resnet18", width, cifar_stem=True).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times[1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: width 16, 32 px, batch 8, 1 round of 2 steps")
    args = p.parse_args()
    if args.quick:
        args.widths, args.sizes, args.batch, args.steps, args.rounds = [16], [32], 8, 2, 1
    if min(args.widths) < 16:
        p.error("--widths below 16 can crash in channels-last on CPU (see wcl/models/layout.py); measure >= 16")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, ms per step (median)")
    print(f"{'width':>5} {'px':>4} {'contiguous':>11} {'channels_last':>14} {'ratio':>6}")
    for width in args.widths:
        for size in args.sizes:
            times: dict[str, list[float]] = {name: [] for name in FORMATS}
            for _ in range(args.rounds):
                for name, fmt in FORMATS.items():
                    times[name] += step_times(width, size, args.batch, args.steps, fmt)
            ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
            ratio = ms["contiguous"] / ms["channels_last"]
            print(f"{width:>5} {size:>4} {ms['contiguous']:>11.1f} {ms['channels_last']:>14.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
