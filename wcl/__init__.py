"""wcl: Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021) in PyTorch Lightning."""

from wcl.data.datamodule import WCLDataModule
from wcl.module import WCL

__all__ = ["WCL", "WCLDataModule"]
__version__ = "0.1.0"
