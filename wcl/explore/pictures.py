"""The pictures of ``python -m wcl.explore`` (matplotlib, PNG files written whole): a 2-D map of the embeddings,
thumbnails of the largest clusters, a query's nearest images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wcl.errors import ConfigError, DataError
from wcl.explore.files import Embeddings
from wcl.files import write_whole


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


def _umap():
    try:
        import umap
    except ImportError as err:
        raise ConfigError("--map umap needs umap-learn: pip install 'wcl[umap]' (or use --map pca).") from err
    return umap


def require(map_kind: str) -> None:
    """The packages the pictures need (matplotlib; umap-learn for ``--map umap``), or one line naming the extra."""
    _pyplot()
    if map_kind == "umap":
        _umap()


def pca_2d(x: np.ndarray) -> np.ndarray:
    """N×2 projection on the two leading principal axes (covariance D×D, so any N)."""
    mean = x.mean(0)
    cov = np.zeros((x.shape[1], x.shape[1]))
    for s in range(0, len(x), 65536):
        c = x[s:s + 65536] - mean
        cov += c.T.astype(np.float64) @ c
    _, vecs = np.linalg.eigh(cov)
    return (x - mean) @ vecs[:, ::-1][:, :2].astype(np.float32)


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """N×2 UMAP embedding (cosine metric) of the N×D rows."""
    return _umap().UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x)


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure as a PNG file, written whole (:func:`wcl.files.write_whole`), then closed."""
    write_whole(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    _pyplot().close(fig)


def draw_map(path: Path, xy: np.ndarray, colour: np.ndarray, names: list[str] | None, title: str) -> None:
    """N×2 points ``xy`` coloured by class (``names`` given) or by cluster (the 10 largest in colour)."""
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


def draw_clusters(path: Path, weak: np.ndarray, rows: int, per_row: int, images: Images) -> None:
    """Thumbnails of the ``rows`` largest clusters of ``weak`` (N cluster ids), each titled by its size and, with
    labels, its most frequent class and that class's share."""
    emb = images.emb
    classes = emb.meta.get("classes") or None
    ids, sizes = np.unique(weak, return_counts=True)
    titled = []
    for cid in ids[np.argsort(-sizes, kind="stable")[:rows]]:
        members = np.nonzero(weak == cid)[0]
        title = f"cluster {cid}: {len(members)} images"
        if emb.has_labels:
            top = np.bincount(emb.labels[members]).argmax()
            share = float((emb.labels[members] == top).mean())
            title += f", {share:.0%} {classes[top] if classes else top}"
        titled.append((title, members[:per_row].tolist()))
    draw_rows(path, titled, images, per_row)


def draw_query(path: Path, query: str, hits: list[tuple[int, float]], images: Images) -> None:
    """The query image, then its nearest rows (``hits``: row, cosine) titled by their cosine."""
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
