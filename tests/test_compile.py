"""The compiled backbone (``compile_backbone: true``) stays compiled: three epochs of training, validation and the
online kNN every epoch, with and without the multi-crop's crops, from dynamo's own counters — every frame dynamo
tried compiled (no fallback to eager), no graph break, nothing unimplemented (the recompile limit is one such
entry), a bounded number of graphs and none new after epoch 2 (no shape or mode recompiles in steady state).

The test compiles with dynamo's ``aot_eager`` backend: the graphs, guards and recompiles are dynamo's and the same as
inductor's, without inductor's code generation, which takes minutes per graph on a 2-core machine. Set
``WCL_COMPILE_BACKEND=inductor`` to run the real thing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch._dynamo.utils import counters

from wcl import WCL, WCLDataModule
from wcl.callbacks import KnnMultiCrop
from wcl.data import Augmentations

BACKEND = os.environ.get("WCL_COMPILE_BACKEND", "aot_eager")
ROOT = Path(__file__).resolve().parents[1]


class _Graphs(Callback):
    """Dynamo's unique-graph count after each epoch (training, validation and the kNN bank pass)."""

    def __init__(self) -> None:
        self.after_epoch: list[int] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if not trainer.sanity_checking:
            self.after_epoch.append(counters["stats"]["unique_graphs"])


@pytest.fixture
def backend(monkeypatch):
    """``nn.Module.compile`` with the test's backend (``wcl.models.compile`` passes mode and dynamic=False)."""
    compile_ = torch.nn.Module.compile

    def compile_with(self, *args, mode=None, **kwargs):  # noqa: ANN001, ANN202
        return compile_(self, *args, backend=BACKEND, **({"mode": mode} if BACKEND == "inductor" else {}), **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("crops", [0, 2], ids=["two views", "multi-crop"])
def test_compiled_backbone_never_falls_back_and_stops_compiling(tmp_path, backend, crops):
    dm = WCLDataModule(batch_size=16, eval_batch_size=12, num_workers=0, train_per_class=4, val_per_class=2,
                       augment=Augmentations(crop_size=16), augment_on="device", in_memory=True,
                       num_small_crops=crops, small_crop_size=8)  # 40 train / 20 val images: partial last batches
    model = WCL(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8,
                weak_hidden_dim=16, weak_out_dim=8, num_classes=10, optimizer="sgd", lr_scaling="none",
                warmup_epochs=0, knn_k=5, knn_every_n_epochs=1, compile_backbone=True, graph_backend="torch",
                crop_losses="weak" if crops else "both")
    graphs = _Graphs()
    extra = [KnnMultiCrop(k=3, backend="torch")] if crops else []
    trainer = Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      log_every_n_steps=1, default_root_dir=tmp_path, callbacks=[*extra, graphs])
    trainer.fit(model, dm)
    assert "val/knn_top1" in trainer.callback_metrics
    frames = counters["frames"]
    assert frames["total"] > 0 and frames["ok"] == frames["total"], dict(frames)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert not counters["unimplemented"], dict(counters["unimplemented"])
    assert len(graphs.after_epoch) == 3
    assert graphs.after_epoch[1] == graphs.after_epoch[2], graphs.after_epoch  # nothing new after epoch 2
    assert graphs.after_epoch[2] <= 8, graphs.after_epoch


def test_evaluation_batches_of_any_size_share_one_graph_and_keep_their_rows(backend):
    from wcl.models.compile import compile_backbone, run_backbone

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten()).eval()
    xs = [torch.randn(b, 3, 6, 6) for b in (8, 5, 3, 8)]
    with torch.no_grad():
        eager = [net(x) for x in xs]
    compile_backbone(net)
    with torch.no_grad():
        for x, ref in zip(xs, eager, strict=True):
            out = run_backbone(net, x)
            assert out.shape == ref.shape
            torch.testing.assert_close(out, ref)
    assert counters["stats"]["unique_graphs"] == 1


def test_a_recompile_limit_fallback_is_one_warning_line(backend, capfd, monkeypatch):
    from wcl.models.compile import compile_backbone, run_backbone

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    net = torch.nn.Linear(4, 2)
    compile_backbone(net)
    for b in (3, 5, 7, 9):  # training mode: one graph per batch size, the second is over the limit
        run_backbone(net, torch.randn(b, 4))
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("wcl: warning:")]
    assert len(lines) == 1 and "recompile_limit (1)" in lines[0] and "runs without compilation" in lines[0], lines


class GraphsAfterEpoch(Callback):
    """Appends dynamo's unique-graph count to the file ``path`` at the end of every training epoch (after its
    validation and kNN bank pass)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        with self.path.open("a") as f:
            f.write(f"{counters['stats']['unique_graphs']}\n")


@pytest.mark.slow
def test_cifar10_recipe_shapes_compile_once(tmp_path, backend, cifar10_root, monkeypatch):
    """The CIFAR-10 recipe with the multi-crop overlay as a user runs it (batch 512, two 16-px crops per sample,
    evaluation batches of 1,024 with a partial last one on val and on the kNN bank, the kNN every epoch), on 1,100
    images per split and a width-8 ResNet-18 in float32: no fallback to eager, no graph after epoch 1, and 3 graphs
    (training views, training crops, evaluation) — far below dynamo's limit of 8."""
    from wcl.cli import main

    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/cifar10/wcl.yaml", "--config", "configs/multicrop.yaml",
          "--data.root", str(cifar10_root), "--data.train_per_class", "110", "--data.val_per_class", "110",
          "--data.num_workers", "0", "--model.width", "8", "--model.compile_backbone", "true",
          "--model.knn_every_n_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
          "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks+=tests.test_compile.GraphsAfterEpoch",
          f"--trainer.callbacks.path={tmp_path / 'graphs.txt'}"])
    frames = counters["frames"]
    assert frames["total"] > 0 and frames["ok"] == frames["total"], dict(frames)
    assert not counters["graph_break"] and not counters["unimplemented"], dict(counters["unimplemented"])
    counts = [int(line) for line in (tmp_path / "graphs.txt").read_text().split()]
    assert counts == [3, 3, 3], counts
