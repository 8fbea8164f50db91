"""``python -m wcl``: the same command line as the ``wcl`` console script."""

from wcl.cli import main

main()
