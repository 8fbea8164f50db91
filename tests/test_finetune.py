"""Fine-tuning that starts from a probed head (``FineTune(probe_epochs=…)``, ``ProbeFirst``)."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from tests.test_predict import tiny_checkpoint
from wcl import FineTune, LabelledDataModule
from wcl.callbacks.labelled import CachedFeatures, fit_linear
from wcl.errors import ConfigError


def test_fit_linear_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    feats = torch.eye(3)[labels] * 4 + 0.3 * torch.randn(120, 3, generator=g)
    layer = torch.nn.Linear(3, 3)
    before = (layer(feats).argmax(1) == labels).float().mean()
    fit_linear(layer, feats, labels, epochs=30, lr=0.1)
    assert (layer(feats).argmax(1) == labels).float().mean() == 1.0 > before


class _HeadAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.weight = pl_module.classifier.weight.detach().clone()
        pl_module.eval()  # the probe's features: BatchNorm with its running statistics
        self.features = CachedFeatures.extract(pl_module, trainer.datamodule.cache_source("train"), pl_module.device)
        pl_module.train()


def test_fine_tuning_starts_from_the_probe_of_its_training_images(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    dm = LabelledDataModule(dataset="bundled", batch_size=16, num_workers=0, train_per_class=4, val_per_class=1)
    model = FineTune(str(ckpt), num_classes=10, probe_epochs=5, probe_lr=0.2)
    torch.manual_seed(0)
    start = torch.nn.Linear(model.classifier.in_features, 10)
    model.classifier.load_state_dict(start.state_dict())
    seen = _HeadAtStart()
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                      limit_val_batches=0, callbacks=[seen])
    trainer.fit(model, dm)
    feats, labels = seen.features.tensors[:2]
    fit_linear(start, feats, labels, epochs=5, lr=0.2)
    torch.testing.assert_close(seen.weight, start.weight)
    with pytest.raises(ConfigError, match="probe_epochs"):
        FineTune(str(ckpt), num_classes=10, probe_epochs=-1)
