"""``EmbeddingWriter``: what ``python -m wcl predict`` writes — one ``embeddings.npy`` + ``index.csv`` per split.

Each rank keeps the features of the samples its loader gave it, by dataset index, and saves them as a shard;
rank 0 merges the shards into one file in dataset order, keeping each dataset index once. Whatever the sampler
(Lightning's unpadded one, a padded ``DistributedSampler``, or none, so that every rank embeds everything) the
result has each image exactly once, in order.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

META = "embedding.json"


class EmbeddingWriter(BasePredictionWriter):
    """Writes, for each predict loader (split) ``S`` of the data module, ``OUT/S/embeddings.npy`` (N×D),
    ``OUT/S/index.csv`` (``row,path,label``: the image file, or ``split#index`` for datasets without files; the
    label empty where unknown) and ``OUT/S/embedding.json`` (checkpoint, transform, classes: what
    ``python -m wcl.explore`` needs to embed a query image the same way).

    Args:
        output_dir: ``OUT``; default ``<trainer.default_root_dir>/embeddings``.
        dtype: ``float16`` (half the disk) or ``float32``.
        normalize: L2-normalize every row (cosine similarity is then an inner product).
        checkpoint: recorded in ``embedding.json`` (the model passes its own).
    """

    def __init__(self, output_dir: str | None = None, dtype: Literal["float16", "float32"] = "float16",
                 normalize: bool = True, checkpoint: str | None = None) -> None:
        super().__init__("batch")
        self.output_dir, self.dtype, self.normalize, self.checkpoint = output_dir, dtype, normalize, checkpoint
        self._parts: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._seconds: dict[int, list[float]] = {}
        self.written: list[Path] = []

    def root(self, trainer: Trainer) -> Path:
        return Path(self.output_dir or Path(trainer.default_root_dir) / "embeddings").expanduser().resolve()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._parts, self._seconds, self.written = {}, {}, []

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        self._seconds.setdefault(dataloader_idx, [time.perf_counter(), 0.0])

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        feats = prediction["features"].detach().float()
        if self.normalize:
            feats = F.normalize(feats, dim=1)
        self._parts.setdefault(dataloader_idx, []).append((
            prediction["index"].cpu().numpy().astype(np.int64),
            feats.to(getattr(torch, self.dtype)).cpu().numpy(),
            prediction["label"].cpu().numpy().astype(np.int64)))
        self._seconds[dataloader_idx][1] = time.perf_counter()  # after the copy to the host

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        splits = dm.predict_splits() if hasattr(dm, "predict_splits") else {}
        names = list(splits) or [f"predict_{i}" for i in range(len(trainer.num_predict_batches))]
        root, rank = self.root(trainer), trainer.global_rank
        for i, name in enumerate(names):
            out = root / name
            out.mkdir(parents=True, exist_ok=True)
            parts = self._parts.get(i, [])
            index, feats, labels = (np.concatenate(t) for t in zip(*parts, strict=True)) if parts else (
                np.zeros(0, np.int64), np.zeros((0, 0), self.dtype), np.zeros(0, np.int64))
            np.savez(out / f".shard-{rank}.npz", index=index, features=feats, labels=labels)
        trainer.strategy.barrier("wcl-embeddings-shards")
        if trainer.is_global_zero:
            for i, name in enumerate(names):
                start, end = self._seconds.get(i, [0.0, 0.0])
                self.written.append(self._merge(trainer, root / name, name, splits.get(name), end - start))
        trainer.strategy.barrier("wcl-embeddings-merged")
        self.written = trainer.strategy.broadcast(self.written, src=0)

    def _merge(self, trainer: Trainer, out: Path, name: str, dataset: Any, seconds: float) -> Path:
        shards = sorted(out.glob(".shard-*.npz"))
        loaded = [dict(np.load(p)) for p in shards]
        for p in shards:
            p.unlink()
        loaded = [s for s in loaded if len(s["index"])]
        if not loaded:
            raise RuntimeError(f"no {name} image was embedded")
        index = np.concatenate([s["index"] for s in loaded])
        order = np.argsort(index, kind="stable")
        first = np.ones(len(order), dtype=bool)
        first[1:] = index[order][1:] != index[order][:-1]
        rows = order[first]  # each dataset index once, in dataset order
        index = index[rows]
        feats = np.concatenate([s["features"] for s in loaded])[rows]
        labels = np.concatenate([s["labels"] for s in loaded])[rows]
        np.save(out / "embeddings.npy", np.ascontiguousarray(feats))
        with open(out / "index.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "path", "label"])
            for row, (i, y) in enumerate(zip(index.tolist(), labels.tolist(), strict=True)):
                w.writerow([row, _path_of(dataset, i, name), y if y >= 0 else ""])
        total = len(dataset) if dataset is not None else len(index)
        dm = trainer.datamodule
        meta = {
            "checkpoint": str(Path(self.checkpoint).expanduser().resolve()) if self.checkpoint else None,
            "split": name, "rows": int(len(index)), "dim": int(feats.shape[1]), "dtype": self.dtype,
            "normalized": self.normalize, "classes": list(getattr(dm, "class_names", None) or []),
            "transform": _transform_of(dm), "data": _data_of(dm, name),
        }
        (out / META).write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wcl: wrote {out / 'embeddings.npy'} ({len(index)}×{feats.shape[1]} {self.dtype}"
              f"{', L2-normalized' if self.normalize else ''}) and index.csv", flush=True)
        if total > len(index):
            missing = sorted(set(range(total)) - set(index.tolist()))
            print(f"wcl: {len(missing)} {name} images could not be decoded and were skipped (skip_corrupt), e.g. "
                  f"{_path_of(dataset, missing[0], name)}; index.csv lists the embedded ones", file=sys.stderr,
                  flush=True)
        print(f"wcl: {name}: {len(index) / max(seconds, 1e-9):.0f} images/s ({len(index)} images in {seconds:.1f} s "
              f"on rank 0, data loading included)", flush=True)
        return out


def _path_of(dataset: Any, i: int, name: str) -> str:
    """The image file of sample ``i``, or ``name#i`` for datasets that keep no files (CIFAR, STL-10 binaries)."""
    from torch.utils.data import Subset

    ds = dataset
    while isinstance(ds, Subset):
        ds, i = ds.dataset, ds.indices[i]
    samples = getattr(ds, "samples", None)
    if samples is not None:
        return str(Path(samples[i][0]).resolve())
    return f"{name}#{i}"


def _transform_of(dm: Any) -> dict[str, Any] | None:
    aug = getattr(dm, "augment", None)
    if aug is None:
        return None
    return {"crop_size": aug.crop_size, "resize": getattr(dm, "eval_resize", None) or aug.crop_size,
            "mean": list(aug.mean), "std": list(aug.std)}


def _data_of(dm: Any, name: str) -> dict[str, Any] | None:
    """How to rebuild a split without files (``name#i`` rows) for thumbnails."""
    source = getattr(dm, "source", None)
    if source is None:
        return None
    return {"dataset": source.dataset, "root": str(Path(source.root).resolve()) if source.root else None,
            "train_per_class": source.train_per_class, "val_per_class": source.val_per_class,
            "split": "pretrain" if name == "train" else "val"}
