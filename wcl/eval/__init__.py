"""Evaluation protocols: weighted kNN, linear probe, fine-tuning, and loading pretrained backbones."""

from wcl.eval.classifier import FineTune, LinearProbe
from wcl.eval.knn import KNNAccumulator, KNNEval, knn_predict

__all__ = ["FineTune", "KNNAccumulator", "KNNEval", "LinearProbe", "knn_predict"]
