"""Evaluation protocols: weighted kNN, linear probe, fine-tuning, label propagation, embeddings, and loading
pretrained backbones."""

from wcl.eval.classifier import FineTune, LinearProbe
from wcl.eval.embed import Embedder
from wcl.eval.knn import KNNEval, ShardedKnn, knn_predict
from wcl.eval.propagate import PropagationEval

__all__ = ["Embedder", "FineTune", "KNNEval", "LinearProbe", "PropagationEval", "ShardedKnn", "knn_predict"]
