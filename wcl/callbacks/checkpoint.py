"""``Checkpoint``: Lightning's ModelCheckpoint that never leaves a half-written file and saves on pre-emption.

Two places here reach into Lightning's private state because it offers no public way to do what they do; both
were checked against Lightning 2.6.6 (``pip show lightning``), and a change there fails
``tests/test_reliability.py`` (the exact-resume and Ctrl-C tests):

* :func:`keep_cut_epoch_unfinished` edits the fit loop's saved epoch progress (``checkpoint["loops"]``);
* :meth:`Checkpoint._on_sigint` sets ``trainer._signal_connector.received_sigterm`` (``Trainer.received_sigterm``
  is read-only), so a first Ctrl-C takes the path of Lightning's own stop on SIGTERM.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wcl.errors import WCLError

# The temporary name AtomicCheckpointIO writes to: ``<file>.<pid>-<8 hex>.tmp``.
_TMP = re.compile(r"\.(\d+)-[0-9a-f]{8}\.tmp$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointWriteError(WCLError, OSError):
    """A checkpoint could not be written (the disk or quota is full); the previous file is intact."""


def keep_cut_epoch_unfinished(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Records an epoch that a stop cut short (``max_steps``, ``max_time``, ``trainer.should_stop``) as unfinished in
    ``checkpoint``, so ``--ckpt_path`` continues it with its remaining batches.

    Lightning (checked with 2.6.6) offers no public way to do this: the saved loop state is edited here, in this
    one function. Lightning ends such an epoch as if it were complete: it counts it processed and runs the
    epoch-end hooks, where ``last.ckpt`` is saved. Resumed from that state, Lightning starts the next epoch, whose
    ``set_epoch`` moves the sampler past the batches of the cut epoch it has not trained on: the resumed run trains
    on other batches than an uninterrupted one. Here the fit loop's epoch progress is put back to the state a stop
    after the same step by SIGTERM saves (the epoch started, not processed), from which Lightning resumes in the
    middle of the epoch and the data module's saved position (:class:`wcl.data.sampling.EpochSampler`) gives its
    remaining batches.
    """
    fit = trainer.fit_loop
    batches = fit.epoch_loop.batch_progress
    epochs = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if epochs is None or batches.is_last_batch or batches.current.ready >= trainer.num_training_batches:
        return  # the epoch ran all its batches (or no fit loop state is saved)
    started = fit.epoch_progress.total.started
    if started == 0 or fit.epoch_progress.total.processed != started:
        return  # no epoch, or one that is still running: Lightning saves it as unfinished itself
    for progress in (epochs["total"], epochs["current"]):
        progress["processed"] = progress["completed"] = progress["started"] - 1


class ResumesWhereItStopped:
    """Mixed into the LightningModules that train (``WCL``, the probe, fine-tuning), so that any checkpoint saver
    is covered: an epoch cut by a stop is saved unfinished (:func:`keep_cut_epoch_unfinished`), and the schedule's
    planned length (``self._schedule_steps``, set by ``configure_optimizers``) is saved and compared on resume
    (:func:`wcl.optim.note_schedule_change`)."""

    _schedule_steps: int | None = None
    _resumed_schedule_steps: int | None = None

    def schedule_is_constant(self) -> bool:
        """True when the learning rate does not depend on the run's length (no cosine decay)."""
        return False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        keep_cut_epoch_unfinished(self.trainer, checkpoint)  # type: ignore[attr-defined]
        checkpoint["schedule_steps"] = self._schedule_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        self._resumed_schedule_steps = checkpoint.get("schedule_steps")

    def on_train_start(self) -> None:
        from wcl.optim import note_schedule_change

        super().on_train_start()  # type: ignore[misc]
        # Only a resumed fit continues a schedule: a model from ``load_from_checkpoint`` trained anew starts its own.
        resumed = self._resumed_schedule_steps if self.trainer.ckpt_path else None  # type: ignore[attr-defined]
        note_schedule_change(self.trainer, resumed, self._schedule_steps,  # type: ignore[attr-defined]
                             constant=self.schedule_is_constant())


