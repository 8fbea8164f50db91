"""The batched device augmentation against torchvision's (the CPU path): parameters drawn with the same rules and
distributions, and every op computing what torchvision's functional op computes."""

import math
from itertools import permutations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from wcl.data.augment import Augmentations, cpu_view, moco_v2
from wcl.data.batched import NUM_UNIFORMS, BatchedViews, adjust_hue, blend, crop_boxes, gaussian_blur
from wcl.data.datasets import build_splits
from wcl.data.sampling import sample_keys, uniforms

N = 20_000
OFF = dict(hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0,
           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _u(n=N, seed=0):
    return uniforms(sample_keys(torch.arange(n), seed, 0, 0), NUM_UNIFORMS)


def _close_means(a: torch.Tensor, b: torch.Tensor, name: str, spread: bool = True):
    """Two samples of N draws have the same mean (4 standard errors) and standard deviation (5 %)."""
    a, b = a.double(), b.double()
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(float(a.mean() - b.mean())) < 4 * se + 1e-9, name
    if spread:
        assert float(a.std()) == pytest.approx(float(b.std()), rel=0.05, abs=1e-6), name


def test_uniforms_are_uniform_and_independent():
    u = _u()
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert float(u.mean()) == pytest.approx(0.5, abs=0.003) and float(u.var()) == pytest.approx(1 / 12, rel=0.02)
    corr = torch.corrcoef(u.T.double())
    assert float((corr - torch.eye(NUM_UNIFORMS)).abs().max()) < 0.04  # columns uncorrelated
    other = uniforms(sample_keys(torch.arange(N), 0, 0, 1), NUM_UNIFORMS)  # another view of the same samples
    assert abs(float(torch.corrcoef(torch.stack([u[:, 0], other[:, 0]]))[0, 1])) < 0.04


@pytest.mark.parametrize("hw,scale", [((32, 32), (0.08, 1.0)), ((64, 8), (0.5, 1.0)), ((8, 64), (0.2, 1.0))])
def test_random_resized_crop_follows_torchvision(hw, scale):
    h, w = hw
    rrc = T.RandomResizedCrop(16, scale=scale)
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    tv = torch.tensor([rrc.get_params(img, rrc.scale, rrc.ratio) for _ in range(N)], dtype=torch.float64)
    ours = crop_boxes(_u(), h, w, scale, rrc.ratio).double()
    for col, name in enumerate(("top", "left", "height", "width")):
        _close_means(ours[:, col], tv[:, col], name)
    assert (ours[:, 2] >= 1).all() and (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    # the fallback (centre crop with the ratio clamped) is taken as often as torchvision takes it
    fallback = lambda boxes: ((boxes[:, 2] == boxes[:, 2].max()) & (boxes[:, 3] == boxes[:, 3].max())).double()  # noqa: E731
    _close_means(fallback(ours), fallback(tv), "fallback", spread=False)


def test_jitter_factors_and_order_follow_torchvision():
    aug = Augmentations(jitter_strength=0.5, jitter_prob=1.0)
    tv = T.ColorJitter(*aug.jitter())
    torch.manual_seed(0)
    draws = [tv.get_params(tv.brightness, tv.contrast, tv.saturation, tv.hue) for _ in range(N)]
    factors, order = BatchedViews(aug).jitter_params(_u())
    for k, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        _close_means(factors[:, k], torch.tensor([d[k + 1] for d in draws]), name)
    counts = {p: 0 for p in permutations(range(4))}
    for row in order.tolist():
        counts[tuple(row)] += 1
    expected = N / 24
    assert all(abs(c - expected) < 5 * math.sqrt(expected) for c in counts.values())  # 24 orders, uniform


@pytest.mark.parametrize("op,prob", [("hflip", 0.5), ("grayscale", 0.2), ("solarize", 0.3), ("blur", 0.5),
                                     ("jitter", 0.8)])
def test_each_op_is_applied_with_its_probability(op, prob):
    kwargs = dict(OFF, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    kwargs[f"{op}_prob"] = prob
    if op == "blur":
        kwargs["blur_sigma"] = (1.0, 2.0)  # a blur of sigma 0.1 leaves an image unchanged: not measurable
    images = torch.arange(3 * 8 * 8, dtype=torch.float32).view(1, 3, 8, 8).mul(255 / 191).round().to(torch.uint8)
    n = 4000
    out = BatchedViews(Augmentations(crop_size=8, **kwargs))(images, torch.zeros(n, dtype=torch.long),
                                                              sample_keys(torch.arange(n), 1, 2, 0))
    changed = (out - images.float() / 255).abs().flatten(1).amax(1) > 1e-4
    rate = float(changed.double().mean())
    assert rate == pytest.approx(prob, abs=4 * math.sqrt(prob * (1 - prob) / n) + 0.01), (op, rate)


def test_color_ops_equal_torchvision_functional():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 20, generator=g)
    f = torch.tensor([0.3, 0.7, 1.0, 1.4, 1.8, 0.0])
    zero, one = torch.zeros(6), torch.ones(6)
    for fn, c, s in ((TF.adjust_brightness, zero, zero), (TF.adjust_contrast, one, zero),
                     (TF.adjust_saturation, zero, one)):
        ref = torch.stack([fn(x[i], float(f[i])) for i in range(6)])
        torch.testing.assert_close(blend(x, f, c, s), ref, atol=1e-6, rtol=0)
    shift = torch.tensor([-0.5, -0.3, 0.0, 0.1, 0.25, 0.5])
    ref = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(6)])
    torch.testing.assert_close(adjust_hue(x, shift), ref, atol=1e-5, rtol=0)
    sigma, apply = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7]), torch.tensor([1, 1, 1, 1, 1, 0]).bool()
    ref = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) if apply[i] else x[i] for i in range(6)])
    torch.testing.assert_close(gaussian_blur(x, sigma, apply, 5), ref, atol=1e-6, rtol=0)


