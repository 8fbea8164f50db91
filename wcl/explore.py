"""Explore the embeddings ``python -m wcl predict`` wrote: weak-label clusters, near-duplicates, search by example,
a 2-D map and pictures of the largest clusters.

    python -m wcl.explore runs/quickstart/embeddings/val [--query IMAGE --k 10] [--min-size 3]

Every output goes next to the embeddings (or into ``--out``):

* ``clusters.csv`` (``row,cluster,size,path,label``): WCL's weak labels of the whole set — the connected
  components of the 1-nearest-neighbour graph, a clustering with no number of clusters to choose. With labels,
  purity and NMI are printed, next to faiss k-means with the same number of clusters;
* ``duplicates.csv`` (``row_a,row_b,cosine,path_a,path_b``): pairs among each image's ``--dup-k`` neighbours with
  cosine >= ``--dup-threshold``;
* ``query.csv`` and ``query.png`` (with ``--query``): the ``--k`` nearest images of a query image, embedded by the
  checkpoint recorded at predict time;
* ``map.png``: PCA (or ``--map umap``, with ``pip install wcl[umap]``) of the embeddings, coloured by label or
  cluster; ``clusters.png``: thumbnails of the largest clusters, one row each (both need matplotlib:
  ``pip install wcl[explore]``);
* ``explore.json``: the numbers printed.

The search is exact (``wcl.neighbors.topk_cosine``) up to ``--exact-max`` rows and approximate (IVF) beyond.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wcl.errors import ConfigError, DataError, WCLError
from wcl.files import stops_cleanly, write_whole

PROG = "python -m wcl.explore"
# Cosine at and above which two images count as near-duplicates, measured on the bundled val images with a
# 6-epoch quickstart checkpoint (BENCHMARKS.md, "Using the encoder"): 99 % of images have no other image at
# >= 0.992 (backbone features are non-negative, so distinct images are already at 0.97 median), while a
# re-encoded, resized and shifted copy of an image sits at 0.986 median. 0.99 keeps false pairs to about 1 % of
# the images and finds the closer copies.
DUP_THRESHOLD = 0.99
# Exact search up to this many rows. Its cost grows with N²: on 2 CPU cores faiss's exact 10-NN table of
# 50,000 × 128 rows takes 16 s, of 1,281,167 rows about 3 h, the IVF one 5.7 min (BENCHMARKS.md, "KNN table of the
# multi-crop"); at 100,000 rows exact is about a minute.
EXACT_MAX = 100_000


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


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbors(x: np.ndarray, k: int, exact_max: int = EXACT_MAX, nprobe: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(N×k cosines, N×k row ids) of every row's k nearest other rows: exact up to ``exact_max`` rows, IVF beyond."""
    from wcl.neighbors import neighbors_of_rows

    backend = "torch" if x.shape[0] <= exact_max else "faiss_ivf"
    sim, idx = neighbors_of_rows(torch.from_numpy(x), k, backend, nprobe)
    return sim.numpy(), idx.numpy()


def components(nn: np.ndarray) -> np.ndarray:
    """Weak labels from each row's nearest neighbour: components of the undirected 1-NN graph, numbered by their
    smallest row (as :func:`wcl.graph.weak_labels` numbers them)."""
    from wcl.graph import components_scipy

    return components_scipy(torch.from_numpy(np.asarray(nn, dtype=np.int64))).numpy()


