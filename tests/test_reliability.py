"""Resume, atomic checkpoints, pre-emption, and the catalogue of bad inputs."""

import subprocess
import sys
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
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
            "--data.train_per_class", "6", "--data.batch_size", "20", "--data.num_workers", "2",
            "--model.knn_every_n_epochs", "0", *extra]


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
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    assert torch.equal(a["WCLDataModule"]["neighbor_table"]["table"], b["WCLDataModule"]["neighbor_table"]["table"])


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from lightning.pytorch import Trainer

    from wcl.callbacks import Checkpoint

    monkeypatch.chdir(ROOT)
    main(_args(tmp_path, "--trainer.max_epochs", "1"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    trainer = Trainer(default_root_dir=tmp_path, logger=False)
    cb = Checkpoint(dirpath=str(tmp_path / "checkpoints"))

    def dies_mid_write(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(trainer, "save_checkpoint", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        cb._save_checkpoint(trainer, str(last))
    assert last.read_bytes() == before
    assert not Path(f"{last}.tmp").exists()
    torch.load(last, weights_only=False)  # still a valid checkpoint


def test_sigterm_saves_and_resume_continues(tmp_path):
    cmd = [sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "3",
           "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
           "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
           "--data.train_per_class", "10", "--data.batch_size", "20", "--data.num_workers", "0",
           "--model.knn_every_n_epochs", "0"]
    first = subprocess.run([*cmd, "--trainer.callbacks+=tests.helpers.SignalAtStep", "--trainer.callbacks.step=7"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "wcl: interrupted at step 7" in first.stdout, first.stdout[-2000:] + first.stderr[-2000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 7
    second = subprocess.run([*cmd, "--ckpt_path", "last"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 15


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
    dm = WCLDataModule("imagefolder", str(_folder(tmp_path, 8)), batch_size=4, num_workers=0,
                       augment=Augmentations(crop_size=32))
    assert next(iter(dm.train_dataloader()))["views"][0].shape == (4, 3, 32, 32)
    assert next(iter(dm.val_dataloader()[1]))["image"].shape == (8, 3, 32, 32)


def test_skip_corrupt_counts_and_substitutes(tmp_path):
    dm = WCLDataModule("imagefolder", str(_folder(tmp_path, 12, corrupt=2)), batch_size=5, num_workers=0,
                       skip_corrupt=True, augment=Augmentations(crop_size=8))
    ds = dm.train_dataset()
    samples = [ds[i] for i in range(len(ds))]
    # Sorted names put bad0.jpg, bad1.jpg last in class "a" (indices 4, 5): index 4 meets both, index 5 one.
    assert dm.skipped.get() == 3
    paths = [dm.splits.pretrain.samples[s["index"]][0] for s in samples]
    assert not any("bad" in p for p in paths)


def test_same_sample_same_augmentation_in_any_process():
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2)
    ds = dm.train_dataset()
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
