"""Every subcommand run the ways users run it — in a terminal (a pseudo-terminal), into a file (``> log 2>&1``),
into a pipe with the progress bar off — and stopped by SIGTERM: exit 143, nothing half-written.

Tiny settings throughout (20 bundled images, width 4, one epoch); each case is one process."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wcl.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DATA = ["--data.train_per_class", "2", "--data.val_per_class", "1", "--data.batch_size", "10",
        "--data.eval_batch_size", "10", "--data.num_workers", "0"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def _fit(config: str, out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIGS / config), "--trainer.default_root_dir", str(out),
            "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1", *DATA, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A pretraining, a probe and a fine-tune checkpoint, and predict's embeddings of the pretraining one."""
    tmp = tmp_path_factory.mktemp("subcommands")
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    main(_fit("quickstart.yaml", tmp / "pre", "--model.width", "4", *quiet))
    pre = tmp / "pre" / "checkpoints" / "last.ckpt"
    main(_fit("linear/quickstart.yaml", tmp / "probe", "--model.checkpoint", str(pre), *quiet))
    main(_fit("finetune/quickstart_10pct.yaml", tmp / "ft", "--model.checkpoint", str(pre),
              "--data.label_fraction", "0.5", *quiet))
    main(["predict", "--config", str(CONFIGS / "embed" / "quickstart.yaml"), "--model.checkpoint", str(pre),
          "--model.output_dir", str(tmp / "emb"), *DATA, *quiet])
    return {"tmp": tmp, "pre": pre, "probe": tmp / "probe" / "checkpoints" / "last.ckpt",
            "ft": tmp / "ft" / "checkpoints" / "last.ckpt", "emb": tmp / "emb" / "val"}


def _command(name: str, runs: dict[str, Path], out: Path) -> tuple[list[str], str]:
    """The command line of subcommand ``name`` writing into ``out``, and a line its output must hold."""
    pre, wcl = str(runs["pre"]), [sys.executable, "-m", "wcl"]
    if name == "fit":
        return [*wcl, *_fit("quickstart.yaml", out, "--model.width", "4")], "wcl: checkpoint:"
    if name == "probe":
        return [*wcl, *_fit("linear/quickstart.yaml", out, "--model.checkpoint", pre)], "wcl: final val/top1"
    if name == "finetune":
        return [*wcl, *_fit("finetune/quickstart_10pct.yaml", out, "--model.checkpoint", pre,
                            "--data.label_fraction", "0.5")], "wcl: final val/top1"
    if name == "validate-pretraining":
        return [*wcl, "validate", "--config", str(CONFIGS / "quickstart.yaml"), "--model.width", "4", *DATA,
                "--trainer.default_root_dir", str(out), "--ckpt_path", pre], "wcl: val/knn_top1 = "
    if name == "validate-probe":
        return [*wcl, "validate", "--config", str(CONFIGS / "linear" / "quickstart.yaml"), "--model.checkpoint", pre,
                *DATA, "--trainer.default_root_dir", str(out), "--ckpt_path", str(runs["probe"])], "wcl: val/top1 = "
    if name == "validate-finetune":
        return [*wcl, "validate", "--config", str(CONFIGS / "finetune" / "quickstart_10pct.yaml"), "--model.checkpoint",
                pre, *DATA, "--data.label_fraction", "0.5", "--trainer.default_root_dir", str(out), "--ckpt_path",
                str(runs["ft"])], "wcl: val/top1 = "
    if name == "validate-knn":
        return [*wcl, "validate", "--config", str(CONFIGS / "knn" / "quickstart.yaml"), "--model.checkpoint", pre,
                *DATA, "--trainer.default_root_dir", str(out)], "wcl: val/knn_top1 = "
    if name == "predict":
        return [*wcl, "predict", "--config", str(CONFIGS / "embed" / "quickstart.yaml"), "--model.checkpoint", pre,
                *DATA, "--model.output_dir", str(out)], "wcl: wrote"
    if name == "export":
        return [sys.executable, "-m", "wcl.export", pre, str(out / "backbone.pt")], "load with:"
    if name == "explore":
        return [sys.executable, "-m", "wcl.explore", str(runs["emb"]), "--out", str(out), "--dup-k", "2"], \
            "wcl.explore: wrote"
    raise ValueError(name)


