"""The command line of ``python -m wcl.explore``: its options, each with its range in its ``type``, and a parser
whose every error is one line, exit code 2."""

from __future__ import annotations

import argparse
import re
import sys
from typing import NoReturn

from wcl.explore.clusters import DUP_THRESHOLD, EXACT_MAX

PROG = "python -m wcl.explore"


def positive_int(text: str) -> int:
    """An option's value as an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cosine(text: str) -> float:
    """An option's value as a cosine, a number in [-1, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"is a cosine in [-1, 1], got {text!r}") from None
    if not -1.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"is a cosine in [-1, 1], got {value}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with each error in one line and exit code 2: a value out of range as ``python -m wcl.explore:
    error: --k must be >= 1, got 0``; any other error followed by where the options are listed."""

    def error(self, message: str) -> NoReturn:
        option = re.match(r"argument (\S+): (?=must be|is a )", message)  # the message of a range type
        message = (f"{option[1]} {message[option.end():]}" if option
                   else f"{message} (`{PROG} --help` lists the options)")
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(2)


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of ``python -m wcl.explore``; ``description`` heads its ``--help`` page."""
    p = Parser(prog=PROG, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)

    def count(option: str, default: int, text: str) -> None:
        p.add_argument(option, type=positive_int, default=default, metavar="N",
                       help=f"{text} (an int >= 1, default %(default)s)")

    p.add_argument("embeddings", help="a folder with embeddings.npy and index.csv (one split written by predict)")
    p.add_argument("--out", help="where to write (default: the embeddings folder)")
    count("--min-size", 1, "clusters smaller than this get cluster -1 in clusters.csv")
    p.add_argument("--query", help="an image file: its nearest images go to query.csv and query.png")
    count("--k", 10, "neighbours of the query")
    p.add_argument("--dup-threshold", type=cosine, default=DUP_THRESHOLD, metavar="COSINE",
                   help="cosine at which two images count as near-duplicates (in [-1, 1], default %(default)s)")
    count("--dup-k", 5, "neighbours per image searched for duplicates")
    p.add_argument("--no-kmeans", dest="kmeans", action="store_false",
                   help="skip the faiss k-means comparison (run only with labels)")
    p.add_argument("--map", choices=("pca", "umap"), default="pca", help="2-D map (umap needs wcl[umap])")
    count("--map-points", 20000, "rows drawn in map.png, a random sample")
    p.add_argument("--color", choices=("auto", "label", "cluster"), default="auto",
                   help="colour of map.png (auto: labels when every row has one)")
    count("--rows", 8, "clusters in clusters.png, the largest")
    count("--per-row", 12, "thumbnails per cluster in clusters.png")
    p.add_argument("--no-pictures", dest="pictures", action="store_false", help="write the CSVs only")
    count("--exact-max", EXACT_MAX, "exact search up to this many rows, approximate IVF beyond")
    count("--nprobe", 16, "IVF lists searched by the approximate search")
    p.add_argument("--seed", type=int, default=0)
    return p