def _contingency(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    from scipy.sparse import coo_matrix

    return coo_matrix((np.ones(len(p)), (p, t)), shape=(p.max() + 1, t.max() + 1)).tocsr()


def purity(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of samples whose cluster's most frequent true class is their own."""
    c = _contingency(pred, true)
    return float(c.max(axis=1).sum() / len(pred))


def nmi(pred: np.ndarray, true: np.ndarray) -> float:
    """Normalized mutual information I(P;T) / ((H(P) + H(T)) / 2) (arithmetic normalisation; torchmetrics')."""
    from torchmetrics.functional.clustering import normalized_mutual_info_score

    pred, true = torch.from_numpy(np.asarray(pred)), torch.from_numpy(np.asarray(true))
    with torch.sparse.check_sparse_tensor_invariants(False):  # opted out explicitly: torchmetrics warns otherwise
        return float(normalized_mutual_info_score(pred, true, average_method="arithmetic"))


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """faiss k-means (spherical: cosine) with ``k`` clusters; the cluster of every row."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=256)
    km.train(x)
    return km.index.search(x, 1)[1].ravel()


def duplicates(sim: np.ndarray, idx: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (a < b, cosine) among the neighbour lists with cosine >= threshold, each pair once, best first."""
    rows, cols = np.nonzero(sim >= threshold)
    other = idx[rows, cols]
    lo, hi, s = np.minimum(rows, other), np.maximum(rows, other), sim[rows, cols]
    order = np.lexsort((-s, hi, lo))  # by pair, best cosine first
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    best = np.argsort(-s[first], kind="stable")
    return list(zip(lo[first][best].tolist(), hi[first][best].tolist(), s[first][best].tolist(), strict=True))


# ----- images -------------------------------------------------------------------------------------------------


class Images:
    """Opens the image of a row: its file, or (``split#i`` rows of datasets without files) the dataset rebuilt
    from embedding.json."""

    def __init__(self, emb: Embeddings) -> None:
        self.emb, self._ds = emb, None

    def __call__(self, row: int, size: int = 64):
        from PIL import Image

        from wcl.data.datasets import rgb_loader

        path = self.emb.paths[row]
        if "#" in path and not Path(path).is_file():
            img = self._dataset()[int(path.rsplit("#", 1)[1])][0]
        else:
            img = rgb_loader(path)
        return img.resize((size, size), Image.BICUBIC)

    def _dataset(self):
        if self._ds is None:
            from wcl.data.source import DataSource

            data = dict(self.emb.meta.get("data") or {})
            if not data:
                raise DataError(f"{self.emb.folder} names its images by index but has no embedding.json to rebuild "
                                "the dataset from; write it again with `python -m wcl predict`.")
            split = data.pop("split")
            self._ds = DataSource(**data).split(split)
        return self._ds


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("the pictures need matplotlib: pip install 'wcl[explore]' (or pass --no-pictures).") \
            from err
    return plt


def pca_2d(x: np.ndarray) -> np.ndarray:
    """N×2 projection on the two leading principal axes (covariance D×D, so any N)."""
    mean = x.mean(0)
    cov = np.zeros((x.shape[1], x.shape[1]))
    for s in range(0, len(x), 65536):
        c = x[s:s + 65536] - mean
        cov += c.T.astype(np.float64) @ c
    _, vecs = np.linalg.eigh(cov)
    return (x - mean) @ vecs[:, ::-1][:, :2].astype(np.float32)


def _umap():
    try:
        import umap
    except ImportError as err:
        raise ConfigError("--map umap needs umap-learn: pip install 'wcl[umap]' (or use --map pca).") from err
    return umap


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    return _umap().UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x)


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure as a PNG file, written whole (:func:`wcl.files.write_whole`), then closed."""
    write_whole(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    _pyplot().close(fig)


def write_csv(path: Path, header: list[str], rows: Any) -> None:
    """A CSV file (``header``, then ``rows``), written whole."""
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(header)
    w.writerows(rows)
    write_whole(path, lambda f: f.write(table.getvalue().encode()))


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


def draw_map(path: Path, xy: np.ndarray, colour: np.ndarray, names: list[str] | None, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    if names is not None:  # classes
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for c in np.unique(colour):
            m = colour == c
            ax.scatter(xy[m, 0], xy[m, 1], s=5, color=cmap(int(c) % cmap.N), label=names[c] if c < len(names) else c)
        if len(names) <= 20:
            ax.legend(fontsize=7, loc="best", markerscale=1.5)
    else:  # clusters: the 10 largest in colour, the others grey
        ids, counts = np.unique(colour, return_counts=True)
        top = ids[np.argsort(-counts)[:10]]
        grey = ~np.isin(colour, top)
        ax.scatter(xy[grey, 0], xy[grey, 1], c="lightgrey", s=3)
        for rank, cid in enumerate(top):
            m = colour == cid
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=plt.cm.tab10(rank), label=f"cluster {cid} ({m.sum()})")
        ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def draw_rows(path: Path, rows: list[tuple[str, list[int]]], images: Images, per_row: int) -> None:
    """A grid of thumbnails: one titled row per entry."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 0.9, len(rows) * 1.05), squeeze=False)
    for r, (title, members) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(members):
                ax.imshow(images(members[c]))
        axes[r][0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout(pad=0.3)
    save_figure(fig, path, dpi=80)


# ----- query --------------------------------------------------------------------------------------------------


def query_image(image: str | Path):
    """The query as an RGB image, or one line saying why it cannot be one."""
    from PIL import UnidentifiedImageError

    from wcl.data.datasets import rgb_loader

    p = Path(image).expanduser()
    if not p.is_file():
        raise DataError(f"the query image {p} does not exist.")
    try:
        return rgb_loader(str(p))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"the query {p} is not an image PIL can read ({err}); pass a .jpg or .png file.") from err


def query_checkpoint(emb: Embeddings) -> str:
    """The checkpoint that wrote ``emb``, checked to hold the same weights now (its SHA-256, size and time are in
    embedding.json): a query embedded by other weights than the rows would be compared with nothing it matches."""
    from wcl.files import describe_file, file_identity

    ckpt, tf = emb.meta.get("checkpoint"), emb.meta.get("transform")
    if not ckpt or not tf:
        raise DataError(f"{emb.folder / 'embedding.json'} does not record the checkpoint and transform, so a query "
                        "cannot be embedded like the rows; write the embeddings again with `python -m wcl predict`.")
    if not Path(ckpt).is_file():
        raise DataError(f"the checkpoint that wrote {emb.folder}, {ckpt}, is gone; a query must be embedded by the "
                        "same weights as the rows: restore it, or write the embeddings again with `python -m wcl "
                        "predict`.")
    then = emb.meta.get("checkpoint_file")
    if then:
        now = file_identity(ckpt, known=then)
        if now["sha256"] != then.get("sha256"):
            raise DataError(f"the checkpoint changed since predict wrote {emb.folder}: then "
                            f"{describe_file(ckpt, then)}, now {describe_file(ckpt, now)}; a query embedded by the "
                            "new weights would not match the rows. Write the embeddings again with `python -m wcl "
                            "predict`, or restore that checkpoint.")
    return ckpt


def embed_query(emb: Embeddings, image: str | Path) -> np.ndarray:
    """The query image's row, embedded by the checkpoint and transform recorded in embedding.json."""
    from wcl.data.augment import Augmentations, eval_transform
    from wcl.eval.checkpoint import load_backbone

    img = query_image(image)
    ckpt, tf = query_checkpoint(emb), emb.meta["transform"]
    backbone, _ = load_backbone(ckpt)
    aug = Augmentations(crop_size=tf["crop_size"], mean=tuple(tf["mean"]), std=tuple(tf["std"]))
    with torch.no_grad():
        q = backbone.eval()(eval_transform(aug, tf["resize"])(img)[None]).float().numpy()
    return normalized(q)


# ----- the command --------------------------------------------------------------------------------------------


def explore(args: argparse.Namespace) -> list[str]:
    """Runs every step; returns the lines it printed."""
    from wcl.neighbors import search

    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    emb = load(args.embeddings)
    out = output_folder(Path(args.out).expanduser() if args.out else emb.folder)
    x = normalized(emb.x)
    n = len(x)
    summary: dict[str, Any] = {"rows": n, "dim": int(x.shape[1])}
    # Everything that can refuse is checked before the work: the query, the pictures' needs.
    by_label = args.color == "label" or (args.color == "auto" and emb.has_labels)
    if args.pictures and by_label and not emb.has_labels:
        raise ConfigError("--color label needs labels in index.csv; use --color cluster.")
    if args.pictures:
        _pyplot()
        if args.map == "umap":
            _umap()
    if args.query:
        q = embed_query(emb, args.query)
        if q.shape[1] != x.shape[1]:
            raise DataError(f"{emb.meta['checkpoint']} gives {q.shape[1]}-dim features but {emb.folder} holds "
                            f"{x.shape[1]}-dim rows; embedding.json names another checkpoint than the one that wrote "
                            "them. Write the embeddings again with `python -m wcl predict`.")

    start = time.perf_counter()
    k = max(1, min(args.dup_k, n - 1))
    sim, idx = neighbors(x, k, args.exact_max, args.nprobe)
    weak = components(idx[:, 0])
    ids, sizes = np.unique(weak, return_counts=True)
    size_of = sizes[weak]
    shown = np.where(size_of >= args.min_size, weak, -1)
    summary.update(clusters=int(len(ids)), clusters_min_size=int((sizes >= args.min_size).sum()),
                   largest=int(sizes.max()), search="exact" if n <= args.exact_max else "ivf",
                   seconds_search=round(time.perf_counter() - start, 3))
    write_csv(out / "clusters.csv", ["row", "cluster", "size", "path", "label"],
              ([r, int(shown[r]), int(size_of[r]), emb.paths[r], emb.labels[r] if emb.labels[r] >= 0 else ""]
               for r in range(n)))
    say(f"wcl.explore: wrote {out / 'clusters.csv'}: {len(ids)} weak-label clusters of {n} images (mean size "
        f"{n / len(ids):.1f}, largest {sizes.max()}; {summary['clusters_min_size']} of size >= {args.min_size})")
    if emb.has_labels:
        summary.update(purity=purity(weak, emb.labels), nmi=nmi(weak, emb.labels))
        text = f"purity {summary['purity']:.3f}, NMI {summary['nmi']:.3f}"
        if args.kmeans and len(ids) < n:
            km = kmeans(x, len(ids), args.seed)
            summary.update(kmeans_purity=purity(km, emb.labels), kmeans_nmi=nmi(km, emb.labels))
            text += (f"; faiss k-means with {len(ids)} clusters: purity {summary['kmeans_purity']:.3f}, "
                     f"NMI {summary['kmeans_nmi']:.3f}")
        say(f"wcl.explore: weak-label clusters vs the labels: {text}")

    pairs = duplicates(sim, idx, args.dup_threshold)
    write_csv(out / "duplicates.csv", ["row_a", "row_b", "cosine", "path_a", "path_b"],
              ([a, b, f"{s:.4f}", emb.paths[a], emb.paths[b]] for a, b, s in pairs))
    summary["duplicate_pairs"] = len(pairs)
    say(f"wcl.explore: wrote {out / 'duplicates.csv'}: {len(pairs)} pairs with cosine >= {args.dup_threshold}")

    images = Images(emb)
    if args.query:
        qs, qi = search(torch.from_numpy(q), torch.from_numpy(x), args.k)
        hits = list(zip(qi[0].tolist(), qs[0].tolist(), strict=True))
        write_csv(out / "query.csv", ["rank", "row", "cosine", "path", "label"],
                  ([rank, r, f"{s:.4f}", emb.paths[r], emb.labels[r] if emb.labels[r] >= 0 else ""]
                   for rank, (r, s) in enumerate(hits, 1)))
        say(f"wcl.explore: wrote {out / 'query.csv'}: the {len(hits)} nearest images of {Path(args.query).name}")
        if args.pictures:
            _query_strip(out / "query.png", args.query, hits, images)
            say(f"wcl.explore: wrote {out / 'query.png'}")

    if args.pictures:
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(n, size=min(n, args.map_points), replace=False))
        xy = pca_2d(x[pick]) if args.map == "pca" else umap_2d(x[pick], args.seed)
        classes = emb.meta.get("classes") or None
        names = (classes or [str(c) for c in range(int(emb.labels.max()) + 1)]) if by_label else None
        draw_map(out / "map.png", xy, emb.labels[pick] if by_label else weak[pick], names,
                 f"{args.map.upper()} of {len(pick)} of {n} embeddings, coloured by "
                 + ("label" if by_label else "weak-label cluster"))
        say(f"wcl.explore: wrote {out / 'map.png'}")
        if emb.paths[0]:
            largest = ids[np.argsort(-sizes, kind="stable")[: args.rows]]
            rows = []
            for cid in largest:
                members = np.nonzero(weak == cid)[0]
                title = f"cluster {cid}: {len(members)} images"
                if emb.has_labels:
                    top = np.bincount(emb.labels[members]).argmax()
                    share = float((emb.labels[members] == top).mean())
                    title += f", {share:.0%} {classes[top] if classes else top}"
                rows.append((title, members[: args.per_row].tolist()))
            draw_rows(out / "clusters.png", rows, images, args.per_row)
            say(f"wcl.explore: wrote {out / 'clusters.png'}")
    summary["seconds"] = round(time.perf_counter() - start, 3)
    write_whole(out / "explore.json", lambda f: f.write((json.dumps(summary, indent=1) + "\n").encode()))
    say(f"wcl.explore: wrote {out / 'explore.json'} ({summary['seconds']:.1f} s)")
    return lines


