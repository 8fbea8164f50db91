"""Resume, atomic checkpoints, pre-emption, and the catalogue of bad inputs."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from wcl import WCLDataModule
from wcl.cli import main
from wcl.data import Augmentations
from wcl.graph import weak_labels
from wcl.losses import nt_xent_loss, weak_label_loss

ROOT = Path(__file__).resolve().parents[1]


def _args(out: Path, *extra: str) -> list[str]:
    """A 2-epoch multi-crop run on 60 bundled images, 3 steps per epoch."""
    return ["fit", "--config", "configs/quickstart.yaml", "--config", "configs/multicrop.yaml",
            "--trainer.max_epochs", "2", "--trainer.deterministic", "true",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--trainer.limit_val_batches", "0", "--data.train_per_class", "6", "--data.batch_size", "20",
            "--data.num_workers", "2", *extra]


def _same_run(a: Path, b: Path) -> None:
    """Two runs' last checkpoints hold the same weights, neighbour table and feature bank."""
    a, b = (torch.load(p / "checkpoints" / "last.ckpt", weights_only=False) for p in (a, b))
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    (ka, sa), (kb, sb) = ((next((k, v) for k, v in c["callbacks"].items() if "KnnMultiCrop" in k)) for c in (a, b))
    assert torch.equal(sa["table"], sb["table"]) and sa["epoch"] == sb["epoch"] == 1
    assert torch.equal(sa["bank"]["features"], sb["bank"]["features"])


@pytest.mark.slow
def test_run_killed_in_epoch_two_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(_args(tmp_path / "straight"))
    # SIGKILL in the middle of epoch 2 (step 5 of 6): only the end-of-epoch-1 checkpoint survives.
    killed = subprocess.run([sys.executable, "-m", "wcl", *_args(tmp_path / "killed"),
                             "--trainer.callbacks+=tests.helpers.SignalAtStep", "--trainer.callbacks.step=5",
                             "--trainer.callbacks.signal=SIGKILL"], cwd=ROOT, capture_output=True, timeout=600)
    assert killed.returncode == -9
    assert torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    main(_args(tmp_path / "killed", "--ckpt_path", "last"))
    _same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow
@pytest.mark.parametrize(("path", "stop"), [([], "SIGTERM"), (["--data.augment_on", "device", "--data.in_memory",
                                                                  "device"], "SIGTERM"), ([], "SIGINT")],
                         ids=["cpu", "device", "ctrl-c"])
