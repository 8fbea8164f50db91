import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from wcl import WCL
from wcl.errors import NonFiniteLossError

TINY = dict(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8, weak_hidden_dim=16,
            weak_out_dim=8, num_classes=3, knn_every_n_epochs=0)


def _batch(b=8, seed=0, nan=False):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(b, 3, 8, 8, generator=g), torch.randn(b, 3, 8, 8, generator=g)
    if nan:
        x1[0, 0, 0, 0] = float("nan")
    return {"views": [x1, x2], "index": torch.arange(b), "label": torch.arange(b) % 3}


def test_non_finite_loss_names_step_and_term():
    model = WCL(**TINY)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 0 .*loss_nce"):
        model.training_step(_batch(nan=True), 0)


class _Frozen(WCL):
    """BatchNorm in eval mode: each sample's output is independent of the rest of its rank's batch, so only the
    losses couple samples and 2 ranks × B must reproduce 1 rank × 2B exactly."""

    def on_train_epoch_start(self) -> None:
        for m in self.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


class _Fixed(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(3)
        self.x1 = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
        self.x2 = self.x1 + 0.5 * torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)

    def __len__(self):
        return len(self.x1)

    def __getitem__(self, i):
        return {"views": [self.x1[i], self.x2[i]], "index": i, "label": i % 3}


class _FixedData(LightningDataModule):
    def __init__(self, batch_size, n):
        super().__init__()
        self.batch_size, self.n = batch_size, n

    def train_dataloader(self):
        return DataLoader(_Fixed(self.n), batch_size=self.batch_size, shuffle=False)


def _one_step(devices: int, batch_size: int, weak_weight: float, path) -> dict:
    torch.manual_seed(0)
    model = _Frozen(**{**TINY, "num_classes": None}, weak_weight=weak_weight, optimizer="sgd", base_lr=1.0,
                    lr_scaling="none", momentum=0.0, weight_decay=0.0, warmup_epochs=0, channels_last=False)
    model = model.double()  # ddp_spawn loads the trained weights back into this model: keep them float64
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                      precision="64-true", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, _FixedData(batch_size, 2 * 6))
    # ddp_spawn copies the trained weights back into this process's model.
    end = model.state_dict()
    return {k: start[k] - end[k] for k in start if end[k].is_floating_point()}


@pytest.mark.parametrize("weak_weight", [0.0, 1.0])
def test_lightning_ddp_two_ranks_equal_one_rank(weak_weight, tmp_path):
    # One SGD step at lr 1 moves each parameter by exactly its (DDP-averaged) gradient.
    single = _one_step(1, 12, weak_weight, tmp_path)
    ddp = _one_step(2, 6, weak_weight, tmp_path)
    moved = 0
    for name, delta in single.items():
        torch.testing.assert_close(ddp[name], delta, rtol=1e-5, atol=1e-8, msg=name)
        moved += int(delta.abs().max() > 0)
    assert moved > 10


def test_compiled_backbone_trains_and_keeps_checkpoint_keys(monkeypatch):
    calls = []
    real_compile = torch.compile

    def eager_compile(fn, **kwargs):  # dynamo traces for real; the eager backend skips the C++ code generation
        calls.append(kwargs)
        return real_compile(fn, **{**kwargs, "backend": "eager", "mode": None})

    monkeypatch.setattr(torch, "compile", eager_compile)
    torch.manual_seed(0)
    plain = WCL(**TINY)
    torch.manual_seed(0)
    compiled = WCL(**TINY, compile_backbone=True, compile_mode="max-autotune")
    assert calls == [{"mode": "max-autotune"}]
    assert list(compiled.state_dict()) == list(plain.state_dict())
    x = _batch()["views"][0]
    torch.testing.assert_close(compiled(x), plain(x))
    compiled(x).sum().backward()
    assert compiled.backbone.conv1.weight.grad is not None
