"""Networks: backbones by name (wcl's ResNets, ``torchvision:<name>``, ``timm:<name>``) and projection heads."""

from wcl.models.backbones import BackboneInfo, build_backbone, build_resnet
from wcl.models.heads import ProjectionHead

__all__ = ["BackboneInfo", "ProjectionHead", "build_backbone", "build_resnet"]
