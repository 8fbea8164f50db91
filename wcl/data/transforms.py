"""Image transforms: SimCLR-style augmented views and the evaluation transform (PIL → float tensor)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Augmentations:
    """Knobs of the SimCLR augmentation of one high-resolution view (every value is in the YAML config).

    Colour jitter with strength s uses brightness, contrast, saturation 0.8·s and hue 0.2·s. Blur uses a
    kernel of ~10 % of ``crop_size``; SimCLR applies it (p=0.5) for images of 96 px and more, not to CIFAR.
    """

    crop_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    jitter_strength: float = 0.5
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
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.crop_size < 1:
            raise ValueError(f"augment.crop_size must be >= 1, got {self.crop_size}")


def view_transform(aug: Augmentations, size: int | None = None,
                   scale: tuple[float, float] | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """One random augmented view: PIL image → 3×size×size normalized float tensor.

    ``size``/``scale`` override the crop size and scale range (used for low-resolution crops).
    """
    size = aug.crop_size if size is None else size
    s = aug.jitter_strength
    ops: list[Callable] = [
        T.RandomResizedCrop(size, scale=scale or aug.crop_scale, ratio=aug.crop_ratio,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(aug.hflip_prob),
    ]
    if aug.jitter_prob > 0 and s > 0:
        ops.append(T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=aug.jitter_prob))
    if aug.grayscale_prob > 0:
        ops.append(T.RandomGrayscale(aug.grayscale_prob))
    if aug.blur_prob > 0:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(T.RandomApply([T.GaussianBlur(kernel, sigma=aug.blur_sigma)], p=aug.blur_prob))
    if aug.solarize_prob > 0:
        ops.append(T.RandomSolarize(128, p=aug.solarize_prob))
    ops += [T.ToTensor(), T.Normalize(aug.mean, aug.std)]
    return T.Compose(ops)


class MultiView:
    """Applies ``num_views`` independent draws of a view transform: PIL image → list of tensors."""

    def __init__(self, view: Callable[[Image.Image], torch.Tensor], num_views: int = 2) -> None:
        self.view, self.num_views = view, num_views

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.view(image) for _ in range(self.num_views)]


def eval_transform(aug: Augmentations, resize: int | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic evaluation transform: resize the short side to ``resize`` (default: ``crop_size``),
    centre-crop ``crop_size``, normalize."""
    return T.Compose([
        T.Resize(resize or aug.crop_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(aug.crop_size),
        T.ToTensor(),
        T.Normalize(aug.mean, aug.std),
    ])
