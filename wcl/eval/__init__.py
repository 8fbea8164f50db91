"""Evaluation protocols: weighted kNN, linear probe, fine-tuning, embeddings, and loading pretrained backbones."""

from wcl.eval.classifier import FineTune, LinearProbe
from wcl.eval.embed import Embedder
from wcl.eval.knn import KNNEval, ShardedKnn, knn_predict

__all__ = ["Embedder", "FineTune", "KNNEval", "LinearProbe", "ShardedKnn", "knn_predict"]
