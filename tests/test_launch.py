"""The distributed engine as users launch it: ``torchrun`` across two "nodes", SLURM's variables, a dying rank.

Every run is ``python -m wcl fit`` in its own processes (gloo on CPU). The weight comparisons freeze BatchNorm
(its statistics are per rank by design, and ``sync_batchnorm`` needs a GPU), so only the global-batch losses couple
the samples and 2 ranks × B must end where 1 process × 2B ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from tests.helpers import free_port

pytestmark = pytest.mark.slow  # every test here launches processes

ROOT = Path(__file__).resolve().parents[1]
B = 6  # per rank; 2 classes × 12 images = 24 = 2 steps of the global batch 12
FIT = ["-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--trainer.accelerator", "cpu",
       "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
       "--data.dataset", "bundled", "--data.train_per_class", "12", "--data.val_per_class", "1",
       "--data.num_workers", "0", "--model.width", "4", "--model.proj_hidden_dim", "32",
       "--model.weak_hidden_dim", "32", "--model.knn_every_n_epochs", "0",
       "--model.base_lr", "0.5", "--model.lr_scaling", "none", "--model.warmup_epochs", "0"]


class FreezeBatchNorm(Callback):
    """BatchNorm in eval mode from the first step: each sample's features depend on that sample only."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        for m in pl_module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


class DumpWeights(Callback):
    """Each rank's weights before the first step and after the last: ``<out>/rank<r>_start.pt``, ``rank<r>.pt``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), Path(self.out) / f"rank{trainer.global_rank}_start.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), Path(self.out) / f"rank{trainer.global_rank}.pt")


class KillRank(Callback):
    """SIGKILLs rank ``rank`` after training step ``step`` (as the OOM killer would), first writing the time."""

    def __init__(self, rank: int = 1, step: int = 2, stamp: str = "killed.txt") -> None:
        self.rank, self.step, self.stamp = rank, step, stamp

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            Path(self.stamp).write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _fit_args(out: Path, batch_size: int, *extra: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [*FIT, "--data.batch_size", str(batch_size), "--trainer.default_root_dir", str(out),
            "--trainer.callbacks+=tests.test_launch.FreezeBatchNorm",
            "--trainer.callbacks+=tests.test_launch.DumpWeights", f"--trainer.callbacks.out={out}", *extra]


def _check(procs: list[subprocess.Popen], timeout: float = 300) -> None:
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]


def _assert_same_weights(out: Path, single: Path) -> None:
    """Both ranks start from the single process's weights and end where it ends, after it moved them."""
    start, ref = torch.load(single / "rank0_start.pt"), torch.load(single / "rank0.pt")
    keys = [k for k, v in ref.items() if v.is_floating_point()]
    moved = max(float((ref[k] - start[k]).abs().max()) for k in keys)
    assert moved > 1e-2
    for rank in (0, 1):
        for name, want in (("_start", start), ("", ref)):
            got = torch.load(out / f"rank{rank}{name}.pt")
            for k in keys:
                torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=f"rank {rank}{name}: {k}")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """1 process × the global batch 2B: the reference run."""
    out = tmp_path_factory.mktemp("single")
    _check([subprocess.Popen([sys.executable, *_fit_args(out, 2 * B)], cwd=ROOT, env=_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)])
    return out


def test_torchrun_two_nodes_equal_one_process_with_the_global_batch(tmp_path, single):
    """The multi-node command of docs/guide/distributed.md, one ``torchrun`` per "node" (c10d on localhost)."""
    out, port = tmp_path / "nodes", free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}", "--node_rank", str(node),
         "--rdzv_id", "wcl-test", *_fit_args(out, B, "--trainer.num_nodes", "2", "--trainer.devices", "1",
                                             "--trainer.strategy", "ddp")[1:]],
        cwd=ROOT, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for node in (0, 1)]
    _check(procs)
    _assert_same_weights(out, single)


def test_slurm_variables_two_tasks_equal_one_process_with_the_global_batch(tmp_path, single):
    """What ``srun`` gives two tasks on two nodes (one GPU each), simulated: Lightning's ``SLURMEnvironment``
    reads the ranks and the world size from these variables and rendezvouses at MASTER_ADDR:MASTER_PORT."""
    out, port = tmp_path / "slurm", free_port()
    procs = []
    for task in (0, 1):
        env = _env(SLURM_JOB_ID="4242", SLURM_JOB_NAME="wcl", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1",
                   SLURM_NNODES="2", SLURM_PROCID=str(task), SLURM_LOCALID="0", SLURM_NODEID=str(task),
                   SLURM_NODELIST="localhost", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, *_fit_args(out, B, "--trainer.num_nodes", "2", "--trainer.devices", "1",
                                        "--trainer.strategy", "ddp")],
            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    _check(procs)
    _assert_same_weights(out, single)


def test_a_dying_rank_stops_the_other_within_seconds_with_one_line(tmp_path):
    """Rank 1 is SIGKILLed after step 2 of 8: rank 0 stops at its next collective and names the lost rank."""
    stamp = tmp_path / "killed.txt"
    proc = subprocess.Popen(
        [sys.executable, *FIT, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "3",
         "--data.train_per_class", "24", "--trainer.default_root_dir", str(tmp_path / "run"),
         "--trainer.callbacks+=tests.test_launch.KillRank", f"--trainer.callbacks.stamp={stamp}"],
        cwd=ROOT, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.time()
    assert stamp.exists(), err[-3000:]
    assert ended - float(stamp.read_text()) < 30, "the survivor kept waiting for the dead rank"
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("wcl: error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err[-3000:]
    assert errors[0].startswith("wcl: error: rank 1 of this 2-process run is gone"), errors