def _query_strip(path: Path, query: str, hits: list[tuple[int, float]], images: Images) -> None:
    from PIL import Image

    from wcl.data.datasets import rgb_loader

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(hits) + 1, figsize=((len(hits) + 1) * 1.0, 1.4), squeeze=False)
    axes[0][0].imshow(rgb_loader(str(query)).resize((64, 64), Image.BICUBIC))
    axes[0][0].set_title("query", fontsize=7)
    for j, (r, s) in enumerate(hits, 1):
        axes[0][j].imshow(images(r))
        axes[0][j].set_title(f"{s:.2f}", fontsize=7)
    for ax in axes[0]:
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    save_figure(fig, path, dpi=110)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("embeddings", help="a folder with embeddings.npy and index.csv (one split written by predict)")
    p.add_argument("--out", help="where to write (default: the embeddings folder)")
    p.add_argument("--min-size", type=int, default=1, help="clusters smaller than this get cluster -1 in clusters.csv")
    p.add_argument("--query", help="an image file: its nearest images go to query.csv and query.png")
    p.add_argument("--k", type=int, default=10, help="neighbours of the query (default 10)")
    p.add_argument("--dup-threshold", type=float, default=DUP_THRESHOLD,
                   help=f"cosine at which two images count as near-duplicates (default {DUP_THRESHOLD})")
    p.add_argument("--dup-k", type=int, default=5, help="neighbours per image searched for duplicates (default 5)")
    p.add_argument("--no-kmeans", dest="kmeans", action="store_false",
                   help="skip the faiss k-means comparison (run only with labels)")
    p.add_argument("--map", choices=("pca", "umap"), default="pca", help="2-D map (umap needs wcl[umap])")
    p.add_argument("--map-points", type=int, default=20000, help="rows drawn in map.png (a random sample)")
    p.add_argument("--color", choices=("auto", "label", "cluster"), default="auto",
                   help="colour of map.png (auto: labels when every row has one)")
    p.add_argument("--rows", type=int, default=8, help="clusters in clusters.png (the largest)")
    p.add_argument("--per-row", type=int, default=12, help="thumbnails per cluster in clusters.png")
    p.add_argument("--no-pictures", dest="pictures", action="store_false", help="write the CSVs only")
    p.add_argument("--exact-max", type=int, default=EXACT_MAX,
                   help=f"exact search up to this many rows, approximate IVF beyond (default {EXACT_MAX})")
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists searched (approximate search)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        for key in ("min_size", "k", "dup_k", "map_points", "rows", "per_row", "nprobe", "exact_max"):
            if getattr(args, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
        if not -1.0 <= args.dup_threshold <= 1.0:
            raise ConfigError(f"--dup-threshold is a cosine in [-1, 1], got {args.dup_threshold}")
        with stops_cleanly(PROG):
            explore(args)
    except WCLError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
