"""CPU-proxy v1 throughput: training images/s of SimCLR, WCL, WCL + multi-crop (wcl) and lightly's SimCLR,
the compute ceiling, and the data loaders on their own.

    python benchmarks/throughput.py [--rounds 3] [--steps 12] [--threads 2] [--json] [--quick]

* "training": ``Trainer.fit`` of the protocol's model and data (configs/cpu_proxy, built through ``WCLCLI``
  exactly as ``python -m wcl fit`` builds them; lightly's from benchmarks/lightly_simclr.py) for ``--steps``
  optimizer steps; a step's time is from one ``on_train_batch_end`` to the next, so it includes waiting for
  data. The four methods run interleaved, ``--rounds`` times; reported: median over all rounds' steps after
  the first ``--warmup`` of each fit. Images count every view (2 × 256 per step; multi-crop adds its 2 × 256
  16-px crops, shown separately).
* "ceiling": forward + backward + SGD step of backbone and heads (and the loss terms of the method) on one fixed
  in-memory batch — no data loading, no Lightning; measured after each method's fit in every round, median.
* "data": batches/s of each training loader alone (wcl: workers + batched augmentation after the batch is
  formed; lightly: PIL transforms in the workers), as images/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

# lightly_simclr (lightly's SimCLR) is imported where it runs: `--methods wcl …` needs no lightly.
sys.path.insert(0, str(Path(__file__).parent))
import quality  # noqa: E402 - METHODS: method name → `python -m wcl fit` arguments (None: lightly); ROOT

from wcl.callbacks import KnnMultiCrop  # noqa: E402
from wcl.cli import WCLCLI  # noqa: E402
from wcl.data.crops import NeighborTable  # noqa: E402
from wcl.data.sampling import EpochSampler  # noqa: E402

METHODS = quality.METHODS


class StepTimer(Callback):
    """Seconds between consecutive training-batch ends (data wait + step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def build_wcl(method: str, quick: bool) -> tuple:
    """(model, data module, the run's own callbacks other than checkpointing) of a wcl method."""
    args = [*METHODS[method], "--data.root", quality.ROOT, "--trainer.enable_checkpointing", "false"]
    if quick:
        args += ["--data.train_per_class", "64"]
    cli = WCLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 args=args, run=False)
    return cli.model, cli.datamodule, [cb for cb in cli.trainer.callbacks if isinstance(cb, KnnMultiCrop)]


def build(method: str, quick: bool) -> tuple:
    """(LightningModule, datamodule or loader) of a method on the protocol."""
    if method == "lightly_simclr":
        from lightly_simclr import LightlySimCLR, train_loader  # lightly only where it is measured

        return LightlySimCLR(), train_loader(per_class=64 if quick else 1000), []
    return build_wcl(method, quick)


def images_per_step(method: str, batch: int = 256) -> tuple[int, int]:
    """(views, small crops) images of one step."""
    return 2 * batch, (2 * batch if method in ("wcl_multicrop", "wcl_selfcrops") else 0)


def training_times(method: str, steps: int, quick: bool) -> list[float]:
    model, data, callbacks = build(method, quick)
    timer = StepTimer()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[timer, *callbacks])
    if method == "lightly_simclr":
        trainer.fit(model, data)
    else:
        trainer.fit(model, datamodule=data)
    return timer.times


