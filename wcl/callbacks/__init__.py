"""Callbacks that own the lifecycles around the model: checkpoints, the KNN multi-crop's bank and table, the
online kNN, and training health (throughput, skipped images, non-finite losses)."""

from wcl.callbacks.checkpoint import AtomicCheckpointIO, Checkpoint
from wcl.callbacks.knn import OnlineKnn
from wcl.callbacks.monitor import FiniteLossGuard, TrainingMonitor
from wcl.callbacks.multicrop import FeatureBank, KnnMultiCrop
from wcl.callbacks.progress import PlainProgress, Preflight

__all__ = ["AtomicCheckpointIO", "Checkpoint", "FeatureBank", "FiniteLossGuard", "KnnMultiCrop", "OnlineKnn",
           "PlainProgress", "Preflight", "TrainingMonitor"]
