import numpy as np
import pytest
import torch
from PIL import Image

from wcl.data import Augmentations, WCLDataModule
from wcl.data.datasets import build_splits, first_per_class, rgb_loader
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
    bank, val = dm.val_dataloader()
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
    dm = WCLDataModule("imagefolder", str(root), batch_size=4, num_workers=0,
                       augment=Augmentations(crop_size=8))
    assert dm.num_classes == 2
    assert next(iter(dm.train_dataloader()))["views"][0].shape == (4, 3, 8, 8)


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*train/<class>"):
        WCLDataModule("imagefolder", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="needs --data.root"):
        WCLDataModule("cifar10")


def test_root_without_train(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="has no train/ folder"):
        WCLDataModule("imagefolder", str(tmp_path))


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="remove empty class folders"):
        WCLDataModule("imagefolder", str(root))


def test_corrupt_image_is_named(tmp_path):
    root = _folder(tmp_path)
    bad = root / "train" / "a" / "9.jpg"
    bad.write_bytes(b"not an image")
    dm = WCLDataModule("imagefolder", str(root), batch_size=2, num_workers=0)
    ds = dm.train_dataset()
    idx = [i for i, (p, _) in enumerate(dm.splits.pretrain.samples) if p.endswith("9.jpg")][0]
    with pytest.raises(DataError, match=r"cannot decode image .*9\.jpg"):
        ds[idx]


def test_batch_size_below_two():
    with pytest.raises(ConfigError, match="at least 2 samples"):
        WCLDataModule(batch_size=1)


def test_augmentation_validation():
    with pytest.raises(ValueError, match="blur_prob"):
        Augmentations(blur_prob=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        Augmentations(crop_scale=(0.5, 0.2))


def test_training_set_smaller_than_batch():
    dm = WCLDataModule(batch_size=64, num_workers=0, train_per_class=2)
    with pytest.raises(ConfigError, match="fewer than data.batch_size"):
        dm.train_dataloader()


def test_shared_cifar10_imagefolder(cifar10_root):
    dm = WCLDataModule("cifar10", str(cifar10_root), batch_size=4, num_workers=0)
    assert dm.num_classes == 10
    assert len(dm.splits.pretrain) == 50_000 and len(dm.splits.val) == 10_000