def test_jitter_applies_each_rows_own_order_like_torchvision():
    aug = Augmentations(jitter_strength=1.0, jitter_prob=1.0, **{k: v for k, v in OFF.items() if k != "jitter_prob"})
    views = BatchedViews(aug)
    x = torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    u = _u(64, seed=5)
    out = views._jitter(x.clone(), u)
    factors, order = views.jitter_params(u)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(64):
        ref = x[i]
        for op in order[i].tolist():
            ref = fns[op](ref, float(factors[i, op]))
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)


def test_crop_and_resize():
    img = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    whole = BatchedViews(Augmentations(crop_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **OFF))
    out = whole(img, torch.zeros(1, dtype=torch.long), sample_keys(torch.arange(1), 0))
    torch.testing.assert_close(out * 255, img.float(), atol=1e-3, rtol=0)  # the full image at its own size
    half = BatchedViews(Augmentations(crop_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **OFF))
    out = half(img, torch.zeros(1, dtype=torch.long), sample_keys(torch.arange(1), 0))
    torch.testing.assert_close(out, F.avg_pool2d(img.float() / 255, 2), atol=1e-6, rtol=0)  # shrinking averages


def test_views_depend_only_on_their_key_not_on_the_batch():
    aug = Augmentations(blur_prob=0.5, solarize_prob=0.2)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    views = BatchedViews(aug)
    keys = sample_keys(torch.arange(8), 3, 1, 0)
    batch = views(images, torch.arange(8), keys)
    alone = views(images[5:6], torch.zeros(1, dtype=torch.long), keys[5:6])
    torch.testing.assert_close(batch[5:6], alone, atol=1e-5, rtol=0)
    assert not torch.equal(views(images, torch.arange(8), keys + 1), batch)


@pytest.mark.slow
def test_cpu_and_device_views_agree_in_distribution():
    """The same augmentation through torchvision on PIL images and through the batched ops: per-channel mean and
    spread of the views of natural images agree (interpolation differs: bicubic vs area-averaged bilinear)."""
    aug = Augmentations(blur_prob=0.5, solarize_prob=0.2)
    train = build_splits("bundled").pretrain
    base = np.stack([np.asarray(train[i][0]) for i in (0, 600, 1200, 1800)])  # four natural images
    torch.manual_seed(0)
    tv = cpu_view(aug)
    n = 1500
    cpu = torch.stack([tv(Image.fromarray(base[i % 4])) for i in range(n)])
    images = torch.from_numpy(base).permute(0, 3, 1, 2).contiguous()
    dev = BatchedViews(aug)(images, torch.arange(n) % 4, sample_keys(torch.arange(n), 0, 0, 0))
    for stat in (lambda v: v.mean((2, 3)), lambda v: v.std((2, 3))):
        a, b = stat(cpu), stat(dev)
        for c in range(3):
            _close_means(a[:, c], b[:, c], "channel statistics")


def test_moco_v2_preset():
    aug = moco_v2(Augmentations(crop_size=224, blur_prob=0.5))
    assert aug.crop_scale == (0.2, 1.0) and aug.jitter() == (0.4, 0.4, 0.4, 0.1) and aug.crop_size == 224
