"""``EmbeddingWriter``: what ``python -m wcl predict`` writes — one ``embeddings.npy`` + ``index.csv`` per split.

Each rank keeps the features of the samples its loader gave it, by dataset index, and saves them as a shard;
rank 0 merges the shards into one file in dataset order, keeping each dataset index once. Whatever the sampler
(Lightning's unpadded one, a padded ``DistributedSampler``, or none, so that every rank embeds everything) the
result has each image exactly once, in order.

An output folder belongs to one checkpoint and one data set: ``embedding.json`` records the checkpoint's identity
(SHA-256, size, modification time), and a predict into a folder that holds the embeddings of another checkpoint,
other images or another transform stops before it embeds anything (``overwrite`` replaces them). While a predict
writes, it holds a lock on the folder, its shards carry the run's own name, and each file is renamed into place
whole, so two runs never mix their rows and a stopped run leaves no half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from wcl.errors import ConfigError
from wcl.files import describe_file, file_identity, lock_folder, write_whole

META = "embedding.json"
LOCK = ".wcl-predict.lock"
# What a split folder holds of one set of embeddings: predict's files and what wcl.explore derived from them.
DERIVED = ("embeddings.npy", "index.csv", META, "clusters.csv", "duplicates.csv", "query.csv", "query.png", "map.png",
           "clusters.png", "explore.json")


class EmbeddingWriter(BasePredictionWriter):
    """Writes, for each predict loader (split) ``S`` of the data module, ``OUT/S/embeddings.npy`` (N×D),
    ``OUT/S/index.csv`` (``row,path,label``: the image file, or ``split#index`` for datasets without files; the
    label empty where unknown) and ``OUT/S/embedding.json`` (checkpoint, transform, classes: what
    ``python -m wcl.explore`` needs to embed a query image the same way).

    Args:
        output_dir: ``OUT``; default ``<trainer.default_root_dir>/embeddings``.
        dtype: ``float16`` (half the disk) or ``float32``.
        normalize: L2-normalize every row (cosine similarity is then an inner product).
        checkpoint: recorded in ``embedding.json`` with its identity (the model passes its own).
        overwrite: replace the embeddings of another checkpoint, other images or another transform in ``OUT``
            (without it, such a predict stops before it starts, naming both checkpoints).
    """

    def __init__(self, output_dir: str | None = None, dtype: Literal["float16", "float32"] = "float16",
                 normalize: bool = True, checkpoint: str | None = None, overwrite: bool = False) -> None:
        super().__init__("batch")
        self.output_dir, self.dtype, self.normalize, self.checkpoint = output_dir, dtype, normalize, checkpoint
        self.overwrite = overwrite
        self._parts: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._seconds: dict[int, list[float]] = {}
        self._run, self._identity, self._lock = "", None, None
        self.written: list[Path] = []

    def root(self, trainer: Trainer) -> Path:
        return Path(self.output_dir or Path(trainer.default_root_dir) / "embeddings").expanduser().resolve()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from wcl.callbacks.guards import stop_everywhere

        self._parts, self._seconds, self.written = {}, {}, []
        problem, identity, run = None, None, uuid.uuid4().hex[:8]
        if trainer.is_global_zero:
            try:
                identity = file_identity(self.checkpoint) if self.checkpoint else None
                root = self.root(trainer)
                self._lock = lock_folder(root, LOCK, "another predict is writing into {root} ({holder}); wait for "
                                         "it to end, or pass another --model.output_dir.")
                self._claim(root, trainer.datamodule, identity)
            except (ConfigError, OSError) as err:
                self._release()
                problem = str(err) if isinstance(err, ConfigError) else \
                    f"cannot write the embeddings into {self.root(trainer)}: {err.strerror or err}; choose a " \
                    "writable --model.output_dir."
        problem, self._identity, self._run = trainer.strategy.broadcast((problem, identity, run), src=0)
        if problem is not None:
            stop_everywhere(trainer, problem)

    def _claim(self, root: Path, dm: Any, identity: dict[str, Any] | None) -> None:
        """Stops (or, with ``overwrite``, clears the folders) where ``root`` holds the embeddings of another
        checkpoint, other images or another transform."""
        mine = self._describe_run(dm, identity)
        foreign = []
        for meta_file in sorted(root.glob(f"*/{META}")):
            try:
                theirs = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                theirs = {}
            reason = _other_owner(theirs, mine)
            if reason is not None:
                foreign.append((meta_file.parent, reason))
        if not foreign:
            return
        folder, reason = foreign[0]
        if not self.overwrite:
            raise ConfigError(f"{folder} holds the embeddings of {reason}, and this predict embeds "
                              f"{describe_file(mine['checkpoint'], identity)}; pass --model.output_dir DIR to write "
                              "them elsewhere, or --model.overwrite true to replace them.")
        for folder, _ in foreign:
            for name in DERIVED:
                (folder / name).unlink(missing_ok=True)
        print(f"wcl: replacing the embeddings of {reason} in {root} (--model.overwrite true)", flush=True)

    def _describe_run(self, dm: Any, identity: dict[str, Any] | None) -> dict[str, Any]:
        """What makes two runs' rows the same: the checkpoint, the images and the transform."""
        data = dict(_data_of(dm, "train") or {})
        data.pop("split", None)
        path = str(Path(self.checkpoint).expanduser().resolve()) if self.checkpoint else None
        return {"checkpoint": path, "checkpoint_file": identity, "data": data, "transform": _transform_of(dm)}

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._run:  # this run's shards, if the stop came while they were written
            for p in self.root(trainer).glob(f"*/.shard-{self._run}-{trainer.global_rank}.npz"):
                p.unlink(missing_ok=True)
        self._release()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

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
            write_whole(out / f".shard-{self._run}-{rank}.npz",
                        lambda f, i=index, x=feats, y=labels: np.savez(f, index=i, features=x, labels=y))
        trainer.strategy.barrier("wcl-embeddings-shards")
        if trainer.is_global_zero:
            for i, name in enumerate(names):
                start, end = self._seconds.get(i, [0.0, 0.0])
                self.written.append(self._merge(trainer, root / name, name, splits.get(name), end - start))
            self._release()
        trainer.strategy.barrier("wcl-embeddings-merged")
        self.written = trainer.strategy.broadcast(self.written, src=0)

    def _merge(self, trainer: Trainer, out: Path, name: str, dataset: Any, seconds: float) -> Path:
        shards = sorted(out.glob(f".shard-{self._run}-*.npz"))
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
        dm = trainer.datamodule
        meta = {
            "checkpoint": str(Path(self.checkpoint).expanduser().resolve()) if self.checkpoint else None,
            "checkpoint_file": self._identity,
            "split": name, "rows": int(len(index)), "dim": int(feats.shape[1]), "dtype": self.dtype,
            "normalized": self.normalize, "classes": list(getattr(dm, "class_names", None) or []),
            "transform": _transform_of(dm), "data": _data_of(dm, name),
        }
        table = io.StringIO()
        w = csv.writer(table)
        w.writerow(["row", "path", "label"])
        for row, (i, y) in enumerate(zip(index.tolist(), labels.tolist(), strict=True)):
            w.writerow([row, _path_of(dataset, i, name), y if y >= 0 else ""])
        # The record of what the rows are goes first and comes back last: a stop in between leaves rows without an
        # embedding.json (explore refuses a query on them), never rows named by another run's record.
        (out / META).unlink(missing_ok=True)
        write_whole(out / "embeddings.npy", lambda f: np.save(f, np.ascontiguousarray(feats)))
        write_whole(out / "index.csv", lambda f: f.write(table.getvalue().encode()))
        write_whole(out / META, lambda f: f.write((json.dumps(meta, indent=1) + "\n").encode()))
        total = len(dataset) if dataset is not None else len(index)
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


def _other_owner(theirs: dict[str, Any], mine: dict[str, Any]) -> str | None:
    """Why a folder's ``embedding.json`` (``theirs``) belongs to another run than ``mine``, or ``None``."""
    old_file, new_file = theirs.get("checkpoint_file"), mine["checkpoint_file"]
    if old_file and new_file:
        other_checkpoint = old_file.get("sha256") != new_file.get("sha256")
    else:  # written before identities were recorded: the path is all there is
        other_checkpoint = theirs.get("checkpoint") != mine["checkpoint"]
    if other_checkpoint:
        return f"another checkpoint, {describe_file(theirs.get('checkpoint'), old_file)}"
    data = dict(theirs.get("data") or {})
    data.pop("split", None)
    if data != mine["data"]:
        where = f"{data.get('dataset')}" + (f" at {data['root']}" if data.get("root") else "") if data else \
            "images not recorded"
        return f"other images ({where}) by the same checkpoint"
    if theirs.get("transform") != mine["transform"]:
        return f"the same checkpoint with another transform ({theirs.get('transform')})"
    return None


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
