"""The device (kornia) augmentation path against the CPU (torchvision) path, and the in-memory dataset."""

import math

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from torchvision import transforms as T

from wcl import WCLDataModule
from wcl.cli import main
from wcl.data.datasets import InMemoryImages, build_splits, first_per_class
from wcl.data.device_augment import DeviceViews
from wcl.data.transforms import Augmentations, view_transform
from wcl.errors import ConfigError

N = 20_000
AUG = Augmentations(crop_scale=(0.2, 1.0), hflip_prob=0.5, jitter_strength=0.5, jitter_prob=0.8,
                    grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.1)


def _ops(pipeline, cls):
    return next(op for op in pipeline if isinstance(op, cls))


def _cpu_ops():
    tv = view_transform(AUG, size=32).transforms
    return tv, [t for op in tv if isinstance(op, T.RandomApply) for t in op.transforms]


def _device_ops():
    return list(DeviceViews(AUG, size=32).ops.children())


def test_random_resized_crop_distribution_matches():
    img = torch.zeros(3, 32, 32)
    rrc = _ops(_cpu_ops()[0], T.RandomResizedCrop)
    torch.manual_seed(0)
    hw = torch.tensor([rrc.get_params(img, rrc.scale, rrc.ratio)[2:] for _ in range(N)], dtype=torch.float64)
    cpu_area, cpu_logratio = hw[:, 0] * hw[:, 1] / 1024, torch.log(hw[:, 1] / hw[:, 0])
    krrc = _ops(_device_ops(), K.RandomResizedCrop)
    src = krrc.forward_parameters(torch.Size((N, 3, 32, 32)))["src"].double()
    w = src[:, 1, 0] - src[:, 0, 0] + 1
    h = src[:, 2, 1] - src[:, 1, 1] + 1
    dev_area, dev_logratio = h * w / 1024, torch.log(w / h)
    for cpu, dev in ((cpu_area, dev_area), (cpu_logratio, dev_logratio)):
        se = math.sqrt(cpu.var() / N + dev.var() / N)
        assert abs(float(cpu.mean() - dev.mean())) < 4 * se + 1e-3
        assert float(cpu.std()) == pytest.approx(float(dev.std()), rel=0.05)
    assert float(dev_area.min()) >= 0.2 - 0.05 and float(dev_area.max()) <= 1.0


def test_probabilities_and_jitter_ranges_match():
    dev = _device_ops()
    probs = {type(op).__name__: float(op.forward_parameters(torch.Size((N, 3, 32, 32)))["batch_prob"].float().mean())
             for op in dev if not isinstance(op, K.RandomResizedCrop)}
    expected = {"RandomHorizontalFlip": AUG.hflip_prob, "ColorJitter": AUG.jitter_prob,
                "RandomGrayscale": AUG.grayscale_prob, "RandomGaussianBlur": AUG.blur_prob,
                "RandomSolarize": AUG.solarize_prob}
    for name, p in expected.items():
        assert probs[name] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / N) + 1e-3), name
    tv_jitter = _ops(_cpu_ops()[1], T.ColorJitter)
    k_jitter = _ops(dev, K.ColorJitter)
    params = k_jitter.forward_parameters(torch.Size((N, 3, 32, 32)))
    for name, tv_range in (("brightness", tv_jitter.brightness), ("contrast", tv_jitter.contrast),
                           ("saturation", tv_jitter.saturation), ("hue", tv_jitter.hue)):
        factors = params[f"{name}_factor"].double()
        lo, hi = tv_range
        assert float(factors.min()) >= lo - 1e-6 and float(factors.max()) <= hi + 1e-6, name
        assert float(factors.mean()) == pytest.approx((lo + hi) / 2, abs=0.01 * (hi - lo) + 1e-3), name


def test_device_batches_expand_to_views_and_crops():
    dm = WCLDataModule(batch_size=8, num_workers=0, train_per_class=3, augment_on="device", num_small_crops=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["views"][0].dtype == torch.uint8 and len(batch["views"]) == 1
    out = dm.on_after_batch_transfer(batch, 0)
    assert [tuple(v.shape) for v in out["views"]] == [(8, 3, 32, 32)] * 2
    assert [tuple(v.shape) for v in out["small"]] == [(8, 3, 16, 16)] * 2
    assert not torch.equal(out["views"][0], out["views"][1])
    val = next(iter(dm.val_dataloader()[1]))
    assert dm.on_after_batch_transfer(val, 1) is val  # evaluation batches are left alone


def test_in_memory_equals_files():
    base = first_per_class(build_splits("bundled").pretrain, 2)
    mem = InMemoryImages(base)
    assert mem.images.shape == (20, 3, 32, 32) and mem.images.dtype == torch.uint8
    for i in (0, 7, 19):
        assert np.array_equal(np.asarray(mem[i][0]), np.asarray(base[i][0])) and mem[i][1] == base[i][1]


def test_images_on_device_gathers_the_batch_and_its_neighbour_crops():
    dm = WCLDataModule(batch_size=8, num_workers=0, train_per_class=3, augment_on="device", in_memory="device",
                       num_small_crops=2, neighbors_k=3)
    dm.neighbor_table.update(torch.randint(0, 30, (30, 3)), epoch=0)
    batch = next(iter(dm.train_dataloader()))
    assert "views" not in batch and batch["small_source"].shape == (8, 2)  # only indices leave the loader
    images = dm.splits.pretrain.images
    dm._device_views = (torch.nn.Identity(), torch.nn.Identity())  # keep the gathered uint8 pixels as they are
    out = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(out["views"][0], images[batch["index"]])
    for c in range(2):
        src = batch["small_source"][:, c]
        assert torch.equal(out["small"][c], images[src])
        table = dm.neighbor_table.table[batch["index"]]
        assert bool((table == src[:, None]).any(1).all())  # each crop comes from one of the sample's neighbours
    val = next(iter(dm.val_dataloader()[0]))
    assert dm.on_after_batch_transfer(val, 0).keys() == {"image", "index", "label"}  # evaluation batches untouched


def test_images_on_device_needs_the_device_augmentation():
    with pytest.raises(ConfigError, match="augment_on: device"):
        WCLDataModule(num_workers=0, train_per_class=2, in_memory="device")


@pytest.mark.parametrize("in_memory", ["true", "device"])
def test_fit_on_device_path_in_memory_bf16(tmp_path, capsys, in_memory):
    main(["fit", "--config", "configs/quickstart.yaml", "--config", "configs/multicrop.yaml",
          "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--data.train_per_class", "8", "--data.val_per_class", "4",
          "--data.batch_size", "20", "--data.num_workers", "0", "--data.augment_on", "device",
          "--data.in_memory", in_memory, "--model.knn_every_n_epochs", "1"])
    out = capsys.readouterr().out
    assert "wcl: final val/knn_top1" in out and "images/s" in out
