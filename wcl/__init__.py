"""wcl: Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021) in PyTorch Lightning."""

from wcl.data.datamodule import LabelledDataModule, WCLDataModule
from wcl.eval.classifier import FineTune, LinearProbe
from wcl.eval.knn import KNNEval
from wcl.module import WCL

__all__ = ["WCL", "FineTune", "KNNEval", "LabelledDataModule", "LinearProbe", "WCLDataModule"]
__version__ = "0.1.0"
