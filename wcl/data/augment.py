"""The view augmentation, described once (:class:`Augmentations`), and its torchvision form for CPU workers.

The batched device form of the same description is :class:`wcl.data.batched.BatchedViews`; both apply, in this
order: random-resized crop, horizontal flip, colour jitter (its four factors in a random order per sample),
grayscale, Gaussian blur, solarization, normalization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from wcl.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Augmentations:
    """Knobs of the SimCLR augmentation of one high-resolution view (every value is in the YAML config).

    Colour jitter with strength s uses brightness, contrast, saturation 0.8·s and hue 0.2·s unless
    ``jitter_factors`` gives the four maxima explicitly (MoCo v2: ``[0.4, 0.4, 0.4, 0.1]``). Blur uses a kernel
    of ~10 % of the output size; SimCLR applies it (p=0.5) for images of 96 px and more, not to CIFAR.
    """

    crop_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    jitter_strength: float = 0.5
    jitter_factors: tuple[float, float, float, float] | None = None
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("hflip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {p}")
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi or (name == "crop_scale" and hi > 1.0):
                bound = " <= 1" if name == "crop_scale" else ""
                raise ConfigError(f"augment.{name} must satisfy 0 < min <= max{bound}, got {[lo, hi]}")
        if self.crop_size < 1:
            raise ConfigError(f"augment.crop_size must be >= 1, got {self.crop_size}")
        if self.jitter_strength < 0 or any(f < 0 for f in self.jitter_factors or ()):
            raise ConfigError("augment.jitter_strength and augment.jitter_factors must be >= 0, got "
                              f"{self.jitter_strength} and {self.jitter_factors}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"augment.std must be > 0 in every channel, got {self.std}")

    def jitter(self) -> tuple[float, float, float, float]:
        """Maximum brightness, contrast, saturation and hue changes of the colour jitter."""
        if self.jitter_factors is not None:
            return tuple(self.jitter_factors)  # type: ignore[return-value]
        s = self.jitter_strength
        return (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)

    def jitters(self) -> bool:
        return self.jitter_prob > 0 and any(f > 0 for f in self.jitter())

    def blur_kernel(self, size: int) -> int:
        """Odd Gaussian kernel of about 10 % of ``size`` pixels (at least 3)."""
        return max(3, int(0.1 * size) // 2 * 2 + 1)

    def crop_only(self) -> Augmentations:
        """Random-resized crop + flip, every photometric op off (the linear-probe / fine-tune protocol)."""
        return replace(self, crop_ratio=(3 / 4, 4 / 3), hflip_prob=0.5, jitter_prob=0.0, grayscale_prob=0.0,
                       blur_prob=0.0, solarize_prob=0.0)


def moco_v2(aug: Augmentations) -> Augmentations:
    """MoCo v2's weaker augmentation (crop scale 0.2–1, jitter 0.4/0.4/0.4/0.1, no solarization), as used by the
    official WCL code for its first epochs; size and normalisation are kept from ``aug``."""
    return replace(aug, crop_scale=(0.2, 1.0), jitter_factors=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8,
                   grayscale_prob=0.2, solarize_prob=0.0)


def cpu_view(aug: Augmentations, size: int | None = None,
             scale: tuple[float, float] | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """One random augmented view with torchvision: PIL image → 3×size×size normalized float tensor.

    ``size``/``scale`` override the crop size and scale range (used for low-resolution crops).
    """
    size = aug.crop_size if size is None else size
    ops: list[Callable] = [
        T.RandomResizedCrop(size, scale=scale or aug.crop_scale, ratio=aug.crop_ratio,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(aug.hflip_prob),
    ]
    if aug.jitters():
        ops.append(T.RandomApply([T.ColorJitter(*aug.jitter())], p=aug.jitter_prob))
    if aug.grayscale_prob > 0:
        ops.append(T.RandomGrayscale(aug.grayscale_prob))
    if aug.blur_prob > 0:
        ops.append(T.RandomApply([T.GaussianBlur(aug.blur_kernel(size), sigma=aug.blur_sigma)], p=aug.blur_prob))
    if aug.solarize_prob > 0:
        ops.append(T.RandomSolarize(128, p=aug.solarize_prob))
    ops += [T.ToTensor(), T.Normalize(aug.mean, aug.std)]
    return T.Compose(ops)


def eval_transform(aug: Augmentations, resize: int | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic evaluation transform: resize the short side to ``resize`` (default: ``crop_size``),
    centre-crop ``crop_size``, normalize."""
    return T.Compose([
        T.Resize(resize or aug.crop_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(aug.crop_size),
        T.ToTensor(),
        T.Normalize(aug.mean, aug.std),
    ])


class EpochViews:
    """What the views of an epoch are made with: ``warmup`` for the first ``warmup_epochs`` epochs (when given),
    ``main`` after. The values can be augmentations or transforms built from them (``map``); no lambdas are
    stored, so the object pickles into spawned data-loader workers."""

    def __init__(self, main: Any, warmup: Any = None, warmup_epochs: int = 0) -> None:
        self.main, self.warmup, self.warmup_epochs = main, warmup, warmup_epochs

    def __call__(self, epoch: int) -> Any:
        return self.warmup if self.warmup is not None and epoch < self.warmup_epochs else self.main

    def map(self, fn: Callable[[Any], Any]) -> EpochViews:
        warmup = fn(self.warmup) if self.warmup is not None else None
        return EpochViews(fn(self.main), warmup, self.warmup_epochs)
