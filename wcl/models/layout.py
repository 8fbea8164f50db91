"""The memory format the backbone runs in: channels-last on CUDA, contiguous (NCHW) everywhere else.

channels-last lets cuDNN pick its NHWC tensor-core kernels. On CPU it routes every convolution through oneDNN's
NHWC kernels, and one of them corrupts memory: the backward-weights kernel of a strided 1×1 convolution with
fewer than 8 input channels (oneDNN ``jit_1x1:avx2`` backward_weights, e.g. the layer-2 shortcut of a width-4
ResNet, ``ic4 oc8 1×1 stride 2``) writes past its buffer, and training ends in a segfault or a heap abort
(torch 2.14.1). The contiguous path takes other oneDNN kernels, is not slower there (benchmarks/memory_format.py),
and keeps the CPU runs safe at every width. Both the weights and the inputs must be contiguous: one
channels-last operand is enough for PyTorch to take the NHWC path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def memory_format(device: torch.device | str, channels_last: bool = True) -> torch.memory_format:
    """``torch.channels_last`` where ``channels_last`` is asked for and ``device`` is CUDA, else contiguous."""
    return torch.channels_last if channels_last and torch.device(device).type == "cuda" else torch.contiguous_format


def to_layout(x: Tensor, channels_last: bool = True) -> Tensor:
    """Images B×3×H×W in the memory format of their device (:func:`memory_format`)."""
    return x.contiguous(memory_format=memory_format(x.device, channels_last))


def set_layout(module: nn.Module, device: torch.device | str, channels_last: bool = True) -> nn.Module:
    """``module``'s 4-d weights in the memory format of ``device``, in place (``module`` is returned)."""
    return module.to(memory_format=memory_format(device, channels_last))
