"""The files of ``python -m wcl.explore``: one split as ``predict`` wrote it, read and checked; the output folder;
CSV files written whole."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wcl.errors import ConfigError, DataError
from wcl.files import write_whole


@dataclass
class Embeddings:
    """One split written by ``predict``: ``x`` N×D float32, ``rows`` from index.csv, ``meta`` from embedding.json."""

    folder: Path
    x: np.ndarray
    paths: list[str]
    labels: np.ndarray  # LongTensor-like int64, -1 unknown
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).all()) and len(set(self.labels.tolist())) >= 2


def load(folder: str | Path) -> Embeddings:
    """Read ``embeddings.npy``, ``index.csv`` and (if present) ``embedding.json`` from ``folder``."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise DataError(f"{d} is not a folder; pass the folder `python -m wcl predict` wrote (e.g. "
                        "runs/quickstart/embeddings/val).")
    if not (d / "embeddings.npy").is_file():
        sub = sorted(p.parent.name for p in d.glob("*/embeddings.npy"))
        hint = (f"it holds the splits {', '.join(sub)}: pass one of them, e.g. {d / sub[0]}" if sub else
                "write them with `python -m wcl predict --config configs/embed/quickstart.yaml --model.checkpoint "
                "CKPT`")
        raise DataError(f"no embeddings.npy in {d}; {hint}.")
    try:
        x = np.load(d / "embeddings.npy", mmap_mode="r")
    except (ValueError, OSError) as err:
        raise DataError(f"cannot read {d / 'embeddings.npy'}: {err}. Write it again with `python -m wcl predict`.") \
            from err
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise DataError(f"{d / 'embeddings.npy'} holds an array of shape {x.shape}; expected N×D with N >= 2 rows "
                        "and D >= 1 columns. Write it again with `python -m wcl predict`.")
    paths, labels = [], []
    if (d / "index.csv").is_file():
        with open(d / "index.csv", newline="") as f:
            for r in csv.DictReader(f):
                paths.append(r["path"])
                labels.append(int(r["label"]) if r.get("label") not in (None, "") else -1)
        if len(paths) != x.shape[0]:
            raise DataError(f"{d / 'index.csv'} has {len(paths)} rows but embeddings.npy {x.shape[0]}; write both "
                            "again with `python -m wcl predict`.")
    else:
        paths, labels = [""] * x.shape[0], [-1] * x.shape[0]
    meta = json.loads((d / "embedding.json").read_text()) if (d / "embedding.json").is_file() else {}
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        first = f"row {bad[0]}" + (f", {paths[bad[0]]}" if paths[bad[0]] else "")
        raise DataError(f"{d / 'embeddings.npy'} has {len(bad)} row(s) with NaN or inf values ({first}); write the "
                        "embeddings again with `python -m wcl predict` (a non-finite row comes from a checkpoint "
                        "whose weights are not finite, or a file changed after predict wrote it).")
    return Embeddings(d, x, paths, np.asarray(labels, dtype=np.int64), meta)


def output_folder(out: Path) -> Path:
    """``--out`` (or the embeddings folder): a folder, created if needed; one line where it cannot be."""
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        what = "--out" if blocker == out else f"--out {out} cannot be created:"
        raise ConfigError(f"{what} {blocker} is a file, not a folder; give a folder (it is created if needed).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the output folder {out}: {err.strerror or err}; pass another --out.") \
            from err
    return out


def write_csv(path: Path, header: list[str], rows: Any) -> None:
    """A CSV file (``header``, then ``rows``), written whole."""
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(header)
    w.writerows(rows)
    write_whole(path, lambda f: f.write(table.getvalue().encode()))


def write_json(path: Path, summary: dict[str, Any]) -> None:
    """``summary`` as an indented JSON file, written whole."""
    write_whole(path, lambda f: f.write((json.dumps(summary, indent=1) + "\n").encode()))
