"""Callbacks that own the lifecycles around the model: checkpoints, the KNN multi-crop's bank and table, the
online kNN, training health (throughput, skipped images, non-finite losses), runs that would do nothing, the stop
of validate and predict on SIGTERM, the supervised evaluations' cached features and labelled-subset record, and the
embeddings ``predict`` writes."""

from wcl.callbacks.checkpoint import AtomicCheckpointIO, Checkpoint
from wcl.callbacks.guards import RunChecks, StopOnSigterm
from wcl.callbacks.knn import OnlineKnn
from wcl.callbacks.labelled import CachedFeatures, LabelledSubsetFile
from wcl.callbacks.monitor import FiniteLossGuard, TrainingMonitor
from wcl.callbacks.multicrop import FeatureBank, KnnMultiCrop
from wcl.callbacks.predict import EmbeddingWriter
from wcl.callbacks.progress import ModelTable, PlainProgress, Preflight, RichProgress

__all__ = ["AtomicCheckpointIO", "CachedFeatures", "Checkpoint", "EmbeddingWriter", "FeatureBank", "FiniteLossGuard",
           "KnnMultiCrop", "LabelledSubsetFile", "ModelTable", "OnlineKnn", "PlainProgress", "Preflight",
           "RichProgress", "RunChecks", "StopOnSigterm", "TrainingMonitor"]
