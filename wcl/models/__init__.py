"""Networks: ResNet backbones and projection heads."""

from wcl.models.backbones import build_resnet
from wcl.models.heads import ProjectionHead

__all__ = ["ProjectionHead", "build_resnet"]
