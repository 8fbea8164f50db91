"""Evaluation protocols."""

from wcl.eval.knn import knn_predict

__all__ = ["knn_predict"]
