"""ResNet backbones with a configurable base width and an optional CIFAR stem.

The module names follow torchvision's ``ResNet`` (``conv1, bn1, layer1..4``), so a backbone built with the
standard stem and width 64 is a torchvision ResNet without its classifier.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ResNetName = Literal["resnet18", "resnet34", "resnet50"]

_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetBackbone(ResNet):
    """torchvision ResNet trunk: image B×3×H×W → pooled features B×``out_dim`` (``fc`` is the identity)."""

    def __init__(self, name: ResNetName = "resnet18", width: int = 64, cifar_stem: bool = False,
                 zero_init_residual: bool = True) -> None:
        if name not in _SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_SPECS)}")
        if width < 1:
            raise ValueError(f"backbone width must be >= 1, got {width}")
        block, layers = _SPECS[name]
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        # Rebuild the trunk at the requested base width (torchvision hard-codes 64).
        self.inplanes = width
        self.dilation = 1
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Identity()
        self.out_dim = width * 8 * block.expansion
        self.name, self.width, self.cifar_stem = name, width, cifar_stem
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def build_resnet(name: ResNetName = "resnet18", width: int = 64, cifar_stem: bool = False) -> ResNetBackbone:
    """A ResNet-18/34/50 trunk; ``width`` 64 is the standard network, 16 a small one for CPU runs."""
    return ResNetBackbone(name, width, cifar_stem)
