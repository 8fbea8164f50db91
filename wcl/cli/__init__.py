"""Command line: ``wcl fit|validate|predict --config …`` (LightningCLI), also ``python -m wcl``.

Models and data modules are named by ``class_path`` in YAML (``wcl.WCL``, ``wcl.WCLDataModule``), so every
``__init__`` argument is a config key, and a misspelt key or a value out of its declared range fails before anything
runs, in one line ``wcl: error: …`` with exit code 2. The parts:

* :mod:`wcl.cli.command` — ``WCLCLI`` (the composition) and ``main``;
* :mod:`wcl.cli.checks` — config files, the trainer's keys and the seed, callbacks, resumes, the run's length;
* :mod:`wcl.cli.run_folder` — overlay folder names, the run folder's lock, overwrite refusal, writable outputs;
* :mod:`wcl.cli.messages` — the one-line errors and warnings, and quiet output;
* :mod:`wcl.cli.help_pages` — the description, ``--version``, and the help pages' pointers and config values;
* :mod:`wcl.cli.summary` — the end-of-fit summary (a callback) and the validation's lines;
* :mod:`wcl.cli.lightning_private` — the only two private LightningCLI methods overridden.
"""

from wcl.cli.command import WCLCLI, main
from wcl.cli.messages import PROG
from wcl.cli.run_folder import config_files, root_dir_of, with_run_folder

__all__ = ["PROG", "WCLCLI", "config_files", "main", "root_dir_of", "with_run_folder"]
