"""The benchmark scripts run as documented (their --quick paths on data small enough to run out)."""

import sys
from pathlib import Path

import torch

from wcl import WCLDataModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import neighbor_rules  # noqa: E402
import pseudo_labels  # noqa: E402
import throughput  # noqa: E402


def test_data_times_continue_past_the_end_of_a_small_epoch(monkeypatch):
    """--quick's loaders hold a couple of batches; timing more steps than that starts the next epoch instead of
    ending in StopIteration (the sampler's position stayed at the end of the first one)."""
    dm = WCLDataModule(batch_size=10, num_workers=0, train_per_class=2)  # 20 images: 2 batches per epoch
    monkeypatch.setattr(throughput, "build_wcl", lambda method, quick: (None, dm, []))
    times = throughput.data_times("wcl", steps=5, quick=True)  # 7 batches drawn: 4 epochs
    assert len(times) == 5 and all(t > 0 for t in times)
    assert dm.epoch.get() == 3  # epochs 0-2 ran out; the 7th batch is the first of epoch 3


def test_pseudo_labels_keep_the_most_confident_of_each_predicted_class():
    """Class-balanced: share × candidates / C rows per class, the most confident first; labelled rows never."""
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    conf = torch.tensor([0.9, 0.2, 0.8, 0.1, 0.7, 0.3, 1.0, 1.0])
    candidates = torch.arange(6)  # rows 6 and 7 are labelled: not candidates, however confident
    rows = pseudo_labels.confident_rows(pred, conf, candidates, share=0.7, num_classes=2)
    assert rows.tolist() == [0, 2, 4, 5]  # 0.7 × 6 // 2 = 2 per class
    assert pseudo_labels.confident_rows(pred, conf, candidates, share=0.1, num_classes=2).numel() == 0


def test_neighbor_rules_share_and_purity_on_a_hand_made_example():
    """4 images, K = 1: the views' nearest neighbours are 0↔1 and 2↔3 in view 1; view 2 and the whole images
    point elsewhere for some of them."""
    view1 = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    view2 = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-0.6, 0.8]])  # 1 → 2, 2 → 1 here
    whole = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [-0.6, 0.8]])  # 0 → 2, 1 → 3, 2 → 0, 3 → 1
    labels = torch.tensor([0, 0, 1, 0])
    stats = neighbor_rules.rule_stats(view1, view2, whole, labels, k=1, floors=(0.9,))
    assert stats["view all"] == {"share": 1.0, "purity": 0.5}  # 0→1, 1→0 right; 2→3, 3→2 wrong
    assert stats["view two_views"] == {"share": 0.5, "purity": 0.5}  # 0→1 and 3→2 are in both views' tables
    # neighbour similarity 0.8 against the own views' 1.0, 1.0, 0.8, 1.0: only 2 keeps its (wrong) neighbour
    assert stats["view floor 0.9"] == {"share": 0.25, "purity": 0.0}
    assert stats["eval all"] == {"share": 1.0, "purity": 0.5}  # 1→3 and 3→1 right