class AtomicCheckpointIO(CheckpointIO):
    """Wraps the strategy's checkpoint writer: every file is written under a temporary name in its folder,
    flushed to disk, then renamed into place, so a kill during a save leaves the previous file intact."""

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = str(path)
        if "://" in path:  # remote storage (fsspec): no local rename to make it atomic
            self.inner.save_checkpoint(checkpoint, path, storage_options)
            return
        # A unique name: two writers of one path (another run, another rank) never share a temporary file.
        tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            self.inner.save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except BaseException as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            if _disk_full(err):
                raise CheckpointWriteError(_disk_full_message(Path(path))) from err
            raise
        os.replace(tmp, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, **kwargs: Any) -> dict[str, Any]:
        return self.inner.load_checkpoint(path, map_location, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a full disk or quota."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _disk_full_message(path: Path) -> str:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MB free"
    except OSError:
        free = "free space unknown"
    others = sorted(p.name for p in path.parent.glob("*.ckpt"))
    kept = f"the checkpoints there ({', '.join(others[:3])}{', …' if len(others) > 3 else ''}) are kept as they were" \
        if others else "no checkpoint was written yet"
    return (f"no space left on the device of {path.parent} ({free}) while saving {path.name}; {kept}. Free space "
            "there (or pass another --trainer.default_root_dir), then resume with --ckpt_path last.")


def remove_orphan_tmp_files(folder: Path) -> list[tuple[str, int]]:
    """Removes the temporary files of saves in ``folder`` whose process is gone from this machine (a kill -9 or a
    power loss during a save: :class:`AtomicCheckpointIO` had no chance to remove them); returns
    ``[(name, bytes)]`` of the removed files. A file of a process that still runs is another save in progress."""
    removed = []
    for p in sorted(folder.glob("*.tmp")) if folder.is_dir() else []:
        match = _TMP.search(p.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            size = p.stat().st_size
            p.unlink()
        except OSError:
            continue
        removed.append((p.name, size))
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (all of its arguments work as usual) with five changes:

    * the default ``dirpath`` is ``<default_root_dir>/checkpoints`` (not inside the logger's version folder), so
      ``--ckpt_path last`` finds the previous run's ``last.ckpt`` after a restart (``python -m wcl`` sets it
      before the path is resolved; in Python, pass ``dirpath`` to use ``ckpt_path="last"``);
    * ``last.ckpt`` is overwritten, never versioned (``last-v1.ckpt``), also after a resume;
    * an epoch's checkpoint is written when its training ends, before its validation, so an error in validation
      loses no training (``save_on_train_epoch_end``);
    * every file is written to a temporary name in the same folder and renamed into place
      (:class:`AtomicCheckpointIO`), so a kill during a save leaves the previous checkpoint intact; a full disk
      stops the run with one line naming the folder, and the temporary file of a save that a kill -9 cut short is
      removed when the next fit starts;
    * on SIGTERM or a first Ctrl-C (SIGINT) the run stops after the current step (Lightning's stop on SIGTERM)
      and ``last.ckpt`` is saved before the process exits, so ``--ckpt_path last`` continues exactly as an
      uninterrupted run would. A second Ctrl-C stops at once and leaves ``last.ckpt`` as it was: a checkpoint
      taken in the middle of a step would not resume exactly. Under SLURM with auto-requeue, Lightning's own
      SIGUSR1 handler saves and requeues.
    """

    def __init__(self, save_last: bool | Literal["link"] | None = True, enable_version_counter: bool = False,
                 save_on_train_epoch_end: bool | None = True, **kwargs: Any) -> None:
        super().__init__(save_last=save_last, enable_version_counter=enable_version_counter,
                         save_on_train_epoch_end=save_on_train_epoch_end, **kwargs)
        self._sigint = False

    def default_dirpath(self, trainer: Trainer) -> str:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        return str(self.dirpath)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.default_dirpath(trainer)
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO(trainer.strategy.checkpoint_io)
        if stage == "fit" and trainer.is_global_zero and "://" not in str(self.dirpath):
            for name, size in remove_orphan_tmp_files(Path(self.dirpath)):
                print(f"wcl: removed {Path(self.dirpath) / name} ({size / 2**20:.1f} MB), the unfinished file of a "
                      "save that was killed", flush=True)
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After Lightning's own handlers are set (it restores every signal's handler when the run ends).
        self._sigint = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda signum, frame: self._on_sigint(trainer, frame))

    def _on_sigint(self, trainer: Trainer, frame: FrameType | None) -> None:
        """A first Ctrl-C stops like SIGTERM, after the current step; a second one stops at once."""
        if self._sigint or trainer.received_sigterm:
            raise KeyboardInterrupt
        self._sigint = True
        trainer._signal_connector.received_sigterm = True  # private (Lightning 2.6.6): see the module docstring
        if trainer.is_global_zero:
            print("\nwcl: Ctrl-C: stopping after this step to save last.ckpt (Ctrl-C again stops at once, without "
                  "saving)", flush=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.dirpath is None:
            return
        path = str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        if isinstance(exception, KeyboardInterrupt):
            if trainer.is_global_zero and trainer.state.fn == TrainerFn.FITTING:
                kept = f"{path} is left as it was" if os.path.isfile(path) else "no last.ckpt was saved"
                print(f"wcl: stopped at once at step {trainer.global_step}; {kept} (a checkpoint taken in the "
                      "middle of a step would not resume exactly)", flush=True)
            return
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return  # validate and predict have no training to save: last.ckpt stays the fit's
        exception.signum = signal.SIGINT if self._sigint else signal.SIGTERM  # the exit status of python -m wcl
        self.last_model_path = path  # part of the saved state
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            name = "Ctrl-C" if self._sigint else "SIGTERM"
            print(f"wcl: interrupted at step {trainer.global_step} ({name}); saved {path}. Resume with --ckpt_path "
                  "last", flush=True)
