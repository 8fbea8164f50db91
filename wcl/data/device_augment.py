"""The SimCLR view augmentation, batched on the batch's device with kornia (``augment_on: device``).

Workers only decode images to uint8 tensors; :class:`DeviceViews` turns a uint8 batch B×3×H×W into one
augmented float view B×3×S×S with independent random parameters per sample, following the same
:class:`~wcl.data.transforms.Augmentations` as the CPU path (torchvision), with the same distributions.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from wcl.data.transforms import Augmentations


class DeviceViews(nn.Module):
    """uint8 B×3×H×W (any device) → normalized float B×3×size×size; one independent draw per sample."""

    def __init__(self, aug: Augmentations, size: int | None = None,
                 scale: tuple[float, float] | None = None) -> None:
        super().__init__()
        size = aug.crop_size if size is None else size
        s = aug.jitter_strength
        ops: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=scale or aug.crop_scale, ratio=aug.crop_ratio,
                                resample="BICUBIC"),
            K.RandomHorizontalFlip(p=aug.hflip_prob),
        ]
        if aug.jitter_prob > 0 and s > 0:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=aug.jitter_prob))
        if aug.grayscale_prob > 0:
            ops.append(K.RandomGrayscale(p=aug.grayscale_prob))
        if aug.blur_prob > 0:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=aug.blur_sigma, p=aug.blur_prob))
        if aug.solarize_prob > 0:
            # Threshold fixed at 0.5 (= 128/255, as torchvision's RandomSolarize(128)); no brightness addition.
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=aug.solarize_prob))
        self.ops = K.AugmentationSequential(*ops)
        self.register_buffer("mean", torch.tensor(aug.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(aug.std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float().div_(255)
        x = self.ops(x).clamp_(0, 1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