def run_in_terminal(cmd: list[str], timeout: float = 600) -> tuple[int, str]:
    """``cmd`` with its stdout and stderr on a pseudo-terminal (as in an interactive shell): (exit status, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "COLUMNS": "120", "TERM": "xterm"}, stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: every writer is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def run_as(mode: str, cmd: list[str], log: Path) -> tuple[int, str]:
    """``terminal``: on a pseudo-terminal; ``file``: ``> log 2>&1``; ``bar-off``: into a pipe, progress bar off."""
    if mode == "terminal":
        return run_in_terminal(cmd)
    if mode == "file":
        with open(log, "w") as f:
            code = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT, timeout=600).returncode
        return code, log.read_text()
    proc = subprocess.run([*cmd, "--trainer.enable_progress_bar", "false"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


CASES = [(name, mode) for name in ("fit", "validate-pretraining", "validate-probe", "validate-finetune",
                                   "validate-knn", "predict", "probe", "finetune")
         for mode in ("terminal", "file", "bar-off")] + \
        [(name, mode) for name in ("export", "explore") for mode in ("terminal", "file")]  # no progress bar


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_every_subcommand_in_a_terminal_a_file_and_a_pipe(runs, tmp_path, name, mode):
    cmd, expected = _command(name, runs, tmp_path / "out")
    code, output = run_as(mode, cmd, tmp_path / "log")
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "Error" not in output.replace("wcl: error", ""), output[-3000:]
    assert expected in output, output[-3000:]
    if mode == "terminal" and name not in ("export", "explore"):
        assert "\x1b[" in output  # the terminal got the rich progress display, not the plain lines
    if mode == "file" and name not in ("export", "explore"):
        assert "\x1b[" not in output  # a log file gets plain lines, no terminal control codes


def _stopped(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 143, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def _no_temporary_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".shard-")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fit", "probe", "finetune"])
def test_sigterm_stops_a_fit_with_143_and_a_whole_last_checkpoint(runs, tmp_path, name):
    cmd, _ = _command(name, runs, tmp_path / "out")
    proc = _stopped([*cmd, "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "3",
                     "--trainer.callbacks+=tests.helpers.SignalAtStep", "--trainer.callbacks.step=1"])
    assert "wcl: interrupted at step 1 (SIGTERM)" in proc.stdout
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 1
    _no_temporary_files(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["validate-pretraining", "validate-probe", "validate-finetune", "validate-knn",
                                  "predict"])
def test_sigterm_stops_validate_and_predict_with_143_writing_nothing(runs, tmp_path, name):
    """Lightning notes the signal in every loop but stops only fit: validate and predict ran to the end and exited
    0. Now they stop after the batch, exit 143, and leave the fit's checkpoints and the output folder untouched."""
    stage = "predict" if name == "predict" else "validate"
    cmd, _ = _command(name, runs, tmp_path / "out")
    before = {p: p.stat().st_mtime_ns for p in runs["tmp"].rglob("*.ckpt")}
    proc = _stopped([*cmd, "--trainer.enable_progress_bar", "false",
                     "--trainer.callbacks+=tests.faults.SignalAtBatch", f"--trainer.callbacks.stage={stage}"])
    assert "wcl: val/" not in proc.stdout and "wcl: wrote" not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in runs["tmp"].rglob("*.ckpt")} == before  # no checkpoint was saved
    if name == "predict":
        assert not list((tmp_path / "out").rglob("embeddings.npy"))
    if (tmp_path / "out").exists():
        _no_temporary_files(tmp_path / "out")


@pytest.mark.slow
def test_sigterm_stops_export_and_explore_with_143_and_whole_files(runs, tmp_path, monkeypatch, capsys):
    """A stop in the middle of writing (here: SIGTERM while the file is half written) leaves the files written before
    whole and no trace of the one being written."""
    import signal as signals

    import wcl.explore
    import wcl.export

    real_save = torch.save

    def save_then_stop(obj, f):
        real_save(obj, f)
        os.kill(os.getpid(), signals.SIGTERM)

    monkeypatch.setattr(wcl.export.torch, "save", save_then_stop)
    with pytest.raises(SystemExit) as stop:
        wcl.export.main([str(runs["pre"]), str(tmp_path / "backbone.pt")])
    assert stop.value.code == 143 and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    real_duplicates = wcl.explore.duplicates

    def duplicates_then_stop(*args):
        os.kill(os.getpid(), signals.SIGTERM)
        return real_duplicates(*args)

    monkeypatch.setattr(wcl.explore, "duplicates", duplicates_then_stop)
    with pytest.raises(SystemExit) as stop:
        wcl.explore.main([str(runs["emb"]), "--out", str(tmp_path / "ex"), "--no-pictures"])
    assert stop.value.code == 143
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["clusters.csv"]
    rows = (tmp_path / "ex" / "clusters.csv").read_text().splitlines()
    assert len(rows) == 1 + np.load(runs["emb"] / "embeddings.npy").shape[0]  # whole
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert signals.getsignal(signals.SIGTERM) is not duplicates_then_stop  # the handlers are restored
