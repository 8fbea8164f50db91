import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from wcl import WCL
from wcl.errors import NonFiniteLossError

TINY = dict(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8, weak_hidden_dim=16,
            weak_out_dim=8, num_classes=3)


def _batch(b=8, seed=0, nan=False):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(b, 3, 8, 8, generator=g), torch.randn(b, 3, 8, 8, generator=g)
    if nan:
        x1[0, 0, 0, 0] = float("nan")
    return {"views": [x1, x2], "index": torch.arange(b), "label": torch.arange(b) % 3}


class _NaNAt(Dataset):
    """Random two-view samples; every image of step ``bad_step`` is NaN (none when it is None)."""

    def __init__(self, n, batch_size, bad_step=None):
        self.n = n
        self.bad = range(0) if bad_step is None else range(bad_step * batch_size, (bad_step + 1) * batch_size)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x1, x2 = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
        if i in self.bad:
            x1 = torch.full_like(x1, float("nan"))
        return {"views": [x1, x2], "index": i, "label": i % 3}


def test_non_finite_loss_is_caught_at_the_next_check_and_never_saved(tmp_path):
    from wcl.callbacks import Checkpoint

    loader = DataLoader(_NaNAt(8 * 10, 8, bad_step=3), batch_size=8)  # 10 steps per epoch, NaN at step 3
    trainer = Trainer(accelerator="cpu", max_epochs=2, log_every_n_steps=5, default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[Checkpoint(dirpath=str(tmp_path), every_n_train_steps=2)])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 in loss_nce.*detected at step [45]"):
        trainer.fit(WCL(**TINY, optimizer="sgd", lr_scaling="none", warmup_epochs=0), loader)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2  # the step-4 checkpoint was refused: the last good one stays
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_weak_label_diagnostics_are_logged_on_exactly_the_steps_lightning_logs(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    loader = DataLoader(_NaNAt(8 * 7, 8), batch_size=8)  # 7 steps per epoch, no NaN
    trainer = Trainer(accelerator="cpu", max_epochs=2, log_every_n_steps=3, logger=CSVLogger(tmp_path, name="m"),
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(WCL(**TINY, optimizer="sgd", lr_scaling="none", warmup_epochs=0, knn_every_n_epochs=0), loader)
    with open(tmp_path / "m" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    loss_steps = {int(r["step"]) for r in rows if r.get("train/loss")}
    weak_steps = {int(r["step"]) for r in rows if r.get("weak_labels/purity")}
    assert loss_steps == {2, 5, 8, 11}  # every third of 14 steps (0-based), across the epoch boundary
    assert weak_steps == loss_steps


def test_online_classifier_stays_in_the_graph_without_labels():
    model = WCL(**TINY)
    batch = _batch()
    batch["label"] = torch.full_like(batch["label"], -1)
    out = model.training_step(batch, 0)
    assert out["terms"]["online_linear_loss"].item() == 0.0
    out["loss"].backward()
    assert model.classifier.weight.grad is not None  # DDP would otherwise find an unused parameter


class _Frozen(WCL):
    """BatchNorm in eval mode: each sample's output is independent of the rest of its rank's batch, so only the
    losses couple samples and 2 ranks × B must reproduce 1 rank × 2B exactly."""

    def on_train_epoch_start(self) -> None:
        for m in self.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


class _Fixed(Dataset):
    def __init__(self, n, odd_unlabelled=False):
        g = torch.Generator().manual_seed(3)
        self.x1 = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
        self.x2 = self.x1 + 0.5 * torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
        self.odd_unlabelled = odd_unlabelled

    def __len__(self):
        return len(self.x1)

    def __getitem__(self, i):
        return {"views": [self.x1[i], self.x2[i]], "index": i, "label": -1 if self.odd_unlabelled and i % 2 else i % 3}


class _FixedData(LightningDataModule):
    def __init__(self, batch_size, n, odd_unlabelled=False):
        super().__init__()
        self.batch_size, self.n, self.odd_unlabelled = batch_size, n, odd_unlabelled

    def train_dataloader(self):
        ds = _Fixed(self.n, self.odd_unlabelled)
        if self.odd_unlabelled and torch.distributed.is_initialized():  # rank 1 gets the odd (unlabelled) samples
            sampler = torch.utils.data.DistributedSampler(ds, shuffle=False)
            return DataLoader(ds, batch_size=self.batch_size, sampler=sampler)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False)


def _one_step(devices: int, batch_size: int, weak_weight: float, path, num_classes=None, odd_unlabelled=False) -> dict:
    torch.manual_seed(0)
    model = _Frozen(**{**TINY, "num_classes": num_classes}, weak_weight=weak_weight, optimizer="sgd", base_lr=1.0,
                    lr_scaling="none", momentum=0.0, weight_decay=0.0, warmup_epochs=0, channels_last=False)
    model = model.double()  # ddp_spawn loads the trained weights back into this model: keep them float64
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                      precision="64-true", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, _FixedData(batch_size, 2 * 6, odd_unlabelled))
    # ddp_spawn copies the trained weights back into this process's model.
    end = model.state_dict()
    return {k: start[k] - end[k] for k in start if end[k].is_floating_point()}


@pytest.mark.slow
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


@pytest.mark.slow
def test_ddp_rank_with_no_labelled_sample_keeps_the_online_classifier_in_the_graph(tmp_path):
    """STL-10-like data: rank 1's whole batch is unlabelled (the distributed sampler gives it the odd indices). DDP
    must still reduce the classifier's gradient (were the classifier out of rank 1's graph, the step would fail)."""
    single = _one_step(1, 12, 1.0, tmp_path, num_classes=3, odd_unlabelled=True)
    ddp = _one_step(2, 6, 1.0, tmp_path, num_classes=3, odd_unlabelled=True)
    assert float(single["classifier.weight"].abs().max()) > 0
    # The online loss is a per-rank mean over labelled samples; DDP averages it over ranks, so the classifier's
    # gradient is half the single-process one here (rank 1 has none); the backbone never sees it (detached input).
    torch.testing.assert_close(ddp["classifier.weight"], single["classifier.weight"] / 2, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ddp["backbone.conv1.weight"], single["backbone.conv1.weight"], rtol=1e-5, atol=1e-8)


def test_compiled_backbone_trains_and_keeps_checkpoint_keys(eager_compile):
    calls = eager_compile
    torch.manual_seed(0)
    plain = WCL(**TINY)
    plain.setup("fit")
    assert calls == []  # auto: eager on the CPU
    torch.manual_seed(0)
    compiled = WCL(**TINY, compile_backbone=True, compile_mode="max-autotune")
    compiled.setup("fit")
    assert calls == [{"mode": "max-autotune", "dynamic": False}]
    assert list(compiled.state_dict()) == list(plain.state_dict())
    x = _batch()["views"][0]
    torch.testing.assert_close(compiled(x), plain(x))
    compiled(x).sum().backward()
    assert compiled.backbone.conv1.weight.grad is not None
