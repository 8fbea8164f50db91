import numpy as np
import pytest
import torch
from PIL import Image

from wcl.data import Augmentations, WCLDataModule
from wcl.data.datasets import build_splits, rgb_loader
from wcl.data.subsets import first_per_class
from wcl.errors import ConfigError, DataError


def _folder(root, classes=("a", "b"), per_class=3, size=12):
    for c in classes:
        (root / "train" / c).mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for i in range(per_class):
            for split in ("train", "val"):
                arr = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_bundled_batches_carry_views_index_label():
    dm = WCLDataModule(batch_size=8, num_workers=0, train_per_class=2, val_per_class=1)
    assert dm.num_classes == 10
    batch = next(iter(dm.train_dataloader()))
    x1, x2 = batch["views"]
    assert x1.shape == x2.shape == (8, 3, 32, 32)
    assert not torch.equal(x1, x2)  # independent augmentations
    assert batch["index"].dtype == torch.long and batch["label"].dtype == torch.long
    assert len(set(batch["index"].tolist())) == 8 and batch["label"].min() >= 0
    val, bank = dm.val_dataloader(), dm.eval_loader("bank")
    vb = next(iter(val))
    assert vb["image"].shape[1:] == (3, 32, 32) and len(val.dataset) == 10 and len(bank.dataset) == 20


def test_first_per_class_is_sorted_prefix():
    splits = build_splits("bundled")
    sub = first_per_class(splits.pretrain, 3)
    assert len(sub) == 30
    paths = [splits.pretrain.samples[i][0] for i in sub.indices]
    assert paths[0].endswith("airplane/0000.jpg") and paths[2].endswith("airplane/0002.jpg")


def test_imagefolder_and_image_modes(tmp_path):
    root = _folder(tmp_path)
    img = Image.fromarray(np.arange(144, dtype=np.uint16).reshape(12, 12) * 400)
    img.save(root / "train" / "a" / "gray16.png")
    Image.new("RGBA", (12, 12), (10, 20, 30, 40)).save(root / "train" / "a" / "rgba.png")
    Image.new("P", (12, 12)).save(root / "train" / "b" / "palette.png")
    Image.new("L", (12, 12), 7).save(root / "train" / "b" / "gray.png")
    for name in ("a/gray16.png", "a/rgba.png", "b/palette.png", "b/gray.png"):
        out = rgb_loader(str(root / "train" / name))
        assert out.mode == "RGB" and out.size == (12, 12)
    gray16 = np.asarray(rgb_loader(str(root / "train" / "a" / "gray16.png")))
    assert gray16.max() == 255 and gray16.min() == 0  # rescaled, not clipped
    dm = WCLDataModule(dataset="imagefolder", root=str(root), batch_size=4, num_workers=0,
                       augment=Augmentations(crop_size=8))
    assert dm.num_classes == 2
    assert next(iter(dm.train_dataloader()))["views"][0].shape == (4, 3, 8, 8)


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*train/<class>"):
        WCLDataModule(dataset="imagefolder", root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="needs --data.root"):
        WCLDataModule(dataset="cifar10")


def test_root_without_train(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="has no train/ folder"):
        WCLDataModule(dataset="imagefolder", root=str(tmp_path))


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="remove empty class folders"):
        WCLDataModule(dataset="imagefolder", root=str(root))


def test_corrupt_image_is_named(tmp_path):
    root = _folder(tmp_path)
    bad = root / "train" / "a" / "9.jpg"
    bad.write_bytes(b"not an image")
    dm = WCLDataModule(dataset="imagefolder", root=str(root), batch_size=2, num_workers=0)
    ds = dm.train_dataloader().dataset
    idx = [i for i, (p, _) in enumerate(dm.source.pretrain.samples) if p.endswith("9.jpg")][0]
    with pytest.raises(DataError, match=r"cannot decode image .*9\.jpg"):
        ds[idx]


def test_batch_size_below_two():
    with pytest.raises(ConfigError, match="at least 2 samples"):
        WCLDataModule(batch_size=1)


