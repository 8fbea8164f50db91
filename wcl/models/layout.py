"""The memory format a backbone runs in: channels-last for a convolutional trunk on CUDA, contiguous (NCHW)
everywhere else.

channels-last lets cuDNN pick its NHWC tensor-core kernels. Attention backbones (``convolutional: False``) gain
nothing from it. On CPU it routes every convolution through oneDNN's NHWC kernels, and one of them corrupts
memory: the backward-weights kernel of a strided 1×1 convolution with fewer than 8 input channels (oneDNN
``jit_1x1:avx2`` backward_weights, e.g. the layer-2 shortcut of a width-4 ResNet, ``ic4 oc8 1×1 stride 2``) writes
past its buffer, and training ends in a segfault or a heap abort (torch 2.14.1). The contiguous path takes other
oneDNN kernels and keeps CPU runs safe at every width (``benchmarks/memory_format.py`` times both formats). The
weights and the inputs must both be contiguous: one channels-last operand is enough for PyTorch to take NHWC.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def memory_format(backbone: nn.Module, device: torch.device | str, channels_last: bool = True) -> torch.memory_format:
    """``torch.channels_last`` where it is asked for, ``backbone`` is convolutional and ``device`` is CUDA."""
    conv = getattr(backbone, "convolutional", True)
    cuda = torch.device(device).type == "cuda"
    return torch.channels_last if channels_last and conv and cuda else torch.contiguous_format


def to_layout(backbone: nn.Module, x: Tensor, channels_last: bool = True) -> Tensor:
    """Images B×3×H×W in the memory format ``backbone`` runs in on their device."""
    return x.contiguous(memory_format=memory_format(backbone, x.device, channels_last))


def set_layout(backbone: nn.Module, device: torch.device | str, channels_last: bool = True) -> nn.Module:
    """``backbone``'s 4-d weights in its memory format on ``device``, in place (``backbone`` is returned)."""
    return backbone.to(memory_format=memory_format(backbone, device, channels_last))
