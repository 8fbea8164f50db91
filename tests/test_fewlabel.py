"""Few labels all the way through: the known labels of pretraining (data masking, the label graph, the loss over
ranks), the few-label kNN bank, and the same labelled images from pretraining to fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import run_gloo
from wcl import WCL, LabelledDataModule, WCLDataModule
from wcl.cli import main
from wcl.data.datasets import targets_of
from wcl.errors import ConfigError, DataError
from wcl.graph import weak_labels
from wcl.losses import WeakLabelLoss, rank_share, weak_label_loss

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.train_per_class", "2",
        "--data.val_per_class", "1", "--data.batch_size", "10", "--data.num_workers", "0", "--model.width", "4"]


def test_pretraining_and_finetuning_select_the_same_images():
    for seed in (0, 3):
        pre = WCLDataModule(label_fraction=0.1, seed=seed, train_per_class=50, num_workers=0)
        fine = LabelledDataModule(label_fraction=0.1, seed=seed, train_per_class=50, num_workers=0)
        assert pre.labelled_names() == fine.labelled_names() and len(pre.labelled_names()) == 50
    assert WCLDataModule(label_fraction=0.1, seed=1).labelled_names() != \
        WCLDataModule(label_fraction=0.1, seed=2).labelled_names()
    assert WCLDataModule().labelled_names() is None


@pytest.mark.parametrize("path", ["workers", "in_memory"])
def test_unknown_labels_are_minus_one_in_the_batch(path):
    kw = {"augment_on": "device", "in_memory": True} if path == "in_memory" else {}
    dm = WCLDataModule(label_fraction=0.25, seed=0, train_per_class=8, batch_size=80, num_workers=0, **kw)
    known_rows = set(dm.known_subset.indices)
    assert len(known_rows) == 20
    batch = next(iter(dm.train_dataloader()))
    index, label, true = batch["index"], batch["label"], batch["true_label"]
    assert index.shape[0] == 80
    for i, y, t in zip(index.tolist(), label.tolist(), true.tolist(), strict=True):
        assert y == (t if i in known_rows else -1)
    assert (label >= 0).sum() == 20 and (true >= 0).all()
    # Without a subset every label is known and nothing extra is served.
    plain = next(iter(WCLDataModule(train_per_class=8, batch_size=80, num_workers=0, **kw).train_dataloader()))
    assert "true_label" not in plain and (plain["label"] >= 0).all()


@pytest.mark.parametrize("in_memory", [False, True])
def test_knn_bank_is_the_labelled_subset(in_memory):
    kw = {"augment_on": "device", "in_memory": True} if in_memory else {}
    dm = WCLDataModule(label_fraction=0.1, seed=0, train_per_class=20, eval_batch_size=7, num_workers=0, **kw)
    labels = torch.cat([b["label"] for b in dm.eval_loader("bank")])
    subset = dm.known_subset
    assert labels.tolist() == targets_of(subset) and len(labels) == 20
    assert "kNN bank: those images" in dm.protocol() and "10 % labels (20 of 200 images" in dm.protocol()
    everything = WCLDataModule(label_fraction=0.1, train_per_class=20, bank="all", num_workers=0, **kw)
    assert len(torch.cat([b["label"] for b in everything.eval_loader("bank")])) == 200
    assert "all 200 images" in everything.protocol()
    assert WCLDataModule(train_per_class=20, num_workers=0, **kw).protocol() is None  # every label: no summary line


def test_subset_file_missing_a_class_is_one_clear_error(tmp_path):
    listing = tmp_path / "subset.txt"
    listing.write_text("airplane/0000.jpg\ncat/0003.jpg\n")
    for module in (WCLDataModule, LabelledDataModule):
        with pytest.raises(DataError, match=r"names no image of 8 of the 10 classes \(first: automobile, bird, deer"):
            module(subset_file=str(listing), num_workers=0)


def test_fraction_giving_some_class_no_labelled_image_is_one_clear_error(tmp_path, capsys):
    """1 % of 20 images per class rounds to none: refused (with the smallest fraction that works), not bumped to one
    image; the same in pretraining, evaluation and through the CLI."""
    for module in (WCLDataModule, LabelledDataModule):
        with pytest.raises(ConfigError, match=r"label_fraction=0.01 gives no labelled image of 10 of the 10 classes "
                                              r"\(first: airplane, automobile, bird, 20 images\); use "
                                              r"data.label_fraction >= 0.05"):
            module(train_per_class=20, label_fraction=0.01, num_workers=0)
    assert len(WCLDataModule(train_per_class=20, label_fraction=0.05, num_workers=0).known_subset) == 10
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", QUICK, *TINY, "--data.label_fraction", "0.01", "--trainer.default_root_dir",
              str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "wcl: error: data.label_fraction=0.01 gives no labelled image" in err and "Traceback" not in err


def test_label_graph_needs_labels_and_the_weak_term(tmp_path, capsys):
    with pytest.raises(ConfigError, match="label_graph .* weak_weight"):
        WCL(weak_weight=0.0, label_graph=True)
    with pytest.raises(ConfigError, match="label_merge: false .*label_graph is false"):
        WCL(label_merge=False)
    assert WCL(width=4, label_graph=True, label_merge=False).weak_loss.merge_known is False
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", QUICK, *TINY, "--model.label_graph", "true", "--trainer.default_root_dir",
              str(tmp_path)])
    assert exc.value.code == 2
    assert "wcl: error: model.label_graph uses the labels of data.label_fraction" in capsys.readouterr().err


# ---------------------------------------------------------------- 2 ranks × B = 1 rank × 2B with known labels
WORLD, B, DIM = 2, 8, 6


def _inputs():
    g = torch.Generator().manual_seed(17)  # a batch whose label graph has singleton components on one rank
    v1 = torch.randn(WORLD * B, DIM, generator=g, dtype=torch.float64)
    v2 = v1 + 0.4 * torch.randn(WORLD * B, DIM, generator=g, dtype=torch.float64)
    known = torch.randint(0, 3, (WORLD * B,), generator=g)
    known[::2] = -1
    return v1, v2, known


def _rank(rank: int, merge: bool) -> dict:
    v1, v2, known = _inputs()
    sl = slice(rank * B, (rank + 1) * B)
    a, b = v1[sl].clone().requires_grad_(), v2[sl].clone().requires_grad_()
    loss, l1, l2 = WeakLabelLoss(0.2, "torch", merge_known=merge)(a, b, known=known[sl])
    loss.backward()
    return {"loss": loss.item(), "labels": (l1.tolist(), l2.tolist()), "grad": (a.grad, b.grad)}


@pytest.mark.slow
@pytest.mark.parametrize("merge", [True, False], ids=["label_merge", "no_merge"])
def test_label_graph_loss_two_ranks_equal_one_process(merge):
    ranks = run_gloo(_rank, merge, world=WORLD)
    v1, v2, known = _inputs()
    a, b = v1.clone().requires_grad_(), v2.clone().requires_grad_()
    loss, l1, l2 = WeakLabelLoss(0.2, "scipy", merge_known=merge)(a, b, known=known)
    (WORLD * loss).backward()  # each rank's loss is its anchors' mean; DDP would average the rank gradients
    assert sum(r["loss"] for r in ranks.values()) / WORLD == pytest.approx(loss.item(), abs=1e-10)
    for r in ranks.values():
        assert r["labels"] == (l1.tolist(), l2.tolist())  # the global constrained graph on every rank
    # Each rank's rows get the gradient of the sum of the ranks' losses: together, the single-process gradient.
    for view, grad in enumerate((a.grad, b.grad)):
        torch.testing.assert_close(torch.cat([ranks[k]["grad"][view] for k in range(WORLD)]), grad, rtol=1e-6,
                                   atol=1e-10)
    # The case the rank balancing is for: a singleton component leaves the ranks with unequal anchor counts.
    assert float(rank_share(l2, B, 0, classes=None if merge else known)) != 1.0
    # The labels changed the graph: the plain graph of the same batch differs.
    assert WeakLabelLoss(0.2, "scipy")(v1, v2)[1].tolist() != l1.tolist()


# ---------------------------------------------------------------- end to end
def test_pretrain_with_label_graph_then_finetune_on_the_same_labels(tmp_path, capsys):
    # channels_last off: on this machine's torch build tiny channels-last CPU runs (the base code's too) crashed
    # with "double free or corruption" on one thread and stalled in backward on two; contiguous ones did not.
    pre = tmp_path / "pre"
    main(["fit", "--config", QUICK, *TINY, "--data.label_fraction", "0.5", "--data.seed", "0",
          "--model.label_graph", "true", "--model.channels_last", "false", "--trainer.default_root_dir", str(pre)])
    out = capsys.readouterr().out
    assert "wcl: labels: known labels in pretraining: 50 % labels (10 of 20 images, class-balanced, seed 0); " \
           "kNN bank: those images" in out
    ckpt = pre / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["label_graph"] is True
    names = (pre / "checkpoints" / "labelled_subset.txt").read_text().split()
    assert len(names) == 10
    fine = tmp_path / "fine"
    main(["fit", "--config", str(ROOT / "configs" / "finetune" / "quickstart_10pct.yaml"), "--model.checkpoint",
          str(ckpt), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.train_per_class",
          "2", "--data.val_per_class", "1", "--data.num_workers", "0", "--data.label_fraction", "0.5",
          "--data.seed", "0", "--trainer.default_root_dir", str(fine)])
    assert "wcl: labels: trained on 50 % labels (10 of 20 images" in capsys.readouterr().out
    assert next(fine.rglob("labelled_subset.txt")).read_text().split() == names


@pytest.mark.parametrize("merge", [True, False], ids=["label_merge", "no_merge"])
@pytest.mark.parametrize("crop_weighting", ["anchor", "term"])
@pytest.mark.parametrize("crops", [0, 2])
def test_rank_balanced_loss_is_the_global_mean_with_singletons(crops, crop_weighting, merge):
    """Ranks simulated in one process (each scores its anchors against the global batch): the mean of the rank
    losses is the global-batch loss, although a singleton component leaves the ranks unequal anchor counts."""
    v1, v2, known = _inputs()
    l1, l2 = (weak_labels(v, known=known, merge_known=merge) for v in (v1, v2))
    classes = None if merge else known
    g = torch.Generator().manual_seed(5)
    small = torch.randn(crops * WORLD * B, DIM, generator=g, dtype=torch.float64)
    owner = torch.arange(WORLD * B).repeat(crops)  # crop-major, as the module concatenates them
    kw = {"labels1": l1, "labels2": l2, "crop_weighting": crop_weighting, "rank_balanced": True, "classes": classes}
    ref = weak_label_loss(v1, v2, 0.2, small=small if crops else None, small_owner=owner if crops else None, **kw)
    per_rank = []
    for r in range(WORLD):
        sl = slice(r * B, (r + 1) * B)
        mine = (owner >= r * B) & (owner < (r + 1) * B)
        per_rank.append(weak_label_loss(v1[sl], v2[sl], 0.2, v1_all=v1, v2_all=v2, offset=r * B,
                                        small=small[mine] if crops else None,
                                        small_owner=owner[mine] - r * B if crops else None, **kw))
    assert float(rank_share(l2, B, 0, classes=classes)) != 1.0
    assert sum(per_rank).item() / WORLD == pytest.approx(ref.item(), abs=1e-12)
    unbalanced = [weak_label_loss(v1[r * B:(r + 1) * B], v2[r * B:(r + 1) * B], 0.2, v1_all=v1, v2_all=v2,
                                  offset=r * B, labels1=l1, labels2=l2, classes=classes) for r in range(WORLD)]
    if not crops:  # without the balancing the mean of the ranks is not the global loss
        assert sum(unbalanced).item() / WORLD != pytest.approx(ref.item(), abs=1e-9)


def test_subset_list_goes_to_the_run_folder_without_checkpoints_or_logger(tmp_path, monkeypatch):
    """With no checkpoint folder and no logger the list lands in trainer.default_root_dir, never the working
    directory (a run once left labelled_subset.txt in the repository)."""
    from types import SimpleNamespace

    from wcl.callbacks import LabelledSubsetFile

    monkeypatch.chdir(tmp_path)
    dm = WCLDataModule(label_fraction=0.1, train_per_class=20, num_workers=0)
    trainer = SimpleNamespace(datamodule=dm, is_global_zero=True, checkpoint_callback=None, log_dir=None,
                              default_root_dir=str(tmp_path / "run"))
    LabelledSubsetFile().on_train_start(trainer, None)
    assert len((tmp_path / "run" / "labelled_subset.txt").read_text().split()) == 20
    assert not (tmp_path / "labelled_subset.txt").exists()