def test_augmentation_validation():
    with pytest.raises(ConfigError, match="augment.blur_prob"):
        Augmentations(blur_prob=1.5)
    with pytest.raises(ConfigError, match="augment.crop_scale"):
        Augmentations(crop_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="augment.crop_size"):
        Augmentations(crop_size=0)
    with pytest.raises(ConfigError, match="augment.std"):
        Augmentations(std=(0.2, 0.0, 0.2))


def test_training_set_smaller_than_batch():
    dm = WCLDataModule(batch_size=64, num_workers=0, train_per_class=2)
    with pytest.raises(ConfigError, match="fewer than data.batch_size"):
        dm.train_dataloader()


def test_shared_cifar10_imagefolder(cifar10_root):
    dm = WCLDataModule(dataset="cifar10", root=str(cifar10_root), batch_size=4, num_workers=0)
    assert dm.num_classes == 10
    assert len(dm.source.pretrain) == 50_000 and len(dm.source.split("val")) == 10_000


def test_single_class_folder_is_unlabelled(tmp_path):
    root = _folder(tmp_path, classes=("all",), per_class=6)
    dm = WCLDataModule(dataset="imagefolder", root=str(root), batch_size=4, num_workers=0,
                       augment=Augmentations(crop_size=8))
    assert dm.num_classes is None and (dm.source.labels("pretrain") == -1).all()
    assert (next(iter(dm.train_dataloader()))["label"] == -1).all() and dm.val_dataloader() == []


def _sampler(n: int, batch: int, world: int = 1, rank: int = 0, monkeypatch=None):  # noqa: ANN001
    """An EpochSampler of seed 3 as rank ``rank`` of ``world`` processes would build it (without a process group)."""
    from wcl.data import sampling

    if monkeypatch is not None:
        monkeypatch.setattr(sampling, "world_size", lambda: world)
        monkeypatch.setattr(sampling, "rank", lambda: rank)
    return sampling.EpochSampler(n, batch_size=batch, seed=3)


def test_epoch_sampler_order_resume_and_state():
    s = _sampler(50, 8)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 48 and len(set(full)) == 48 and s.num_batches == 6
    g = torch.Generator().manual_seed(3 + 2)
    assert full == torch.randperm(50, generator=g).tolist()[:48]  # DistributedSampler's order, one process
    for _ in range(4):  # four batches trained on; a checkpoint is written
        s.advance()
    assert s.state_dict() == {"epoch": 2, "samples": 32, "global_batch": 8}
    resumed = _sampler(50, 8)
    resumed.load_state_dict(s.state_dict())
    assert resumed.epoch == 2 and list(resumed) == full[32:]
    resumed.set_epoch(3)  # the next epoch starts from its first batch
    assert resumed.position == 0 and len(list(resumed)) == 48
    for _ in range(2):  # the epoch's last batch: saved as the start of the next epoch
        s.advance()
    assert s.state_dict() == {"epoch": 3, "samples": 0, "global_batch": 8}
    after = _sampler(50, 8)
    after.load_state_dict(s.state_dict())
    assert (after.epoch, after.position) == (3, 0)
    old = _sampler(50, 8)  # a checkpoint that counted batches: {"epoch", "position"}
    old.load_state_dict({"epoch": 2, "position": 4})
    assert list(old) == full[32:]
    old.load_state_dict({"epoch": 2, "position": 6})
    assert (old.epoch, old.position) == (3, 0)


