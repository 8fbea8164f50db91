"""Evaluation protocols: weighted kNN, linear probe, fine-tuning, and loading pretrained backbones."""

from wcl.eval.classifier import FineTune, LinearProbe
from wcl.eval.knn import KNNEval, ShardedKnn, knn_predict

__all__ = ["FineTune", "KNNEval", "LinearProbe", "ShardedKnn", "knn_predict"]
