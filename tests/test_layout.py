"""The backbone's memory format (``wcl.models.layout``): channels-last on CUDA only, and no native crash on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from wcl import WCL
from wcl.models.layout import memory_format, set_layout, to_layout

ROOT = Path(__file__).resolve().parents[1]


def test_channels_last_only_for_convolutional_trunks_on_cuda():
    conv, attention = nn.Conv2d(3, 4, 3), nn.Identity()
    attention.convolutional = False  # what wcl.models.backbones sets on ViTs
    assert memory_format(conv, "cuda") == torch.channels_last
    assert memory_format(conv, torch.device("cuda", 1)) == torch.channels_last
    assert memory_format(conv, "cuda", channels_last=False) == torch.contiguous_format
    assert memory_format(attention, "cuda") == torch.contiguous_format
    assert memory_format(conv, "cpu") == torch.contiguous_format
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert to_layout(conv, x).is_contiguous()


def test_wcl_on_cpu_keeps_weights_and_inputs_contiguous():
    # One channels-last operand is enough for PyTorch to take oneDNN's NHWC convolution, so both must be contiguous.
    model = WCL(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=8, weak_hidden_dim=8,
                channels_last=True)
    set_layout(model.backbone, "cuda")  # as if trained on a GPU before: setup puts the weights back for the CPU
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    model.setup("fit")
    assert all(p.is_contiguous() for p in model.backbone.parameters())


@pytest.mark.slow
def test_crop_64_at_width_4_trains_on_cpu(tmp_path):
    """With the backbone channels-last on CPU, this config can end in a segfault (exit 139) or a heap abort in
    oneDNN's backward-weights kernel of the layer-2 shortcut (1×1, stride 2, 4 → 8 channels); it must train."""
    proc = subprocess.run(
        [sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--data.train_per_class", "2", "--data.val_per_class", "1",
         "--data.batch_size", "10", "--data.num_workers", "0", "--model.width", "4", "--model.knn_every_n_epochs",
         "0", "--data.augment.crop_size", "64", "--trainer.default_root_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
