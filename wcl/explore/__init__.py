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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wcl.errors import ConfigError, WCLError
from wcl.explore.arguments import PROG, parser
from wcl.explore.clusters import (
    DUP_THRESHOLD,
    EXACT_MAX,
    components,
    duplicates,
    kmeans,
    neighbors,
    nmi,
    normalized,
    purity,
)
from wcl.explore.files import Embeddings, load, output_folder, write_csv, write_json
from wcl.explore.pictures import Images, draw_clusters, draw_map, draw_query, pca_2d, require, umap_2d
from wcl.explore.query import embed_query
from wcl.files import stops_cleanly

__all__ = ["DUP_THRESHOLD", "EXACT_MAX", "PROG", "Embeddings", "components", "duplicates", "explore", "kmeans",
           "load", "main", "neighbors", "nmi", "normalized", "parser", "purity"]


def explore(args: argparse.Namespace) -> list[str]:
    """Runs every step (the modules beside this one: files, clusters, query, pictures); returns the lines it
    printed."""
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
        require(args.map)
    if args.query:
        q = embed_query(emb, args.query)

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
            draw_query(out / "query.png", args.query, hits, images)
            say(f"wcl.explore: wrote {out / 'query.png'}")

    if args.pictures:
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(n, size=min(n, args.map_points), replace=False))
        xy = pca_2d(x[pick]) if args.map == "pca" else umap_2d(x[pick], args.seed)
        names = (emb.meta.get("classes") or [str(c) for c in range(int(emb.labels.max()) + 1)]) if by_label else None
        draw_map(out / "map.png", xy, emb.labels[pick] if by_label else weak[pick], names,
                 f"{args.map.upper()} of {len(pick)} of {n} embeddings, coloured by "
                 + ("label" if by_label else "weak-label cluster"))
        say(f"wcl.explore: wrote {out / 'map.png'}")
        if emb.paths[0]:
            draw_clusters(out / "clusters.png", weak, args.rows, args.per_row, images)
            say(f"wcl.explore: wrote {out / 'clusters.png'}")
    summary["seconds"] = round(time.perf_counter() - start, 3)
    write_json(out / "explore.json", summary)
    say(f"wcl.explore: wrote {out / 'explore.json'} ({summary['seconds']:.1f} s)")
    return lines


def main(argv: list[str] | None = None) -> None:
    """``python -m wcl.explore``: a bad option or input is one line and exit code 2; SIGTERM or Ctrl-C one line and
    exit code 143 or 130."""
    args = parser(__doc__).parse_args(argv)
    try:
        with stops_cleanly(PROG):
            explore(args)
    except WCLError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)
