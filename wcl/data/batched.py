"""The view augmentation of :class:`~wcl.data.augment.Augmentations`, batched on any device (``augment_on:
device``): one call turns many uint8 images into normalized float views, every view with its own parameters,
drawn with torchvision's rules, and no Python loop over samples and no host synchronisation.

Parameters come from :func:`wcl.data.sampling.uniforms` of one key per view, so a view is a function of
(seed, epoch, index, view) on every device, rank and resumed run. Crop and resize are one
``torchvision.ops.roi_align`` (bilinear, averaging ⌈crop/size⌉² samples per output pixel when shrinking, so it
does not alias); the CPU path resizes with PIL's bicubic filter, the one deliberate difference between the paths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from wcl.data.augment import Augmentations
from wcl.data.sampling import uniforms

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
# Columns of the per-view uniforms.
_AREA, _RATIO, _TOP, _LEFT, _FLIP = slice(0, 10), slice(10, 20), 20, 21, 22
_JITTER, _FACTORS, _ORDER = 23, slice(24, 28), slice(28, 32)
_GRAY, _BLUR, _SIGMA, _SOLARIZE, NUM_UNIFORMS = 32, 33, 34, 35, 36


def crop_boxes(u: Tensor, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for every row of ``u`` (V×36 uniforms) at once: ten
    attempts of area ∈ scale·H·W and log-uniform aspect ratio, the first that fits wins, else the centre crop
    with the ratio clamped. Returns V×4 float boxes (top, left, height, width)."""
    area = height * width
    target = area * (scale[0] + u[:, _AREA] * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + u[:, _RATIO] * (log_hi - log_lo))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first attempt that fits (0 when none does)
    found = fits.any(1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.where(found, torch.floor(u[:, _TOP] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    left = torch.where(found, torch.floor(u[:, _LEFT] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([top, left, h, w], 1)


def _gray(x: Tensor) -> Tensor:
    """V×3×H×W → V×1×H×W luma."""
    return GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3]


def blend(x: Tensor, factor: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """Brightness, contrast or saturation per row (torchvision's ``_blend``): ``factor·x + (1-factor)·ref``,
    clamped to [0, 1], with ref = 0 (brightness), the mean luma (``contrast``) or the luma (``saturation``).
    factor, contrast, saturation: V (float; the masks 0/1). A factor of 1 leaves a row exactly unchanged."""
    gray = _gray(x)
    c, s, a = (t.view(-1, 1, 1, 1) for t in (contrast, saturation, factor))
    ref = c * gray.mean((2, 3), keepdim=True) + s * gray
    return (a * x + (1 - a) * ref).clamp_(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` per row (V shifts in [-0.5, 0.5]): rotate the hue in HSV space, keeping
    the maximum and minimum channel. x: V×3×H×W in [0, 1]."""
    maxc, minc = x.amax(1), x.amin(1)
    spread = maxc - minc
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    r, g, b = ((maxc - ch) / safe for ch in x.unbind(1))
    hue = torch.where(maxc == x[:, 0], b - g, torch.where(maxc == x[:, 1], 2.0 + r - b, 4.0 + g - r))
    hue = hue / 6.0 + shift.view(-1, 1, 1)
    hue = hue - hue.floor()  # mod 1 (floor is cheaper than remainder on CPU)
    # HSV → RGB with the same value and spread: channel n ∈ (5, 3, 1) = (r, g, b), k = (n + 6·hue) mod 6.
    n = (5.0 - 2.0 * torch.arange(3, device=x.device, dtype=x.dtype)).view(1, 3, 1, 1)
    k = n + 6.0 * hue[:, None]
    k = torch.where(k >= 6.0, k - 6.0, k)
    return maxc[:, None] - spread[:, None] * torch.minimum(k, 4.0 - k).clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor, kernel: int) -> Tensor:
    """Per-row Gaussian blur (torchvision's kernel and reflect padding); rows with ``apply`` false get a delta
    kernel, i.e. stay exactly unchanged. sigma: V; apply: V bool."""
    v, c, h, w = x.shape
    pos = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    pdf = torch.exp(-0.5 * (pos[None] / sigma[:, None]) ** 2)
    delta = (pos == 0).to(x.dtype).expand(v, -1)
    k1d = torch.where(apply[:, None], pdf / pdf.sum(1, keepdim=True), delta).repeat_interleave(c, 0)
    pad = kernel // 2
    y = F.pad(x.reshape(1, v * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k1d.view(v * c, 1, 1, kernel), groups=v * c)
    y = F.conv2d(y, k1d.view(v * c, 1, kernel, 1), groups=v * c)
    return y.view(v, c, h, w)


class BatchedViews:
    """``aug`` applied to a batch: (images N×3×H×W uint8, rows LongTensor[V], keys LongTensor[V]) → V×3×S×S
    normalized float32 views, view v cut from ``images[rows[v]]`` with the parameters of ``keys[v]``.

    ``size``/``scale`` override the output size and crop scale (low-resolution crops).
    """

    def __init__(self, aug: Augmentations, size: int | None = None, scale: tuple[float, float] | None = None):
        self.aug, self.size = aug, aug.crop_size if size is None else size
        self.scale = scale or aug.crop_scale
        self._consts: dict[torch.device, dict[str, Tensor]] = {}

    def constants(self, device: torch.device) -> dict[str, Tensor]:
        """Per-device constant tensors, made once (a host→device copy per step would synchronise)."""
        if device not in self._consts:
            b, c, s, h = self.aug.jitter()
            self._consts[device] = {name: torch.tensor(v, device=device) for name, v in (
                ("mean", self.aug.mean), ("std", self.aug.std),
                ("lo", [max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h]), ("hi", [1 + b, 1 + c, 1 + s, h]),
                ("neutral", [1.0, 1.0, 1.0, 0.0]))}
        return self._consts[device]

    @torch.no_grad()
    def __call__(self, images: Tensor, rows: Tensor, keys: Tensor) -> Tensor:
        aug, dev = self.aug, images.device
        u = uniforms(keys.to(dev), NUM_UNIFORMS)
        box = crop_boxes(u, images.shape[2], images.shape[3], self.scale, aug.crop_ratio)
        top, left, h, w = box.unbind(1)
        rois = torch.stack([rows.to(dev, torch.float32), left, top, left + w, top + h], 1)
        x = roi_align(images.float(), rois, self.size, aligned=True).mul_(1 / 255)
        flip = (u[:, _FLIP] < aug.hflip_prob).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
        if aug.jitters():
            x = self._jitter(x, u)
        if aug.grayscale_prob > 0:
            x = torch.where((u[:, _GRAY] < aug.grayscale_prob).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        if aug.blur_prob > 0:
            lo, hi = aug.blur_sigma
            x = gaussian_blur(x, lo + u[:, _SIGMA] * (hi - lo), u[:, _BLUR] < aug.blur_prob,
                              aug.blur_kernel(self.size))
        if aug.solarize_prob > 0:
            solarize = (u[:, _SOLARIZE] < aug.solarize_prob).view(-1, 1, 1, 1) & (x >= 128 / 255)
            x = torch.where(solarize, 1 - x, x)
        const = self.constants(dev)
        return (x - const["mean"].view(1, 3, 1, 1)) / const["std"].view(1, 3, 1, 1)

    def jitter_params(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """ColorJitter's parameters per row, as torchvision draws them: V×4 factors (brightness, contrast,
        saturation uniform in [max(0, 1-f), 1+f], hue in [-f, f]; neutral where the jitter is not applied, with
        probability 1 - ``jitter_prob``) and V×4 ``order`` (``order[:, k]``: the op applied k-th, a uniformly
        random permutation like ``torch.randperm(4)``)."""
        const = self.constants(u.device)
        lo, hi = const["lo"], const["hi"]
        apply = u[:, _JITTER:_JITTER + 1] < self.aug.jitter_prob
        factors = torch.where(apply, lo + u[:, _FACTORS] * (hi - lo), const["neutral"])
        return factors, u[:, _ORDER].argsort(1)

    def _jitter(self, x: Tensor, u: Tensor) -> Tensor:
        """The colour jitter of every row in its own order. Brightness, contrast and saturation before the hue are
        applied in up to three masked passes, then the hue once, then the ones after it: exactly each row's order,
        with a single hue conversion."""
        factors, order = self.jitter_params(u)
        hue_at = order.argsort(1)[:, 3]
        for k in range(3):  # before the hue
            x = self._blend_at(x, factors, order[:, k], k < hue_at)
        x = adjust_hue(x, factors[:, 3])
        for k in range(1, 4):  # after the hue
            x = self._blend_at(x, factors, order[:, k], k > hue_at)
        return x

    @staticmethod
    def _blend_at(x: Tensor, factors: Tensor, op: Tensor, active: Tensor) -> Tensor:
        factor = torch.where(active, factors.gather(1, op[:, None].clamp(max=2)).squeeze(1), 1.0)
        return blend(x, factor, (op == 1).to(x.dtype), (op == 2).to(x.dtype))
