"""The two private ``LightningCLI`` methods wcl overrides; nothing else in wcl/cli/ relies on Lightning internals.

Checked on lightning 2.6.6, the version the test suite ran on (pyproject.toml bounds ``lightning`` to 2.6.x):
``LightningCLI.__init__`` calls ``_parse_ckpt_path()`` right after parsing, and ``_run_subcommand(name)`` runs
``before_<name>``, the trainer's method and ``after_<name>``. A Lightning release that renames either breaks the
behaviour below silently; ``tests/test_cli.py`` and ``tests/test_errors.py`` cover both.
"""

from __future__ import annotations

from typing import IO

from lightning.pytorch.cli import LightningCLI


class PrivateHooks(LightningCLI):
    """Keeps the config's model on ``--ckpt_path`` and frees the run folder's lock however a subcommand ends."""

    _lock: IO[str] | None = None

    def _parse_ckpt_path(self) -> None:
        # Lightning's version replaces the config's model by the checkpoint's hyper-parameters, silently; wcl keeps
        # the config and compares the two (wcl.cli.checks.check_resume) before fit and validate.
        return

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # main() may run again in this process (tests, notebooks): the folder is free again
            if self._lock is not None:
                self._lock.close()
                self._lock = None