def ceiling(method: str, steps: int) -> list[float]:
    """Seconds of forward + backward + step on one fixed batch of two 256-image views, per step after two."""
    if method == "lightly_simclr":
        from lightly_simclr import LightlySimCLR

        model = LightlySimCLR()

        def loss_of(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            return model.criterion(model(x1), model(x2))
    else:
        model = build_wcl(method, quick=True)[0]

        crops = torch.randn(2 * 256, 3, 16, 16) if images_per_step(method)[1] else None
        owner = torch.arange(256).repeat(2)

        def loss_of(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:  # the math of WCL.training_step
            h1, h2 = model(x1), model(x2)
            hs = model(crops) if crops is not None else None
            zs, os = (model.g(hs), owner) if hs is not None else (None, None)
            loss = model.nce_loss(model.g(h1), model.g(h2), zs, os)
            if model.phi is not None:
                vs = model.phi(hs) if hs is not None else None
                loss = loss + model.weak_loss(model.phi(h1), model.phi(h2), vs, os)[0]
            return loss
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(256, 3, 32, 32, generator=g), torch.randn(256, 3, 32, 32, generator=g)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        loss = loss_of(x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times[2:]


def data_times(method: str, steps: int, quick: bool) -> list[float]:
    """Seconds per training batch of the loader alone (wcl: including the batched augmentation)."""
    if method == "lightly_simclr":
        from lightly_simclr import train_loader

        loader, dm = train_loader(per_class=64 if quick else 1000), None
    else:
        dm = build_wcl(method, quick)[1]
        dm.setup("fit")
        if dm.crops.needs_table:  # no table yet: the first epoch's crops (from the sample itself), as in training
            dm.crops.attach(NeighborTable(len(dm.source.pretrain), 5))
        loader = dm.train_dataloader()
    it = iter(loader)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        batch = next(it, None)
        if batch is None:  # epoch exhausted (small --quick subsets): the next epoch, untimed, as Lightning starts it
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, EpochSampler):  # otherwise its position stays at the end: an empty epoch
                sampler.set_epoch(sampler.epoch + 1)
            it = iter(loader)
            start, batch = time.perf_counter(), next(it)
        if dm is not None:
            dm.on_after_batch_transfer(batch, 0)
        times.append(time.perf_counter() - start)
    return times[2:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="measured steps per fit (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 3 steps on 64 images/class")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
    torch.set_num_threads(args.threads)

    step_times: dict[str, list[float]] = {m: [] for m in args.methods}
    round_medians: dict[str, list[float]] = {m: [] for m in args.methods}
    ceiling_times: dict[str, list[float]] = {m: [] for m in args.methods}
    for _ in range(args.rounds):
        for m in args.methods:
            times = training_times(m, args.steps + args.warmup, args.quick)[args.warmup:]
            step_times[m] += times
            round_medians[m].append(statistics.median(times))
            ceiling_times[m] += ceiling(m, args.steps)
    rows = []
    for m in args.methods:
        views, crops = images_per_step(m)
        train_s = statistics.median(step_times[m])
        ceil_s = statistics.median(ceiling_times[m])
        data_s = statistics.median(data_times(m, args.steps, args.quick))
        rows.append({"method": m, "step_s": train_s, "train_img_s": views / train_s,
                     "train_img_s_with_crops": (views + crops) / train_s, "ceiling_step_s": ceil_s,
                     "ceiling_img_s": (views + crops) / ceil_s, "data_img_s": (views + crops) / data_s,
                     "pipeline_vs_ceiling": ceil_s / train_s, "steps_measured": len(step_times[m]),
                     "round_median_step_s": round_medians[m]})
    simclr = next((r for r in rows if r["method"] == "simclr"), None)
    for r in rows:
        r["step_vs_simclr"] = r["step_s"] / simclr["step_s"] if simclr else None
    meta = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds, "quick": args.quick}
    if args.json:
        print(json.dumps({**meta, "rows": rows}))
        return
    print(f"torch {meta['torch']}, {args.threads} threads, {args.rounds} rounds × {args.steps} steps, "
          f"batch 2 × 256 at 32 px\n")
    print("| method | step (s) | per-round medians (s) | training img/s | ceiling img/s | training / ceiling | "
          "data img/s | step / SimCLR step |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        train = f"{r['train_img_s']:.0f}"
        if r["train_img_s_with_crops"] != r["train_img_s"]:
            train += f" ({r['train_img_s_with_crops']:.0f} with crops)"
        rel = f"{r['step_vs_simclr']:.2f}" if r["step_vs_simclr"] else ""
        rounds = ", ".join(f"{t:.2f}" for t in r["round_median_step_s"])
        print(f"| {r['method']} | {r['step_s']:.3f} | {rounds} | {train} | {r['ceiling_img_s']:.0f} | "
              f"{r['pipeline_vs_ceiling']:.2f} | {r['data_img_s']:.0f} | {rel} |")


if __name__ == "__main__":
    main()
