"""The command line of ``python -m wcl.explore``: its options, each with its range in its ``type``, and a parser
whose every error is one line, exit code 2."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from wcl.explore.clusters import DUP_THRESHOLD, EXACT_MAX

PROG = "python -m wcl.explore"


def _number(kind: type, within: Callable[[Any], bool], need: str) -> Callable[[str], Any]:
    """An argparse ``type``: the option's text as a ``kind`` for which ``within`` holds, else the error ``must be
    {need}, got …`` (that the parser writes as one line naming the option)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}") from None
        if not within(value):  # NaN too: no comparison holds
            raise argparse.ArgumentTypeError(f"must be {need}, got {value}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "an int >= 1")
cosine = _number(float, lambda v: -1.0 <= v <= 1.0, "a cosine in [-1, 1]")


class Parser(argparse.ArgumentParser):
    """argparse with each error in one line and exit code 2: a value out of range as ``python -m wcl.explore:
    error: --k must be an int >= 1, got 0``; any other error followed by where the options are listed."""

    def error(self, message: str) -> NoReturn:
        option = re.match(r"argument (\S+): (?=must be )", message)  # a value out of its type's range
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