@pytest.mark.parametrize(("before", "after"), [((1, 8), (2, 4)), ((2, 4), (1, 8)), ((2, 6), (3, 4))])
def test_mid_epoch_resume_with_the_global_batch_on_other_ranks_trains_every_image_once(before, after, monkeypatch):
    """Stopped after 2 batches of epoch 1, resumed with the same global batch split over another number of ranks
    (e.g. batch 8 on one process -> batch 4 on two): the samples trained before and after the stop are that epoch's,
    each exactly once."""
    (w0, b0), (w1, b1) = before, after
    trained, state = [], None
    for r in range(w0):
        s = _sampler(48, b0, w0, r, monkeypatch)
        s.set_epoch(1)
        order = list(s)
        s.advance()
        s.advance()
        trained += order[: 2 * b0]
        state = s.state_dict() if state is None else state
        assert s.state_dict() == state  # every rank saves the same position
    for r in range(w1):
        s = _sampler(48, b1, w1, r, monkeypatch)
        s.load_state_dict(state)
        trained += list(s)
    assert sorted(trained) == list(range(48))


def test_mid_epoch_resume_with_another_global_batch_is_refused():
    """A changed batch cannot finish a cut epoch (Lightning counts its remaining steps in batches): refused in one
    line naming data.batch_size and the batch to resume with; at an epoch's end any batch size resumes."""
    s = _sampler(32, 4)
    for _ in range(3):
        s.advance()
    with pytest.raises(ConfigError, match=r"after 12 of its samples\) at a global batch of 4 .*Resume with "
                                          r"--data\.batch_size 4,"):
        _sampler(32, 8).load_state_dict(s.state_dict())
    for _ in range(5):
        s.advance()
    resumed = _sampler(32, 8)
    resumed.load_state_dict(s.state_dict())
    assert (resumed.epoch, resumed.position, len(list(resumed))) == (1, 0, 32)


def test_cpu_path_seeds_are_the_counter_hash_of_the_device_path():
    """The CPU path seeds torch's generator per sample with two keys of the device path's counter hash: a pure
    function of (seed, epoch, index), distinct for every sample and epoch."""
    from wcl.data.sampling import TORCH_SEED, sample_keys, sample_seed

    index = torch.arange(2000)
    for seed, epoch in ((0, 0), (7, 3), (-1, 2**40)):
        hi, lo = (sample_keys(index, seed, epoch, TORCH_SEED + k).tolist() for k in (0, 1))
        assert [sample_seed(seed, epoch, i) for i in range(2000)] == [h << 32 | v for h, v in zip(hi, lo, strict=True)]
    seeds = {sample_seed(0, e, i) for e in range(10) for i in range(2000)}
    assert len(seeds) == 20_000 and all(0 <= s < 2**64 for s in seeds)


def test_cpu_path_views_are_the_same_for_any_worker_count_and_after_a_resume():
    def batches(workers: int, state: dict | None = None) -> list[torch.Tensor]:
        dm = WCLDataModule(batch_size=4, num_workers=workers, persistent_workers=False, train_per_class=1)
        loader = dm.train_dataloader()
        if state is not None:
            loader.load_state_dict(state)
        return [torch.cat(b["views"]) for b in loader]

    straight = batches(0)
    assert len(straight) == 2
    for a, b in zip(straight, batches(2), strict=True):
        assert torch.equal(a, b)
    resumed = batches(0, {"epoch": 0, "samples": 4, "global_batch": 4})
    assert len(resumed) == 1 and torch.equal(resumed[0], straight[1])


def test_device_path_batches_become_views_and_crops():
    dm = WCLDataModule(batch_size=8, num_workers=0, train_per_class=3, augment_on="device", num_small_crops=2,
                       small_crop_source="self")
    batch = next(iter(dm.train_dataloader()))
    assert batch["raw"].dtype == torch.uint8 and batch["crops_raw"].shape == (8, 2, 3, 32, 32)
    out = dm.on_after_batch_transfer(batch, 0)
    assert [tuple(v.shape) for v in out["views"]] == [(8, 3, 32, 32)] * 2
    assert [tuple(v.shape) for v in out["small"]] == [(8, 3, 16, 16)] * 2
    assert not torch.equal(out["views"][0], out["views"][1]) and "raw" not in out
    val = next(iter(dm.val_dataloader()))
    assert dm.on_after_batch_transfer(val, 0) is val  # evaluation batches (float images) are left alone


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_in_memory_images_equal_the_files(augment_on):
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2, val_per_class=2, in_memory=True,
                       augment_on=augment_on)
    base = dm.source.pretrain
    mem = dm.source.memory("pretrain")
    assert mem.images.shape == (20, 3, 32, 32) and mem.images.dtype == torch.uint8
    for i in (0, 7, 19):
        assert np.array_equal(np.asarray(mem[i][0]), np.asarray(base[i][0])) and mem[i][1] == base[i][1]
    # in-memory evaluation batches give the evaluation view of the files exactly
    files = next(iter(WCLDataModule(num_workers=0, val_per_class=2, eval_batch_size=20).val_dataloader()))
    memory = next(iter(dm.val_dataloader()))
    memory = dm.on_after_batch_transfer(memory, 0)
    order = torch.argsort(memory["index"])
    torch.testing.assert_close(memory["image"][order], files["image"], atol=1e-6, rtol=0)