def test_run_preempted_mid_epoch_resumes_with_the_same_batches_crops_and_table(tmp_path, path, stop):
    """SIGTERM, or Ctrl-C sent to the process and its data-loader workers, after step 4 (epoch 2, batch 1 of 3)
    saves last.ckpt mid-epoch; the resumed run trains on exactly the remaining batches of that epoch, with the
    same crops, and ends where an uninterrupted run ends."""
    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        record = ["--trainer.callbacks+=tests.helpers.RecordBatches", f"--trainer.callbacks.path={out}.log"]
        return subprocess.run([sys.executable, "-m", "wcl", *_args(out, *path, *record, *extra)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600, start_new_session=True)

    assert run(tmp_path / "straight").returncode == 0
    first = run(tmp_path / "preempted", "--trainer.callbacks+=tests.helpers.SignalAtStep", "--trainer.callbacks.step=4",
                f"--trainer.callbacks.signal={stop}", "--trainer.callbacks.group=true")
    assert first.returncode == 128 + getattr(signal, stop), first.stdout[-2000:] + first.stderr[-2000:]
    assert "wcl: interrupted at step 4" in first.stdout, first.stderr[-2000:]
    start = time.perf_counter()
    second = run(tmp_path / "preempted", "--ckpt_path", "last", "--trainer.enable_progress_bar", "true")
    seconds = time.perf_counter() - start
    assert second.returncode == 0, second.stderr[-2000:]
    assert "not resumable" not in second.stderr
    straight = (tmp_path / "straight.log").read_text().splitlines()
    resumed = (tmp_path / "preempted.log").read_text().splitlines()
    assert len(resumed) == 6 and resumed == straight  # steps 0-3, then 4-5 after the resume
    _same_run(tmp_path / "straight", tmp_path / "preempted")
    # The resumed epoch's line times the part run after the resume (it gets no on_train_epoch_start).
    epoch_seconds = float(re.search(r"epoch 2/2 done in ([0-9.]+) s", second.stdout).group(1))
    assert epoch_seconds <= seconds, second.stdout


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    from lightning.fabric.plugins import TorchCheckpointIO

    from wcl.callbacks import AtomicCheckpointIO

    last = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO(TorchCheckpointIO())
    io.save_checkpoint({"step": 1}, last)
    before = last.read_bytes()

    class DiesMidWrite(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt("killed while saving")

    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO(DiesMidWrite()).save_checkpoint({"step": 2}, last)
    assert last.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    assert torch.load(last, weights_only=False) == {"step": 1}  # still the previous, valid checkpoint


def test_atomic_saves_never_share_a_temporary_file(tmp_path):
    """Two writers of one path (two runs, two ranks) each write their own temporary file: a save neither reuses
    nor removes another writer's file in progress."""
    from lightning.fabric.plugins import TorchCheckpointIO

    from wcl.callbacks import AtomicCheckpointIO

    last = tmp_path / "last.ckpt"
    in_progress = tmp_path / "last.ckpt.tmp"  # another writer's file, under a fixed name
    in_progress.write_bytes(b"another writer")
    written = []

    class Recording(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            written.append(str(path))
            super().save_checkpoint(checkpoint, path, storage_options)

    io = AtomicCheckpointIO(Recording())
    io.save_checkpoint({"step": 1}, last)
    io.save_checkpoint({"step": 2}, last)
    assert len(set(written)) == 2 and str(in_progress) not in written and str(last) not in written
    assert in_progress.read_bytes() == b"another writer"
    assert torch.load(last, weights_only=False) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.tmp"]


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_resume_continues(tmp_path):
    cmd = [sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "3",
           "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
           "--trainer.limit_val_batches", "0", "--data.train_per_class", "10", "--data.batch_size", "20",
           "--data.num_workers", "0"]
    first = subprocess.run([*cmd, "--trainer.callbacks+=tests.helpers.SignalAtStep", "--trainer.callbacks.step=7"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 128 + 15, first.stdout[-2000:] + first.stderr[-2000:]
    assert "wcl: interrupted at step 7" in first.stdout
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 7
    second = subprocess.run([*cmd, "--ckpt_path", "last"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("last-")]  # no last-v1
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 15
    assert "training throughput 0 images/s" not in second.stdout and "training throughput" in second.stdout


def test_wrong_type_for_a_key(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--data.batch_size", "many"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "batch_size" in err and "many" in err


def _folder(root: Path, size: int, corrupt: int = 0) -> Path:
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for i in range(4):
            arr = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
            for split in ("train", "val"):
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    for i in range(corrupt):
        (root / "train" / "a" / f"bad{i}.jpg").write_bytes(b"\x00" * 10)
    return root


def test_images_smaller_than_the_crop(tmp_path):
    dm = WCLDataModule(dataset="imagefolder", root=str(_folder(tmp_path, 8)), batch_size=4, num_workers=0,
                       augment=Augmentations(crop_size=32))
    assert next(iter(dm.train_dataloader()))["views"][0].shape == (4, 3, 32, 32)
    assert next(iter(dm.val_dataloader()))["image"].shape == (8, 3, 32, 32)


def test_skip_corrupt_counts_and_substitutes(tmp_path):
    dm = WCLDataModule(dataset="imagefolder", root=str(_folder(tmp_path, 12, corrupt=2)), batch_size=5,
                       num_workers=0, skip_corrupt=True, augment=Augmentations(crop_size=8))
    ds = dm.train_dataloader().dataset
    samples = [ds[i] for i in range(len(ds))]
    # Sorted names put bad0.jpg, bad1.jpg last in class "a" (indices 4, 5): index 4 meets both, index 5 one.
    assert dm.skipped.get() == 3
    paths = [dm.source.pretrain.samples[s["index"]][0] for s in samples]
    assert not any("bad" in p for p in paths)


def test_same_sample_same_augmentation_in_any_process():
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2)
    ds = dm.train_dataloader().dataset
    a = ds[3]["views"][0]
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(ds[3]["views"][0], a)
    dm.epoch.set(1)
    assert not torch.equal(ds[3]["views"][0], a)  # a new epoch draws new augmentations


embeddings = st.integers(min_value=3, max_value=24).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=2, max_value=8), st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None)
@given(embeddings, st.floats(min_value=0.05, max_value=2.0))
def test_losses_finite_and_permutation_equivariant(spec, tau):
    n, d, seed = spec
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    for loss in (nt_xent_loss, weak_label_loss):
        value = loss(z1, z2, tau)
        assert torch.isfinite(value)
        assert loss(z1[perm], z2[perm], tau).item() == pytest.approx(value.item(), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(embeddings, st.floats(min_value=1e-3, max_value=1e3))
def test_weak_labels_invariant_to_order_and_scale(spec, scale):
    n, d, seed = spec
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = weak_labels(v)
    perm = torch.randperm(n, generator=g)
    permuted = weak_labels(v[perm])
    same = labels[:, None] == labels[None, :]
    same_p = permuted[:, None] == permuted[None, :]
    assert torch.equal(same[perm][:, perm], same_p)  # the same partition, whatever the order
    assert torch.equal(weak_labels(v * scale), labels)


def _tiny_fit(out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0", "--data.train_per_class", "4",
            "--data.batch_size", "10", "--data.num_workers", "0", "--model.width", "4", *extra]


@pytest.mark.slow
def test_resume_past_max_steps_and_with_accepted_changes(tmp_path, capsys):
    main(_tiny_fit(tmp_path, "--trainer.max_steps", "3"))
    main(_tiny_fit(tmp_path, "--trainer.max_steps", "6", "--ckpt_path", "last"))  # a longer schedule is no change
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    main(_tiny_fit(tmp_path, "--trainer.max_steps", "8", "--model.weak_weight", "0.5", "--ckpt_path", "last",
                   "--resume_with_changes", "true"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8 and last["hyper_parameters"]["weak_weight"] == 0.5
    out, err = capsys.readouterr()
    assert out.count("wcl: checkpoint:") == 3 and "metrics.csv" in out
    # The cosine follows the new length from the resume on: one line says so, not an error.
    assert "the learning-rate schedule now spans 6 steps, the checkpoint's run planned 3: from step 3 on" in err
    assert "now spans 8 steps, the checkpoint's run planned 6" in err

    # A model loaded with load_from_checkpoint and trained anew (no ckpt_path) starts its own schedule: no warning.
    from lightning.pytorch import Trainer

    from wcl import WCL, WCLDataModule

    model = WCL.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu")
    dm = WCLDataModule(dataset="bundled", train_per_class=4, batch_size=10, num_workers=0)
    Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(model, dm)
    assert "schedule now spans" not in capsys.readouterr().err


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_and_keeps_the_last_whole_checkpoint(tmp_path):
    """Ctrl-C twice in step 6 (epoch 2 of 4-step epochs): no checkpoint of a half-done step is written; last.ckpt
    stays the one of the end of epoch 1, from which --ckpt_path last resumes exactly."""
    run = _tiny_fit(tmp_path, "--trainer.max_epochs", "2", "--model.channels_last", "false")
    cmd = [sys.executable, "-m", "wcl", *run,
           "--trainer.callbacks+=tests.helpers.SignalAtStep", "--trainer.callbacks.step=6",
           "--trainer.callbacks.signal=SIGINT", "--trainer.callbacks.repeat=2"]
    stopped = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert stopped.returncode == 1, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "wcl: stopped at once at step 6" in stopped.stdout and "is left as it was" in stopped.stdout
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def _one_error(capsys, args: list[str], needle: str) -> str:
    """``python -m wcl ARGS`` stops with exit 2 and exactly one ``wcl: error:`` line holding ``needle``."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("wcl: error:") and needle in lines[0], lines
    return lines[0]


def test_runs_that_would_do_nothing_say_so_before_they_start(tmp_path, capsys):
    """log_every_n_steps 0 would drop every train/* column from metrics.csv; limit_train_batches 0 would train
    nothing; a probe's validate without its trained classifier (--ckpt_path) would score chance. Each stops in one
    line, before any step."""
    from tests.test_predict import tiny_checkpoint

    _one_error(capsys, _tiny_fit(tmp_path / "a", "--trainer.log_every_n_steps", "0"), "no training metric")
    assert not list((tmp_path / "a").rglob("*.ckpt")) and not list((tmp_path / "a").rglob("metrics.csv"))
    _one_error(capsys, _tiny_fit(tmp_path / "c", "--trainer.limit_train_batches", "0"), "trains nothing")
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    for config in ("linear/quickstart.yaml", "finetune/quickstart_10pct.yaml"):
        line = _one_error(capsys, ["validate", "--config", str(ROOT / "configs" / config), "--model.checkpoint",
                                   str(ckpt), "--trainer.default_root_dir", str(tmp_path / "probe"),
                                   "--data.train_per_class", "2", "--data.val_per_class", "1",
                                   "--data.num_workers", "0", "--data.label_fraction", "1.0"],
                          "without --ckpt_path would score an untrained")
        assert "--ckpt_path PATH" in line


def _fit_on(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--data.dataset", "imagefolder",
            "--data.root", str(root), "--data.num_workers", "0", "--model.width", "4", "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false", *extra]


@pytest.mark.slow
def test_two_processes_with_no_batch_each_stop_in_one_line(tmp_path):
    """16 images on 2 gloo processes at batch 10: 8 images each, no full batch; the run trained 0 steps, wrote no
    checkpoint and exited 0. Now one line (said by rank 0 only), exit 2."""
    for i in range(16):
        folder = tmp_path / "img" / "train" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 15 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    proc = subprocess.run(_fit_on(tmp_path / "img", tmp_path / "out", "--data.batch_size", "10",
                                  "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy",
                                  "ddp"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["wcl: error: 16 training images shared by 2 processes: 8 each, fewer than data.batch_size=10 "
                      "(incomplete batches are dropped), so the run would train 0 steps and save nothing; lower "
                      "--data.batch_size to 8 or less, use more images, or fewer processes (--trainer.devices / "
                      "--trainer.num_nodes)."], proc.stderr[-3000:]
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def test_a_full_disk_is_one_line_naming_the_folder_and_keeps_the_checkpoint(tmp_path):
    import errno

    from lightning.fabric.plugins import TorchCheckpointIO

    from wcl.callbacks import AtomicCheckpointIO
    from wcl.callbacks.checkpoint import CheckpointWriteError

    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO(TorchCheckpointIO()).save_checkpoint({"step": 1}, last)

    class FullDisk(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointWriteError) as err:
        AtomicCheckpointIO(FullDisk()).save_checkpoint({"step": 2}, last)
    assert f"no space left on the device of {tmp_path}" in str(err.value) and "last.ckpt) are kept" in str(err.value)
    assert "\n" not in str(err.value)
    assert torch.load(last, weights_only=False) == {"step": 1} and sorted(tmp_path.iterdir()) == [last]


@pytest.mark.slow
def test_a_full_disk_in_a_fit_and_a_kill_during_a_save(tmp_path):
    """End to end: the disk fills at the end of epoch 2 (one line, exit 2, last.ckpt of epoch 1 intact); a kill -9
    in the middle of a save leaves a temporary file, which the next start removes (and only that one)."""
    cmd = _tiny_fit(tmp_path / "full", "--trainer.max_epochs", "2")
    proc = subprocess.run([sys.executable, "-m", "wcl", *cmd, "--trainer.callbacks+=tests.faults.DiskFault",
                           "--trainer.callbacks.good=2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"no space left on the device of {tmp_path / 'full' / 'checkpoints'}" in errors[0]
    assert "Traceback" not in proc.stderr
    folder = tmp_path / "full" / "checkpoints"
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 4
    assert not list(folder.glob("*.tmp"))

    cmd = _tiny_fit(tmp_path / "killed", "--trainer.max_epochs", "2")
    proc = subprocess.run([sys.executable, "-m", "wcl", *cmd, "--trainer.callbacks+=tests.faults.DiskFault",
                           "--trainer.callbacks.good=2", "--trainer.callbacks.fault=kill"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9
    folder = tmp_path / "killed" / "checkpoints"
    orphans = list(folder.glob("*.tmp"))
    assert len(orphans) == 1
    live = folder / f"last.ckpt.{os.getpid()}-0123abcd.tmp"  # a save of a process that still runs
    live.write_bytes(b"in progress")
    resumed = subprocess.run([sys.executable, "-m", "wcl", *cmd, "--ckpt_path", "last"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"wcl: removed {orphans[0]}" in resumed.stdout
    assert sorted(folder.glob("*.tmp")) == [live]
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 8


@pytest.mark.slow
def test_a_resume_on_another_world_size_keeps_the_planned_schedule(tmp_path):
    """4 epochs of 4 steps on one process, stopped after epoch 2 (step 8), resumed on 2 gloo processes (2 steps an
    epoch): the cosine continues from half way and reaches its end at the run's last step (12); stepped on the
    checkpoint's step count it would end at step 8 and train the last epochs at lr 0."""
    lrs = tmp_path / "lr.txt"
    cmd = [sys.executable, "-m", "wcl", *_tiny_fit(tmp_path / "run", "--trainer.max_epochs", "4",
                                                   "--model.warmup_epochs", "0"),
           "--trainer.callbacks+=tests.faults.RecordLR", f"--trainer.callbacks.path={lrs}"]
    first = subprocess.run([*cmd, "--trainer.callbacks+=tests.helpers.SignalAtStep", "--trainer.callbacks.step=8"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 143, first.stderr[-3000:]
    second = subprocess.run([*cmd, "--ckpt_path", "last", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                             "--trainer.strategy", "ddp"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "the learning-rate schedule keeps the run's planned length" in second.stdout
    steps = [(int(a), float(b)) for a, b in (line.split() for line in lrs.read_text().splitlines())]
    assert [s for s, _ in steps] == list(range(12))
    peak = steps[0][1]
    for step, lr in steps:  # one process: 16 steps planned; from step 8 on, 2 steps count for 4
        progress = step / 16 if step < 8 else (8 + (step - 8) * 2) / 16
        assert lr == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * progress)), rel=1e-4, abs=1e-7), (step, lr)
    assert steps[-1][1] > 0  # the last step still learns; the curve reaches 0 after it