def test_in_memory_device_batches_are_index_slices():
    from wcl.data.crops import NeighborTable

    dm = WCLDataModule(batch_size=8, num_workers=0, train_per_class=3, augment_on="device", in_memory="device",
                       num_small_crops=2)
    table = NeighborTable(30, 3)
    table.update(torch.randint(0, 30, (30, 3)), epoch=0)
    dm.crops.attach(table)
    loader = dm.train_dataloader()
    assert not isinstance(loader, torch.utils.data.DataLoader) and len(loader) == 3
    batch = next(iter(loader))
    images = dm.source.memory("pretrain").images
    assert torch.equal(batch["raw"], images[batch["index"]])
    for c in range(2):
        src = batch["crop_source"][:, c]
        assert torch.equal(batch["crops_raw"][:, c], images[src])
        assert bool((table.table[batch["index"]] == src[:, None]).any(1).all())  # one of the sample's neighbours


def test_images_on_device_need_the_device_augmentation():
    with pytest.raises(ConfigError, match="augment_on: device"):
        WCLDataModule(num_workers=0, train_per_class=2, in_memory="device")


def test_neighbour_crops_without_the_callback_fail_before_training():
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2, num_small_crops=2)
    with pytest.raises(ConfigError, match="KnnMultiCrop"):
        dm.train_dataloader()


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_augmentation_warmup_uses_moco_v2_first(augment_on):
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2, augment_on=augment_on,
                       augment_warmup_epochs=2)
    assert dm.views(0).crop_scale == (0.2, 1.0) and dm.views(1).jitter() == (0.4, 0.4, 0.4, 0.1)
    assert dm.views(2) is dm.augment
    ds = dm.train_dataloader().dataset
    if augment_on == "cpu":
        rrc = [ds.views(e).transforms[0] for e in (0, 2)]
        assert rrc[0].scale == (0.2, 1.0) and rrc[1].scale == dm.augment.crop_scale
    else:
        assert dm._batched(1)[0].aug.crop_scale == (0.2, 1.0) and dm._batched(2)[0].aug is dm.augment


@pytest.mark.slow
def test_resume_with_another_batch_size_mid_epoch_is_one_line(tmp_path, capsys):
    """`fit --ckpt_path last --data.batch_size 8` on a run stopped after 3 of 5 batches of 4: exit 2, one line
    naming the key and the batch to resume with, before any step (the checkpoint is left as it was)."""
    from wcl.cli import main

    args = ["fit", "--config", "configs/quickstart.yaml", "--trainer.enable_progress_bar", "false",
            "--trainer.limit_val_batches", "0", "--data.train_per_class", "2", "--data.num_workers", "0",
            "--model.width", "4", "--model.channels_last", "false", "--trainer.default_root_dir", str(tmp_path)]
    main([*args, "--data.batch_size", "4", "--trainer.max_steps", "3"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--data.batch_size", "8", "--trainer.max_steps", "6", "--ckpt_path", "last"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("wcl: error: the checkpoint stopped in the middle of an epoch (after 12 of its")
    assert "Resume with --data.batch_size 4," in lines[0]
    assert last.read_bytes() == saved
